"""Decayed linear attention, token by token: the specification every fast path is tested against.

With queries/keys ``q, k: (B, H, T, K)``, values ``v: (B, H, T, V)`` and a decay ``a_t`` per
head, the state ``S: (B, H, K, V)`` evolves as::

    S_t = a_t S_{t-1} + k_t^T v_t
    o_t = scale * q_t S_t

The decay is one of

- none: ``a_t = 1`` (causal linear attention, e.g. Performer's features);
- ``gamma: (H,)`` in (0, 1]: a fixed scalar per head (RetNet's retention);
- ``log_decay: (B, H, T)`` <= 0: ``a_t = exp(log_decay_t)``, a per-step scalar per head
  (Mamba-2's SSD, gated retention).

Sums run in float32, the state is float32, ``o`` comes back in ``v.dtype``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "MAX_HEAD_DIM",
    "check_inputs",
    "linear_attention_recurrent",
    "linear_attention_step",
    "step_log_decay",
]

#: the largest K and V the Triton kernels hold in registers (here so that dispatch can read it
#: without importing Triton)
MAX_HEAD_DIM = 256


def check_inputs(
    q: Tensor, k: Tensor, v: Tensor, gamma: Tensor | None, log_decay: Tensor | None, state: Tensor | None
) -> None:
    """Shapes and decays, with messages that name the tensor and the expected shape."""
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            "linear attention expects q, k: (B, H, T, K) and v: (B, H, T, V) with equal B, H, T; got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    b, h, t, dk = q.shape
    if gamma is not None and log_decay is not None:
        raise ValueError("give either gamma (a fixed decay per head) or log_decay (one per step), not both")
    if gamma is not None:
        if gamma.shape != (h,):
            raise ValueError(f"gamma must have shape (H,) = ({h},), got {tuple(gamma.shape)}")
        if not bool(((gamma > 0) & (gamma <= 1)).all()):
            raise ValueError(f"every decay in gamma must lie in (0, 1], got {gamma.tolist()}")
    if log_decay is not None:
        if log_decay.shape != (b, h, t):
            raise ValueError(f"log_decay must have shape (B, H, T) = {(b, h, t)}, got {tuple(log_decay.shape)}")
        if log_decay.is_floating_point() and bool((log_decay > 0).any()):
            raise ValueError("log_decay must be <= 0 (a decay in (0, 1]); got positive entries")
    if state is not None and state.shape != (b, h, dk, v.shape[-1]):
        raise ValueError(
            f"linear attention state must have shape (B, H, K, V) = {(b, h, dk, v.shape[-1])}, "
            f"got {tuple(state.shape)}"
        )


def step_log_decay(q: Tensor, gamma: Tensor | None, log_decay: Tensor | None) -> Tensor:
    """The per-step log decay ``(B, H, T)`` in float32 whatever form the decay was given in."""
    b, h, t, _ = q.shape
    if log_decay is not None:
        return log_decay.float()
    if gamma is None:
        return q.new_zeros(b, h, t, dtype=torch.float32)
    return gamma.double().log().float()[None, :, None].expand(b, h, t)


def linear_attention_step(
    q_t: Tensor, k_t: Tensor, v_t: Tensor, log_a_t: Tensor, state: Tensor, scale: float = 1.0
) -> tuple[Tensor, Tensor]:
    """One token: ``q_t, k_t: (B, H, K)``, ``v_t: (B, H, V)``, ``log_a_t: (B, H)``, ``state: (B, H, K, V)``."""
    s = log_a_t.float().exp()[..., None, None] * state.float() + k_t[..., :, None].float() * v_t[..., None, :].float()
    o = scale * torch.einsum("bhk,bhkv->bhv", q_t.float(), s)
    return o.to(v_t.dtype), s


def linear_attention_recurrent(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    gamma: Tensor | None = None,
    log_decay: Tensor | None = None,
    state: Tensor | None = None,
    scale: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """The recurrence one token at a time. Returns ``(o: (B, H, T, V), S_last: (B, H, K, V) fp32)``."""
    check_inputs(q, k, v, gamma, log_decay, state)
    b, h, t, dk = q.shape
    log_a = step_log_decay(q, gamma, log_decay)  # (B, H, T)
    s = q.new_zeros(b, h, dk, v.shape[-1], dtype=torch.float32) if state is None else state.float()
    outs = []
    for i in range(t):
        o_t, s = linear_attention_step(q[:, :, i], k[:, :, i], v[:, :, i], log_a[:, :, i], s, scale)
        outs.append(o_t)
    o = torch.stack(outs, dim=2) if outs else v.new_zeros(b, h, 0, v.shape[-1])
    return o, s
