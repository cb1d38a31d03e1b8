"""Extend the context of a trained RoPE model: ``extend(model, method, factor, **params)``.

Works on two kinds of model:

- a Hugging Face transformers model with rotary embeddings (Llama, Mistral, Qwen2, SmolLM,
  ... any model whose rotary module has ``inv_freq`` and ``rope_type``): the config's RoPE
  parameters are rewritten and every rotary module is rebuilt from it, so the patched model
  *is* what transformers builds for that config (``linear``, ``dynamic``, ``yarn`` are
  transformers' own code paths; static ``ntk`` becomes plain RoPE with the NTK base), and
  ``save_pretrained`` writes a checkpoint any transformers install loads the same way;
- a LongArena model: every plain ``rope`` scheme inside it is replaced by the scaled one
  (and the owning mixer's config updated, so the saved config rebuilds the same model).

``extend_checkpoint`` does the same from a folder to a folder (``longarena extend``).
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from longarena.config import ConfigError
from longarena.positions.base import PositionScheme
from longarena.positions.base import get as get_scheme
from longarena.positions.rope import Rope
from longarena.positions.rope_scaling import ntk_theta

#: method -> extra keyword parameters it accepts (beyond ``factor``)
METHODS: dict[str, tuple[str, ...]] = {
    "linear": (),
    "ntk": (),
    "dynamic_ntk": ("original_max_len",),
    "yarn": ("original_max_len", "beta_fast", "beta_slow", "attention_factor", "truncate"),
}
#: our method name -> transformers' rope_type
HF_ROPE_TYPE = {"linear": "linear", "ntk": "default", "dynamic_ntk": "dynamic", "yarn": "yarn"}
#: files a checkpoint folder carries besides the model (copied to the extended checkpoint)
_SIDE_FILES = ("tokenizer", "vocab", "merges", "special_tokens_map", "added_tokens", "chat_template")


def _check(method: str, factor: Any, params: dict[str, Any]) -> None:
    if method not in METHODS:
        known = ", ".join(sorted(METHODS))
        raise ConfigError(f"unknown context-extension method {method!r}; known methods: {known}")
    is_number = isinstance(factor, (int, float)) and not isinstance(factor, bool)
    if not is_number or not math.isfinite(factor) or factor < 1:
        raise ConfigError(
            f"factor must be a finite number >= 1 (new context / trained context; 1 = unchanged), "
            f"got {factor!r}"
        )
    unknown = sorted(set(params) - set(METHODS[method]))
    if unknown:
        accepted = ", ".join(METHODS[method]) or "none"
        raise ConfigError(f"{method} does not take parameter(s) {unknown}; it accepts: {accepted}")


def extend(model: nn.Module, method: str, factor: float, **params: Any) -> nn.Module:
    """Patch ``model`` in place to run ``factor`` times its trained context; returns it.

    method: ``linear`` (Position Interpolation), ``ntk`` (NTK-aware), ``dynamic_ntk``,
    ``yarn``. params: ``original_max_len`` (trained length; for HF models it defaults to
    ``config.max_position_embeddings``, LongArena models must give it for ``dynamic_ntk`` and
    ``yarn``), and for YaRN ``beta_fast``, ``beta_slow``, ``attention_factor``, ``truncate``.
    Raises ConfigError for an unknown method or parameter, a factor < 1, or a model without
    plain RoPE.
    """
    _check(method, factor, params)
    if _is_hf_model(model):
        return _extend_hf(model, method, float(factor), params)
    return _extend_longarena(model, method, float(factor), params)


# --- Hugging Face models ---------------------------------------------------------------------


def _is_hf_model(model: nn.Module) -> bool:
    if "transformers" not in sys.modules:  # a transformers model implies it is imported
        return False
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return False
    return isinstance(model, PreTrainedModel)


def _rotary_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if hasattr(m, "inv_freq") and hasattr(m, "rope_type")]


def _rope_parameters(config: Any) -> dict[str, Any]:
    """The config's RoPE parameters as one flat dict with ``rope_type`` and ``rope_theta``.

    transformers >= 5 keeps them in ``config.rope_parameters``; 4.x in ``rope_theta`` and
    ``rope_scaling``.
    """
    if getattr(config, "rope_parameters", None) is not None:
        params = dict(config.rope_parameters)
    else:
        params = dict(getattr(config, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(config, "rope_theta", None))
    params.setdefault("rope_type", params.pop("type", "default"))
    if params.get("rope_theta") is None or any(isinstance(v, dict) for v in params.values()):
        raise ConfigError(
            f"{type(config).__name__} has no single set of RoPE parameters "
            f"(per-layer RoPE types are not supported)"
        )
    return params


def _set_rope_parameters(config: Any, params: dict[str, Any]) -> None:
    if hasattr(config, "rope_parameters"):
        config.rope_parameters = params
    else:  # transformers 4.x
        config.rope_theta = params["rope_theta"]
        scaling = {k: v for k, v in params.items() if k not in ("rope_theta", "partial_rotary_factor")}
        config.rope_scaling = None if scaling["rope_type"] == "default" else scaling


def _extend_hf(model: nn.Module, method: str, factor: float, params: dict[str, Any]) -> nn.Module:
    rotary = _rotary_modules(model)
    if not rotary:
        raise ConfigError(
            f"{type(model).__name__} has no rotary position embedding (no module with inv_freq); "
            f"RoPE scalings apply to RoPE models such as Llama, Mistral, Qwen2, SmolLM"
        )
    configs = {id(m.config): m.config for _, m in rotary}
    for config in configs.values():
        old = _rope_parameters(config)
        if old["rope_type"] != "default":
            raise ConfigError(
                f"the model already uses RoPE scaling {old['rope_type']!r} ({old}); "
                f"extend the unscaled checkpoint"
            )
        trained = int(params.get("original_max_len", config.max_position_embeddings))
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        rotary_dim = int(head_dim * old.get("partial_rotary_factor", 1.0))
        new: dict[str, Any] = {"rope_theta": old["rope_theta"], "rope_type": HF_ROPE_TYPE[method]}
        if "partial_rotary_factor" in old:
            new["partial_rotary_factor"] = old["partial_rotary_factor"]
        if method == "ntk":
            new["rope_theta"] = float(ntk_theta(rotary_dim, old["rope_theta"], factor))
        else:
            new["factor"] = factor
        if method == "yarn":
            new["original_max_position_embeddings"] = trained
            new.update({k: v for k, v in params.items() if k != "original_max_len"})
        _set_rope_parameters(config, new)
        # dynamic NTK reads its trained length from max_position_embeddings; the others
        # advertise the extended context there
        config.max_position_embeddings = trained if method == "dynamic_ntk" else int(round(trained * factor))
    for name, module in rotary:
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        rebuilt = type(module)(config=module.config).to(module.inv_freq.device)
        setattr(parent, name.rpartition(".")[2], rebuilt)
    return model


# --- LongArena models ------------------------------------------------------------------------


def _extend_longarena(model: nn.Module, method: str, factor: float, params: dict[str, Any]) -> nn.Module:
    targets = [
        (parent, attr, child)
        for parent in model.modules()
        for attr, child in parent.named_children()
        if type(child) is Rope
    ]
    if not targets:
        found = sorted({type(m).__name__ for m in model.modules() if isinstance(m, PositionScheme)})
        raise ConfigError(
            f"{type(model).__name__} has no plain RoPE scheme to scale "
            f"(position schemes found: {found or 'none'}); "
            f"RoPE scalings apply to models built with position='rope'"
        )
    if method in ("dynamic_ntk", "yarn") and "original_max_len" not in params:
        raise ConfigError(
            f"extend(method={method!r}) on a LongArena model needs original_max_len= (its training length)"
        )
    for parent, attr, rope in targets:
        position_params = {"theta": rope.config.theta, "factor": factor, **params}
        scaled = get_scheme(
            method, head_dim=rope.config.head_dim, n_heads=rope.config.n_heads, **position_params
        ).to(rope.inv_freq.device)
        setattr(parent, attr, scaled)
        config = getattr(parent, "config", None)
        if attr == "position" and hasattr(config, "position") and hasattr(config, "position_params"):
            config.position, config.position_params = method, position_params
    return model


# --- checkpoints -------------------------------------------------------------------------------


def extend_checkpoint(
    model_path: str | os.PathLike,
    method: str,
    factor: float,
    out_dir: str | os.PathLike,
    *,
    gguf_file: str | None = None,
    **params: Any,
) -> Path:
    """Load the transformers causal LM in ``model_path``, ``extend`` it, save it to ``out_dir``.

    The model keeps its stored dtype. Tokenizer files found beside it are copied along. The
    checkpoint is written to a temporary folder next to ``out_dir`` and renamed at the end,
    so an interrupted run leaves no half-written ``out_dir``. ``out_dir`` must not exist yet
    (or be empty). ``gguf_file`` loads a GGUF file inside ``model_path``.
    """
    _check(method, factor, params)
    source, out = Path(model_path), Path(out_dir)
    if not source.is_dir():
        raise FileNotFoundError(
            f"model path {str(source)!r} is not a folder (expected a saved transformers model)"
        )
    if gguf_file is None and not (source / "config.json").is_file():
        raise FileNotFoundError(
            f"{str(source)!r} has no config.json; is it a transformers save_pretrained folder?"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"output {str(out)!r} already exists and is not empty; choose a new folder")
    try:
        import transformers
    except ImportError as exc:
        raise ImportError("extend_checkpoint needs transformers: pip install 'longarena[hf]'") from exc

    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    dtype_key = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    load_kwargs: dict[str, Any] = {dtype_key: "auto"}
    if gguf_file is not None:
        load_kwargs["gguf_file"] = gguf_file
    model = transformers.AutoModelForCausalLM.from_pretrained(source, **load_kwargs)
    extend(model, method, factor, **params)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        for f in source.iterdir():
            if f.is_file() and f.name.startswith(_SIDE_FILES) and not (tmp / f.name).exists():
                shutil.copy2(f, tmp / f.name)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
