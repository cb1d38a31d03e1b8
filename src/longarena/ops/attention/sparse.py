"""``sparse_attention(q, k, v, pattern, backend=...)``: one entry to the sparse paths.

- ``reference``: dense masked softmax (:mod:`.sparse_reference`), the specification;
- ``blocked``: gathered key blocks in plain torch (:mod:`.blocked`), trainable everywhere;
- ``flex``: ``flex_attention`` with a block mask (:mod:`.flex`), GPU training and CPU
  inference.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from longarena.ops.attention.blocked import blocked_sparse_attention
from longarena.ops.attention.flex import flex_sparse_attention, flex_supports_grad
from longarena.ops.attention.patterns import Pattern
from longarena.ops.attention.sparse_reference import sparse_attention_reference

SPARSE_BACKENDS = {
    "reference": sparse_attention_reference,
    "blocked": blocked_sparse_attention,
    "flex": flex_sparse_attention,
}

__all__ = ["SPARSE_BACKENDS", "sparse_attention", "sparse_backends_for"]


#: flex_attention's GPU kernels need a head dimension of at least this (torch 2.11-2.13)
FLEX_MIN_HEAD_DIM = 16


def sparse_backends_for(device: torch.device | str, head_dim: int | None = None) -> tuple[str, ...]:
    """Backends that train on ``device``, the reference first and the default (``auto``) last.

    On an H100 (torch 2.11) flex trains correctly, but each new pattern/shape/grad-mode
    recompiles it and after 8 recompiles torch falls back to an eager flex that stores
    all T x T scores (out of memory at T = 64k), so ``blocked`` stays the default there
    too; ``backend="flex"`` opts in for fixed-shape workloads.
    """
    if flex_supports_grad(torch.device(device)) and (head_dim is None or head_dim >= FLEX_MIN_HEAD_DIM):
        return ("reference", "flex", "blocked")
    return ("reference", "blocked")


def sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    pattern: Pattern,
    *,
    backend: str = "blocked",
    block_size: int | None = None,
    **kwargs: Any,
) -> Tensor:
    """Sparse softmax attention under ``pattern`` through the named backend.

    q: (B, H, Tq, K); k: (B, Hkv, Tk, K); v: (B, Hkv, Tk, V). Keyword arguments
    (``key_mask``, ``score_bias``, ``scale``, ``q_offset``) as in
    :func:`~longarena.ops.attention.sparse_reference.sparse_attention_reference`.
    """
    if backend not in SPARSE_BACKENDS:
        raise ValueError(f"unknown sparse attention backend {backend!r}; known: {sorted(SPARSE_BACKENDS)}")
    # flex tiles stay at its kernels' own block (128): a pattern's finer blocks are exact
    # through mask_mod inside partial tiles, while tiles the kernel cannot split fail to lower
    if block_size is not None and backend == "blocked":
        kwargs["block_size"] = block_size
    return SPARSE_BACKENDS[backend](q, k, v, pattern, **kwargs)
