"""Mamba-2 (Dao & Gu 2024): the selective SSM with a scalar decay per head, computed as
structured state space duality (SSD), i.e. as decayed linear attention.

With E = expand * D inner channels split into H = E / P heads of P channels, N states and
G groups of heads sharing B and C::

    z, xBC, dt = split(W_in x)                   (B, T, E), (B, T, E + 2 G N), (B, T, H)
    x, B, C = split(silu(causal depthwise conv_k(xBC)))      (B, T, H, P), (B, T, G, N) x 2
    dt = softplus(dt + dt_bias);  A = -exp(A_log): (H,)
    S_t = exp(dt_t A) S_{t-1} + B_t^T (dt_t x_t)  S: (B, H, N, P), one scalar decay per head
    y_t = C_t S_t + D x_t
    out = W_out RMSNorm(y * silu(z))

The recurrence is :func:`longarena.ops.linear_attn.linear_attention` with ``q = C``,
``k = B``, ``v = dt x`` and ``log_decay = dt A``: backend ``reference`` runs its token loop,
``chunked`` its torch chunked form (CPU) and ``triton`` its Triton kernels (``auto`` on
CUDA). B and C reach the heads of their group as stride-0 views, never copied. ``step``
carries ``(conv, ssm)``: the last k-1 conv inputs ``(B, E + 2 G N, k-1)`` and ``S``.

``A_log``, ``D`` and ``dt_bias`` stay fp32 when the module is cast to bf16, and the state is
fp32. With a padding ``mask``, padded steps get ``dt = 0`` (the state passes through them)
and zero conv input.
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
from longarena.ops.linear_attn import linear_attention, linear_attention_step


@dataclasses.dataclass
class Mamba2Config(MixerConfig):
    #: N, states per head
    d_state: int = 64
    #: P, channels per head (the SSD head dimension)
    head_dim: int = 64
    #: G, groups of heads sharing B and C
    n_groups: int = 1
    #: k, taps of the causal depthwise conv
    d_conv: int = 4
    #: E = expand * d_model inner channels
    expand: int = 2
    #: initial dt sampled log-uniformly in [dt_min, dt_max] per head (through the dt bias)
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    #: A = -exp(A_log) drawn uniformly in -[a_init_min, a_init_max] per head
    a_init_min: float = 1.0
    a_init_max: float = 16.0
    norm_eps: float = 1e-5
    bias: bool = False
    conv_bias: bool = True

    def validate(self) -> None:
        super().validate()
        for name in ("d_state", "head_dim", "n_groups", "d_conv", "expand"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        inner = self.expand * self.d_model
        if inner % self.head_dim:
            raise ConfigError(
                f"the inner width expand * d_model = {inner} must be a multiple of head_dim ({self.head_dim})"
            )
        if (inner // self.head_dim) % self.n_groups:
            raise ConfigError(
                f"the {inner // self.head_dim} heads must split evenly into n_groups ({self.n_groups}) groups"
            )
        if not (0 < self.dt_min <= self.dt_max and math.isfinite(self.dt_max)):
            raise ConfigError(f"need finite 0 < dt_min <= dt_max, got dt_min={self.dt_min}, dt_max={self.dt_max}")
        if not (0 < self.a_init_min <= self.a_init_max and math.isfinite(self.a_init_max)):
            raise ConfigError(
                f"need finite 0 < a_init_min <= a_init_max, got {self.a_init_min}, {self.a_init_max}"
            )
        if not self.norm_eps > 0:
            raise ConfigError(f"norm_eps must be > 0, got {self.norm_eps}")


@dataclasses.dataclass
class Mamba2State:
    """``conv``: the last k-1 conv inputs (B, E + 2 G N, k-1); ``ssm``: S (B, H, N, P), fp32."""

    conv: Tensor
    ssm: Tensor


@register("mamba2")
class Mamba2(KeepFP32Params, Mixer):
    """Mamba-2: SSD (scalar decay per head) with a short causal conv, gate and grouped B, C."""

    config_class = Mamba2Config
    backends = ("reference", "chunked", "triton")
    triton_backends = ("triton",)
    fp32_params = ("A_log", "D", "dt_bias")

    def __init__(self, config: Mamba2Config) -> None:
        super().__init__(config)
        d = config.d_model
        self.d_inner = e = config.expand * d
        self.head_dim = p = config.head_dim
        self.n_heads = h = e // p
        self.n_groups = g = config.n_groups
        self.d_state = n = config.d_state
        self.d_conv = config.d_conv
        self.norm_eps = config.norm_eps
        self.conv_dim = e + 2 * g * n
        self.in_proj = nn.Linear(d, e + self.conv_dim + h, bias=config.bias)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, config.d_conv, groups=self.conv_dim, bias=config.conv_bias)
        log_lo, log_hi = math.log(config.dt_min), math.log(config.dt_max)
        dt = torch.exp(torch.rand(h) * (log_hi - log_lo) + log_lo)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.A_log = nn.Parameter(torch.log(torch.empty(h).uniform_(config.a_init_min, config.a_init_max)))
        self.D = nn.Parameter(torch.ones(h))
        self.norm_weight = nn.Parameter(torch.ones(e))
        self.out_proj = nn.Linear(e, d, bias=config.bias)

    def init_state(self, batch_size: int, device=None, dtype=None) -> Mamba2State:
        dtype = dtype or self.in_proj.weight.dtype
        return Mamba2State(
            conv=torch.zeros(batch_size, self.conv_dim, self.d_conv - 1, device=device, dtype=dtype),
            ssm=torch.zeros(batch_size, self.n_heads, self.d_state, self.head_dim, device=device, dtype=torch.float32),
        )

    def state_size(self, seq_len: int) -> int:
        return self.conv_dim * (self.d_conv - 1) + self.n_heads * self.d_state * self.head_dim

    def check_state(self, state: Any, batch_size: int) -> None:
        conv_shape = (batch_size, self.conv_dim, self.d_conv - 1)
        ssm_shape = (batch_size, self.n_heads, self.d_state, self.head_dim)
        if (
            not isinstance(state, Mamba2State)
            or tuple(state.conv.shape) != conv_shape
            or tuple(state.ssm.shape) != ssm_shape
        ):
            got = (
                f"conv {tuple(state.conv.shape)}, ssm {tuple(state.ssm.shape)}"
                if isinstance(state, Mamba2State)
                else type(state).__name__
            )
            raise MixerInputError(
                f"Mamba2 expects a Mamba2State with conv (B, E + 2GN, k-1) = {conv_shape} and ssm (B, H, N, P) = "
                f"{ssm_shape} (batch size {batch_size}), got {got}; start from init_state({batch_size}) of this mixer"
            )

    def _split(self, xbc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (.., H, P), B and C (.., H, N) from the conv output ``xbc: (.., E + 2GN)``; B and C
        are broadcast from their group to its heads without a copy."""
        e, g, n, h = self.d_inner, self.n_groups, self.d_state, self.n_heads
        x, b, c = xbc.split([e, g * n, g * n], dim=-1)
        lead = xbc.shape[:-1]
        x = x.unflatten(-1, (h, self.head_dim))
        b = b.unflatten(-1, (g, 1, n)).expand(*lead, g, h // g, n).flatten(-3, -2)
        c = c.unflatten(-1, (g, 1, n)).expand(*lead, g, h // g, n).flatten(-3, -2)
        return x, b, c

    def _output(self, y: Tensor, z: Tensor) -> Tensor:
        """Gated RMS norm of ``y: (.., E)`` (fp32) by ``z``, then the output projection."""
        y = y * F.silu(z.float())
        y = y * torch.rsqrt(y.square().mean(-1, keepdim=True) + self.norm_eps)
        return self.out_proj((y * self.norm_weight.float()).to(z.dtype))

    def _forward(self, x: Tensor, state: Mamba2State | None, mask: Tensor | None) -> tuple[Tensor, Mamba2State]:
        bsz, t, _ = x.shape
        z, xbc, dt = self.in_proj(x).split([self.d_inner, self.conv_dim, self.n_heads], dim=-1)
        if mask is not None:
            xbc = xbc * mask[..., None]
        if state is None:
            state = self.init_state(bsz, x.device, xbc.dtype)
        k = self.d_conv
        conv_in = torch.cat((state.conv.to(xbc.dtype), xbc.transpose(1, 2)), dim=-1)  # (B, E + 2GN, k-1+T)
        # conv1d leaves time innermost; the kernels read channels innermost: one copy here
        xbc = F.silu(self.conv1d(conv_in)).transpose(1, 2).contiguous()  # (B, T, E + 2GN)
        xs, b, c = self._split(xbc)  # (B, T, H, P), (B, T, H, N) x 2
        dt = F.softplus(dt.float() + self.dt_bias)  # (B, T, H)
        if mask is not None:
            dt = dt * mask[..., None]
        log_decay = (dt * -torch.exp(self.A_log.float())).transpose(1, 2)  # (B, H, T)
        v = (xs * dt[..., None]).to(xs.dtype)  # (B, T, H, P)
        backend = self.resolve_backend(x.device)
        y, s = linear_attention(
            c.transpose(1, 2),  # q: (B, H, T, N)
            b.transpose(1, 2),  # k: (B, H, T, N)
            v.transpose(1, 2),  # v: (B, H, T, P)
            log_decay=log_decay,
            state=state.ssm,
            # under auto the op picks the kernels itself and says why when it cannot take them
            backend="auto" if self.backend == "auto" else backend,
        )
        y = y.transpose(1, 2).float() + self.D[:, None] * xs.float()  # (B, T, H, P)
        out = self._output(y.flatten(-2), z)
        new_conv = conv_in[..., conv_in.shape[-1] - (k - 1) :]  # the last k-1 inputs
        return out, Mamba2State(conv=new_conv, ssm=s)

    def _step(self, x_t: Tensor, state: Mamba2State) -> tuple[Tensor, Mamba2State]:
        z, xbc, dt = self.in_proj(x_t).split([self.d_inner, self.conv_dim, self.n_heads], dim=-1)
        window = torch.cat((state.conv.to(xbc.dtype), xbc[..., None]), dim=-1)  # (B, E + 2GN, k)
        xbc = torch.einsum("bck,ck->bc", window, self.conv1d.weight[:, 0])
        if self.conv1d.bias is not None:
            xbc = xbc + self.conv1d.bias
        xs, b, c = self._split(F.silu(xbc))  # (B, H, P), (B, H, N) x 2
        dt = F.softplus(dt.float() + self.dt_bias)  # (B, H)
        log_a = dt * -torch.exp(self.A_log.float())
        y, s = linear_attention_step(c, b, (xs * dt[..., None]).to(xs.dtype), log_a, state.ssm)
        y = y.float() + self.D[:, None] * xs.float()
        return self._output(y.flatten(-2), z), Mamba2State(conv=window[..., 1:], ssm=s)
