"""Hyena (Poli et al. 2023): implicit long convolutions interleaved with gating.

An order-N Hyena operator projects ``x`` to N + 1 streams, each through a short causal
depthwise convolution, ``x_0 .. x_{N-1}, v: (B, T, D)``, then alternates gating and long
convolution::

    z = v
    z = h_i * (x_i . z) + b_i . (x_i . z)       for i = N-1 .. 1   (. is elementwise)
    y = (x_0 . z) W_O

Each long filter ``h_i: (D, T)`` is implicit: a small MLP with sine activations maps a
positional encoding of the lag ``t`` (``t / max_len`` and sines/cosines of it) to D
values, multiplied by an exponentially decaying window ``exp(-delta_d t / max_len)``
whose rate differs across channels. The filter is a function of the lag alone, so a
sequence of any length can be filtered and chunks line up; ``max_len`` only sets the
time scale of the encoding and the window.

Hyena has no finite recurrence. ``step`` is exact by caching, for every long
convolution, all of its inputs so far and taking the dot product with the filter:
O(T) work per token, and ``state_size`` grows linearly with the sequence.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn

from longarena.config import ConfigError
from longarena.mixers import register
from longarena.mixers.base import Mixer, MixerConfig
from longarena.ops.conv import long_conv


#: mixer path -> long_conv backend ("auto": direct up to 64 taps, else FFT)
CONV_BACKEND = {"reference": "reference", "fft": "fft", "conv": "auto"}

@dataclasses.dataclass
class HyenaConfig(MixerConfig):
    #: number of gates N; the operator has N - 1 long convolutions
    order: int = 2
    #: hidden width of the filter MLP
    filter_width: int = 64
    #: size of the positional encoding of the lag: t plus a sine and a cosine per band (odd)
    filter_emb_dim: int = 17
    #: taps of the short depthwise convolution on the projections
    short_size: int = 3
    #: time scale of the filters: lags are encoded as t / max_len
    max_len: int = 1024
    #: the slowest and fastest window decays reach 1e-2 at these fractions of max_len
    slow_decay: float = 1.5
    fast_decay: float = 0.3

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.order, int) or self.order < 2:
            raise ConfigError(
                f"Hyena needs order >= 2 (two gates around at least one long convolution), got {self.order!r}"
            )
        if self.filter_emb_dim < 3 or self.filter_emb_dim % 2 == 0:
            raise ConfigError(f"filter_emb_dim must be odd and >= 3 (t plus sin/cos pairs), got {self.filter_emb_dim}")
        for name in ("filter_width", "short_size", "max_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        if not 0 < self.fast_decay <= self.slow_decay:
            raise ConfigError(
                f"need 0 < fast_decay <= slow_decay, got fast_decay={self.fast_decay}, slow_decay={self.slow_decay}"
            )


class Sine(nn.Module):
    """``sin(w * x)`` with a learned frequency per unit: smooth filters of any length."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.freq = nn.Parameter(torch.ones(width))

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.freq * x)


class ImplicitFilter(nn.Module):
    """Lags ``t = 0..L-1`` -> filters ``(n_filters, D, L)``: positional encoding -> MLP -> window."""

    def __init__(self, config: HyenaConfig, n_filters: int) -> None:
        super().__init__()
        d, w = config.d_model, config.filter_width
        self.n_filters, self.d_model, self.max_len = n_filters, d, config.max_len
        self.bands = (config.filter_emb_dim - 1) // 2
        self.mlp = nn.Sequential(
            nn.Linear(config.filter_emb_dim, w), Sine(w), nn.Linear(w, w), Sine(w), nn.Linear(w, n_filters * d)
        )
        # per-channel decay rates: the window exp(-rate t / max_len) reaches 1e-2 between
        # fast_decay and slow_decay times max_len
        self.decay_range = (math.log(1e2) / config.slow_decay, math.log(1e2) / config.fast_decay)

    def forward(self, length: int) -> Tensor:
        # encodings and rates are rebuilt in float32 each call rather than kept as buffers,
        # which casting the module to bf16 would round
        device = self.mlp[0].weight.device
        decay = torch.linspace(*self.decay_range, self.d_model, device=device)  # (D,)
        band_freqs = torch.linspace(1e-4, self.bands - 1, self.bands, device=device)  # (bands,)
        t = torch.arange(length, device=device, dtype=torch.float32)[:, None] / self.max_len  # (L, 1)
        angle = 2 * math.pi * t * band_freqs  # (L, bands)
        emb = torch.cat((t, angle.cos(), angle.sin()), dim=-1)  # (L, E)
        h = self.mlp(emb.to(self.mlp[0].weight.dtype)).float()  # (L, n_filters * D)
        h = h.view(length, self.n_filters, self.d_model) * torch.exp(-t[..., None] * decay)
        return h.permute(1, 2, 0)  # (n_filters, D, L)


@dataclasses.dataclass
class HyenaState:
    """Last ``short_size - 1`` projections ``short: (B, s-1, (N+1) D)`` and, for each long
    convolution, every input so far ``inputs[i]: (B, n, D)`` (this grows with n)."""

    short: Tensor
    inputs: tuple[Tensor, ...]


@register("hyena")
class Hyena(Mixer):
    """Hyena: order-N gating around implicit long convolutions (FFT), with short convs."""

    config_class = HyenaConfig
    #: reference: convolutions as sums over taps; fft: FFT convolutions; conv: long_conv's own
    #: choice (direct up to 64 taps, exactly causal; FFT above)
    backends = ("reference", "fft", "conv")

    def __init__(self, config: HyenaConfig) -> None:
        super().__init__(config)
        d, n = config.d_model, config.order
        self.order = n
        self.short_size = config.short_size
        self.in_proj = nn.Linear(d, (n + 1) * d)
        self.out_proj = nn.Linear(d, d)
        bound = 1 / math.sqrt(config.short_size)
        self.short_kernel = nn.Parameter(torch.empty((n + 1) * d, config.short_size).uniform_(-bound, bound))
        self.short_bias = nn.Parameter(torch.zeros((n + 1) * d))
        self.filter = ImplicitFilter(config, n - 1)
        self.filter_bias = nn.Parameter(torch.randn(n - 1, d))

    def init_state(self, batch_size: int, device=None, dtype=None) -> HyenaState:
        dtype = dtype or self.in_proj.weight.dtype
        width = (self.order + 1) * self.d_model
        short = torch.zeros(batch_size, self.short_size - 1, width, device=device, dtype=dtype)
        empty = torch.zeros(batch_size, 0, self.d_model, device=device, dtype=dtype)
        return HyenaState(short, tuple(empty.clone() for _ in range(self.order - 1)))

    def state_size(self, seq_len: int) -> int:
        """Grows with ``seq_len``: each long convolution keeps all of its past inputs."""
        return (self.order - 1) * self.d_model * seq_len + (self.short_size - 1) * (self.order + 1) * self.d_model

    def _streams(self, x: Tensor, short: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
        """Projections through the short convolution: gates [x_0..x_{N-1}], v, and the new short state."""
        u = torch.cat((short.to(x.dtype), self.in_proj(x)), dim=1)  # (B, s-1 + T, (N+1) D)
        m = self.short_size - 1
        u_conv = long_conv(u, self.short_kernel, causal=True, backend="auto")[:, m:] + self.short_bias
        *gates, v = u_conv.split(self.d_model, dim=-1)
        return gates, v, u[:, u.shape[1] - m :]

    def _forward(self, x: Tensor, state: HyenaState | None, mask: Tensor | None) -> tuple[Tensor, HyenaState]:
        # causal: right padding cannot reach earlier outputs, so the mask needs no handling
        backend = self.resolve_backend(x.device)
        state = state if state is not None else self.init_state(x.shape[0], x.device, x.dtype)
        gates, z, short = self._streams(x, state.short)
        n_past = state.inputs[0].shape[1]
        total = n_past + x.shape[1]
        filters = self.filter(total)  # (N-1, D, n_past + T)
        kind = CONV_BACKEND[backend]
        inputs = []
        for i in range(self.order - 1):
            gated = gates[self.order - 1 - i] * z  # (B, T, D)
            # the cached inputs carry the convolution across chunks exactly
            full = torch.cat((state.inputs[i].to(gated.dtype), gated), dim=1)  # (B, n_past + T, D)
            z = long_conv(full, filters[i], causal=True, backend=kind)[:, n_past:] + self.filter_bias[i] * gated
            inputs.append(full)
        return self.out_proj(gates[0] * z), HyenaState(short, tuple(inputs))

    def _step(self, x_t: Tensor, state: HyenaState) -> tuple[Tensor, HyenaState]:
        gates, z, short = self._streams(x_t[:, None], state.short)
        n = state.inputs[0].shape[1] + 1
        filters = self.filter(n).flip(-1)  # (N-1, D, n): lag n-1 first, to line up with the oldest input
        inputs = []
        for i in range(self.order - 1):
            gated = gates[self.order - 1 - i] * z  # (B, 1, D)
            full = torch.cat((state.inputs[i].to(gated.dtype), gated), dim=1)  # (B, n, D)
            # O(n) per token: one dot product with the whole filter
            z = torch.einsum("bnd,dn->bd", full.float(), filters[i])[:, None].to(gated.dtype)
            z = z + self.filter_bias[i] * gated
            inputs.append(full)
        return self.out_proj(gates[0] * z)[:, 0], HyenaState(short, tuple(inputs))
