"""Mamba's selective scan as Triton kernels (GPU; also runs on CPU under ``TRITON_INTERPRET=1``).

Forward (:func:`_forward_kernel`): one program per (batch element, block of ``BLOCK_E``
channels) walks time sequentially with its ``(BLOCK_E, N)`` state in registers: per step it
reads ``u_t, dt_t`` (``BLOCK_E`` each) and ``B_t, C_t`` (``N`` each), updates
``h = exp(dt A) h + dt u B`` and writes ``y_t = C_t . h``. It also writes the state entering
every ``CHUNK``-th step (``(B, T / CHUNK, E, N)`` checkpoints, fp32) and the final state.

Backward (:func:`_backward_kernel`): the same programs walk the chunks from last to first.
For each chunk they recompute the states from its checkpoint, parking the state before
each step in a per-program scratch buffer (``(CHUNK, BLOCK_E, N)``, reused by every chunk),
then run the chunk in reverse time with the state gradient in registers::

    gh += dy_t C_t;   g_log = gh * exp(dt_t A) h_{t-1}   (gradient of dt_t A)
    dA += g_log dt_t;   ddt_t = sum_n g_log A + (sum_n gh B_t) u_t;   du_t = (sum_n gh B_t) dt_t
    dB_t = sum_e gh dt_t u_t;   dC_t = sum_e dy_t h_t;   gh *= exp(dt_t A)

``dB`` and ``dC`` sum over channels, which several programs own: each program writes its
partial sums (``(E / BLOCK_E, B, T, N)``) and torch adds them, so results are deterministic
(no atomics). ``dA`` is summed per batch element in registers and over the batch by torch.
What leaves the last step is the gradient of the initial state. ``D u`` is added by torch.

Inputs are read in their own dtype (bf16 or fp32) and every sum runs in fp32; ``y`` is
returned in ``u.dtype``, the final state in fp32, gradients in their inputs' dtypes.
Written against Triton 3.6 APIs.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

#: steps between the forward's state checkpoints: the backward recomputes at most this many
#: states per chunk and parks them in a (CHUNK, BLOCK_E, N) scratch buffer per program
CHUNK = 64
#: channels per program; small, so that (B * E / BLOCK_E) programs fill the GPU
BLOCK_E = 16


def interpreting() -> bool:
    """Whether ``TRITON_INTERPRET=1`` is set now (Triton reads it when a kernel is defined)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


#: whether this module's kernels were defined for Triton's CPU interpreter
INTERPRETED = interpreting()


@triton.jit
def _forward_kernel(
    u_ptr, dt_ptr, a_ptr, b_ptr, c_ptr, h0_ptr,  # inputs: (B,T,E) (B,T,E) (E,N) (B,T,N) (B,T,N) (B,E,N)
    y_ptr, h_last_ptr, ckpt_ptr,  # outputs: (B,T,E) fp32, (B,E,N) fp32, (B,n_ckpt,E,N) fp32
    T, E, N, n_ckpt,
    CHUNK: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    n = tl.arange(0, BLOCK_N)
    mask_e, mask_n = e < E, n < N
    mask = mask_e[:, None] & mask_n[None, :]
    en = e[:, None] * N + n[None, :]  # (BLOCK_E, BLOCK_N) offsets into an (E, N) matrix
    # exp(dt A) = exp2(dt A log2 e); padded lanes get A = 0, B = 0: their state stays 0
    a2 = tl.load(a_ptr + en, mask=mask, other=0.0).to(tl.float32) * 1.4426950408889634
    h = tl.load(h0_ptr + pid_b * E * N + en, mask=mask, other=0.0).to(tl.float32)
    for t in range(0, T):
        if t % CHUNK == 0:
            tl.store(ckpt_ptr + (pid_b * n_ckpt + t // CHUNK) * E * N + en, h, mask=mask)
        row = pid_b * T + t
        u = tl.load(u_ptr + row * E + e, mask=mask_e, other=0.0).to(tl.float32)
        dt = tl.load(dt_ptr + row * E + e, mask=mask_e, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + row * N + n, mask=mask_n, other=0.0).to(tl.float32)
        c = tl.load(c_ptr + row * N + n, mask=mask_n, other=0.0).to(tl.float32)
        h = tl.exp2(dt[:, None] * a2) * h + (dt * u)[:, None] * b[None, :]
        y = tl.sum(h * c[None, :], axis=1)
        tl.store(y_ptr + row * E + e, y, mask=mask_e)
    tl.store(h_last_ptr + pid_b * E * N + en, h, mask=mask)


@triton.jit
def _backward_kernel(
    u_ptr, dt_ptr, a_ptr, b_ptr, c_ptr, ckpt_ptr, gy_ptr, gh_ptr,  # gy (B,T,E), gh (B,E,N) fp32
    gu_ptr, gdt_ptr, ga_ptr, gb_ptr, gc_ptr, gh0_ptr, scratch_ptr,
    # gu, gdt: (B,T,E) fp32; ga: (B,E,N); gb, gc: (E/BLOCK_E, B, T, N); gh0: (B,E,N);
    # scratch: (B, E/BLOCK_E, CHUNK, BLOCK_E, BLOCK_N)
    B, T, E, N, n_ckpt,
    CHUNK: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_e = tl.program_id(1)
    e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    n = tl.arange(0, BLOCK_N)
    mask_e, mask_n = e < E, n < N
    mask = mask_e[:, None] & mask_n[None, :]
    en = e[:, None] * N + n[None, :]
    a = tl.load(a_ptr + en, mask=mask, other=0.0).to(tl.float32)
    a2 = a * 1.4426950408889634
    gh = tl.load(gh_ptr + pid_b * E * N + en, mask=mask, other=0.0).to(tl.float32)
    ga = tl.zeros((BLOCK_E, BLOCK_N), dtype=tl.float32)
    tile = tl.arange(0, BLOCK_E)[:, None] * BLOCK_N + n[None, :]  # offsets in one scratch slot
    scratch = scratch_ptr + (pid_b * tl.num_programs(1) + pid_e) * CHUNK * BLOCK_E * BLOCK_N
    partial = pid_e.to(tl.int64) * B + pid_b  # row of this program in the (E/BLOCK_E, B) partials
    for i in range(0, n_ckpt):
        k = n_ckpt - 1 - i
        t0 = k * CHUNK
        # steps past T (the last chunk's tail) read dt = 0, dy = 0: no-ops, nothing stored
        h = tl.load(ckpt_ptr + (pid_b * n_ckpt + k) * E * N + en, mask=mask, other=0.0)
        for j in range(0, CHUNK):
            t = t0 + j
            live_e, live_n = mask_e & (e * 0 + t < T), mask_n & (n * 0 + t < T)
            row = pid_b * T + t
            tl.store(scratch + j * BLOCK_E * BLOCK_N + tile, h)
            u = tl.load(u_ptr + row * E + e, mask=live_e, other=0.0).to(tl.float32)
            dt = tl.load(dt_ptr + row * E + e, mask=live_e, other=0.0).to(tl.float32)
            b = tl.load(b_ptr + row * N + n, mask=live_n, other=0.0).to(tl.float32)
            h = tl.exp2(dt[:, None] * a2) * h + (dt * u)[:, None] * b[None, :]
        tl.debug_barrier()
        for j in range(0, CHUNK):
            t = t0 + CHUNK - 1 - j
            live_e, live_n = mask_e & (e * 0 + t < T), mask_n & (n * 0 + t < T)
            row = pid_b * T + t
            h_prev = tl.load(scratch + (CHUNK - 1 - j) * BLOCK_E * BLOCK_N + tile)
            u = tl.load(u_ptr + row * E + e, mask=live_e, other=0.0).to(tl.float32)
            dt = tl.load(dt_ptr + row * E + e, mask=live_e, other=0.0).to(tl.float32)
            b = tl.load(b_ptr + row * N + n, mask=live_n, other=0.0).to(tl.float32)
            c = tl.load(c_ptr + row * N + n, mask=live_n, other=0.0).to(tl.float32)
            gy = tl.load(gy_ptr + row * E + e, mask=live_e, other=0.0).to(tl.float32)
            decay = tl.exp2(dt[:, None] * a2)
            dtu = dt * u
            carried = decay * h_prev  # Abar_t h_{t-1}
            h = carried + dtu[:, None] * b[None, :]
            gh += gy[:, None] * c[None, :]
            g_log = gh * carried
            ga += g_log * dt[:, None]
            g_dtu = tl.sum(gh * b[None, :], axis=1)
            tl.store(gdt_ptr + row * E + e, tl.sum(g_log * a, axis=1) + g_dtu * u, mask=live_e)
            tl.store(gu_ptr + row * E + e, g_dtu * dt, mask=live_e)
            tl.store(gb_ptr + (partial * T + t) * N + n, tl.sum(gh * dtu[:, None], axis=0), mask=live_n)
            tl.store(gc_ptr + (partial * T + t) * N + n, tl.sum(gy[:, None] * h, axis=0), mask=live_n)
            gh = gh * decay
        tl.debug_barrier()
    tl.store(gh0_ptr + pid_b * E * N + en, gh, mask=mask)
    tl.store(ga_ptr + pid_b * E * N + en, ga, mask=mask)


def _geometry(u: Tensor, a: Tensor, block_e: int) -> tuple[int, int, int, int, int, int]:
    bsz, t_len, e = u.shape
    n = a.shape[-1]
    return bsz, t_len, e, n, min(block_e, triton.next_power_of_2(e)), triton.next_power_of_2(n)


class _SelectiveScanTritonFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, a, b, c, h0, chunk, block_e):
        bsz, t_len, e, n, block_e, block_n = _geometry(u, a, block_e)
        n_ckpt = triton.cdiv(t_len, chunk)
        f32 = dict(dtype=torch.float32, device=u.device)
        y = torch.empty(bsz, t_len, e, **f32)
        h_last = torch.empty(bsz, e, n, **f32)
        ckpt = torch.empty(bsz, n_ckpt, e, n, **f32)
        grid = (bsz, triton.cdiv(e, block_e))
        _forward_kernel[grid](
            u, delta, a, b, c, h0, y, h_last, ckpt, t_len, e, n, n_ckpt,
            CHUNK=chunk, BLOCK_E=block_e, BLOCK_N=block_n,
        )
        ctx.save_for_backward(u, delta, a, b, c, ckpt)
        ctx.chunk, ctx.block_e = chunk, block_e
        return y.to(u.dtype), h_last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy, gh_last):
        u, delta, a, b, c, ckpt = ctx.saved_tensors
        chunk = ctx.chunk
        bsz, t_len, e, n, block_e, block_n = _geometry(u, a, ctx.block_e)
        n_ckpt = ckpt.shape[1]
        f32 = dict(dtype=torch.float32, device=u.device)
        gy = torch.zeros_like(u) if gy is None else gy.contiguous()
        gh_last = torch.zeros(bsz, e, n, **f32) if gh_last is None else gh_last.contiguous()
        e_blocks = triton.cdiv(e, block_e)
        gu, gdt = torch.empty(bsz, t_len, e, **f32), torch.empty(bsz, t_len, e, **f32)
        ga, gh0 = torch.empty(bsz, e, n, **f32), torch.empty(bsz, e, n, **f32)
        gb, gc = torch.zeros(e_blocks, bsz, t_len, n, **f32), torch.zeros(e_blocks, bsz, t_len, n, **f32)
        scratch = torch.empty(bsz, e_blocks, chunk, block_e, block_n, **f32)
        _backward_kernel[(bsz, e_blocks)](
            u, delta, a, b, c, ckpt, gy, gh_last,
            gu, gdt, ga, gb, gc, gh0, scratch,
            bsz, t_len, e, n, n_ckpt,
            CHUNK=chunk, BLOCK_E=block_e, BLOCK_N=block_n,
        )
        return (
            gu.to(u.dtype), gdt.to(delta.dtype), ga.sum(0), gb.sum(0).to(b.dtype), gc.sum(0).to(c.dtype),
            gh0, None, None,
        )


def selective_scan_triton(
    u: Tensor,
    delta: Tensor,
    a: Tensor,
    b: Tensor,
    c: Tensor,
    d: Tensor | None = None,
    h0: Tensor | None = None,
    *,
    chunk_size: int = CHUNK,
    block_e: int = BLOCK_E,
) -> tuple[Tensor, Tensor]:
    """Same contract as :func:`.selective.selective_scan_reference`, as Triton kernels.

    u, delta: (B, T, E); a: (E, N); b, c: (B, T, N); d: (E,) or None; h0: (B, E, N) or None.
    Returns ``(y: (B, T, E) in u.dtype, h_last: (B, E, N) fp32)``. Needs CUDA tensors, or
    ``TRITON_INTERPRET=1`` (set before this module is imported) for CPU tensors.
    ``chunk_size``: steps between the state checkpoints the backward restarts from;
    ``block_e``: channels per program (a power of two).
    """
    if not (isinstance(chunk_size, int) and chunk_size >= 1):
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if not (isinstance(block_e, int) and block_e >= 1 and block_e & (block_e - 1) == 0):
        raise ValueError(f"block_e must be a power of two, got {block_e!r}")
    if not u.is_cuda and not INTERPRETED:
        raise RuntimeError(
            f"the triton selective scan runs on CUDA tensors (got {u.device}); on CPU use backend "
            "'chunked', or set TRITON_INTERPRET=1 before this module is first imported (tests only: slow)"
        )
    if h0 is None:
        h0 = torch.zeros(u.shape[0], u.shape[2], a.shape[-1], dtype=torch.float32, device=u.device)
    if u.shape[1] == 0:
        return u.clone(), h0.float()
    h = h0
    u, delta, a, b, c, h = (t.contiguous() for t in (u, delta, a, b, c, h))
    y, h_last = _SelectiveScanTritonFn.apply(u, delta, a.float(), b, c, h.float(), chunk_size, block_e)
    if d is not None:
        y = (y.float() + d * u.float()).to(u.dtype)
    return y, h_last
