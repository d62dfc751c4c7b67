"""Model loading: devices, tokenizer setup, adapters, clear errors, the default model's one-time conversion."""
from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

from model import loading
from model.loading import default_model_path, load_model, resolve_device


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda")


def test_loads_a_local_model_ready_for_batched_generation(tiny_model_dir, caplog):
    with caplog.at_level(logging.INFO, logger="model.loading"):
        lm = load_model(str(tiny_model_dir), device="cpu")
    assert lm.device == torch.device("cpu") and lm.name_or_path == str(tiny_model_dir) and lm.adapter is None
    assert not lm.model.training
    assert next(lm.model.parameters()).dtype == torch.float32
    assert lm.tokenizer.padding_side == "left"
    assert f"loaded {tiny_model_dir}" in caplog.text


def test_missing_pad_token_becomes_eos(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer
    copy = tmp_path / "nopad"
    shutil.copytree(tiny_model_dir, copy)
    tok = AutoTokenizer.from_pretrained(copy)
    tok.pad_token = None
    tok.save_pretrained(copy)
    assert AutoTokenizer.from_pretrained(copy).pad_token is None
    lm = load_model(str(copy))
    assert lm.tokenizer.pad_token == lm.tokenizer.eos_token


def test_missing_paths_are_clear_errors(tiny_model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        load_model(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "no-adapter")):
        load_model(str(tiny_model_dir), adapter=str(tmp_path / "no-adapter"))


def test_adapter_is_applied(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    # Non-zero LoRA weights (the default init is an exact no-op), so the adapter visibly changes logits.
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    x = torch.tensor([[5, 6, 7, 8]])
    base = load_model(str(tiny_model_dir))
    lm = load_model(str(tiny_model_dir), adapter=str(tmp_path / "adapter"))
    assert lm.adapter == str(tmp_path / "adapter") and not lm.model.training
    with torch.no_grad():
        want = peft_model.eval()(x).logits
        assert torch.allclose(lm.model(x).logits, want, atol=1e-5)
        assert not torch.allclose(base.model(x).logits, want, atol=1e-3)


def test_default_model_is_converted_once_then_read_from_the_cache(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MODEL_CACHE_DIR", str(tmp_path))
    conversions = []

    def fake_convert(dest):  # stands in for the GGUF conversion (covered by the slow test)
        conversions.append(dest)
        shutil.copytree(tiny_model_dir, dest)
    monkeypatch.setattr(loading, "_convert_default", fake_convert)
    for name in (None, "smollm2", "SmolLM2-135M-Instruct"):
        assert load_model(name).name_or_path == str(tmp_path / "models" / "smollm2-135m-instruct")
    assert conversions == [default_model_path()]


@pytest.mark.slow
def test_smollm2_conversion_matches_the_gguf_model(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("MODEL_CACHE_DIR", str(tmp_path))
    lm = load_model()
    dest = default_model_path()
    assert (dest / "model.safetensors").exists()
    assert "quantization_config" not in json.loads((dest / "config.json").read_text())
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]  # no temp folder left behind
    assert lm.tokenizer.eos_token == "<|im_end|>" and lm.tokenizer.chat_template
    gguf = AutoModelForCausalLM.from_pretrained(loading._gguf_folder(), gguf_file=loading.GGUF_FILE)
    x = lm.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(lm.model(x).logits, gguf(x).logits, atol=1e-4)
    monkeypatch.setattr(loading, "_convert_default", lambda dest: pytest.fail("converted twice"))
    assert load_model().name_or_path == str(dest)
