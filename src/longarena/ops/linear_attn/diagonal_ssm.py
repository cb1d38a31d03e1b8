"""A time-invariant diagonal state space model, run as a recurrence or as a long convolution.

Per channel d and state index n, with decay ``a = exp(log_a): (D, N)`` (real or complex,
``|a| < 1``), input weight ``b: (D, N)`` and output weight ``c: (D, N)`` (or (G, N), each
row shared by D / G consecutive channels)::

    h_t = a * h_{t-1} + b * u_t           h: (B, D, N)
    y_t = Re sum_n c_n h_{t, n}           y: (B, T, D)

Unrolled, ``y = k * u + carry`` with the kernel ``k[d, s] = Re sum_n c b a^s`` and the
carry-in term ``carry_t = Re sum_n c a^(t+1) h_{-1}``: Mega's damped EMA (real ``a``)
and the diagonal SSM of H3 (complex ``a``) are both this. Two modes compute it:

- ``"scan"``: the recurrence through :func:`longarena.ops.scan.linear_scan`; memory
  O(T D N);
- ``"conv"``: the kernel through :func:`longarena.ops.conv.long_conv` (FFT: O(T log T);
  its ``"auto"`` convolves short inputs directly, which is exactly causal), with the carry-in term and the final state as direct sums over time.
  Powers ``a^s`` are formed as ``exp(s log a)`` (no compounding rounding) in blocks of
  :data:`BLOCK` steps, so memory stays O(T D + BLOCK D N) instead of O(T D N).

Both return ``(y, h_last)``; sums run in float32 (complex64 for complex ``a``) whatever the
input dtype, ``y`` comes back in the input dtype and ``h_last`` in the working dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from longarena.ops.conv import long_conv
from longarena.ops.scan import linear_scan
from longarena.ops import cmath

__all__ = ["BLOCK", "diagonal_ssm", "diagonal_ssm_kernel", "diagonal_ssm_step"]

#: time steps per block when powers of ``a`` are materialised
BLOCK = 1024
def _work_dtype(log_a: Tensor) -> torch.dtype:
    return torch.complex64 if log_a.is_complex() else torch.float32


def _powers(log_a: Tensor, exponents: Tensor) -> Tensor:
    """``a^e`` for ``log_a: (D, N)`` and integer ``exponents: (L,)`` -> (D, N, L)."""
    return cmath.exp(log_a[..., None] * exponents.to(log_a.real.dtype))


def diagonal_ssm_kernel(log_a: Tensor, b: Tensor, c: Tensor, length: int) -> Tensor:
    """The convolution kernel ``k[d, s] = Re sum_n c b a^s`` for s < length: (D, length) float32."""
    work = _work_dtype(log_a)
    log_a, cb = log_a.to(work), (c * b).to(work)
    blocks = []
    for start in range(0, length, BLOCK):
        s = torch.arange(start, min(start + BLOCK, length), device=log_a.device)
        blocks.append(torch.einsum("dn,dnl->dl", cb, _powers(log_a, s)).real)
    if not blocks:
        return log_a.new_zeros(log_a.shape[0], 0, dtype=torch.float32)
    return torch.cat(blocks, dim=-1)


def _check(u: Tensor, log_a: Tensor, b: Tensor, c: Tensor, h0: Tensor | None) -> int:
    """Validate shapes; return R, the number of channels sharing each parameter row."""
    if u.dim() != 3:
        raise ValueError(f"diagonal_ssm expects u of shape (B, T, D), got {tuple(u.shape)}")
    d = u.shape[-1]
    if log_a.dim() != 2 or b.shape != log_a.shape or c.shape != log_a.shape or d % max(log_a.shape[0], 1):
        raise ValueError(
            f"diagonal_ssm expects log_a, b, c of one shape (G, N) with G dividing D = {d}; got "
            f"{tuple(log_a.shape)}, {tuple(b.shape)}, {tuple(c.shape)}"
        )
    if h0 is not None and h0.shape != (u.shape[0], d, log_a.shape[1]):
        raise ValueError(
            f"diagonal_ssm state must have shape (B, D, N) = {(u.shape[0], d, log_a.shape[1])}, got {tuple(h0.shape)}"
        )
    return d // log_a.shape[0]


def diagonal_ssm(
    u: Tensor,
    log_a: Tensor,
    b: Tensor,
    c: Tensor,
    h0: Tensor | None = None,
    *,
    mode: str = "conv",
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Run the SSM of the module docstring over ``u: (B, T, D)``. Returns ``(y: (B, T, D), h_last: (B, D, N))``.

    ``log_a, b, c: (G, N)`` with G dividing D: each row serves R = D / G consecutive channels
    (H3 shares one SSM over the K*K entries of a head), and powers of ``a`` are formed once
    per row. ``mode``: ``"scan"`` (the recurrence) or ``"conv"``; ``backend`` is handed to
    :func:`linear_scan` (scan mode) or :func:`long_conv` (conv mode).
    """
    r = _check(u, log_a, b, c, h0)
    work = _work_dtype(log_a)
    bsz, t, d = u.shape
    g, n = log_a.shape
    log_a, b, c = log_a.to(work), b.to(work), c.to(work)
    uf = u.float()
    if mode == "scan":
        a = torch.exp(log_a).repeat_interleave(r, dim=0)[None, None]  # (1, 1, D, N)
        h0 = None if h0 is None else h0.to(work)
        h, h_last = linear_scan(a, uf[..., None] * b.repeat_interleave(r, dim=0), h0, backend=backend)  # (B, T, D, N)
        y = torch.einsum("btdn,dn->btd", h, c.repeat_interleave(r, dim=0)).real
        return y.to(u.dtype), h_last
    if mode != "conv":
        raise ValueError(f"unknown diagonal_ssm mode {mode!r}; known: 'scan', 'conv'")
    # one table of powers a^e per block of exponents serves all three sums: the kernel
    # (lag e), the final state (the input e steps before the end) and the carry-in
    # (output t = e sees a^(e+1) h_{-1})
    h_last = u.new_zeros(bsz, g, r, n, dtype=work)  # channels grouped by parameter row
    if h0 is not None:
        h0g = h0.to(work).view(bsz, g, r, n)
        h_last = h0g * torch.exp(t * log_a)[:, None]
        carry_weight = h0g * (c * torch.exp(log_a))[:, None]  # (B, G, R, N)
    kernel, carry = [], []
    for e0 in range(0, t, BLOCK):
        e1 = min(e0 + BLOCK, t)
        powers = _powers(log_a, torch.arange(e0, e1, device=u.device))  # (G, N, L)
        kernel.append(torch.einsum("gn,gnl->gl", c * b, powers).real)
        ub = uf[:, t - e1 : t - e0].flip(1).to(work).view(bsz, e1 - e0, g, r)  # (B, L, G, R), l-th is t-1-(e0+l)
        h_last = h_last + b[:, None] * torch.einsum("blgr,gnl->bgrn", ub, powers)
        if h0 is not None:
            carry.append(torch.einsum("bgrn,gnl->blgr", carry_weight, powers).real.reshape(bsz, e1 - e0, d))
    if not kernel:
        return u.clone(), h_last.reshape(bsz, d, n)
    y = long_conv(uf, torch.cat(kernel, dim=-1).repeat_interleave(r, dim=0), causal=True, backend=backend)
    if carry:
        y = y + torch.cat(carry, dim=1)
    return y.to(u.dtype), h_last.reshape(bsz, d, n)


def diagonal_ssm_step(u_t: Tensor, log_a: Tensor, b: Tensor, c: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """One step: ``u_t: (B, D)``, ``h: (B, D, N)``, parameters (G, N) -> ``(y_t: (B, D), h)``. O(1) in T."""
    work = _work_dtype(log_a)
    r = u_t.shape[-1] // log_a.shape[0]
    log_a, b, c = (p.to(work).repeat_interleave(r, dim=0) for p in (log_a, b, c))  # (D, N)
    h = torch.exp(log_a) * h.to(work) + u_t.float()[..., None] * b
    y = torch.einsum("bdn,dn->bd", h, c).real
    return y.to(u_t.dtype), h
