"""A tiny, deterministic causal LM with a real tokenizer, saved like any Hugging Face model.

Used by unit tests, the e2e test, the CI smoke evaluation and the demo's ``--tiny`` mode: it runs
every real code path (chat template, generation, peft) in milliseconds.
"""
from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

_CORPUS = [
    "summarize the following text in one sentence", "translate this sentence into french",
    "classify the sentiment of the review as positive or negative", "answer the question briefly",
    "write a question about the passage", "the quick brown fox jumps over the lazy dog",
    "label studio sends webhooks to the backend", "annotators write responses to prompts",
    "count the number of words in the sentence", "reverse the order of the letters",
    "0 1 2 3 4 5 6 7 8 9 yes no true false a b c d e f g h i j k l m n o p q r s t u v w x y z",
]


def make_tiny_model(out_dir, seed: int = 0, vocab_size: int = 384, hidden: int = 64, layers: int = 2) -> Path:
    """Train a byte-level BPE tokenizer on a small corpus, build a 2-layer Llama, save both."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out_dir)
    if (out / "config.json").exists():
        return out
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", unk_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=1024, bos_token_id=fast.bos_token_id,
                      eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out
