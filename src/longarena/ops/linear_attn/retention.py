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
  O(T C) time, O(T) memory, any T (:mod:`.chunked`, the general decayed linear attention
  with a fixed decay per head); on CUDA the same form runs as Triton kernels
  (:mod:`.triton_chunk`, backend ``triton``).

Every form takes a carry-in state (``None`` = zeros) and returns ``(o, S_last)``. Sums
run in float32 whatever the input dtype, and the state is returned in float32: a state
summed over tens of thousands of tokens does not survive bf16 rounding. The RetNet paper's
extra normalisations (``1/sqrt(K)`` aside) are dropped here: the group norm that follows
retention in the layer is invariant to them, and without them the three forms are equal.
"""

from __future__ import annotations

import torch
from torch import Tensor

from longarena.ops.linear_attn import (
    linear_attention,
    linear_attention_chunked,
    linear_attention_recurrent,
    linear_attention_step,
)
from longarena.ops.linear_attn.reference import check_inputs

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


def retention_recurrent(q: Tensor, k: Tensor, v: Tensor, gamma: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The recurrence token by token: the readable specification (:mod:`.reference`). Returns (o, S_last)."""
    return linear_attention_recurrent(q, k, v, gamma=gamma, state=state)


def retention_step(q_t: Tensor, k_t: Tensor, v_t: Tensor, gamma: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
    """One token: ``q_t, k_t: (B, H, K)``, ``v_t: (B, H, V)``, ``state: (B, H, K, V)``. O(1) in T."""
    log_gamma = gamma.double().log().float().expand(q_t.shape[0], -1)  # (B, H)
    return linear_attention_step(q_t, k_t, v_t, log_gamma, state)


def retention_parallel(q: Tensor, k: Tensor, v: Tensor, gamma: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(Q K^T * D) V`` with the decay mask ``D: (H, T, T)``; O(T^2). Returns (o, S_last)."""
    check_inputs(q, k, v, gamma, None, state)
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
    """Parallel within chunks of ``chunk_size`` tokens, recurrent across them (:mod:`.chunked`)."""
    return linear_attention_chunked(q, k, v, gamma=gamma, state=state, chunk_size=chunk_size)


BACKENDS = ("reference", "parallel", "chunked", "triton")


def retention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gamma: Tensor,
    state: Tensor | None = None,
    *,
    backend: str = "auto",
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """Retention through the named form: ``reference`` (the loop), ``parallel``, ``chunked``
    or ``triton`` (:mod:`longarena.ops.linear_attn`'s kernels); ``auto`` as there."""
    if backend == "parallel":
        return retention_parallel(q, k, v, gamma, state)
    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"unknown retention backend {backend!r}; known: {list(BACKENDS)} or 'auto'")
    return linear_attention(q, k, v, gamma=gamma, state=state, backend=backend, chunk_size=chunk_size)
