"""The diagonal linear recurrence as a log-depth associative scan (Hillis-Steele doubling).

The pairs ``(a_t, b_t)`` compose associatively, ``(a1, b1) then (a2, b2) = (a2 a1, a2 b1 + b2)``,
so after ``ceil(log2 T)`` rounds in which every position absorbs the running pair from
``2^k`` steps back, position t holds ``(a_t ... a_0, h_t from a zero start)``; the
carried-in state then enters as ``h_t += (a_t ... a_0) h0``. Every round is a few whole-
tensor ops: ``O(T log T)`` work, ``log T`` depth. This is the form S5 describes (its parallel
scan); on CPU the two-level chunked scan of :mod:`.chunked` does less work.
"""

from __future__ import annotations

import torch
from torch import Tensor

from longarena.ops.scan.reference import compute_dtype, result_dtype


def linear_scan_parallel(a: Tensor, b: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``h_t = a_t * h_{t-1} + b_t`` by doubling; same contract as the reference.

    a: broadcastable to b; b: (B, T, *S); h0: broadcastable to (B, *S) or None.
    Returns ``(h: (B, T, *S), h_last: (B, *S))``.
    """
    out_dtype = result_dtype(a.dtype, b.dtype)
    work = compute_dtype(a.dtype, b.dtype)
    a, b = torch.broadcast_tensors(a.to(work), b.to(work))
    state_shape = (b.shape[0], *b.shape[2:])
    t_len = b.shape[1]
    span = 1
    while span < t_len:
        # positions >= span absorb the pair accumulated up to ``span`` steps back
        b = torch.cat((b[:, :span], torch.addcmul(b[:, span:], a[:, span:], b[:, :-span])), dim=1)
        a = torch.cat((a[:, :span], a[:, span:] * a[:, :-span]), dim=1)
        span *= 2
    h = b if h0 is None else torch.addcmul(b, a, h0.to(work).expand(state_shape).unsqueeze(1))
    if t_len:
        h_last = h[:, -1]
    else:
        h_last = b.new_zeros(state_shape) if h0 is None else h0.to(work).expand(state_shape)
    return h.to(out_dtype), h_last.to(out_dtype)
