"""Softmax attention: dense (SDPA) and, from the sparse-attention work, block-sparse patterns.

``attention(q, k, v, causal=..., backend=...)`` dispatches between the readable reference
(:mod:`.reference`) and SDPA (:mod:`.sdpa`).
"""

from __future__ import annotations

from torch import Tensor

from longarena.ops.attention.reference import attention_mask, attention_reference
from longarena.ops.attention.sdpa import attention_sdpa

BACKENDS = {"reference": attention_reference, "sdpa": attention_sdpa}

__all__ = ["BACKENDS", "attention", "attention_mask", "attention_reference", "attention_sdpa"]


def attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, backend: str = "sdpa", **kwargs) -> Tensor:
    """Softmax attention through the named backend (``reference`` or ``sdpa``)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; known: {sorted(BACKENDS)}")
    return BACKENDS[backend](q, k, v, causal=causal, **kwargs)
