"""S5 (Smith, Warrington & Linderman 2023): one multi-input multi-output diagonal SSM per layer.

Where S4 runs H independent single-input SSMs, S5 runs one SSM with a P-dimensional state
driven by all H channels at once, kept diagonal so it can be run as a parallel scan::

    x_t = Lambdabar * x_{t-1} + Bbar u_t        x: (B, P/2) complex, u_t: (B, H)
    y_t = 2 Re(Ctilde x_t) + D u_t              Ctilde: (H, P/2), D: (H,)
    out = W_out gelu(y)

Initialisation (HiPPO-N, diagonalised): ``Lambda`` are the eigenvalues of the normal part of
HiPPO-LegS, ``-1/2 + i w``, and V its (unitary) eigenvectors, optionally as ``blocks`` copies
of a smaller HiPPO-N along the diagonal; ``Btilde = V^* B`` and ``Ctilde = C V`` for real
Gaussian ``B (P, H)`` and ``C (H, P)``. A is real, so its eigenvalues come in conjugate
pairs; only the P/2 with positive imaginary part are kept and ``2 Re`` stands for the other
half (conjugate symmetry). Each state has its own learnable step ``dt = exp(log_dt)``;
discretisation is zero-order hold (``Lambdabar = exp(dt Lambda)``,
``Bbar = (Lambdabar - 1) / Lambda * Btilde``) or bilinear.

Computation modes: ``forward`` scans ``Bbar u`` with :func:`longarena.ops.scan.linear_scan`
(backend ``reference``: a loop over t; ``associative``: the log-depth associative scan of
the paper; ``scan``: the two-level chunked form, the default, less work on CPU), ``step``
is the recurrence. The state is ``x (B, P/2)`` complex64, fp32 whatever the module dtype;
the SSM parameters stay fp32 when the module is cast to bf16. ``causal=False`` adds a
second scan backwards in time, read out by its own ``Ctilde``, for classification. With a
padding ``mask``, padded steps have decay 1 and input 0, so the state passes through them
unchanged.
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
from longarena.mixers.s4 import hippo_legs
from longarena.ops.scan import linear_scan


def hippo_n_diagonal(n: int) -> tuple[Tensor, Tensor]:
    """Eigen-decomposition of HiPPO-N (the normal part of HiPPO-LegS, ``A + P P^T``), N even.

    Returns ``(Lambda (N/2,), V (N, N/2))`` complex128: the eigenvalues with positive
    imaginary part and their unit eigenvectors (the rest are conjugates).
    """
    a, _, p = hippo_legs(n)
    normal = a + p[:, None] * p[None, :]  # -I/2 + skew-symmetric
    w, v = torch.linalg.eigh(-1j * (normal + 0.5 * torch.eye(n, dtype=torch.float64)).to(torch.complex128))
    keep = torch.argsort(w, descending=True)[: n // 2]
    return -0.5 + 1j * w[keep], v[:, keep]


@dataclasses.dataclass
class S5Config(MixerConfig):
    #: P, real state size of the layer (P/2 complex modes in conjugate pairs)
    d_state: int = 64
    #: the HiPPO-N init as this many copies of a (P / blocks)-sized one along the diagonal
    blocks: int = 1
    #: "zoh" or "bilinear"
    discretization: str = "zoh"
    #: per-state steps are initialised log-uniformly in [dt_min, dt_max]
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    #: False: bidirectional (a second scan backwards in time with its own C), for classification
    causal: bool = True

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.blocks, int) or self.blocks < 1:
            raise ConfigError(f"blocks must be a positive int, got {self.blocks!r}")
        if (
            not isinstance(self.d_state, int)
            or self.d_state <= 0
            or self.d_state % (2 * self.blocks)
        ):
            raise ConfigError(
                f"d_state must be a positive multiple of 2 * blocks = {2 * self.blocks} (each block holds "
                f"conjugate pairs), got {self.d_state!r}"
            )
        if self.discretization not in ("zoh", "bilinear"):
            raise ConfigError(f"discretization must be 'zoh' or 'bilinear', got {self.discretization!r}")
        if not (self.dt_min > 0 and self.dt_max >= self.dt_min and math.isfinite(self.dt_max)):
            raise ConfigError(
                f"need finite 0 < dt_min <= dt_max for the step-size init, got dt_min={self.dt_min}, "
                f"dt_max={self.dt_max}"
            )


@register("s5")
class S5(KeepFP32Params, Mixer):
    """S5: one MIMO diagonal SSM per layer (HiPPO-N init, conjugate symmetry), run as a parallel scan."""

    config_class = S5Config
    backends = ("reference", "associative", "scan")
    fp32_params = ("log_neg_re", "lam_im", "b", "c", "d", "log_dt")

    def __init__(self, config: S5Config) -> None:
        super().__init__(config)
        self.causal = config.causal
        h, p2 = config.d_model, config.d_state // 2
        self.n_half = p2
        block = config.d_state // config.blocks
        lam_blk, v_blk = hippo_n_diagonal(block)
        lam = lam_blk.repeat(config.blocks)  # (P/2,)
        v = torch.block_diag(*[v_blk] * config.blocks)  # (P, P/2)
        b = torch.randn(config.d_state, h, dtype=torch.float64) / math.sqrt(h)  # lecun normal
        n_dirs = 1 if config.causal else 2
        c = torch.randn(n_dirs, h, config.d_state, dtype=torch.float64) / math.sqrt(config.d_state)
        b_tilde = v.conj().T @ b.to(torch.complex128)  # (P/2, H)
        c_tilde = c.to(torch.complex128) @ v  # (dirs, H, P/2): the second set reads the backward scan
        self.log_neg_re = nn.Parameter(torch.log(-lam.real).float())  # Re(Lambda) < 0 always
        self.lam_im = nn.Parameter(lam.imag.float())
        self.b = nn.Parameter(torch.view_as_real(b_tilde.to(torch.complex64)).clone())  # (P/2, H, 2)
        self.c = nn.Parameter(torch.view_as_real(c_tilde.to(torch.complex64)).clone())  # (dirs, H, P/2, 2)
        self.d = nn.Parameter(torch.randn(h))
        log_lo, log_hi = math.log(config.dt_min), math.log(config.dt_max)
        self.log_dt = nn.Parameter(torch.rand(p2) * (log_hi - log_lo) + log_lo)
        self.out_proj = nn.Linear(h, h)

    def discrete(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(Lambdabar (P/2,), Bbar (P/2, H), Ctilde (dirs, H, P/2))``, complex64."""
        lam = torch.complex(-torch.exp(self.log_neg_re.float()), self.lam_im.float())
        dt = torch.exp(self.log_dt.float())
        b = torch.view_as_complex(self.b.float().contiguous())
        c = torch.view_as_complex(self.c.float().contiguous())
        if self.config.discretization == "zoh":
            lam_bar = torch.exp(dt * lam)
            b_bar = ((lam_bar - 1) / lam)[:, None] * b
        else:
            denom = 1 - dt / 2 * lam
            lam_bar = (1 + dt / 2 * lam) / denom
            b_bar = (dt / denom)[:, None] * b
        return lam_bar, b_bar, c

    def init_state(self, batch_size: int, device=None, dtype=None) -> Tensor:
        """``(B, P/2)`` complex64 (fp32 whatever ``dtype``)."""
        return torch.zeros(batch_size, self.n_half, dtype=torch.complex64, device=device)

    def state_size(self, seq_len: int) -> int:
        return 2 * self.n_half

    def check_state(self, state: Any, batch_size: int) -> None:
        want = (batch_size, self.n_half)
        if not isinstance(state, Tensor) or not state.is_complex() or tuple(state.shape) != want:
            got = f"{state.dtype} {tuple(state.shape)}" if isinstance(state, Tensor) else type(state).__name__
            raise MixerInputError(
                f"S5 expects a complex state of shape (B, P/2) = {want} (batch size {batch_size}), "
                f"got {got}; "
                f"start from init_state({batch_size}) of this mixer"
            )

    def _forward(self, x: Tensor, state: Tensor | None, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        u = x.float()
        lam_bar, b_bar, c = self.discrete()
        inp = torch.einsum("nh,bth->btn", b_bar, u.to(b_bar.dtype))  # (B, T, P/2)
        decay = lam_bar[None, None].expand_as(inp) if mask is None else lam_bar[None, None]
        if mask is not None:
            m = mask[..., None]
            inp = inp * m
            decay = torch.where(m, lam_bar, torch.ones_like(lam_bar))  # (B, T, P/2)
        backend = {"reference": "reference", "associative": "parallel", "scan": "chunked"}
        backend = backend[self.resolve_backend(x.device)]
        hs, h_last = linear_scan(decay, inp, state, backend=backend)
        y = 2 * torch.einsum("hn,btn->bth", c[0], hs).real + self.d * u
        if not self.causal:
            # padded inputs are zero, so the backward scan reaches the real tokens from a zero state
            hs_back, _ = linear_scan(decay.flip(1), inp.flip(1), None, backend=backend)
            y = y + 2 * torch.einsum("hn,btn->bth", c[1], hs_back.flip(1)).real
            h_last = None
        return self.out_proj(F.gelu(y).to(x.dtype)), h_last

    def _step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        u = x_t.float()
        lam_bar, b_bar, c = self.discrete()
        state = lam_bar * state + torch.einsum("nh,bh->bn", b_bar, u.to(b_bar.dtype))
        y = 2 * torch.einsum("hn,bn->bh", c[0], state).real + self.d * u
        return self.out_proj(F.gelu(y).to(x_t.dtype)), state
