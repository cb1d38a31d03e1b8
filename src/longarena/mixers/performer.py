"""Performer: softmax attention approximated by FAVOR+ random features (Choromanski et al., 2021).

Queries and keys go through positive orthogonal random features ``φ`` (see
:mod:`longarena.ops.linear_attn.favor`), so attention costs O(T·M·K) instead of O(T²·K).
The causal form is a prefix sum whose running ``(S = Σ φ(k) vᵀ, z = Σ φ(k))`` is the
decoding state: constant in the sequence length.

The random directions are a buffer: fixed in eval mode (so outputs are deterministic
between calls) and redrawn every ``feature_redraw_interval`` training forwards, which
keeps the model from fitting one particular draw. Only forwards that start a sequence
(no ``state``) count and redraw, since a carried state was summed with the current
features. ``redraw_features()`` redraws on demand.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from longarena.config import ConfigError
from longarena.mixers import register
from longarena.mixers.base import Mixer, MixerConfig, check_heads
from longarena.ops.linear_attn.favor import (
    KERNELS,
    favor_features,
    linear_attention,
    linear_attention_step,
    orthogonal_gaussian,
)


@dataclasses.dataclass
class PerformerConfig(MixerConfig):
    n_heads: int = 4
    #: random features M per head (the approximation budget; error falls like 1/sqrt(M))
    n_features: int = 64
    #: "softmax" (FAVOR+, positive features) or "relu" (generalised kernel)
    kernel: str = "softmax"
    causal: bool = True
    #: training forwards between feature redraws; 0 = never redraw
    feature_redraw_interval: int = 1000
    #: tokens per chunk of the causal chunked form
    chunk_size: int = 64
    bias: bool = False

    def validate(self) -> None:
        super().validate()
        check_heads(self.d_model, self.n_heads)
        if not isinstance(self.n_features, int) or self.n_features <= 0:
            raise ConfigError(f"n_features must be a positive int (random features per head), got {self.n_features!r}")
        if self.kernel not in KERNELS:
            raise ConfigError(f"kernel must be one of {list(KERNELS)}, got {self.kernel!r}")
        if self.feature_redraw_interval < 0:
            raise ConfigError(f"feature_redraw_interval must be >= 0 (0 = never), got {self.feature_redraw_interval}")
        if self.chunk_size <= 0:
            raise ConfigError(f"chunk_size must be positive, got {self.chunk_size}")


@dataclasses.dataclass
class FavorState:
    """Running sums of the causal form, kept in float32: S (B, H, M, V) and z (B, H, M)."""

    kv: Tensor
    k_sum: Tensor


@register("performer")
class Performer(Mixer):
    """Performer: FAVOR+ random-feature linear attention, bidirectional or causal."""

    config_class = PerformerConfig
    backends = ("reference", "chunked")

    def __init__(self, config: PerformerConfig) -> None:
        super().__init__(config)
        self.causal = config.causal
        self.n_heads = config.n_heads
        self.head_dim = config.d_model // config.n_heads
        self.n_features = config.n_features
        self.kernel = config.kernel
        self.redraw_interval = config.feature_redraw_interval
        d = config.d_model
        self.q_proj = nn.Linear(d, d, bias=config.bias)
        self.kv_proj = nn.Linear(d, 2 * d, bias=config.bias)
        self.out_proj = nn.Linear(d, d, bias=config.bias)
        # one draw shared by every head of the layer, as in the paper
        self.register_buffer("projection", orthogonal_gaussian(config.n_features, self.head_dim))  # (M, K)
        self.forwards_since_redraw = 0

    def _apply(self, fn, recurse=True):
        # ``module.to(bfloat16)`` would round the random directions; follow device moves but
        # keep them float32 (the features are computed in float32 anyway)
        projection = self.projection
        super()._apply(fn, recurse)
        self.projection = projection.to(self.projection.device)
        return self

    @torch.no_grad()
    def redraw_features(self, generator: torch.Generator | None = None) -> None:
        """Draw fresh orthogonal random directions (in place, same device and dtype)."""
        w = orthogonal_gaussian(self.n_features, self.head_dim, generator=generator)
        self.projection.copy_(w.to(self.projection))
        self.forwards_since_redraw = 0

    def _maybe_redraw(self, state: FavorState | None) -> None:
        # only where a sequence starts: a carried (S, z) was summed with the current features
        if not self.training or self.redraw_interval == 0 or state is not None:
            return
        if self.forwards_since_redraw >= self.redraw_interval:
            self.redraw_features()
        self.forwards_since_redraw += 1

    def init_state(self, batch_size: int, device=None, dtype=None) -> FavorState:
        """Zero sums; kept in float32 whatever ``dtype`` (long sums need the precision)."""
        device = device if device is not None else self.projection.device
        h, m, k = self.n_heads, self.n_features, self.head_dim
        return FavorState(
            torch.zeros(batch_size, h, m, k, device=device), torch.zeros(batch_size, h, m, device=device)
        )

    def state_size(self, seq_len: int) -> int:
        return self.n_heads * self.n_features * (self.head_dim + 1)

    def _features(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, T, D) -> φ(q), φ(k) (B, H, T, M) float32 and v (B, H, T, K)."""
        b, t, _ = x.shape
        h, k = self.n_heads, self.head_dim
        # q·k/sqrt(K) = (K^(-1/4) q)·(K^(-1/4) k)
        scale = k**-0.25
        q = self.q_proj(x).view(b, t, h, k).transpose(1, 2) * scale  # (B, H, T, K)
        kk, v = self.kv_proj(x).view(b, t, 2, h, k).unbind(dim=2)
        kk, v = kk.transpose(1, 2) * scale, v.transpose(1, 2)  # (B, H, T, K)
        if mask is not None:
            keep = mask[:, None, :, None]  # (B, 1, T, 1)
            # zero the inputs too, so no inf from padding garbage meets a zero gradient
            kk, v = torch.where(keep, kk, 0.0), torch.where(keep, v, 0.0)
        qf = favor_features(q, self.projection, kernel=self.kernel, is_query=True)
        kf = favor_features(kk, self.projection, kernel=self.kernel, is_query=False)
        if mask is not None:
            kf = torch.where(keep, kf, 0.0)
        return qf, kf, v

    def _forward(self, x: Tensor, state: FavorState | None, mask: Tensor | None) -> tuple[Tensor, FavorState | None]:
        self._maybe_redraw(state)
        b, t, d = x.shape
        qf, kf, v = self._features(x, mask)
        sums = (state.kv, state.k_sum) if state is not None else None
        backend = self.resolve_backend(x.device)
        y, (kv, k_sum) = linear_attention(
            qf, kf, v, causal=self.causal, state=sums, backend=backend, chunk_size=self.config.chunk_size
        )  # (B, H, T, K)
        y = self.out_proj(y.to(x.dtype).transpose(1, 2).reshape(b, t, d))
        return y, (FavorState(kv, k_sum) if self.causal else None)

    def _step(self, x_t: Tensor, state: FavorState) -> tuple[Tensor, FavorState]:
        qf, kf, v = self._features(x_t.unsqueeze(1), None)  # (B, H, 1, M)
        y, (kv, k_sum) = linear_attention_step(qf[:, :, 0], kf[:, :, 0], v[:, :, 0], (state.kv, state.k_sum))
        y = self.out_proj(y.to(x_t.dtype).reshape(x_t.shape[0], self.d_model))
        return y, FavorState(kv, k_sum)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, n_heads={self.n_heads}, n_features={self.n_features}, kernel={self.kernel!r}"
