"""Mamba's selective scan: a diagonal SSM whose step, input and output maps depend on the input.

Per channel e of ``u: (B, T, E)`` and state index n (``N`` per channel)::

    Abar_t = exp(dt_t A)                        (B, T, E, N), A = -exp(A_log): (E, N)
    h_t = Abar_t * h_{t-1} + (dt_t u_t) B_t     h: (B, E, N), B_t: (B, T, N)
    y_t = sum_n C_t h_t + D u_t                 C_t: (B, T, N), D: (E,)

Two paths: :func:`selective_scan_reference` (a plain loop over t, discretising at every step:
the specification) and :func:`selective_scan_chunked`, which cuts time into blocks of
``block`` steps (sized so that a block's workspace stays in cache), discretises a whole
block at once, runs the two-level chunked scan of :mod:`.chunked` over it from the state
the previous block left, and contracts with ``C`` as it goes, so extra memory is
``O(B block E N)`` on top of the ``O(B T E)`` inputs and outputs when no gradient is
recorded. Both accumulate in at least fp32 and return ``y`` in ``u.dtype`` and the final
state in the accumulation dtype.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


#: elements of one (B, block, E, N) workspace tensor of the chunked path: 2 MiB of fp32, so a
#: block's decays and inputs stay in cache (measured: 256 steps at B E N = 2048 ran ~1.4x
#: faster than 1024)
BLOCK_ELEMENTS = 2**19
#: fewest steps per block, so small states still take few Python steps
MIN_BLOCK = 64
#: longest chunk inside a block (a block of L steps takes about 2 C + L / C Python steps)
CHUNK = 32


def _prepare(u, delta, a, b, c, d, h0):
    f32 = torch.promote_types(u.dtype, torch.float32)  # at least fp32, float64 stays float64
    u, delta, b, c = u.to(f32), delta.to(f32), b.to(f32), c.to(f32)
    a = a.to(f32)
    h = u.new_zeros(u.shape[0], u.shape[2], a.shape[-1]) if h0 is None else h0.to(f32)
    d = None if d is None else d.to(f32)
    return u, delta, a, b, c, d, h


def selective_scan_reference(
    u: Tensor,
    delta: Tensor,
    a: Tensor,
    b: Tensor,
    c: Tensor,
    d: Tensor | None = None,
    h0: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The selective scan one step at a time.

    u, delta: (B, T, E); a: (E, N) (negative real); b, c: (B, T, N); d: (E,) or None;
    h0: (B, E, N) or None. Returns ``(y: (B, T, E), h_last: (B, E, N) fp32)``.
    """
    out_dtype = u.dtype
    u, delta, a, b, c, d, h = _prepare(u, delta, a, b, c, d, h0)
    ys = []
    for u_t, dt_t, b_t, c_t in zip(u.unbind(1), delta.unbind(1), b.unbind(1), c.unbind(1)):
        decay = torch.exp(dt_t[:, :, None] * a)  # (B, E, N)
        h = decay * h + (dt_t * u_t)[:, :, None] * b_t[:, None, :]
        ys.append(torch.einsum("ben,bn->be", h, c_t))
    y = torch.stack(ys, dim=1) if ys else u
    if d is not None:
        y = y + d * u
    return y.to(out_dtype), h


def selective_scan_chunked(
    u: Tensor,
    delta: Tensor,
    a: Tensor,
    b: Tensor,
    c: Tensor,
    d: Tensor | None = None,
    h0: Tensor | None = None,
    *,
    block: int | None = None,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Same contract as :func:`selective_scan_reference`, a block of time steps at a time.

    ``block`` defaults to ``BLOCK_ELEMENTS / (B E N)`` steps (at least ``MIN_BLOCK``);
    ``chunk_size`` to ``min(CHUNK, ceil(sqrt(block length)))``, which keeps the Python steps
    per block near their minimum.
    """
    out_dtype = u.dtype
    u, delta, a, b, c, d, h = _prepare(u, delta, a, b, c, d, h0)
    if block is None:
        block = max(MIN_BLOCK, BLOCK_ELEMENTS // max(1, h.numel()))
    ys = []
    for s in range(0, u.shape[1], block):
        sl = slice(s, s + block)
        length = u[:, sl].shape[1]
        chunk = chunk_size or min(CHUNK, math.ceil(math.sqrt(length)))
        y_blk, h = _block(u[:, sl], delta[:, sl], a, b[:, sl], c[:, sl], h, chunk)
        ys.append(y_blk)
    y = torch.cat(ys, dim=1) if ys else u
    if d is not None:
        y = y + d * u
    return y.to(out_dtype), h


def _block(u: Tensor, delta: Tensor, a: Tensor, b: Tensor, c: Tensor, h: Tensor, chunk: int):
    """One block of ``L`` steps in chunks of ``chunk``: the two-level scan of
    :mod:`.chunked`, with the chunk decays taken from ``exp(A sum dt)`` and ``C`` contracted
    as the last level runs, so the states of every step are never stored at once."""
    bsz, length, e = u.shape
    chunk = min(chunk, length)
    n = -(-length // chunk)
    pad = n * chunk - length
    if pad:
        # dt = 0 steps: decay 1, input 0, so the state passes through; outputs are cut off below
        zeros = lambda t: t.new_zeros(bsz, pad, t.shape[-1])  # noqa: E731
        u, delta, b, c = (torch.cat((t, zeros(t)), dim=1) for t in (u, delta, b, c))
    dt = delta.view(bsz, n, chunk, e)
    decay = torch.exp(dt[..., None] * a)  # (B, n, C, E, N)
    inp = (dt * u.view(bsz, n, chunk, e))[..., None] * b.view(bsz, n, chunk, 1, -1)  # (B, n, C, E, N)
    c = c.view(bsz, n, chunk, -1)  # (B, n, C, N)
    decay_steps, inp_steps = decay.unbind(2), inp.unbind(2)

    h_end = inp_steps[0]  # level one: each chunk's end from a zero start
    for a_i, b_i in zip(decay_steps[1:], inp_steps[1:]):
        h_end = torch.addcmul(b_i, a_i, h_end)
    decay_end = torch.exp(dt.sum(2)[..., None] * a)  # (B, n, E, N): the product of the chunk's decays

    carries = []  # level two: the state entering each chunk
    for p_end, h_e in zip(decay_end.unbind(1), h_end.unbind(1)):
        carries.append(h)
        h = torch.addcmul(h_e, p_end, h)

    h_i = torch.stack(carries, dim=1)  # (B, n, E, N); level three: rerun from there, reading out y
    ys = []
    for a_i, b_i, c_i in zip(decay_steps, inp_steps, c.unbind(2)):
        h_i = torch.addcmul(b_i, a_i, h_i)
        ys.append((h_i @ c_i[..., None])[..., 0])  # (B, n, E)
    y = torch.stack(ys, dim=2).reshape(bsz, n * chunk, e)[:, :length]
    return y, h
