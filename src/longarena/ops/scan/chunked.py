"""The diagonal linear recurrence in two levels of chunks: few Python steps, no division.

``T`` is cut into ``n = T / C`` chunks of length ``C``. Level one runs the recurrence from a
zero state inside *every chunk at once*: a loop over the ``C`` positions of a chunk whose
body works on all ``n`` chunks in parallel, keeping only where each chunk ends, and the
product of each chunk's decays. Level two carries the true state across chunks with a loop
over the ``n`` chunk ends. Level three runs every chunk again, in parallel, from its true
entering state, keeping every step.

That is ``2C + n`` Python steps (about ``3 sqrt(T)``) instead of ``T``, twice the multiplies
of the sequential loop, and every quantity is a product of decays, never a quotient, so
decays at or near zero (or negative, or complex) are as safe as in the loop.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from longarena.ops.scan.reference import compute_dtype, result_dtype


def default_chunk(length: int) -> int:
    """``C`` near ``sqrt(T)``, which balances the two loops."""
    return max(1, int(math.ceil(math.sqrt(max(length, 1)))))


def linear_scan_chunked(
    a: Tensor, b: Tensor, h0: Tensor | None = None, *, chunk_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """``h_t = a_t * h_{t-1} + b_t`` in two levels of chunks (see the module docstring).

    a: broadcastable to b; b: (B, T, *S); h0: broadcastable to (B, *S) or None.
    Returns ``(h: (B, T, *S), h_last: (B, *S))``.
    """
    out_dtype = result_dtype(a.dtype, b.dtype)
    work = compute_dtype(a.dtype, b.dtype)
    a, b = torch.broadcast_tensors(a.to(work), b.to(work))
    bsz, t_len, state_shape = b.shape[0], b.shape[1], b.shape[2:]
    if h0 is not None:
        h0 = h0.to(work).expand((bsz, *state_shape))
    if t_len == 0:
        h_last = torch.zeros((bsz, *state_shape), dtype=work, device=b.device) if h0 is None else h0
        return b.to(out_dtype), h_last.to(out_dtype)
    c = min(chunk_size or default_chunk(t_len), t_len)
    n = -(-t_len // c)
    pad = n * c - t_len
    if pad:
        # padded steps (a = 1, b = 0) leave the state unchanged and are cut off again below
        a = torch.cat((a, a.new_ones((bsz, pad, *state_shape))), dim=1)
        b = torch.cat((b, b.new_zeros((bsz, pad, *state_shape))), dim=1)
    a_c = a.reshape(bsz, n, c, *state_shape)  # (B, n, C, *S), a view: no copy
    b_c = b.reshape(bsz, n, c, *state_shape)
    a_steps, b_steps = a_c.unbind(2), b_c.unbind(2)  # C slabs of (B, n, *S)

    # level one: where each chunk would end from a zero start, and its total decay
    h_end = b_steps[0]
    for a_i, b_i in zip(a_steps[1:], b_steps[1:]):
        h_end = torch.addcmul(b_i, a_i, h_end)
    decay_end = torch.prod(a_c, dim=2)  # (B, n, *S)

    # level two: the true state entering each chunk, a loop over the n chunk ends
    carry = torch.zeros((bsz, *state_shape), dtype=work, device=b.device) if h0 is None else h0
    carries = []
    for p_end, h_e in zip(decay_end.unbind(1), h_end.unbind(1)):
        carries.append(carry)
        carry = torch.addcmul(h_e, p_end, carry)

    # level three: every chunk again, now from its true entering state
    h_i = torch.stack(carries, dim=1)  # (B, n, *S)
    hs = []
    for a_i, b_i in zip(a_steps, b_steps):
        h_i = torch.addcmul(b_i, a_i, h_i)
        hs.append(h_i)
    h = torch.stack(hs, dim=2).reshape(bsz, n * c, *state_shape)[:, :t_len]
    return h.to(out_dtype), carry.to(out_dtype)
