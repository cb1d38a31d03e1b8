"""Retention (RetNet, Sun et al. 2023): linear attention with a fixed decay per head.

With queries/keys ``q, k: (B, H, T, K)``, values ``v: (B, H, T, V)`` and a decay
``gamma: (H,)`` in (0, 1], retention keeps a matrix state ``S: (B, H, K, V)``::

    S_t = gamma * S_{t-1} + k_t^T v_t
    o_t = q_t S_t  =  sum_{s <= t} gamma^(t - s) (q_t . k_s) v_s  +  gamma^(t + 1) q_t S_{-1}

Three forms compute the same thing:

- ``retention_recurrent``: the loop above, one token at a time (the specification);
- ``retention_parallel``:  ``(Q K^T * D) V`` with ``D[t, s] = gamma^(t - s)`` for ``s <= t``;
  O(T^2) time and memory, no sequential dependency;
- ``retention_chunkwise``: parallel inside chunks of C tokens, recurrent across chunks;
  O(T C) time, O(T) memory. T need not be a multiple of C (the tail is padded with tokens
  that neither decay nor write the state, so the carried state stays exact).

Every form takes a carry-in state (``None`` = zeros) and returns ``(o, S_last)``. Sums
run in float32 whatever the input dtype, and the state is returned in float32: a state
summed over tens of thousands of tokens does not survive bf16 rounding. The RetNet paper's
extra normalisations (``1/sqrt(K)`` aside) are dropped here: the group norm that follows
retention in the layer is invariant to them, and without them the three forms are equal.
"""

from __future__ import annotations

import torch
from torch import Tensor

from longarena.ops.scan import linear_scan

__all__ = [
    "BACKENDS",
    "default_gammas",
    "retention",
    "retention_chunkwise",
    "retention_parallel",
    "retention_recurrent",
    "retention_step",
]


def default_gammas(n_heads: int) -> Tensor:
    """RetNet's multi-scale decays ``gamma_h = 1 - 2^(-5 - h)``, h = 0..H-1 (float64)."""
    return 1.0 - 2.0 ** (-5.0 - torch.arange(n_heads, dtype=torch.float64))


def _check(q: Tensor, k: Tensor, v: Tensor, gamma: Tensor, state: Tensor | None) -> None:
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            "retention expects q, k: (B, H, T, K) and v: (B, H, T, V) with equal B, H, T; got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    b, h, _, dk = q.shape
    if gamma.shape != (h,):
        raise ValueError(f"gamma must have shape (H,) = ({h},), got {tuple(gamma.shape)}")
    if state is not None and state.shape != (b, h, dk, v.shape[-1]):
        raise ValueError(
            f"retention state must have shape (B, H, K, V) = {(b, h, dk, v.shape[-1])}, got {tuple(state.shape)}"
        )


def _zero_state(q: Tensor, v: Tensor) -> Tensor:
    b, h, _, dk = q.shape
    return q.new_zeros(b, h, dk, v.shape[-1], dtype=torch.float32)


def retention_recurrent(q: Tensor, k: Tensor, v: Tensor, gamma: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The recurrence token by token: the readable specification. Returns (o, S_last)."""
    _check(q, k, v, gamma, state)
    s = _zero_state(q, v) if state is None else state.float()
    g = gamma.float()[None, :, None, None]  # (1, H, 1, 1)
    outs = []
    for t in range(q.shape[2]):
        s = g * s + k[:, :, t, :, None].float() * v[:, :, t, None, :].float()  # (B, H, K, V)
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, :, t].float(), s))
    o = torch.stack(outs, dim=2) if outs else q.new_zeros(*q.shape[:3], v.shape[-1], dtype=torch.float32)
    return o.to(v.dtype), s


def retention_step(q_t: Tensor, k_t: Tensor, v_t: Tensor, gamma: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
    """One token: ``q_t, k_t: (B, H, K)``, ``v_t: (B, H, V)``, ``state: (B, H, K, V)``. O(1) in T."""
    s = gamma.float()[None, :, None, None] * state.float() + k_t[..., :, None].float() * v_t[..., None, :].float()
    o = torch.einsum("bhk,bhkv->bhv", q_t.float(), s)
    return o.to(v_t.dtype), s


def retention_parallel(q: Tensor, k: Tensor, v: Tensor, gamma: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(Q K^T * D) V`` with the decay mask ``D: (H, T, T)``; O(T^2). Returns (o, S_last)."""
    _check(q, k, v, gamma, state)
    t = q.shape[2]
    log_g = gamma.double().log()  # (H,)
    pos = torch.arange(t, device=q.device)
    lag = pos[:, None] - pos[None, :]  # (T, T), t - s
    # clamp before exp: the future half (lag < 0) would overflow and is masked anyway
    decay = torch.exp(lag.clamp(min=0)[None].double() * log_g[:, None, None]).float()  # (H, T, T)
    decay = decay * (lag >= 0)
    qf, kf, vf = q.float(), k.float(), v.float()
    scores = torch.einsum("bhtk,bhsk->bhts", qf, kf) * decay  # (B, H, T, T)
    o = torch.einsum("bhts,bhsv->bhtv", scores, vf)
    # weight gamma^(T-1-s) of each token in the final state
    to_end = torch.exp((t - 1 - pos)[None].double() * log_g[:, None]).float()  # (H, T)
    s_last = torch.einsum("bhsk,bhsv->bhkv", kf * to_end[None, :, :, None], vf)
    if state is not None:
        s0 = state.float()
        from_start = torch.exp((pos + 1)[None].double() * log_g[:, None]).float()  # (H, T)
        o = o + from_start[None, :, :, None] * torch.einsum("bhtk,bhkv->bhtv", qf, s0)
        s_last = s_last + torch.exp(t * log_g).float()[None, :, None, None] * s0
    return o.to(v.dtype), s_last


def retention_chunkwise(
    q: Tensor, k: Tensor, v: Tensor, gamma: Tensor, state: Tensor | None = None, *, chunk_size: int = 64
) -> tuple[Tensor, Tensor]:
    """Parallel within chunks of ``chunk_size`` tokens, recurrent across them. Returns (o, S_last)."""
    _check(q, k, v, gamma, state)
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    b, h, t, dk = q.shape
    dv = v.shape[-1]
    c = chunk_size
    n = -(-t // c)
    pad = n * c - t
    qf, kf, vf = (torch.nn.functional.pad(x.float(), (0, 0, 0, pad)) for x in (q, k, v))
    # per-position log decay; padded positions get log 1 = 0 so they do not decay the state
    log_g = gamma.double().log().float()  # (H,)
    real = (torch.arange(n * c, device=q.device) < t).float()  # (Tp,)
    log_decay = (log_g[:, None] * real[None]).view(h, n, c)  # (H, N, C)
    cum = log_decay.cumsum(-1)  # (H, N, C): log decay from chunk start to position i, inclusive
    total = cum[..., -1]  # (H, N)

    qc = qf.view(b, h, n, c, dk)  # (B, H, N, C, K)
    kc = kf.view(b, h, n, c, dk)
    vc = vf.view(b, h, n, c, dv)  # (B, H, N, C, V)

    tri = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
    diff = cum[..., :, None] - cum[..., None, :]  # (H, N, C, C): log gamma^(i - j)
    intra_decay = torch.exp(diff.masked_fill(~tri, float("-inf")))
    scores = torch.einsum("bhnik,bhnjk->bhnij", qc, kc) * intra_decay  # (B, H, N, C, C)
    o = torch.einsum("bhnij,bhnjv->bhniv", scores, vc)

    # contribution of each chunk to the state at its end: sum_j gamma^(C-1-j) k_j^T v_j
    to_end = torch.exp(total[..., None] - cum)  # (H, N, C)
    chunk_kv = torch.einsum("bhnjk,bhnjv->bhnkv", kc * to_end[None, ..., None], vc)  # (B, H, N, K, V)
    # across chunks the state is a diagonal linear recurrence: S_n = decay_n S_{n-1} + kv_n
    chunk_decay = torch.exp(total).T[None, :, :, None, None]  # (1, N, H, 1, 1)
    s0 = _zero_state(q, v) if state is None else state.float()
    s_ends, s = linear_scan(chunk_decay, chunk_kv.transpose(1, 2), s0)  # (B, N, H, K, V), (B, H, K, V)
    s_start = torch.cat((s0[:, None], s_ends[:, :-1]), dim=1).transpose(1, 2)  # (B, H, N, K, V): entering each chunk
    from_start = torch.exp(cum)  # (H, N, C)
    o = o + torch.einsum("bhnik,bhnkv->bhniv", qc * from_start[None, ..., None], s_start)
    o = o.reshape(b, h, n * c, dv)[:, :, :t]
    return o.to(v.dtype), s


BACKENDS = {"recurrent": retention_recurrent, "parallel": retention_parallel, "chunkwise": retention_chunkwise}


def retention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gamma: Tensor,
    state: Tensor | None = None,
    *,
    backend: str = "chunkwise",
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """Retention through the named form: ``recurrent`` (reference), ``parallel`` or ``chunkwise``."""
    if backend == "chunkwise":
        return retention_chunkwise(q, k, v, gamma, state, chunk_size=chunk_size)
    if backend not in BACKENDS:
        raise ValueError(f"unknown retention backend {backend!r}; known: {sorted(BACKENDS)}")
    return BACKENDS[backend](q, k, v, gamma, state)
