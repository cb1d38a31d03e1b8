"""S4 (Gu et al. 2022) and S4D (Gu et al. 2022b): per-channel linear state space models.

Every channel ``h`` of ``u: (B, T, H)`` (H = d_model) runs its own single-input SSM with a
state of N real numbers, kept as N/2 complex modes whose conjugates are implied::

    x'(t) = A x(t) + B u(t),   y(t) = C x(t)                      continuous
    x_t = Abar x_{t-1} + Bbar u_t,  y_t = 2 Re(C x_t) + D u_t      discrete, step dt = exp(log_dt)
    y = u * K,  K_l = 2 Re(C Abar^l Bbar)                          the same map as a convolution

Discretisation: zero-order hold ``Abar = exp(dt A)``, ``Bbar = A^-1 (Abar - I) B``, or
bilinear ``Abar = (I - dt/2 A)^-1 (I + dt/2 A)``, ``Bbar = (I - dt/2 A)^-1 dt B``.

Two structures of ``A`` (config ``kernel``):

- ``"diag"`` (S4D, registered as ``s4d``): ``A = diag(Lambda)``; the kernel is a Vandermonde
  product ``K_l = 2 Re sum_n C_n Bbar_n Abar_n^l``. Init ``"legs"`` (S4D-LegS: the
  eigenvalues of HiPPO-LegS's normal part, ``-1/2 + i w_n``, with its B) or ``"lin"``
  (S4D-Lin: ``-1/2 + i pi n``, B = 1).
- ``"dplr"`` (S4, registered as ``s4``): HiPPO-LegS written as normal plus low rank,
  ``A = S - P P^T``, and in the eigenbasis V of the normal part S,
  ``A = Lambda - p p^*`` (diagonal plus rank one, ``p = V^* P``). The kernel is computed as
  in S4: its generating function at the roots of unity ``z_k`` of an odd length ``n >= T``
  is, for the bilinear discretisation,
  ``Khat(z) = 2/(1+z) * Ctilde (g(z) - A)^-1 B``, ``g(z) = 2/dt (1-z)/(1+z)``,
  ``Ctilde = C (I - Abar^n)``, and the resolvent of a diagonal-plus-low-rank matrix is
  four Cauchy sums by Woodbury: ``k00 - k01 k10 / (1 + k11)`` with
  ``k_ab(z) = sum_n a_n b_n / (g(z) - lambda_n)``. An inverse real FFT gives ``K``. (The
  length is odd so that ``z = -1``, where ``g`` is infinite, is never a root.) Only the
  bilinear discretisation has this resolvent form, so ``dplr`` requires it.

Computation modes: ``forward`` builds ``K`` for the chunk length and convolves through
:func:`longarena.ops.conv.long_conv` (backend ``conv``: FFT, or a direct sum for up to 64
taps) or runs the recurrence one step at a time (backend ``reference``); ``step`` is the
recurrence. With a state ``x0`` carried in,
the chunk output gains ``2 Re(C Abar^{t+1} x0)`` and the new state is
``Abar^T x0 + sum_s Abar^{T-1-s} Bbar u_s`` (Vandermonde powers for ``diag``, a Krylov
sequence built by doubling for ``dplr``). ``causal=False`` is the bidirectional layer used
for classification: a second ``C`` gives a backward kernel, applied to ``u_{t+1+l}`` so
that ``u_t`` is counted once.

The block around the SSM is the S4 layer's: ``y = W_out gelu(ssm(x) + D x)``. The SSM
parameters (and its state) stay in fp32 when the module is cast to bf16.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longarena.config import ConfigError
from longarena.mixers import register
from longarena.mixers.base import KeepFP32Params, Mixer, MixerConfig, MixerInputError
from longarena.ops import cmath
from longarena.ops.conv import long_conv
from longarena.ops.scan import linear_scan

def hippo_legs(n: int) -> tuple[Tensor, Tensor, Tensor]:
    """HiPPO-LegS ``A (N, N)``, ``B (N,)`` and the low-rank ``P (N,)`` with ``A + P P^T`` normal.

    ``A_nk = -sqrt(2n+1) sqrt(2k+1)`` below the diagonal, ``-(n+1)`` on it, 0 above;
    ``B_n = sqrt(2n+1)``; ``P_n = sqrt(n + 1/2)``, which makes ``A + P P^T = -I/2 + skew``.
    """
    q = torch.sqrt(2 * torch.arange(n, dtype=torch.float64) + 1)
    diag = torch.diag(torch.arange(n, dtype=torch.float64) + 1)
    a = -torch.tril(q[:, None] * q[None, :], diagonal=-1) - diag
    return a, q.clone(), torch.sqrt(torch.arange(n, dtype=torch.float64) + 0.5)


def hippo_legs_nplr(n: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(Lambda, p, b)``, each (N/2,) complex128: HiPPO-LegS in the eigenbasis of its normal part.

    Only the eigenvalues with positive imaginary part are returned; the other half are their
    conjugates, with conjugate ``p`` and ``b`` (A is real).
    """
    a, b, p = hippo_legs(n)
    skew = a + p[:, None] * p[None, :] + 0.5 * torch.eye(n, dtype=torch.float64)  # S + I/2, skew-symmetric
    w, v = torch.linalg.eigh(-1j * skew.to(torch.complex128))  # skew = V diag(i w) V^*
    keep = torch.argsort(w, descending=True)[: n // 2]  # w > 0: one of each conjugate pair
    v = v[:, keep]
    lam = -0.5 + 1j * w[keep]
    return lam, v.conj().T @ p.to(torch.complex128), v.conj().T @ b.to(torch.complex128)


@dataclasses.dataclass
class S4Config(MixerConfig):
    #: N, real state numbers per channel (N/2 complex modes in conjugate pairs)
    d_state: int = 64
    #: "dplr" (S4: Cauchy kernel with the low-rank correction) or "diag" (S4D: Vandermonde)
    kernel: str = "dplr"
    #: "legs" (HiPPO-LegS) or, for diag only, "lin" (S4D-Lin)
    init: str = "legs"
    #: "bilinear" or "zoh" (dplr supports bilinear only)
    discretization: str = "bilinear"
    #: step sizes are initialised log-uniformly in [dt_min, dt_max], one per channel
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    #: False: bidirectional (two kernels, one per direction), for classification
    causal: bool = True
    #: the layer's output map after GELU: "linear" (H -> H) or "glu" (H -> 2H, then a gated
    #: linear unit: the S4 papers' LRA blocks)
    output: str = "linear"

    def validate(self) -> None:
        super().validate()
        if self.kernel not in ("dplr", "diag"):
            raise ConfigError(f"kernel must be 'dplr' (S4) or 'diag' (S4D), got {self.kernel!r}")
        if self.output not in ("linear", "glu"):
            raise ConfigError(f"output must be 'linear' or 'glu', got {self.output!r}")
        if self.init not in ("legs", "lin"):
            raise ConfigError(f"init must be 'legs' or 'lin', got {self.init!r}")
        if self.kernel == "dplr" and self.init != "legs":
            raise ConfigError(
                f"the dplr kernel is the HiPPO-LegS NPLR form; init must be 'legs', got {self.init!r}"
            )
        if self.discretization not in ("bilinear", "zoh"):
            raise ConfigError(f"discretization must be 'bilinear' or 'zoh', got {self.discretization!r}")
        if self.kernel == "dplr" and self.discretization != "bilinear":
            raise ConfigError(
                "the dplr (Cauchy) kernel needs the bilinear discretisation (its generating function is a "
                "resolvent of A only then); use discretization='bilinear' or kernel='diag'"
            )
        if not isinstance(self.d_state, int) or self.d_state < 2 or self.d_state % 2:
            raise ConfigError(
                "d_state must be an even int >= 2 (N/2 complex modes in conjugate pairs), "
                f"got {self.d_state!r}"
            )
        if not (self.dt_min > 0 and self.dt_max >= self.dt_min and math.isfinite(self.dt_max)):
            raise ConfigError(
                f"need finite 0 < dt_min <= dt_max for the step-size init, got dt_min={self.dt_min}, "
                f"dt_max={self.dt_max}"
            )


@dataclasses.dataclass
class S4DConfig(S4Config):
    kernel: str = "diag"
    discretization: str = "zoh"


def _complex(t: Tensor) -> Tensor:
    return torch.view_as_complex(t.float().contiguous())


#: time steps per table of powers / Krylov columns, so that memory stays O(H N TIME_BLOCK)
TIME_BLOCK = 1024


def _time_blocks(length: int) -> list[tuple[int, int]]:
    """``(start, length)`` of consecutive blocks of at most ``TIME_BLOCK`` steps."""
    return [(s, min(TIME_BLOCK, length - s)) for s in range(0, length, TIME_BLOCK)]


def _diag_powers(log_abar: Tensor, length: int) -> Tensor:
    """``Abar^j`` for ``j < min(length, TIME_BLOCK)``: (H, N/2, j), as ``exp(j log Abar)``."""
    steps = torch.arange(min(length, TIME_BLOCK), device=log_abar.device)
    return cmath.exp(log_abar[..., None] * steps)


def _krylov(mat: Tensor, vec: Tensor, length: int) -> Tensor:
    """``[vec, M vec, M^2 vec, ...]`` of ``length`` columns, by doubling: (H, N, length).

    mat: (H, N, N); vec: (H, N). ``log2(length)`` matmuls instead of ``length`` mat-vecs.
    """
    out = vec.unsqueeze(-1)  # (H, N, 1)
    power = mat
    while out.shape[-1] < length:
        out = torch.cat((out, power @ out), dim=-1)
        power = power @ power
    return out[..., :length]


@register("s4")
class S4(KeepFP32Params, Mixer):
    """S4: HiPPO-LegS state space model with a DPLR (Cauchy + Woodbury) convolution kernel."""

    config_class = S4Config
    backends = ("reference", "conv")
    fp32_params = ("log_dt", "log_neg_re", "lam_im", "p", "b", "c", "d")

    def __init__(self, config: S4Config) -> None:
        super().__init__(config)
        self.causal = config.causal
        h, n2 = config.d_model, config.d_state // 2
        self.n_half = n2
        self.diagonal = config.kernel == "diag"
        if config.init == "legs":
            lam, p, b = hippo_legs_nplr(config.d_state)
        else:
            im = math.pi * torch.arange(n2, dtype=torch.float64)
            lam = torch.complex(torch.full((n2,), -0.5, dtype=torch.float64), im)
            p, b = torch.zeros(n2, dtype=torch.complex128), torch.ones(n2, dtype=torch.complex128)
        rep = lambda z: torch.view_as_real(z.to(torch.complex64)).expand(h, n2, 2).clone()  # noqa: E731
        # Re(Lambda) = -exp(log_neg_re) < 0 always
        self.log_neg_re = nn.Parameter(torch.log(-lam.real).float().expand(h, n2).clone())
        self.lam_im = nn.Parameter(lam.imag.float().expand(h, n2).clone())
        self.b = nn.Parameter(rep(b))  # (H, N/2, 2): complex as (re, im)
        if self.diagonal:
            self.register_parameter("p", None)
        else:
            self.p = nn.Parameter(rep(p))
        n_dirs = 1 if config.causal else 2
        # C ~ CN(0, 1) as in S4; a second set for the backward direction when bidirectional
        self.c = nn.Parameter(torch.randn(n_dirs, h, n2, 2) * math.sqrt(0.5))
        log_lo, log_hi = math.log(config.dt_min), math.log(config.dt_max)
        self.log_dt = nn.Parameter(torch.rand(h) * (log_hi - log_lo) + log_lo)
        self.d = nn.Parameter(torch.randn(h))
        self.out_proj = nn.Linear(h, 2 * h if config.output == "glu" else h)

    def eigenvalues(self) -> Tensor:
        """Lambda (H, N/2), complex64."""
        return torch.complex(-torch.exp(self.log_neg_re.float()), self.lam_im.float())

    def dt(self) -> Tensor:
        return torch.exp(self.log_dt.float())  # (H,)

    def dense_a(self) -> Tensor:
        """The continuous ``A`` in the full complex basis, (H, N, N): ``diag(Lambda) - p p^*``."""
        lam = self.eigenvalues()
        lam_full = torch.cat((lam, lam.conj()), dim=-1)  # (H, N)
        a = torch.diag_embed(lam_full)
        if not self.diagonal:
            p = _complex(self.p)
            p_full = torch.cat((p, p.conj()), dim=-1)  # (H, N)
            a = a - p_full[:, :, None] * p_full.conj()[:, None, :]
        return a

    def discrete_diag(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(log Abar, Bbar, C)`` of the diagonal system: (H, N/2), (H, N/2), (dirs, H, N/2)."""
        lam, dt = self.eigenvalues(), self.dt()[:, None]
        b = _complex(self.b)
        if self.config.discretization == "zoh":
            log_abar = dt * lam
            bbar = (torch.exp(log_abar) - 1) / lam * b
        else:
            denom = 1 - dt / 2 * lam
            log_abar = torch.log((1 + dt / 2 * lam) / denom)
            bbar = dt * b / denom
        return log_abar, bbar, _complex(self.c)

    def discrete_dense(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(Abar, Bbar, C)`` in the full basis: (H, N, N), (H, N), (dirs, H, N). Bilinear."""
        a = self.dense_a()
        n = a.shape[-1]
        dt = self.dt()[:, None, None].to(a.dtype)
        eye = torch.eye(n, dtype=a.dtype, device=a.device)
        b = _complex(self.b)
        b_full = torch.cat((b, b.conj()), dim=-1)
        left = eye - dt / 2 * a
        abar = torch.linalg.solve(left, eye + dt / 2 * a)
        bbar = torch.linalg.solve(left, dt[..., 0] * b_full)
        c = _complex(self.c)
        return abar, bbar, torch.cat((c, c.conj()), dim=-1)

    def kernel(self, length: int) -> Tensor:
        """``K: (dirs, H, length)``, real fp32, through Vandermonde (diag) or Cauchy (dplr)."""
        if self.diagonal:
            log_abar, bbar, c = self.discrete_diag()
            base = _diag_powers(log_abar, length)  # (H, N/2, TIME_BLOCK)
            blocks = []
            for start, n in _time_blocks(length):
                # Abar^(start + j) = Abar^start * Abar^j: one table of powers serves every block
                coef = c * bbar * cmath.exp(log_abar * start)  # (dirs, H, N/2)
                blocks.append(2 * torch.einsum("khn,hnl->khl", coef, base[..., :n]).real)
            return torch.cat(blocks, dim=-1) if blocks else c.real.new_zeros(c.shape[:2] + (0,))
        return self._cauchy_kernel(length)

    def _cauchy_kernel(self, length: int) -> Tensor:
        n_fft = length if length % 2 else length + 1  # odd: z = -1 is never a root of unity
        abar, _, c = self.discrete_dense()
        # C (I - Abar^n): (dirs, H, N)
        ctilde = c - (c[..., None, :] @ torch.linalg.matrix_power(abar, n_fft))[..., 0, :]
        lam = self.eigenvalues()
        lam_full = torch.cat((lam, lam.conj()), dim=-1)  # (H, N)
        p, b = _complex(self.p), _complex(self.b)
        p_full, b_full = torch.cat((p, p.conj()), -1), torch.cat((b, b.conj()), -1)
        khats = []
        # frequencies in blocks, so the Cauchy matrix is (H, N, TIME_BLOCK) at a time
        for start, n in _time_blocks(n_fft // 2 + 1):
            k = torch.arange(start, start + n, device=lam.device)
            z = torch.exp(-2j * math.pi * k / n_fft).to(torch.complex64)  # (F,) roots of unity
            g = (2 / self.dt()[:, None]) * (1 - z) / (1 + z)  # (H, F)
            r = 1 / (g[:, None, :] - lam_full[:, :, None])  # (H, N, F): the Cauchy matrix
            k00 = torch.einsum("khn,hnf->khf", ctilde * b_full, r)
            k01 = torch.einsum("khn,hnf->khf", ctilde * p_full, r)
            k10 = torch.einsum("hn,hnf->hf", p_full.conj() * b_full, r)
            k11 = torch.einsum("hn,hnf->hf", p_full.conj() * p_full, r)
            khats.append(2 / (1 + z) * (k00 - k01 * k10 / (1 + k11)))  # (dirs, H, F)
        return torch.fft.irfft(torch.cat(khats, dim=-1), n=n_fft)[..., :length]

    def init_state(self, batch_size: int, device=None, dtype=None) -> Tensor:
        """``(B, H, N/2)`` complex64: the N/2 modes (their conjugates are implied). Kept in fp32."""
        if not self.causal:
            raise MixerInputError("a bidirectional S4 (causal=False) carries no state")
        return torch.zeros(batch_size, self.d_model, self.n_half, dtype=torch.complex64, device=device)

    def state_size(self, seq_len: int) -> int:
        return self.d_model * 2 * self.n_half

    def check_state(self, state: Any, batch_size: int) -> None:
        want = (batch_size, self.d_model, self.n_half)
        if not isinstance(state, Tensor) or not state.is_complex() or tuple(state.shape) != want:
            got = f"{state.dtype} {tuple(state.shape)}" if isinstance(state, Tensor) else type(state).__name__
            raise MixerInputError(
                f"{type(self).__name__} expects a complex state of shape (B, H, N/2) = {want} (batch size "
                f"{batch_size}), got {got}; start from init_state({batch_size}) of this mixer"
            )

    def _block(self, x: Tensor, ssm_out: Tensor) -> Tensor:
        y = self.out_proj(F.gelu(ssm_out + self.d.float() * x.float()).to(x.dtype))
        return F.glu(y, dim=-1) if self.config.output == "glu" else y

    def _forward(self, x: Tensor, state: Tensor | None, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        u = x.float()
        if mask is not None:
            u = u * mask[..., None]  # padded inputs never enter the state or a two-sided kernel
        backend = self.resolve_backend(x.device)
        if not self.causal:
            return self._block(x, self._bidirectional(u, backend)), None
        if backend == "reference":
            y, new_state = self._recurrence(u, state)
        else:
            t = u.shape[1]
            y = long_conv(u, self.kernel(t)[0])
            contrib, new_state = self._state_terms(u, state)
            y = y + contrib
        return self._block(x, y), new_state

    def _recurrence(self, u: Tensor, state: Tensor | None, reverse: bool = False, direction: int = 0):
        """The SSM one step at a time: ``y (B, T, H)`` and the final half state (B, H, N/2)."""
        if reverse:
            u = u.flip(1)
        if self.diagonal:
            log_abar, bbar, c = self.discrete_diag()
            b_in = bbar * u[..., None]  # (B, T, H, N/2)
            h, h_last = linear_scan(torch.exp(log_abar)[None, None], b_in, state, backend="reference")
            y = 2 * torch.einsum("hn,bthn->bth", c[direction], h).real
        else:
            abar, bbar, c = self.discrete_dense()
            h_full = torch.zeros(u.shape[0], self.d_model, 2 * self.n_half, dtype=abar.dtype, device=u.device)
            if state is not None:
                h_full = torch.cat((state, state.conj()), dim=-1)
            ys = []
            for u_t in u.unbind(1):  # (B, H)
                h_full = torch.einsum("hij,bhj->bhi", abar, h_full) + bbar * u_t[..., None]
                ys.append(torch.einsum("hn,bhn->bh", c[direction], h_full).real)
            y = torch.stack(ys, dim=1) if ys else u
            h_last = h_full[..., : self.n_half]
        if reverse:
            y = y.flip(1)
        return y, h_last

    def _state_terms(self, u: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
        """Output from the carried-in state, ``2 Re(C Abar^{t+1} x0)`` (B, T, H), and the new state."""
        t = u.shape[1]
        uc = u.to(torch.complex64)
        contribs = []
        if self.diagonal:
            log_abar, bbar, c = self.discrete_diag()
            base = _diag_powers(log_abar, t)  # (H, N/2, TIME_BLOCK): Abar^j
            new_state = uc.new_zeros(u.shape[0], self.d_model, self.n_half)
            for start, n in _time_blocks(t):
                # sum over the block of Abar^{T-1-s} Bbar u_s = Abar^{T-start-n} sum_j Abar^{n-1-j} Bbar u_j
                weights = (bbar[..., None] * base[..., :n]).flip(-1)  # (H, N/2, n)
                part = torch.einsum("bjh,hnj->bhn", uc[:, start : start + n], weights)
                new_state = new_state + cmath.exp(log_abar * (t - start - n)) * part
                if state is not None:
                    coef = c[0] * cmath.exp(log_abar * (start + 1))  # C Abar^{start+1}
                    contribs.append(2 * torch.einsum("hn,hnj,bhn->bjh", coef, base[..., :n], state).real)
            if state is not None:
                new_state = new_state + cmath.exp(log_abar * t) * state
            return (torch.cat(contribs, dim=1) if contribs else u.new_zeros(())), new_state
        abar, bbar, c = self.discrete_dense()
        width = min(t, TIME_BLOCK)
        kb = _krylov(abar, bbar, width)  # (H, N, width): Abar^j Bbar
        jump = {n: torch.linalg.matrix_power(abar, n) for _, n in _time_blocks(t)}  # Abar^n per block length
        new_full = uc.new_zeros(u.shape[0], self.d_model, 2 * self.n_half)
        for start, n in _time_blocks(t):
            # carry the sum so far over this block, then add the block's inputs at powers n-1 .. 0
            new_full = torch.einsum("hij,bhj->bhi", jump[n], new_full)
            new_full = new_full + torch.einsum("bjh,hnj->bhn", uc[:, start : start + n], kb[..., :n].flip(-1))
        if state is not None:
            g = torch.cat((state, state.conj()), dim=-1)  # (B, H, N): Abar^start x0, block by block
            abar_t = abar.transpose(-1, -2)
            # rows C Abar^{j+1}, j < width, as Krylov columns of Abar^T from Abar^T C^T
            rows = _krylov(abar_t, (abar_t @ c[0][..., None])[..., 0], width)  # (H, N, width)
            for start, n in _time_blocks(t):
                contribs.append(torch.einsum("hnj,bhn->bjh", rows[..., :n], g).real)
                g = torch.einsum("hij,bhj->bhi", jump[n], g)
            new_full = new_full + g  # Abar^T x0
        return (torch.cat(contribs, dim=1) if contribs else u.new_zeros(())), new_full[..., : self.n_half]

    def _bidirectional(self, u: Tensor, backend: str) -> Tensor:
        t = u.shape[1]
        if backend == "reference":
            forward, _ = self._recurrence(u, None, direction=0)
            # the backward SSM sees u_{t+1}, u_{t+2}, ...: shift by one so u_t is counted once
            shifted = F.pad(u[:, 1:], (0, 0, 0, 1))
            backward, _ = self._recurrence(shifted, None, reverse=True, direction=1)
            return forward + backward
        k = self.kernel(t)  # (2, H, T)
        # two-sided kernel centred at T-1: lag s >= 0 -> K_fwd[s]; lag -(l+1) -> K_bwd[l]
        two_sided = torch.cat((k[1, :, : t - 1].flip(-1), k[0]), dim=-1)  # (H, 2T-1)
        return long_conv(u, two_sided, causal=False)

    def _decoding_system(self) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`discrete_dense`, kept between ``step`` calls while no gradient is recorded.

        Discretising the dense system solves H (N, N) systems, O(H N^3), against O(H N^2)
        for the step itself; the cache is keyed on the parameters' identities and in-place
        versions, so an optimizer update or a move invalidates it.
        """
        if torch.is_grad_enabled():
            return self.discrete_dense()
        params = (self.log_neg_re, self.lam_im, self.p, self.b, self.c, self.log_dt)
        key = tuple((p.data_ptr(), p._version, p.device, p.dtype) for p in params)
        cached = getattr(self, "_decoding_cache", None)
        if cached is None or cached[0] != key:
            cached = (key, self.discrete_dense())
            self._decoding_cache = cached
        return cached[1]

    def _step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        u = x_t.float()  # (B, H)
        if self.diagonal:
            log_abar, bbar, c = self.discrete_diag()
            state = torch.exp(log_abar) * state + bbar * u[..., None]
            y = 2 * torch.einsum("hn,bhn->bh", c[0], state).real
        else:
            abar, bbar, c = self._decoding_system()
            h_full = torch.cat((state, state.conj()), dim=-1)
            h_full = torch.einsum("hij,bhj->bhi", abar, h_full) + bbar * u[..., None]
            y = torch.einsum("hn,bhn->bh", c[0], h_full).real
            state = h_full[..., : self.n_half]
        return self._block(x_t, y), state


@register("s4d")
class S4D(S4):
    """S4D: diagonal state space model (S4D-LegS/Lin init) with a Vandermonde convolution kernel."""

    config_class = S4DConfig
