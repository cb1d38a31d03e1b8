"""(Gated) linear attention, retention and FAVOR+ prefix sums: ``S_t = a_t S_{t-1} + k_t^T v_t``.

``linear_attention(q, k, v, *, gamma=None, log_decay=None, state=None, scale=1.0, backend="auto")``
returns ``(o: (B, H, T, V), S_last: (B, H, K, V) fp32)`` with ``o_t = scale * q_t S_t``; the
decay is none (causal linear attention), ``gamma: (H,)`` (a fixed scalar per head, RetNet) or
``log_decay: (B, H, T)`` (a per-step scalar per head in log space, Mamba-2's SSD).

Backends: ``reference`` (:mod:`.reference`, the token loop: the specification), ``chunked``
(:mod:`.chunked`, torch, parallel inside chunks: the CPU path) and ``triton``
(:mod:`.triton_chunk`, GPU kernels, forward and backward; on CPU only under
``TRITON_INTERPRET=1``, for tests). ``auto`` takes ``triton`` for CUDA tensors and ``chunked``
otherwise; where a CUDA call cannot take the kernels (Triton missing, K or V over 256,
float64) it runs ``chunked`` and says why once.
"""

from __future__ import annotations

import importlib.util
import logging

from torch import Tensor

from longarena.ops.linear_attn.chunked import linear_attention_chunked
from longarena.ops.linear_attn.reference import (
    MAX_HEAD_DIM,
    check_inputs,
    linear_attention_recurrent,
    linear_attention_step,
)

__all__ = [
    "BACKENDS",
    "linear_attention",
    "linear_attention_chunked",
    "linear_attention_recurrent",
    "linear_attention_step",
    "resolve_backend",
]

BACKENDS = ("reference", "chunked", "triton")

_log = logging.getLogger(__name__)
_warned: set[str] = set()


def _triton_refusal(q: Tensor, v: Tensor) -> str | None:
    """Why the Triton kernels cannot take these inputs, or None."""
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed"
    if max(q.shape[-1], v.shape[-1]) > MAX_HEAD_DIM:
        return f"K={q.shape[-1]}, V={v.shape[-1]}: the kernels take up to {MAX_HEAD_DIM}"
    if v.dtype.is_floating_point and v.dtype.itemsize > 4:
        return f"{v.dtype} inputs: the kernels compute in float32 at most"
    return None


def resolve_backend(q: Tensor, v: Tensor, backend: str = "auto") -> str:
    """The backend ``auto`` stands for with these inputs (logging once why a CUDA call cannot
    take the kernels), or ``backend`` itself after checking its name."""
    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"unknown linear attention backend {backend!r}; known: {list(BACKENDS)} or 'auto'")
    if backend != "auto":
        return backend
    if not q.is_cuda:
        return "chunked"
    reason = _triton_refusal(q, v)
    if reason is None:
        return "triton"
    if reason not in _warned:
        _warned.add(reason)
        _log.warning("linear attention on CUDA runs the torch chunked path (several times slower): %s", reason)
    return "chunked"


def linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    gamma: Tensor | None = None,
    log_decay: Tensor | None = None,
    state: Tensor | None = None,
    scale: float = 1.0,
    backend: str = "auto",
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """Decayed linear attention through the named backend; see the module docstring.

    ``chunk_size`` applies to ``chunked``; the Triton kernels use their own (64).
    """
    check_inputs(q, k, v, gamma, log_decay, state)
    backend = resolve_backend(q, v, backend)
    if backend == "reference":
        return linear_attention_recurrent(q, k, v, gamma=gamma, log_decay=log_decay, state=state, scale=scale)
    if backend == "chunked":
        return linear_attention_chunked(
            q, k, v, gamma=gamma, log_decay=log_decay, state=state, scale=scale, chunk_size=chunk_size
        )
    from longarena.ops.linear_attn.triton_chunk import linear_attention_triton

    return linear_attention_triton(q, k, v, gamma=gamma, log_decay=log_decay, state=state, scale=scale)
