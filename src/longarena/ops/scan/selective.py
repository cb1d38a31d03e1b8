"""Mamba's selective scan: a diagonal SSM whose step, input and output maps depend on the input.

Per channel e of ``u: (B, T, E)`` and state index n (``N`` per channel)::

    Abar_t = exp(dt_t A)                        (B, T, E, N), A = -exp(A_log): (E, N)
    h_t = Abar_t * h_{t-1} + (dt_t u_t) B_t     h: (B, E, N), B_t: (B, T, N)
    y_t = sum_n C_t h_t + D u_t                 C_t: (B, T, N), D: (E,)

Two paths here: :func:`selective_scan_reference` (a plain loop over t, discretising at every
step: the specification) and :func:`selective_scan_chunked`, which cuts time into blocks of
``block`` steps (sized so that a block's workspaces, reused from block to block, stay in
cache) and runs each block
either in closed form inside short chunks (:mod:`.selective_logspace`: one ``exp2``, one
division, a cumulative sum; the fast case) or, where a chunk's decays span more than
``exp(-60)`` (huge steps), as the product-only two-level chunked scan of :mod:`.chunked`
(:func:`_product_block`, which never divides). Extra memory is ``O(B block E N)`` on top of
the ``O(B T E)`` inputs and outputs. Its backward is written by hand
(:class:`_SelectiveScanFn`) and recomputes the states block by block, so training keeps no
per-step states either. Both accumulate in at least fp32 and return ``y`` in ``u.dtype``
and the final state in the accumulation dtype. The GPU kernel is in
:mod:`.selective_triton`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from longarena.ops.scan.chunked import linear_scan_chunked
from longarena.ops.scan.selective_logspace import (
    LOG_LIMIT,
    Workspace,
    log_block_backward,
    log_block_forward,
    log_range,
)

#: elements of one (B, block, E, N) workspace tensor on CPU: 4 MiB of fp32, reused from block
#: to block (measured at T = 4096, 1 thread: 1 MiB blocks ran 1.2-1.7x slower from Python
#: overhead, 16 MiB blocks 1.3-2.5x slower from cache misses)
BLOCK_ELEMENTS = 2**20
#: on GPUs, where each op's launch, not the cache, is the cost
BLOCK_ELEMENTS_GPU = 2**25
#: fewest steps per block, so small states still take few Python steps
MIN_BLOCK = 64
#: chunk of the log-space form (a block of L steps takes about C + L / C Python steps)
LOG_CHUNK = 16
#: longest chunk of the product form (about 2 C + L / C Python steps)
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
    ``chunk_size`` to ``LOG_CHUNK`` for log-space blocks and ``min(CHUNK, ceil(sqrt(block
    length)))`` for product-form ones.
    """
    out_dtype = u.dtype
    u, delta, a, b, c, d, h = _prepare(u, delta, a, b, c, d, h0)
    if block is None:
        per_step = BLOCK_ELEMENTS_GPU if u.is_cuda else BLOCK_ELEMENTS
        block = max(MIN_BLOCK, per_step // max(1, h.numel()))
    plan = _plan(delta.detach(), a.detach(), block, chunk_size)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (u, delta, a, b, c, h)):
        y, h = _SelectiveScanFn.apply(u, delta, a, b, c, h, plan)
    else:
        y, h, _ = _scan_blocks(u, delta, a, b, c, h, plan)
    if d is not None:
        y = y + d * u
    return y.to(out_dtype), h


def _plan(delta: Tensor, a: Tensor, block: int, chunk_size: int | None) -> list[tuple[slice, int, bool]]:
    """``(time slice, chunk length, log space?)`` of every block: log space wherever no chunk
    of the block has ``|A sum dt| > LOG_LIMIT``."""
    out = []
    length = delta.shape[1]
    for s in range(0, length, block):
        n = min(block, length - s)
        log_chunk = min(chunk_size or LOG_CHUNK, n)
        if log_range(delta[:, s : s + n], a, log_chunk) <= LOG_LIMIT:
            out.append((slice(s, s + n), log_chunk, True))
        else:
            out.append((slice(s, s + n), chunk_size or min(CHUNK, math.ceil(math.sqrt(n))), False))
    return out


def _scan_blocks(u, delta, a, b, c, h, plan):
    """``(y (B, T, E), h_last, [the state entering each block])``, block after block."""
    ys, h_ins, ws = [], [], Workspace()
    for sl, chunk, log in plan:
        h_ins.append(h)
        if log:
            y_blk, h = log_block_forward(u[:, sl], delta[:, sl], a, b[:, sl], c[:, sl], h, chunk, ws)
        else:
            y_blk, h = _product_block(u[:, sl], delta[:, sl], a, b[:, sl], c[:, sl], h, chunk)
        ys.append(y_blk)
    y = torch.cat(ys, dim=1) if ys else u.clone()
    return y, h, h_ins


class _SelectiveScanFn(torch.autograd.Function):
    """The chunked selective scan with a hand-written backward that recomputes each block's
    states instead of storing them: saved per token are the inputs only (``O(B T (E + N))``)
    plus one ``(B, E, N)`` state per block, against ~4 ``(E, N)`` tensors per token under
    plain autograd. Blocks are differentiated last to first, each by the backward of the
    form that ran it (:func:`.selective_logspace.log_block_backward` or
    :func:`_product_block_backward`), the state gradient handed from block to block.
    """

    @staticmethod
    def forward(ctx, u, delta, a, b, c, h0, plan):
        y, h_last, h_ins = _scan_blocks(u, delta, a, b, c, h0, plan)
        ctx.save_for_backward(u, delta, a, b, c, *h_ins)
        ctx.plan = plan
        return y, h_last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy, gh_last):
        u, delta, a, b, c, *h_ins = ctx.saved_tensors
        bsz, _, e = u.shape
        # under autocast the incoming gradients may be bf16 while the scan ran in fp32
        gy = torch.zeros_like(u) if gy is None else gy.to(u.dtype)
        if gh_last is None:
            gh_last = torch.zeros(bsz, e, a.shape[-1], dtype=u.dtype, device=u.device)
        gh_last = gh_last.to(u.dtype)
        g_carry = gh_last
        gu, gdelta = torch.zeros_like(u), torch.zeros_like(delta)
        gb, gc, ga = torch.zeros_like(b), torch.zeros_like(c), torch.zeros_like(a)
        ws = Workspace()
        for (sl, chunk, log), h_in in reversed(list(zip(ctx.plan, h_ins))):
            args = (u[:, sl], delta[:, sl], a, b[:, sl], c[:, sl], h_in, gy[:, sl], g_carry, chunk)
            grads = log_block_backward(*args, ws) if log else _product_block_backward(*args)
            gu[:, sl], gdelta[:, sl], ga_blk, gb[:, sl], gc[:, sl], g_carry = grads
            ga += ga_blk
        return gu, gdelta, ga, gb, gc, g_carry, None


def _product_block_backward(u, dt, a, b, c, h_in, gy, g_carry, chunk):
    """Gradients of one product-form block (see :func:`_product_block`): with
    ``g_t = dy_t C_t`` (an outer product), the state gradient runs backwards in time,
    ``gh_t = g_t + Abar_{t+1} gh_{t+1}`` (the chunked scan on the reversed block, seeded by
    ``g_carry``, the gradient of the state leaving the block); then
    ``d(dt A)_t = gh_t h_{t-1} Abar_t``, ``d(dt u)_t = sum_n gh_t B_t``,
    ``dB_t = sum_e gh_t dt_t u_t``, ``dC_t = sum_e dy_t h_t`` and the gradient entering the
    block is ``Abar_0 gh_0``. Returns ``(gu, gdelta, ga, gb, gc, g_in)``."""
    decay = torch.exp(dt[..., None] * a)  # (B, L, E, N)
    dtu = dt * u  # (B, L, E)
    hs, _ = linear_scan_chunked(decay, dtu[..., None] * b[:, :, None, :], h_in, chunk_size=chunk)
    h_prev = torch.cat((h_in[:, None], hs[:, :-1]), dim=1)  # (B, L, E, N)
    # gh_t = g_t + Abar_{t+1} gh_{t+1}: a forward scan over the reversed block
    a_rev = torch.cat((decay[:, 1:], torch.ones_like(decay[:, :1])), dim=1).flip(1)
    g_out = (gy[..., None] * c[:, :, None, :]).flip(1)  # (B, L, E, N), reversed
    gh = linear_scan_chunked(a_rev, g_out, g_carry, chunk_size=chunk)[0].flip(1)
    g_log_decay = gh * h_prev * decay  # gradient of dt_t A, (B, L, E, N)
    ga = torch.einsum("blen,ble->en", g_log_decay, dt)
    g_dtu = torch.einsum("blen,bln->ble", gh, b)
    gdelta = torch.einsum("blen,en->ble", g_log_decay, a) + g_dtu * u
    gu = g_dtu * dt
    gb = torch.einsum("blen,ble->bln", gh, dtu)
    gc = torch.einsum("ble,blen->bln", gy, hs)
    return gu, gdelta, ga, gb, gc, decay[:, 0] * gh[:, 0]


def _product_block(u: Tensor, delta: Tensor, a: Tensor, b: Tensor, c: Tensor, h: Tensor, chunk: int):
    """One block of ``L`` steps in chunks of ``chunk``: the two-level scan of
    :mod:`.chunked`, with the chunk decays taken from ``exp(A sum dt)`` and ``C`` contracted
    as the last level runs, so the states of every step are never stored at once. Products
    of decays only, no division: safe for any step size."""
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
