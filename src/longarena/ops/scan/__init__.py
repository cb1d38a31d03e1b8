"""Diagonal linear recurrences ``h_t = a_t * h_{t-1} + b_t`` (S5, Mamba, LRU, RetNet-style decays).

``linear_scan(a, b, h0=None, *, backend="auto") -> (h, h_last)``

- ``a``: decays, broadcastable to ``b`` (same rank); ``b``: inputs ``(B, T, *S)`` where ``S``
  is any trailing state shape. Real or complex. Time-varying or not (a ``T`` axis of size 1
  broadcasts).
- ``h0``: the state before ``t = 0``, broadcastable to ``(B, *S)``; ``None`` means zeros.
- returns ``h: (B, T, *S)``, every state, and ``h_last: (B, *S)``, the state after the last
  step, which is what a caller carries into the next chunk: scanning ``[x1, x2]`` at once
  equals scanning ``x1``, then ``x2`` from ``h_last`` of the first.

bf16/fp16 inputs are accumulated in fp32 and the results cast back to the input dtype.
Gradients flow to ``a``, ``b`` and ``h0`` through plain autograd.

:func:`selective_scan` (:mod:`.selective`) is Mamba's input-dependent scan on top of it:
``selective_scan(u, delta, A, B, C, D=None, h0=None, *, backend="auto") -> (y, h_last)``
with backends ``"reference"``, ``"chunked"`` (closed form in log space inside short chunks,
CPU's fastest) and ``"triton"`` (:mod:`.selective_triton`, GPU kernels; imported on first use,
so ``TRITON_INTERPRET`` can still be set before it); ``"auto"`` picks ``"triton"`` for CUDA
tensors when Triton imports, else ``"chunked"``.

Backends: ``"reference"`` (:mod:`.reference`, a Python loop over ``t``: the specification),
``"chunked"`` (:mod:`.chunked`, two levels of chunks, about ``3 sqrt(T)`` Python steps,
products only, no division) and ``"parallel"`` (:mod:`.parallel`, a log-depth associative
scan by doubling, ``O(T log T)`` work). ``"auto"`` picks ``"chunked"``, the fastest on CPU.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

from longarena.ops.scan.chunked import default_chunk, linear_scan_chunked
from longarena.ops.scan.parallel import linear_scan_parallel
from longarena.ops.scan.reference import linear_scan_reference
from longarena.ops.scan.selective import selective_scan_chunked, selective_scan_reference

BACKENDS = {
    "reference": linear_scan_reference,
    "chunked": linear_scan_chunked,
    "parallel": linear_scan_parallel,
}

__all__ = [
    "BACKENDS",
    "default_chunk",
    "linear_scan",
    "linear_scan_chunked",
    "linear_scan_parallel",
    "linear_scan_reference",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_reference",
    "triton_available",
]


def _check(a: Tensor, b: Tensor, h0: Tensor | None) -> None:
    if b.dim() < 2:
        raise ValueError(f"linear_scan expects b of shape (B, T, *S), got shape {tuple(b.shape)}")
    if a.dim() != b.dim():
        raise ValueError(
            f"linear_scan expects a with the same rank as b (B, T, *S) = {tuple(b.shape)}, "
            f"broadcastable to it; got a of shape {tuple(a.shape)}"
        )
    try:
        full = torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError:
        full = None
    if full != b.shape:
        raise ValueError(f"linear_scan: a of shape {tuple(a.shape)} does not broadcast to b {tuple(b.shape)}")
    if h0 is not None:
        want = (b.shape[0], *b.shape[2:])
        try:
            ok = torch.broadcast_shapes(h0.shape, want) == want
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(
                f"linear_scan expects h0 broadcastable to (B, *S) = {want}, got {tuple(h0.shape)}"
            )


def linear_scan(
    a: Tensor, b: Tensor, h0: Tensor | None = None, *, backend: str = "auto", chunk_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """``h_t = a_t * h_{t-1} + b_t`` over ``t`` of ``b: (B, T, *S)``; see the module docstring.

    ``chunk_size`` (chunked backend only) overrides the default ``C ~ sqrt(T)``.
    """
    _check(a, b, h0)
    if backend == "auto":
        backend = "chunked"
    if backend == "reference":
        return linear_scan_reference(a, b, h0)
    if backend == "chunked":
        return linear_scan_chunked(a, b, h0, chunk_size=chunk_size)
    if backend == "parallel":
        return linear_scan_parallel(a, b, h0)
    raise ValueError(f"unknown linear_scan backend {backend!r}; known: {sorted(BACKENDS)} or 'auto'")


def selective_scan(
    u: Tensor,
    delta: Tensor,
    a: Tensor,
    b: Tensor,
    c: Tensor,
    d: Tensor | None = None,
    h0: Tensor | None = None,
    *,
    backend: str = "auto",
    **kwargs,
) -> tuple[Tensor, Tensor]:
    """Mamba's selective scan (see :mod:`.selective`): ``(y: (B, T, E), h_last: (B, E, N))``.

    u, delta: (B, T, E); a: (E, N); b, c: (B, T, N); d: (E,) or None; h0: (B, E, N) or None.
    ``kwargs``: ``block``, ``chunk_size`` (chunked); ``tiles`` (triton: :class:`.selective_triton.Tiles`).
    """
    bsz, t_len, e = u.shape
    n = a.shape[-1]
    expected = {
        "delta": (delta, (bsz, t_len, e)),
        "A": (a, (e, n)),
        "B": (b, (bsz, t_len, n)),
        "C": (c, (bsz, t_len, n)),
    }
    if d is not None:
        expected["D"] = (d, (e,))
    if h0 is not None:
        expected["h0"] = (h0, (bsz, e, n))
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"selective_scan expects {name} of shape {shape}, got {tuple(tensor.shape)}")
    if backend == "auto":
        backend = "triton" if u.is_cuda and triton_available() else "chunked"
    if backend == "chunked":
        return selective_scan_chunked(u, delta, a, b, c, d, h0, **kwargs)
    if backend == "reference":
        return selective_scan_reference(u, delta, a, b, c, d, h0)
    if backend == "triton":
        from longarena.ops.scan.selective_triton import selective_scan_triton

        return selective_scan_triton(u, delta, a, b, c, d, h0, **kwargs)
    raise ValueError(
        f"unknown selective_scan backend {backend!r}; known: 'reference', 'chunked', 'triton', 'auto'"
    )


def triton_available() -> bool:
    """Whether the ``triton`` package imports (its kernels then run on CUDA tensors, or on CPU
    under ``TRITON_INTERPRET=1``)."""
    return importlib.util.find_spec("triton") is not None
