"""Decayed linear attention as chunked Triton kernels (GPU; CPU under ``TRITON_INTERPRET=1``).

The maths is :mod:`.chunked`'s: with ``c_i`` the log decay summed inside a chunk of ``C``
tokens (inclusive) and ``G`` its total,
``o_i = exp(c_i) q_i S_in + sum_{j<=i} exp(c_i - c_j)(q_i . k_j) v_j`` and
``S_out = exp(G) S_in + sum_j exp(G - c_j) k_j^T v_j`` (``q`` carries ``scale``). Four kernels:

- :func:`_state_fwd` walks the chunks in order, one program per (K block, V block, b, h), and
  writes the state entering every chunk (``(B*H, N, K, V)``, in the input dtype) and the
  final state (fp32). The walk is the only sequential part.
- :func:`_output_fwd`, one program per (V block, chunk, b, h): the intra-chunk ``C x C``
  product and the inter-chunk ``q S_in``.
- :func:`_state_bwd` walks the chunks backwards: ``dS_in = exp(G) dS_out + (exp(c) q)^T do``,
  writing the gradient leaving every chunk, and the carry-in state's gradient.
- :func:`_grads`, one program per (chunk, b, h), all of K in registers, V in blocks:
  ``dq``, ``dk``, ``dv`` and the gradient of every ``c_i``
  (``q_i . dq_i - k_i . dk_i``, plus ``<dS_out, S_out>`` at the chunk's last step).

Nothing per token is kept for the backward beyond the inputs: the chunk states are
recomputed (a second :func:`_state_fwd`) rather than stored, so memory is linear in T with a
small constant. The decay enters as a constexpr ``DECAY``: 0 none, 1 a fixed ``log gamma``
per head (no decay tensor is read), 2 per-step chunk-cumulated log decays ``(B*H, N*C)``
computed by torch (their gradient is un-cumulated by torch too). Every exponent is <= 0.

Tensors are addressed through their (batch, head, time) strides with the last dimension
contiguous, so ``(B, T, H, K)`` projections transposed to ``(B, H, T, K)`` are read in place.
Tile sizes are fixed per (K, V) (no autotuning): a new shape compiles in seconds.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from longarena.ops.linear_attn.reference import MAX_HEAD_DIM

__all__ = ["CHUNK", "MAX_HEAD_DIM", "linear_attention_triton"]

#: tokens per chunk: the C x C intra-chunk products fill a tensor-core tile
CHUNK = 64


#: Triton's CPU interpreter multiplies bf16 operands wrongly (seen with Triton 3.9): under it
#: the products take fp32 copies of their (already rounded) operands
_UPCAST = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")


@triton.jit
def _dot(a, b, precision: tl.constexpr):
    if _UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=precision)


@triton.jit
def _decays(gc_ptr, lg, bh, n, T, Tp, offs_c, DECAY: tl.constexpr, C: tl.constexpr):
    """(c: (C,), G: scalar) of chunk ``n``: the cumulated log decay and the chunk's total."""
    if DECAY == 2:
        c = tl.load(gc_ptr + bh * Tp + n * C + offs_c)
        g_total = tl.load(gc_ptr + bh * Tp + n * C + C - 1)
    else:
        # a fixed log gamma per head; steps past T do not decay (they are padding)
        steps = tl.minimum(offs_c + 1, T - n * C).to(tl.float32)
        c = steps * lg
        g_total = tl.minimum(C, T - n * C).to(tl.float32) * lg
    return c, g_total


@triton.jit
def _state_tile(pid_k, pid_v, K, V, BK: tl.constexpr, BV: tl.constexpr):
    """This program's (K block, V block) of a (K, V) state: row and column offsets, their
    masks, and the block's offsets and mask inside one (K, V) matrix."""
    offs_k = pid_k * BK + tl.arange(0, BK)
    offs_v = pid_v * BV + tl.arange(0, BV)
    mask_k, mask_v = offs_k < K, offs_v < V
    kv = offs_k[:, None] * V + offs_v[None, :]  # (BK, BV)
    return offs_k, offs_v, mask_k, mask_v, kv, mask_k[:, None] & mask_v[None, :]


@triton.jit
def _head_log_gamma(lg_ptr, h, DECAY: tl.constexpr):
    """The head's fixed log decay (DECAY 1); unused otherwise."""
    lg = 0.0
    if DECAY == 1:
        lg = tl.load(lg_ptr + h)
    return lg


@triton.jit
def _load_state(ptr, bh, K, V, kv, mask_kv, PRESENT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """A (BK, BV) fp32 block of state ``bh`` of a (B*H, K, V) tensor, or zeros when absent."""
    if PRESENT:
        return tl.load(ptr + bh * K * V + kv, mask=mask_kv, other=0.0).to(tl.float32)
    return tl.zeros((BK, BV), dtype=tl.float32)


@triton.jit
def _state_fwd(
    k_ptr, v_ptr, gc_ptr, lg_ptr, h0_ptr, hs_ptr, hT_ptr,
    skb, skh, skt, svb, svh, svt,
    T, Tp, H, K, V, N,
    DECAY: tl.constexpr, HAS_H0: tl.constexpr, STORE_HS: tl.constexpr, STORE_HT: tl.constexpr,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_v, pid_k, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    b, h = bh // H, bh % H
    offs_c = tl.arange(0, C)
    offs_k, offs_v, mask_k, mask_v, kv, mask_kv = _state_tile(pid_k, pid_v, K, V, BK, BV)
    lg = _head_log_gamma(lg_ptr, h, DECAY)
    state = _load_state(h0_ptr, bh, K, V, kv, mask_kv, HAS_H0, BK, BV)
    k_base = k_ptr + b * skb + h * skh
    v_base = v_ptr + b * svb + h * svh
    for n in range(0, N):
        if STORE_HS:
            tl.store(hs_ptr + (bh * N + n) * K * V + kv, state.to(hs_ptr.dtype.element_ty), mask=mask_kv)
        t = n * C + offs_c
        mask_t = t < T
        k = tl.load(k_base + t[:, None] * skt + offs_k[None, :], mask=mask_t[:, None] & mask_k[None, :], other=0.0)
        v = tl.load(v_base + t[:, None] * svt + offs_v[None, :], mask=mask_t[:, None] & mask_v[None, :], other=0.0)
        if DECAY == 0:
            state += _dot(tl.trans(k), v, PRECISION)
        else:
            c, g_total = _decays(gc_ptr, lg, bh, n, T, Tp, offs_c, DECAY, C)
            to_end = tl.where(mask_t, tl.exp(g_total - c), 0.0)
            k_dec = (k.to(tl.float32) * to_end[:, None]).to(k.dtype)
            state = state * tl.exp(g_total) + _dot(tl.trans(k_dec), v, PRECISION)
    if STORE_HT:
        tl.store(hT_ptr + bh * K * V + kv, state, mask=mask_kv)


@triton.jit
def _output_fwd(
    q_ptr, k_ptr, v_ptr, gc_ptr, lg_ptr, hs_ptr, o_ptr,
    sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sob, soh, sot,
    scale, T, Tp, H, K, V, N,
    DECAY: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_v, n, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    b, h = bh // H, bh % H
    offs_c = tl.arange(0, C)
    offs_k = tl.arange(0, BK)
    offs_v = pid_v * BV + tl.arange(0, BV)
    mask_k, mask_v = offs_k < K, offs_v < V
    t = n * C + offs_c
    mask_t = t < T
    mask_tk = mask_t[:, None] & mask_k[None, :]
    q = tl.load(q_ptr + b * sqb + h * sqh + t[:, None] * sqt + offs_k[None, :], mask=mask_tk, other=0.0)
    k = tl.load(k_ptr + b * skb + h * skh + t[:, None] * skt + offs_k[None, :], mask=mask_tk, other=0.0)
    v = tl.load(v_ptr + b * svb + h * svh + t[:, None] * svt + offs_v[None, :], mask=mask_t[:, None] & mask_v[None, :], other=0.0)
    s_in = tl.load(hs_ptr + (bh * N + n) * K * V + offs_k[:, None] * V + offs_v[None, :], mask=mask_k[:, None] & mask_v[None, :], other=0.0)
    scores = _dot(q, tl.trans(k), PRECISION)  # (C, C)
    causal = offs_c[:, None] >= offs_c[None, :]
    if DECAY == 0:
        scores = tl.where(causal, scores, 0.0)
        q_in = q
    else:
        lg = _head_log_gamma(lg_ptr, h, DECAY)
        c, g_total = _decays(gc_ptr, lg, bh, n, T, Tp, offs_c, DECAY, C)
        scores = scores * tl.exp(tl.where(causal, c[:, None] - c[None, :], float("-inf")))
        q_in = (q.to(tl.float32) * tl.exp(c)[:, None]).to(q.dtype)
    o = _dot(q_in, s_in.to(q.dtype), PRECISION)
    o += _dot(scores.to(v.dtype), v, PRECISION)
    o = o * scale
    tl.store(o_ptr + b * sob + h * soh + t[:, None] * sot + offs_v[None, :], o.to(o_ptr.dtype.element_ty), mask=mask_t[:, None] & mask_v[None, :])


@triton.jit
def _state_bwd(
    q_ptr, do_ptr, gc_ptr, lg_ptr, dhT_ptr, dhs_ptr, dh0_ptr,
    sqb, sqh, sqt, sdb, sdh, sdt,
    scale, T, Tp, H, K, V, N,
    DECAY: tl.constexpr, HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_v, pid_k, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    b, h = bh // H, bh % H
    offs_c = tl.arange(0, C)
    offs_k, offs_v, mask_k, mask_v, kv, mask_kv = _state_tile(pid_k, pid_v, K, V, BK, BV)
    lg = _head_log_gamma(lg_ptr, h, DECAY)
    dstate = _load_state(dhT_ptr, bh, K, V, kv, mask_kv, HAS_DHT, BK, BV)
    q_base = q_ptr + b * sqb + h * sqh
    do_base = do_ptr + b * sdb + h * sdh
    for i in range(0, N):
        n = N - 1 - i
        # the gradient reaching the state that leaves chunk n
        tl.store(dhs_ptr + (bh * N + n) * K * V + kv, dstate.to(dhs_ptr.dtype.element_ty), mask=mask_kv)
        t = n * C + offs_c
        mask_t = t < T
        q = tl.load(q_base + t[:, None] * sqt + offs_k[None, :], mask=mask_t[:, None] & mask_k[None, :], other=0.0)
        do = tl.load(do_base + t[:, None] * sdt + offs_v[None, :], mask=mask_t[:, None] & mask_v[None, :], other=0.0)
        if DECAY == 0:
            q_in = (q.to(tl.float32) * scale).to(q.dtype)
            dstate += _dot(tl.trans(q_in), do, PRECISION)
        else:
            c, g_total = _decays(gc_ptr, lg, bh, n, T, Tp, offs_c, DECAY, C)
            q_in = (q.to(tl.float32) * (tl.exp(c) * scale)[:, None]).to(q.dtype)
            dstate = dstate * tl.exp(g_total) + _dot(tl.trans(q_in), do, PRECISION)
    if STORE_DH0:
        tl.store(dh0_ptr + bh * K * V + kv, dstate, mask=mask_kv)


@triton.jit
def _grads(
    q_ptr, k_ptr, v_ptr, do_ptr, gc_ptr, lg_ptr, hs_ptr, dhs_ptr,
    dq_ptr, dk_ptr, dv_ptr, dgc_ptr,
    sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sdb, sdh, sdt,
    sdqb, sdqh, sdqt, sdkb, sdkh, sdkt, sdvb, sdvh, sdvt,
    scale, T, Tp, H, K, V, N,
    DECAY: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PRECISION: tl.constexpr,
):
    n, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    b, h = bh // H, bh % H
    offs_c = tl.arange(0, C)
    offs_k = tl.arange(0, BK)
    mask_k = offs_k < K
    t = n * C + offs_c
    mask_t = t < T
    mask_tk = mask_t[:, None] & mask_k[None, :]
    q = tl.load(q_ptr + b * sqb + h * sqh + t[:, None] * sqt + offs_k[None, :], mask=mask_tk, other=0.0)
    k = tl.load(k_ptr + b * skb + h * skh + t[:, None] * skt + offs_k[None, :], mask=mask_tk, other=0.0)
    causal = offs_c[:, None] >= offs_c[None, :]
    if DECAY == 0:
        pair = tl.where(causal, 1.0, 0.0)  # (C, C)
        from_start = tl.full((C,), 1.0, tl.float32)
        to_end = tl.where(mask_t, 1.0, 0.0)
        g_total = 0.0
    else:
        lg = _head_log_gamma(lg_ptr, h, DECAY)
        c, g_total = _decays(gc_ptr, lg, bh, n, T, Tp, offs_c, DECAY, C)
        pair = tl.exp(tl.where(causal, c[:, None] - c[None, :], float("-inf")))
        from_start = tl.exp(c)
        to_end = tl.where(mask_t, tl.exp(g_total - c), 0.0)
    # scores^T for dv: (j, i) = scale * exp(c_i - c_j) (q_i . k_j), i >= j
    scores_t = _dot(k, tl.trans(q), PRECISION) * tl.trans(pair) * scale
    scores_t = scores_t.to(q.dtype)
    k_dec = (k.to(tl.float32) * to_end[:, None]).to(k.dtype)
    d_scores = tl.zeros((C, C), dtype=tl.float32)
    dq_inter = tl.zeros((C, BK), dtype=tl.float32)
    dk_inter = tl.zeros((C, BK), dtype=tl.float32)
    d_total = 0.0  # <dS_out, S_in>, summed over V blocks
    for v0 in range(0, V, BV):
        offs_v = v0 + tl.arange(0, BV)
        mask_v = offs_v < V
        mask_tv = mask_t[:, None] & mask_v[None, :]
        mask_kv = mask_k[:, None] & mask_v[None, :]
        v = tl.load(v_ptr + b * svb + h * svh + t[:, None] * svt + offs_v[None, :], mask=mask_tv, other=0.0)
        do = tl.load(do_ptr + b * sdb + h * sdh + t[:, None] * sdt + offs_v[None, :], mask=mask_tv, other=0.0)
        kv = (bh * N + n) * K * V + offs_k[:, None] * V + offs_v[None, :]
        s_in = tl.load(hs_ptr + kv, mask=mask_kv, other=0.0)  # (BK, BV)
        ds_out = tl.load(dhs_ptr + kv, mask=mask_kv, other=0.0)
        d_scores += _dot(do, tl.trans(v), PRECISION)
        dq_inter += _dot(do, tl.trans(s_in.to(do.dtype)), PRECISION)
        dk_inter += _dot(v, tl.trans(ds_out.to(v.dtype)), PRECISION)
        if DECAY == 2:
            d_total += tl.sum(s_in.to(tl.float32) * ds_out.to(tl.float32))
        dv = _dot(scores_t, do, PRECISION)
        dv += _dot(k_dec, ds_out.to(k.dtype), PRECISION)
        tl.store(dv_ptr + b * sdvb + h * sdvh + t[:, None] * sdvt + offs_v[None, :], dv.to(dv_ptr.dtype.element_ty), mask=mask_tv)
    d_scores = (d_scores * pair * scale).to(q.dtype)
    dq = dq_inter * (from_start * scale)[:, None] + _dot(d_scores, k, PRECISION)
    dk_state = dk_inter * to_end[:, None]
    dk = dk_state + _dot(tl.trans(d_scores), q, PRECISION)
    tl.store(dq_ptr + b * sdqb + h * sdqh + t[:, None] * sdqt + offs_k[None, :], dq.to(dq_ptr.dtype.element_ty), mask=mask_tk)
    tl.store(dk_ptr + b * sdkb + h * sdkh + t[:, None] * sdkt + offs_k[None, :], dk.to(dk_ptr.dtype.element_ty), mask=mask_tk)
    if DECAY == 2:
        # c_i scales q_i by exp(c_i) and k_i by exp(-c_i); the chunk total G scales S_out
        qf, kf = q.to(tl.float32), k.to(tl.float32)
        d_c = tl.sum(qf * dq, axis=1) - tl.sum(kf * dk, axis=1)
        d_g = d_total * tl.exp(g_total) + tl.sum(tl.sum(kf * dk_state, axis=1), axis=0)
        d_c += tl.where(offs_c == C - 1, d_g, 0.0)
        tl.store(dgc_ptr + bh * Tp + n * C + offs_c, d_c)


def _strides(x: Tensor) -> tuple[int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2)


def _pow2(x: int) -> int:
    return max(16, triton.next_power_of_2(x))


def _state_tiles(bh: int, dk: int, dv: int) -> tuple[int, int]:
    """(BK, BV) of the sequential state walks: 64 x 64 tiles, halved while the walk has fewer
    programs than the GPU's 132 multiprocessors (batch 1, long T)."""
    bk, bv = min(64, _pow2(dk)), min(64, _pow2(dv))
    while bh * triton.cdiv(dk, bk) * triton.cdiv(dv, bv) < 132 and max(bk, bv) > 32:
        if bv >= bk:
            bv //= 2
        else:
            bk //= 2
    return bk, bv


class _Geometry:
    """Sizes shared by the four launches."""

    def __init__(self, q: Tensor, v: Tensor) -> None:
        self.B, self.H, self.T, self.K = q.shape
        self.V = v.shape[-1]
        self.BH = self.B * self.H
        self.N = triton.cdiv(self.T, CHUNK)
        self.Tp = self.N * CHUNK
        self.BK_full = _pow2(self.K)
        self.BV_out = min(64, _pow2(self.V))
        self.BK_state, self.BV_state = _state_tiles(self.BH, self.K, self.V)
        self.precision = "ieee" if q.dtype == torch.float32 else "tf32"
        self.warps = 4 if self.BK_full <= 64 else 8


def _states(g: _Geometry, k, v, gc, lg, decay, h0, store_final: bool):
    """Every chunk's entering state ``(B*H, N, K, V)`` in the input dtype, and the final state."""
    hs = k.new_empty(g.BH, g.N, g.K, g.V, dtype=k.dtype)
    h_last = k.new_empty(g.B, g.H, g.K, g.V, dtype=torch.float32) if store_final else hs
    grid = (triton.cdiv(g.V, g.BV_state), triton.cdiv(g.K, g.BK_state), g.BH)
    _state_fwd[grid](
        k, v, gc, lg, h0 if h0 is not None else hs, hs, h_last,
        *_strides(k), *_strides(v),
        g.T, g.Tp, g.H, g.K, g.V, g.N,
        DECAY=decay, HAS_H0=h0 is not None, STORE_HS=True, STORE_HT=store_final,
        C=CHUNK, BK=g.BK_state, BV=g.BV_state, PRECISION=g.precision, num_warps=4,
    )
    return hs, h_last


class _LinearAttentionFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, gc, lg, h0, scale, decay):
        g = _Geometry(q, v)
        hs, h_last = _states(g, k, v, gc, lg, decay, h0, store_final=True)
        o = torch.empty_like(v)
        grid = (triton.cdiv(g.V, g.BV_out), g.N, g.BH)
        _output_fwd[grid](
            q, k, v, gc, lg, hs, o,
            *_strides(q), *_strides(k), *_strides(v), *_strides(o),
            scale, g.T, g.Tp, g.H, g.K, g.V, g.N,
            DECAY=decay, C=CHUNK, BK=g.BK_full, BV=g.BV_out, PRECISION=g.precision, num_warps=g.warps,
        )
        ctx.save_for_backward(q, k, v, gc, lg, h0)
        ctx.scale, ctx.decay = scale, decay
        return o, h_last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do, dh_last):
        q, k, v, gc, lg, h0 = ctx.saved_tensors
        scale, decay = ctx.scale, ctx.decay
        g = _Geometry(q, v)
        do = do if do.stride(-1) == 1 else do.contiguous()
        # the final state's gradient is read as a dense (B*H, K, V) block (a sum's is a stride-0 view)
        dh_last = None if dh_last is None else dh_last.float().contiguous()
        hs, _ = _states(g, k, v, gc, lg, decay, h0, store_final=False)
        dhs = torch.empty_like(hs)
        dh0 = torch.empty(g.B, g.H, g.K, g.V, device=q.device, dtype=torch.float32) if h0 is not None else None
        grid = (triton.cdiv(g.V, g.BV_state), triton.cdiv(g.K, g.BK_state), g.BH)
        _state_bwd[grid](
            q, do, gc, lg, dh_last if dh_last is not None else hs, dhs, dh0 if dh0 is not None else hs,
            *_strides(q), *_strides(do),
            scale, g.T, g.Tp, g.H, g.K, g.V, g.N,
            DECAY=decay, HAS_DHT=dh_last is not None, STORE_DH0=h0 is not None,
            C=CHUNK, BK=g.BK_state, BV=g.BV_state, PRECISION=g.precision, num_warps=4,
        )
        # dense gradients: an input broadcast over heads (stride 0) gets one gradient per head
        dq, dk, dv = (torch.empty(x.shape, device=x.device, dtype=x.dtype) if 0 in x.stride() else torch.empty_like(x) for x in (q, k, v))
        dgc = torch.empty(g.BH, g.Tp, device=q.device, dtype=torch.float32) if decay == 2 else gc
        _grads[(g.N, g.BH)](
            q, k, v, do, gc, lg, hs, dhs, dq, dk, dv, dgc,
            *_strides(q), *_strides(k), *_strides(v), *_strides(do),
            *_strides(dq), *_strides(dk), *_strides(dv),
            scale, g.T, g.Tp, g.H, g.K, g.V, g.N,
            DECAY=decay, C=CHUNK, BK=g.BK_full, BV=g.BV_out, PRECISION=g.precision, num_warps=g.warps,
        )
        return dq, dk, dv, (dgc if decay == 2 else None), None, dh0, None, None


def _last_dim_contiguous(name: str, x: Tensor) -> Tensor:
    if x.stride(-1) == 1:
        return x
    # a copy of q, k or v doubles their memory: say so rather than hide it
    import warnings

    warnings.warn(f"linear_attention_triton: {name} has a strided last dimension; copying it", stacklevel=3)
    return x.contiguous()


def linear_attention_triton(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    gamma: Tensor | None = None,
    log_decay: Tensor | None = None,
    state: Tensor | None = None,
    scale: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Chunked decayed linear attention in Triton (inputs already checked by the caller).

    Returns ``(o: (B, H, T, V) in v.dtype, S_last: (B, H, K, V) fp32)``. Gradients flow to
    q, k, v, ``log_decay`` and ``state``; ``gamma`` is a constant (RetNet's are fixed).
    """
    dtypes = {q.dtype, k.dtype, v.dtype}
    if len(dtypes) != 1 or q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(
            f"linear_attention_triton takes q, k, v of one dtype among float32, bfloat16, float16; "
            f"got q {q.dtype}, k {k.dtype}, v {v.dtype}"
        )
    dk, dv = q.shape[-1], v.shape[-1]
    if dk > MAX_HEAD_DIM or dv > MAX_HEAD_DIM:
        raise ValueError(f"linear_attention_triton supports K and V up to {MAX_HEAD_DIM}; got K={dk}, V={dv}")
    devices = {x.device for x in (q, k, v) + tuple(x for x in (gamma, log_decay, state) if x is not None)}
    if len(devices) != 1:
        raise ValueError(f"linear_attention_triton: every tensor must be on one device, got {sorted(map(str, devices))}")
    q, k, v = (_last_dim_contiguous(name, x) for name, x in (("q", q), ("k", k), ("v", v)))
    b, h, t, _ = q.shape
    n = triton.cdiv(max(t, 1), CHUNK)
    if log_decay is not None:
        decay = 2
        # the chunk-cumulated decays are (B*H, N*C) fp32: 4 bytes a token and head
        g_pad = torch.nn.functional.pad(log_decay.float().reshape(b * h, t), (0, n * CHUNK - t))
        gc = g_pad.view(b * h, n, CHUNK).cumsum(-1).view(b * h, n * CHUNK)
        lg = gc
    elif gamma is not None:
        decay = 1
        lg = gamma.detach().double().log().float().contiguous()
        gc = lg
    else:
        decay, gc = 0, q.new_zeros(1, dtype=torch.float32)
        lg = gc
    h0 = None if state is None else state.float().contiguous()
    if t == 0:
        s = q.new_zeros(b, h, dk, dv, dtype=torch.float32) if h0 is None else h0.clone()
        return v.new_empty(b, h, 0, dv), s
    return _LinearAttentionFn.apply(q, k, v, gc, lg, h0, float(scale), decay)
