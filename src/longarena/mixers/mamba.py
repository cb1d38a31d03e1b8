"""Mamba (Gu & Dao 2023): a selective state space model, its step, input and output maps
computed from the input.

With E = expand * D inner channels, N states per channel and R = dt_rank::

    x, z = split(W_in x)                          (B, T, E) each
    x = silu(causal depthwise conv_k(x))          k = d_conv taps; its state: the last k-1 inputs
    dt, B, C = softplus(W_dt W_r x + b_dt), W_B x, W_C x     (B, T, E), (B, T, N), (B, T, N)
    h_t = exp(dt_t A) * h_{t-1} + dt_t x_t B_t    h: (B, E, N), A = -exp(A_log): (E, N)
    y_t = C_t . h_t + D x_t
    out = W_out (y * silu(z))

Selection is what makes it more than an LTI filter: a token can set ``dt`` near 0 (ignore me,
keep the state) or large (reset to me). The selective scan runs on
:func:`longarena.ops.scan.selective_scan`: backend ``reference`` (a plain loop over t),
``chunked`` (blocks of time, closed form in log space inside short chunks: CPU's fastest) or
``triton`` (a sequential-in-time GPU kernel; on CPU only under ``TRITON_INTERPRET=1``, for
tests). ``auto`` takes ``triton`` on CUDA when Triton imports, else ``chunked`` (or the loop
for short chunks of large batches: ``SHORT_SEQUENCE``, ``LOOP_STATE``). ``step`` carries
``(conv, ssm)``: the last k-1 conv inputs ``(B, E, k-1)`` and ``h (B, E, N)``.

``A_log``, ``D`` and the ``dt`` bias stay in fp32 when the module is cast to bf16, and the scan
accumulates in fp32 (its state is fp32 too): ``exp(dt A)`` raised over thousands of steps
would drift in bf16. With a padding ``mask``, padded steps get ``dt = 0`` (the SSM state
passes through them unchanged) and zero conv input.
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
from longarena.ops.scan import selective_scan


@dataclasses.dataclass
class MambaConfig(MixerConfig):
    #: N, states per inner channel
    d_state: int = 16
    #: k, taps of the causal depthwise conv
    d_conv: int = 4
    #: E = expand * d_model inner channels
    expand: int = 2
    #: R, rank of the dt projection; None = ceil(d_model / 16)
    dt_rank: int | None = None
    #: initial dt sampled log-uniformly in [dt_min, dt_max] per channel (through the dt bias)
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    dt_init_floor: float = 1e-4
    bias: bool = False
    conv_bias: bool = True

    def validate(self) -> None:
        super().validate()
        for name in ("d_state", "d_conv", "expand"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        if self.dt_rank is not None and (not isinstance(self.dt_rank, int) or self.dt_rank < 1):
            raise ConfigError(
                f"dt_rank must be a positive int or None (= ceil(d_model / 16)), got {self.dt_rank!r}"
            )
        if not (self.dt_min > 0 and self.dt_max >= self.dt_min and math.isfinite(self.dt_max)):
            raise ConfigError(
                f"need finite 0 < dt_min <= dt_max for the step-size init, got dt_min={self.dt_min}, "
                f"dt_max={self.dt_max}"
            )
        if not self.dt_init_floor > 0:
            raise ConfigError(f"dt_init_floor must be > 0, got {self.dt_init_floor}")


@dataclasses.dataclass
class MambaState:
    """``conv``: the last k-1 conv inputs (B, E, k-1); ``ssm``: h (B, E, N), fp32."""

    conv: Tensor
    ssm: Tensor


#: under backend="auto" on CPU, chunks of at most SHORT_SEQUENCE steps whose per-step state
#: (B E N numbers) is at least LOOP_STATE run the plain loop (see _forward)
SHORT_SEQUENCE = 64
LOOP_STATE = 2**16


@register("mamba")
class Mamba(KeepFP32Params, Mixer):
    """Mamba: selective SSM (input-dependent dt, B, C) with a short causal conv and SiLU gate."""

    config_class = MambaConfig
    backends = ("reference", "chunked", "triton")
    triton_backends = ("triton",)
    fp32_params = ("A_log", "D")

    def __init__(self, config: MambaConfig) -> None:
        super().__init__(config)
        d = config.d_model
        self.d_inner = e = config.expand * d
        self.d_state = n = config.d_state
        self.d_conv = config.d_conv
        self.dt_rank = r = config.dt_rank or math.ceil(d / 16)
        self.in_proj = nn.Linear(d, 2 * e, bias=config.bias)
        self.conv1d = nn.Conv1d(e, e, config.d_conv, groups=e, bias=config.conv_bias)
        self.x_proj = nn.Linear(e, r + 2 * n, bias=False)
        self.dt_proj = DtProjection(r, e, config)
        # S4D-Real init: A_n = -(n + 1) in every channel
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(e, 1))
        self.D = nn.Parameter(torch.ones(e))
        self.out_proj = nn.Linear(e, d, bias=config.bias)

    def init_state(self, batch_size: int, device=None, dtype=None) -> MambaState:
        dtype = dtype or self.in_proj.weight.dtype
        return MambaState(
            conv=torch.zeros(batch_size, self.d_inner, self.d_conv - 1, device=device, dtype=dtype),
            ssm=torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=torch.float32),
        )

    def state_size(self, seq_len: int) -> int:
        return self.d_inner * (self.d_conv - 1 + self.d_state)

    def check_state(self, state: Any, batch_size: int) -> None:
        conv_shape = (batch_size, self.d_inner, self.d_conv - 1)
        ssm_shape = (batch_size, self.d_inner, self.d_state)
        if (
            not isinstance(state, MambaState)
            or tuple(state.conv.shape) != conv_shape
            or tuple(state.ssm.shape) != ssm_shape
        ):
            got = (
                f"conv {tuple(state.conv.shape)}, ssm {tuple(state.ssm.shape)}"
                if isinstance(state, MambaState)
                else type(state).__name__
            )
            raise MixerInputError(
                f"Mamba expects a MambaState with conv (B, E, k-1) = {conv_shape} and ssm (B, E, N) = "
                f"{ssm_shape} (batch size {batch_size}), got {got}; "
                f"start from init_state({batch_size}) of this mixer"
            )

    def _ssm_inputs(self, xc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """dt (B, T, E) fp32, B (B, T, N), C (B, T, N) from the conv output ``xc: (B, T, E)``."""
        dt_low, b, c = self.x_proj(xc).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        return self.dt_proj(dt_low), b, c

    def _forward(self, x: Tensor, state: MambaState | None, mask: Tensor | None) -> tuple[Tensor, MambaState]:
        bsz, t, _ = x.shape
        xi, z = self.in_proj(x).chunk(2, dim=-1)  # (B, T, E) each
        if mask is not None:
            xi = xi * mask[..., None]
        if state is None:
            state = self.init_state(bsz, x.device, xi.dtype)
        k = self.d_conv
        conv_in = torch.cat((state.conv.to(xi.dtype), xi.transpose(1, 2)), dim=-1)  # (B, E, k-1+T)
        xc = F.silu(self.conv1d(conv_in).transpose(1, 2))  # (B, T, E)
        dt, b, c = self._ssm_inputs(xc)
        if mask is not None:
            dt = dt * mask[..., None]
        a = -torch.exp(self.A_log.float())  # (E, N)
        backend = self.resolve_backend(x.device)
        if self.backend == "auto":
            if x.is_cuda and "triton" in self.available_backends(x.device):
                backend = "triton"
            elif xc.shape[1] <= SHORT_SEQUENCE and bsz * self.d_inner * self.d_state >= LOOP_STATE:
                # short chunks of a large batch: each of the loop's steps is already a long
                # vectorised op, and the blocked path's workspace leaves the cache (CPU,
                # d_model 64, fwd+bwd, loop vs chunked: batch 32, T = 64 59 vs 66 ms; batch 128,
                # T = 64 287 vs 414 ms; but batch 8, T = 64 22 vs 16 ms, batch 1 11 vs 3 ms)
                backend = "reference"
            else:
                backend = "chunked"
        y, h = selective_scan(xc, dt, a, b, c, self.D, state.ssm, backend=backend)
        out = self.out_proj(y * F.silu(z))
        new_conv = conv_in[..., conv_in.shape[-1] - (k - 1) :]  # the last k-1 inputs
        return out, MambaState(conv=new_conv, ssm=h)

    def _step(self, x_t: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        xi, z = self.in_proj(x_t).chunk(2, dim=-1)  # (B, E)
        window = torch.cat((state.conv.to(xi.dtype), xi[..., None]), dim=-1)  # (B, E, k)
        xc = torch.einsum("bek,ek->be", window, self.conv1d.weight[:, 0])
        if self.conv1d.bias is not None:
            xc = xc + self.conv1d.bias
        xc = F.silu(xc)
        dt, b, c = self._ssm_inputs(xc)
        a = -torch.exp(self.A_log.float())
        h = torch.exp(dt[..., None] * a) * state.ssm + (dt * xc.float())[..., None] * b.float()[:, None, :]
        y = torch.einsum("ben,bn->be", h, c.float()) + self.D * xc.float()
        out = self.out_proj(y.to(xi.dtype) * F.silu(z))
        return out, MambaState(conv=window[..., 1:], ssm=h)


class DtProjection(KeepFP32Params):
    """``dt = softplus(W x + b)``: (.., R) -> (.., E) fp32; ``b`` stays fp32 under bf16 casts.

    The bias is the inverse softplus of steps drawn log-uniformly in [dt_min, dt_max], so
    training starts from the intended timescales.
    """

    fp32_params = ("bias",)

    def __init__(self, rank: int, channels: int, config: MambaConfig) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels, rank))
        nn.init.uniform_(self.weight, -(rank**-0.5), rank**-0.5)
        log_lo, log_hi = math.log(config.dt_min), math.log(config.dt_max)
        dt = torch.exp(torch.rand(channels) * (log_hi - log_lo) + log_lo).clamp(min=config.dt_init_floor)
        self.bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)

    def forward(self, x: Tensor) -> Tensor:
        return F.softplus(F.linear(x, self.weight).float() + self.bias)
