"""The Mixer protocol: ``x: (B, T, D) -> (y: (B, T, D), state)``.

Every sequence mixer in LongArena subclasses :class:`Mixer`. The base class validates
inputs (so users get a clear error, never a shape error from deep inside torch), picks a
backend and hands the work to two methods a subclass implements:

- ``_forward(x, state, mask) -> (y, new_state)`` for a whole chunk, and
- ``_step(x_t, state) -> (y_t, new_state)`` for one token (causal mixers).

``backends`` lists the computation paths of the mixer, the readable reference first. The
conformance suite (:mod:`longarena.testing`) checks every path against the reference.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from longarena.config import Config, ConfigError


class MixerInputError(ValueError):
    """An input, mask or state handed to a mixer does not have the expected shape."""


@dataclasses.dataclass
class MixerConfig(Config):
    """Fields shared by every mixer. ``backend='auto'`` picks the fastest correct path."""

    d_model: int = 64
    backend: str = "auto"

    def validate(self) -> None:
        if not isinstance(self.d_model, int) or self.d_model <= 0:
            raise ConfigError(f"d_model must be a positive int, got {self.d_model!r}")


def check_heads(d_model: int, n_heads: int) -> None:
    """Raise ``ConfigError`` unless ``n_heads`` is a positive int dividing ``d_model``."""
    if not isinstance(n_heads, int) or n_heads <= 0 or d_model % n_heads:
        raise ConfigError(f"d_model ({d_model}) must be a positive multiple of n_heads ({n_heads})")


class Mixer(nn.Module):
    """Base class of all sequence mixers (see the module docstring for the protocol)."""

    config_class: ClassVar[type[MixerConfig]] = MixerConfig
    #: computation paths, the readable reference first
    backends: ClassVar[tuple[str, ...]] = ("reference",)
    #: backends that run Triton kernels: offered on CUDA when Triton imports, and on CPU only
    #: when named under ``TRITON_INTERPRET=1`` (the interpreter is for tests, far too slow else)
    triton_backends: ClassVar[tuple[str, ...]] = ()
    #: whether output t depends only on inputs <= t
    causal: bool = True

    def __init__(self, config: MixerConfig) -> None:
        super().__init__()
        if config.backend != "auto" and config.backend not in self.backends:
            raise ConfigError(
                f"{type(self).__name__} has no backend {config.backend!r}; "
                f"choose 'auto' or one of {list(self.backends)}"
            )
        self.config = config
        self.d_model = config.d_model
        self.backend = config.backend

    # --- backend selection -------------------------------------------------------------
    def available_backends(self, device: torch.device) -> tuple[str, ...]:
        """Backends that can run on ``device``: all but the Triton ones off CUDA (see
        ``triton_backends``)."""
        if not self.triton_backends:
            return self.backends
        interpreted = self.backend in self.triton_backends and os.environ.get("TRITON_INTERPRET", "0") == "1"
        if importlib.util.find_spec("triton") is not None and (torch.device(device).type == "cuda" or interpreted):
            return self.backends
        return tuple(b for b in self.backends if b not in self.triton_backends)

    def resolve_backend(self, device: torch.device) -> str:
        available = self.available_backends(device)
        if self.backend == "auto":
            return available[-1]
        if self.backend not in available:
            raise RuntimeError(
                f"backend {self.backend!r} of {type(self).__name__} cannot run on {device}; "
                f"available there: {list(available)}"
            )
        return self.backend

    @contextlib.contextmanager
    def use_backend(self, backend: str) -> Iterator[Mixer]:
        """Temporarily force one computation path: ``with mixer.use_backend('reference'):``."""
        if backend != "auto" and backend not in self.backends:
            raise ValueError(f"{type(self).__name__} has no backend {backend!r}; known: {list(self.backends)}")
        previous, self.backend = self.backend, backend
        try:
            yield self
        finally:
            self.backend = previous

    # --- the protocol --------------------------------------------------------------------
    def forward(self, x: Tensor, *, state: Any = None, mask: Tensor | None = None) -> tuple[Tensor, Any]:
        """Mix a chunk ``x: (B, T, D)``, continuing from ``state`` when given.

        ``mask: (B, T)`` bool marks real tokens (True) and padding (False). Causal mixers
        may ignore right padding, which cannot leak into earlier positions; non-causal
        mixers must keep padded positions out of every real output.
        """
        self._check_input(x, "x", 3)
        if mask is not None:
            if mask.shape != x.shape[:2] or mask.dtype != torch.bool:
                raise MixerInputError(
                    f"mask must be a bool tensor of shape (B, T) = {tuple(x.shape[:2])}, "
                    f"got {mask.dtype} {tuple(mask.shape)}"
                )
        if state is not None:
            if not self.causal:
                raise MixerInputError(
                    f"{type(self).__name__} is non-causal and carries no state between chunks"
                )
            self.check_state(state, x.shape[0])
        return self._forward(x, state, mask)

    def step(self, x_t: Tensor, state: Any) -> tuple[Tensor, Any]:
        """Decode one token ``x_t: (B, D)`` from ``state``; returns ``(y_t: (B, D), state)``."""
        if not self.causal:
            raise MixerInputError(f"{type(self).__name__} is non-causal and has no step()")
        self._check_input(x_t, "x_t", 2)
        if state is None:
            raise MixerInputError("step() needs a state; start from mixer.init_state(batch_size)")
        self.check_state(state, x_t.shape[0])
        return self._step(x_t, state)

    def init_state(self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Any:
        """The state before the first token (causal mixers)."""
        raise NotImplementedError(f"{type(self).__name__} does not define init_state()")

    def state_size(self, seq_len: int) -> int:
        """Numbers carried per sequence between steps after ``seq_len`` tokens."""
        raise NotImplementedError(f"{type(self).__name__} does not define state_size()")

    def state_batch_size(self, state: Any) -> int | None:
        """Batch size a state was made for (None if unknown). Default: first tensor's dim 0."""
        for leaf in flatten_state(state):
            if isinstance(leaf, Tensor) and leaf.dim() > 0:
                return leaf.shape[0]
        return None

    def check_state(self, state: Any, batch_size: int) -> None:
        b = self.state_batch_size(state)
        if b is not None and b != batch_size:
            raise MixerInputError(
                f"{type(self).__name__} got a state for batch size {b} with an input of batch size "
                f"{batch_size}; carry states per batch, or start from init_state({batch_size})"
            )

    # --- to implement --------------------------------------------------------------------
    def _forward(self, x: Tensor, state: Any, mask: Tensor | None) -> tuple[Tensor, Any]:
        raise NotImplementedError

    def _step(self, x_t: Tensor, state: Any) -> tuple[Tensor, Any]:
        """Default: a length-1 chunk through ``_forward``. Override for O(state) steps."""
        y, state = self._forward(x_t.unsqueeze(1), state, None)
        return y.squeeze(1), state

    # --- helpers -------------------------------------------------------------------------
    def _check_input(self, x: Tensor, name: str, rank: int) -> None:
        shape = "(B, T, D)" if rank == 3 else "(B, D)"
        if not isinstance(x, Tensor):
            raise MixerInputError(f"{name} must be a torch.Tensor of shape {shape}, got {type(x).__name__}")
        if x.dim() != rank:
            raise MixerInputError(
                f"{type(self).__name__} expects {name} of shape {shape} with D = {self.d_model}, "
                f"got a tensor of rank {x.dim()} with shape {tuple(x.shape)}"
            )
        if x.shape[-1] != self.d_model:
            raise MixerInputError(
                f"{type(self).__name__} expects width D = {self.d_model}, got {name} of shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise MixerInputError(f"{name} must be a floating-point tensor, got {x.dtype}")

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, causal={self.causal}, backend={self.backend!r}"


LOW_PRECISION = (torch.bfloat16, torch.float16)


class KeepFP32Params(nn.Module):
    """Keeps the parameters named in ``fp32_params`` in fp32 when the module is cast to bf16/fp16.

    SSM step sizes, decays and eigenvalues are raised to powers in the thousands; rounding
    them to bf16 (8 bits of mantissa) shifts every kernel. Moves between devices still apply.
    """

    fp32_params: ClassVar[tuple[str, ...]] = ()

    def _apply(self, fn, recurse=True):
        kept = {n: self._parameters[n].data for n in self.fp32_params if self._parameters.get(n) is not None}
        out = super()._apply(fn, recurse)
        for name, old in kept.items():
            param = self._parameters[name]
            if param.dtype in LOW_PRECISION and old.dtype not in LOW_PRECISION:
                param.data = old.to(param.device)
        return out


def map_state(state: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """A copy of ``state`` with ``fn`` applied to every tensor; the structure (dataclasses,
    lists, tuples, dicts) and non-tensor leaves are kept."""
    if isinstance(state, Tensor):
        return fn(state)
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        fields = dataclasses.fields(state)
        return dataclasses.replace(state, **{f.name: map_state(getattr(state, f.name), fn) for f in fields if f.init})
    if isinstance(state, (list, tuple)):
        return type(state)(map_state(s, fn) for s in state)
    if isinstance(state, dict):
        return {k: map_state(v, fn) for k, v in state.items()}
    return state


def flatten_state(state: Any) -> list[Any]:
    """Leaves of a state made of tensors, numbers, tuples, lists, dicts and dataclasses."""
    if state is None:
        return []
    if isinstance(state, Tensor):
        return [state]
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        return [leaf for f in dataclasses.fields(state) for leaf in flatten_state(getattr(state, f.name))]
    if isinstance(state, dict):
        return [leaf for key in sorted(state) for leaf in flatten_state(state[key])]
    if isinstance(state, (list, tuple)):
        return [leaf for item in state for leaf in flatten_state(item)]
    return [state]
