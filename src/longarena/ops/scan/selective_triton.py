"""Mamba's selective scan as Triton kernels (GPU; also runs on CPU under ``TRITON_INTERPRET=1``).

Forward (:func:`_forward_kernel`): one program per (batch element, block of ``BLOCK_E``
channels) walks time sequentially with its ``(BLOCK_E, N)`` state in registers: per step it
takes ``u_t, dt_t`` (``BLOCK_E`` each) and ``B_t, C_t`` (``N`` each), updates
``h = exp(dt A) h + dt u B`` and emits ``y_t = C_t . h``. Inputs are loaded ``TILE`` steps
at a time, the next tile in flight while the current one is walked (a step then waits on
arithmetic, not on a memory round trip), and ``y`` is stored a tile at a time. It also
writes the state entering every ``CHUNK``-th step (``(B, T / CHUNK, E, N)`` checkpoints,
fp32) and the final state.

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
Written against Triton 3.6 APIs; the tile sizes are :class:`Tiles`.
"""

from __future__ import annotations

import dataclasses
import os

import torch
import triton
import triton.language as tl
from torch import Tensor


def interpreting() -> bool:
    """Whether ``TRITON_INTERPRET=1`` is set now (Triton reads it when a kernel is defined)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


#: whether this module's kernels were defined for Triton's CPU interpreter
INTERPRETED = interpreting()


@triton.jit
def _load_tile(ptr, pid_b, t0, T, cols, mask_cols, width, TILE: tl.constexpr):
    """Rows ``t0 .. t0 + TILE - 1`` of batch element ``pid_b`` of a ``(B, T, width)`` tensor,
    columns ``cols``: a ``(TILE, len(cols))`` fp32 tile, zero past ``T``."""
    t = t0 + tl.arange(0, TILE)
    offsets = (pid_b * T + t)[:, None] * width + cols[None, :]
    return tl.load(ptr + offsets, mask=(t < T)[:, None] & mask_cols[None, :], other=0.0).to(tl.float32)


@triton.jit
def _store_tile(ptr, tile, pid_b, t0, T, cols, mask_cols, width, TILE: tl.constexpr):
    t = t0 + tl.arange(0, TILE)
    offsets = (pid_b * T + t)[:, None] * width + cols[None, :]
    tl.store(ptr + offsets, tile, mask=(t < T)[:, None] & mask_cols[None, :])


@triton.jit
def _forward_kernel(
    u_ptr, dt_ptr, a_ptr, b_ptr, c_ptr, h0_ptr,  # inputs: (B,T,E) (B,T,E) (E,N) (B,T,N) (B,T,N) (B,E,N)
    y_ptr, h_last_ptr, ckpt_ptr,  # outputs: (B,T,E) fp32, (B,E,N) fp32, (B,n_ckpt,E,N) fp32
    T, E, N, n_ckpt,
    CHUNK: tl.constexpr, TILE: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    n = tl.arange(0, BLOCK_N)
    mask_e, mask_n = e < E, n < N
    mask = mask_e[:, None] & mask_n[None, :]
    en = e[:, None] * N + n[None, :]  # (BLOCK_E, BLOCK_N) offsets into an (E, N) matrix
    # exp(dt A) = exp2(dt A log2 e); padded lanes get A = 0, B = 0: their state stays 0, and
    # steps past T read dt = 0: they keep the state
    a2 = tl.load(a_ptr + en, mask=mask, other=0.0).to(tl.float32) * 1.4426950408889634
    h = tl.load(h0_ptr + pid_b * E * N + en, mask=mask, other=0.0).to(tl.float32)
    # inputs arrive a tile of TILE steps at a time, the next tile loading while this one runs,
    # so the walk over time waits on arithmetic, not on memory
    u_next = _load_tile(u_ptr, pid_b, 0, T, e, mask_e, E, TILE)
    dt_next = _load_tile(dt_ptr, pid_b, 0, T, e, mask_e, E, TILE)
    b_next = _load_tile(b_ptr, pid_b, 0, T, n, mask_n, N, TILE)
    c_next = _load_tile(c_ptr, pid_b, 0, T, n, mask_n, N, TILE)
    for t0 in range(0, T, TILE):
        u_tile, dt_tile, b_tile, c_tile = u_next, dt_next, b_next, c_next
        u_next = _load_tile(u_ptr, pid_b, t0 + TILE, T, e, mask_e, E, TILE)
        dt_next = _load_tile(dt_ptr, pid_b, t0 + TILE, T, e, mask_e, E, TILE)
        b_next = _load_tile(b_ptr, pid_b, t0 + TILE, T, n, mask_n, N, TILE)
        c_next = _load_tile(c_ptr, pid_b, t0 + TILE, T, n, mask_n, N, TILE)
        if t0 % CHUNK == 0:
            tl.store(ckpt_ptr + (pid_b * n_ckpt + t0 // CHUNK) * E * N + en, h, mask=mask)
        y_tile = tl.zeros((TILE, BLOCK_E), dtype=tl.float32)
        for i in tl.static_range(TILE):
            # registers cannot be indexed: row i of a tile is selected and summed out
            pick = tl.arange(0, TILE)[:, None] == i
            u, dt = tl.sum(tl.where(pick, u_tile, 0.0), 0), tl.sum(tl.where(pick, dt_tile, 0.0), 0)
            b, c = tl.sum(tl.where(pick, b_tile, 0.0), 0), tl.sum(tl.where(pick, c_tile, 0.0), 0)
            h = tl.exp2(dt[:, None] * a2) * h + (dt * u)[:, None] * b[None, :]
            y_tile = tl.where(pick, tl.sum(h * c[None, :], axis=1)[None, :], y_tile)
        _store_tile(y_ptr, y_tile, pid_b, t0, T, e, mask_e, E, TILE)
    tl.store(h_last_ptr + pid_b * E * N + en, h, mask=mask)


@triton.jit
def _backward_kernel(
    u_ptr, dt_ptr, a_ptr, b_ptr, c_ptr, ckpt_ptr, gy_ptr, gh_ptr,  # gy (B,T,E), gh (B,E,N) fp32
    gu_ptr, gdt_ptr, ga_ptr, gb_ptr, gc_ptr, gh0_ptr, scratch_ptr,
    # gu, gdt: (B,T,E) fp32; ga: (B,E,N); gb, gc: (E/BLOCK_E, B, T, N); gh0: (B,E,N);
    # scratch: (B, E/BLOCK_E, CHUNK, BLOCK_E, BLOCK_N)
    B, T, E, N, n_ckpt,
    CHUNK: tl.constexpr, TILE: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr,
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
    slot = tl.arange(0, BLOCK_E)[:, None] * BLOCK_N + n[None, :]  # offsets in one scratch slot
    scratch = scratch_ptr + (pid_b * tl.num_programs(1) + pid_e) * CHUNK * BLOCK_E * BLOCK_N
    partial = pid_e.to(tl.int64) * B + pid_b  # this program's batch row of the (E/BLOCK_E, B) partials
    for i in range(0, n_ckpt):
        t0 = (n_ckpt - 1 - i) * CHUNK
        # steps past T (the last chunk's tail) read dt = 0, dy = 0: no-ops, nothing stored
        h = tl.load(ckpt_ptr + (pid_b * n_ckpt + t0 // CHUNK) * E * N + en, mask=mask, other=0.0)
        for s in range(0, CHUNK, TILE):
            u_tile = _load_tile(u_ptr, pid_b, t0 + s, T, e, mask_e, E, TILE)
            dt_tile = _load_tile(dt_ptr, pid_b, t0 + s, T, e, mask_e, E, TILE)
            b_tile = _load_tile(b_ptr, pid_b, t0 + s, T, n, mask_n, N, TILE)
            for j in tl.static_range(TILE):
                tl.store(scratch + (s + j) * BLOCK_E * BLOCK_N + slot, h)
                pick = tl.arange(0, TILE)[:, None] == j
                u, dt = tl.sum(tl.where(pick, u_tile, 0.0), 0), tl.sum(tl.where(pick, dt_tile, 0.0), 0)
                b = tl.sum(tl.where(pick, b_tile, 0.0), 0)
                h = tl.exp2(dt[:, None] * a2) * h + (dt * u)[:, None] * b[None, :]
        tl.debug_barrier()
        for s in range(0, CHUNK, TILE):
            ts = t0 + CHUNK - TILE - s  # tiles from the chunk's end
            u_tile = _load_tile(u_ptr, pid_b, ts, T, e, mask_e, E, TILE)
            dt_tile = _load_tile(dt_ptr, pid_b, ts, T, e, mask_e, E, TILE)
            b_tile = _load_tile(b_ptr, pid_b, ts, T, n, mask_n, N, TILE)
            c_tile = _load_tile(c_ptr, pid_b, ts, T, n, mask_n, N, TILE)
            gy_tile = _load_tile(gy_ptr, pid_b, ts, T, e, mask_e, E, TILE)
            gu_tile = tl.zeros((TILE, BLOCK_E), dtype=tl.float32)
            gdt_tile = tl.zeros((TILE, BLOCK_E), dtype=tl.float32)
            gb_tile = tl.zeros((TILE, BLOCK_N), dtype=tl.float32)
            gc_tile = tl.zeros((TILE, BLOCK_N), dtype=tl.float32)
            for jj in tl.static_range(TILE):
                j = TILE - 1 - jj
                h_prev = tl.load(scratch + (ts - t0 + j) * BLOCK_E * BLOCK_N + slot)
                pick = tl.arange(0, TILE)[:, None] == j
                u, dt = tl.sum(tl.where(pick, u_tile, 0.0), 0), tl.sum(tl.where(pick, dt_tile, 0.0), 0)
                b, c = tl.sum(tl.where(pick, b_tile, 0.0), 0), tl.sum(tl.where(pick, c_tile, 0.0), 0)
                gy = tl.sum(tl.where(pick, gy_tile, 0.0), 0)
                decay = tl.exp2(dt[:, None] * a2)
                dtu = dt * u
                carried = decay * h_prev  # Abar_t h_{t-1}
                gh += gy[:, None] * c[None, :]
                g_log = gh * carried  # gradient of dt_t A
                ga += g_log * dt[:, None]
                g_dtu = tl.sum(gh * b[None, :], axis=1)
                gdt_tile = tl.where(pick, (tl.sum(g_log * a, axis=1) + g_dtu * u)[None, :], gdt_tile)
                gu_tile = tl.where(pick, (g_dtu * dt)[None, :], gu_tile)
                gb_tile = tl.where(pick, tl.sum(gh * dtu[:, None], axis=0)[None, :], gb_tile)
                h = carried + dtu[:, None] * b[None, :]
                gc_tile = tl.where(pick, tl.sum(gy[:, None] * h, axis=0)[None, :], gc_tile)
                gh = gh * decay
            _store_tile(gu_ptr, gu_tile, pid_b, ts, T, e, mask_e, E, TILE)
            _store_tile(gdt_ptr, gdt_tile, pid_b, ts, T, e, mask_e, E, TILE)
            _store_tile(gb_ptr, gb_tile, partial, ts, T, n, mask_n, N, TILE)
            _store_tile(gc_ptr, gc_tile, partial, ts, T, n, mask_n, N, TILE)
        tl.debug_barrier()
    tl.store(gh0_ptr + pid_b * E * N + en, gh, mask=mask)
    tl.store(ga_ptr + pid_b * E * N + en, ga, mask=mask)


@dataclasses.dataclass(frozen=True)
class Tiles:
    """How the kernels cut the work; every field changes speed only, never results.

    ``block_e``: channels per program (a power of two; fewer channels, more programs);
    ``tile``: time steps whose inputs are loaded at once (a power of two); ``chunk``: steps
    between the forward's state checkpoints, at most ``T``, rounded up to a multiple of
    ``tile`` (the backward parks this many states per program); ``num_warps``: warps per
    program.
    """

    block_e: int = 8
    #: 8 measured fastest on an H200 (batch 4, E 512, N 16, T 4096, bf16; runs/dev/gpu_scan.py):
    #: fwd 0.90 ms and fwd+bwd 4.40 ms against 1.94 and 10.89 with 16-step tiles
    tile: int = 8
    chunk: int = 64
    #: one warp: a program's (BLOCK_E, N) state and its reductions over N stay inside the
    #: warp (shuffles), where more warps put barriers on every step (PTX for sm_90, 16 steps:
    #: 48 bar.sync with 1 warp, 288 with 4)
    num_warps: int = 1

    def validate(self) -> None:
        for name in ("block_e", "tile", "num_warps"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1 and value & (value - 1) == 0):
                raise ValueError(f"{name} must be a power of two, got {value!r}")
        if not (isinstance(self.chunk, int) and self.chunk >= 1):
            raise ValueError(f"chunk must be a positive int, got {self.chunk!r}")


def _geometry(u: Tensor, a: Tensor, tiles: Tiles) -> tuple[int, int, int, int, int, int, int]:
    """``(B, T, E, N, BLOCK_E, BLOCK_N, CHUNK)`` of a launch."""
    bsz, t_len, e = u.shape
    n = a.shape[-1]
    block_e = min(tiles.block_e, triton.next_power_of_2(e))
    # whole tiles, and no longer than the sequence needs (the backward walks every chunk in full)
    chunk = triton.cdiv(min(tiles.chunk, max(t_len, 1)), tiles.tile) * tiles.tile
    return bsz, t_len, e, n, block_e, triton.next_power_of_2(n), chunk


class _SelectiveScanTritonFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, a, b, c, h0, tiles):
        bsz, t_len, e, n, block_e, block_n, chunk = _geometry(u, a, tiles)
        n_ckpt = triton.cdiv(t_len, chunk)
        f32 = dict(dtype=torch.float32, device=u.device)
        y = torch.empty(bsz, t_len, e, **f32)
        h_last = torch.empty(bsz, e, n, **f32)
        ckpt = torch.empty(bsz, n_ckpt, e, n, **f32)
        _forward_kernel[(bsz, triton.cdiv(e, block_e))](
            u, delta, a, b, c, h0, y, h_last, ckpt, t_len, e, n, n_ckpt,
            CHUNK=chunk, TILE=tiles.tile, BLOCK_E=block_e, BLOCK_N=block_n, num_warps=tiles.num_warps,
        )
        ctx.save_for_backward(u, delta, a, b, c, ckpt)
        ctx.tiles = tiles
        return y, h_last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy, gh_last):
        u, delta, a, b, c, ckpt = ctx.saved_tensors
        tiles = ctx.tiles
        bsz, t_len, e, n, block_e, block_n, chunk = _geometry(u, a, tiles)
        n_ckpt = ckpt.shape[1]
        f32 = dict(dtype=torch.float32, device=u.device)
        gy = torch.zeros_like(u) if gy is None else gy.contiguous()
        gh_last = torch.zeros(bsz, e, n, **f32) if gh_last is None else gh_last.contiguous()
        e_blocks = triton.cdiv(e, block_e)
        gu, gdt = torch.empty(bsz, t_len, e, **f32), torch.empty(bsz, t_len, e, **f32)
        ga, gh0 = torch.empty(bsz, e, n, **f32), torch.empty(bsz, e, n, **f32)
        gb, gc = torch.empty(e_blocks, bsz, t_len, n, **f32), torch.empty(e_blocks, bsz, t_len, n, **f32)
        scratch = torch.empty(bsz, e_blocks, chunk, block_e, block_n, **f32)
        _backward_kernel[(bsz, e_blocks)](
            u, delta, a, b, c, ckpt, gy, gh_last,
            gu, gdt, ga, gb, gc, gh0, scratch,
            bsz, t_len, e, n, n_ckpt,
            CHUNK=chunk, TILE=tiles.tile, BLOCK_E=block_e, BLOCK_N=block_n, num_warps=tiles.num_warps,
        )
        return (
            gu.to(u.dtype), gdt.to(delta.dtype), ga.sum(0), gb.sum(0).to(b.dtype), gc.sum(0).to(c.dtype),
            gh0, None,
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
    tiles: Tiles | None = None,
) -> tuple[Tensor, Tensor]:
    """Same contract as :func:`.selective.selective_scan_reference`, as Triton kernels.

    u, delta: (B, T, E); a: (E, N); b, c: (B, T, N); d: (E,) or None; h0: (B, E, N) or None.
    Returns ``(y: (B, T, E) in u.dtype, h_last: (B, E, N) fp32)``. Needs CUDA tensors, or
    ``TRITON_INTERPRET=1`` (set before triton is imported) for CPU tensors. ``tiles``: how
    the kernels cut the work (:class:`Tiles`, default ``Tiles()``).
    """
    tiles = tiles or Tiles()
    tiles.validate()
    if not u.is_cuda and not INTERPRETED:
        raise RuntimeError(
            f"the triton selective scan runs on CUDA tensors (got {u.device}); on CPU use backend "
            "'chunked', or set TRITON_INTERPRET=1 before triton is first imported (tests only: slow)"
        )
    if h0 is None:
        h0 = torch.zeros(u.shape[0], u.shape[2], a.shape[-1], dtype=torch.float32, device=u.device)
    if u.shape[1] == 0:
        return u.clone(), h0.float()
    u, delta, a, b, c, h0 = (t.contiguous() for t in (u, delta, a, b, c, h0))
    y, h_last = _SelectiveScanTritonFn.apply(u, delta, a.float(), b, c, h0.float(), tiles)  # y: fp32
    if d is not None:
        y = y + d * u.float()
    return y.to(u.dtype), h_last
