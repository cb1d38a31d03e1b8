"""The position-scheme interface attention-like mixers and models call.

A scheme tells an attention layer where tokens are, in one (or more) of four ways:

- ``rotate(x, positions)``: rotate queries and keys (RoPE and its scalings);
- ``bias(q_pos, k_pos)``: an additive score bias that depends on positions only (ALiBi, T5);
- ``score_bias(q, k, q_pos, k_pos)``: an additive score bias that may also read the
  queries and keys (Transformer-XL); the default is ``bias(q_pos, k_pos)``;
- ``embed(positions, d_model)``: an absolute embedding the *model* adds to its token
  embeddings (sinusoidal). Schemes that do this set ``absolute = True``; an attention
  layer adds nothing for them.

Every method takes explicit integer position ids, so KV caches, chunked prefill, offset
and packed sequences all work: a key is rotated once, at its own position, when it is
written to the cache.

The registry of schemes lives here too (``register``, ``names``, ``get``; the package
re-exports them): scheme modules register through it, and ``extend.py``, which the package
imports, uses schemes, so a registry in the package's ``__init__`` would make a file cycle.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

from torch import Tensor, nn

from longarena.config import Config, ConfigError, build_config
from longarena.registry import Registry

#: ``score_mod(score, b, h, q_idx, kv_idx) -> score`` as torch's ``flex_attention`` takes it
ScoreMod = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]


@dataclasses.dataclass
class PositionConfig(Config):
    """Fields every scheme receives from the mixer that uses it."""

    head_dim: int = 64
    n_heads: int = 1

    def validate(self) -> None:
        if self.head_dim <= 0 or self.n_heads <= 0:
            raise ConfigError(f"head_dim and n_heads must be positive, got {self.head_dim}, {self.n_heads}")


class PositionScheme(nn.Module):
    """How an attention layer learns where tokens are (see the module docstring)."""

    config_class: ClassVar[type[PositionConfig]] = PositionConfig
    #: True for schemes the model adds to its inputs through ``embed`` (attention adds nothing)
    absolute: ClassVar[bool] = False

    def __init__(self, config: PositionConfig) -> None:
        super().__init__()
        self.config = config

    def rotate(self, x: Tensor, positions: Tensor) -> Tensor:
        """x: (B, H, T, K), positions: (T,) or (B, T) int -> x with positions applied."""
        return x

    def bias(self, q_pos: Tensor, k_pos: Tensor) -> Tensor | None:
        """Additive score bias broadcastable to (B, H, Tq, Tk), or None.

        q_pos: (Tq,) or (B, Tq); k_pos: (Tk,) or (B, Tk) integer positions. The bias is
        added to the *scaled* scores ``q.k / sqrt(K)``.
        """
        return None

    def score_bias(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor | None:
        """Additive score bias that may depend on content: q (B, H, Tq, K), k (B, Hkv, Tk, K).

        Returns a tensor broadcastable to (B, H, Tq, Tk) in units of the scaled scores, or
        None. Schemes whose bias depends on positions only keep this default.
        """
        return self.bias(q_pos, k_pos)

    def score_mod(self, q_pos: Tensor, k_pos: Tensor) -> ScoreMod | None:
        """The ``bias`` as a ``flex_attention`` score modification, or None if there is none.

        q_pos: (Tq,), k_pos: (Tk,) map flex's query/key indices to positions, so offsets
        (a KV cache) and packed sequences keep their true positions.
        """
        return None

    def embed(self, positions: Tensor, d_model: int) -> Tensor | None:
        """Absolute embedding (..., T, D) a model adds to its inputs, or None (not absolute)."""
        return None


# discovery imports every scheme module of the package, not of this module
REGISTRY: Registry[type[PositionScheme]] = Registry("position scheme", package="longarena.positions")


def register(name: str) -> Callable[[type[PositionScheme]], type[PositionScheme]]:
    return REGISTRY.register(name)


def names() -> list[str]:
    return REGISTRY.names()


def summaries() -> dict[str, str]:
    return REGISTRY.summaries()


def get(name: str, *, config: dict[str, Any] | None = None, **overrides: Any) -> PositionScheme:
    """Build scheme ``name``; ``head_dim`` / ``n_heads`` come from the mixer using it."""
    cls = REGISTRY.factory(name)
    return cls(build_config(cls.config_class, config, overrides))
