"""Multi-head softmax attention with grouped-query heads: the baseline of every comparison.

Its state is the KV cache: keys (already rotated at their own positions) and values of
every token so far, so ``state_size`` grows linearly with the sequence.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from longarena import positions
from longarena.config import ConfigError
from longarena.mixers import register
from longarena.mixers.base import Mixer, MixerConfig, check_heads
from longarena.ops.attention import attention


@dataclasses.dataclass
class AttentionConfig(MixerConfig):
    n_heads: int = 4
    #: key/value heads; fewer than n_heads is grouped-query attention (1 = multi-query)
    n_kv_heads: int | None = None
    causal: bool = True
    #: a name from ``longarena.positions.names()``
    position: str = "rope"
    position_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    bias: bool = False

    def validate(self) -> None:
        super().validate()
        check_heads(self.d_model, self.n_heads)
        kv = self.n_heads if self.n_kv_heads is None else self.n_kv_heads
        if kv <= 0 or self.n_heads % kv:
            raise ConfigError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({kv})")


@dataclasses.dataclass
class KVCache:
    """Keys (B, Hkv, T, K) and values (B, Hkv, T, K) so far; key_mask (B, T) if padded."""

    k: Tensor
    v: Tensor
    key_mask: Tensor | None = None

    @property
    def length(self) -> int:
        return self.k.shape[2]


@register("attention")
class Attention(Mixer):
    """Multi-head / grouped-query softmax attention on SDPA, with a KV cache (the baseline)."""

    config_class = AttentionConfig
    backends = ("reference", "sdpa")

    def __init__(self, config: AttentionConfig) -> None:
        super().__init__(config)
        self.causal = config.causal
        self.n_heads = config.n_heads
        self.n_kv_heads = config.n_kv_heads or config.n_heads
        self.head_dim = config.d_model // config.n_heads
        d, k = config.d_model, self.head_dim
        self.q_proj = nn.Linear(d, self.n_heads * k, bias=config.bias)
        self.kv_proj = nn.Linear(d, 2 * self.n_kv_heads * k, bias=config.bias)
        self.out_proj = nn.Linear(self.n_heads * k, d, bias=config.bias)
        self.position = positions.get(
            config.position, head_dim=k, n_heads=self.n_heads, **config.position_params
        )

    def init_state(self, batch_size: int, device=None, dtype=None) -> KVCache:
        dtype = dtype or self.q_proj.weight.dtype
        empty = torch.zeros(batch_size, self.n_kv_heads, 0, self.head_dim, device=device, dtype=dtype)
        return KVCache(empty, empty.clone())

    def state_size(self, seq_len: int) -> int:
        return 2 * self.n_kv_heads * self.head_dim * seq_len

    def _forward(self, x: Tensor, state: KVCache | None, mask: Tensor | None) -> tuple[Tensor, KVCache | None]:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, K)
        kv = self.kv_proj(x).view(b, t, 2, self.n_kv_heads, self.head_dim)
        k, v = kv.unbind(dim=2)
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # (B, Hkv, T, K)

        offset = state.length if state is not None else 0
        pos = torch.arange(offset, offset + t, device=x.device)
        q = self.position.rotate(q, pos)
        k = self.position.rotate(k, pos)

        key_mask = mask
        if state is not None:
            k = torch.cat((state.k.to(k.dtype), k), dim=2)
            v = torch.cat((state.v.to(v.dtype), v), dim=2)
            if state.key_mask is not None or mask is not None:
                old = state.key_mask if state.key_mask is not None else x.new_ones(b, offset, dtype=torch.bool)
                new = mask if mask is not None else x.new_ones(b, t, dtype=torch.bool)
                key_mask = torch.cat((old, new), dim=1)
        k_pos = torch.arange(k.shape[2], device=x.device)
        bias = self.position.score_bias(q, k, pos, k_pos)

        backend = self.resolve_backend(x.device)
        y = attention(q, k, v, causal=self.causal, backend=backend, bias=bias, key_mask=key_mask)  # (B, H, T, K)
        y = self.out_proj(y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))
        new_state = KVCache(k, v, key_mask) if self.causal else None
        return y, new_state
