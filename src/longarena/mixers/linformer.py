"""Linformer: attention over a learned projection of the length axis (Wang et al., 2020).

Keys and values ``(T, K)`` are compressed to ``(k, K)`` by learned matrices ``E, F: (k, T)``
before softmax attention, so each query attends to ``k`` mixed "keys" and the cost is
O(T·k) rather than O(T²)::

    y = softmax(Q (E K)ᵀ / √K) (F V)

Because ``E`` mixes every position, Linformer is **non-causal** and its length is bounded
by ``max_len`` (the width of ``E``; a shorter sequence uses the first ``T`` columns).
Padded keys and values are zeroed before the projection, so padding cannot leak into
real outputs.

Sharing (paper §4): ``sharing="none"`` learns ``E_h, F_h`` per head, ``"headwise"`` one
``E, F`` for all heads, ``"kv"`` one matrix for both keys and values (``E = F``).
Layer-wise sharing (one projection for every layer) passes the same
:class:`LengthProjection` to every layer — ``Linformer(config, projection=shared)`` — or
ties existing layers with :func:`share_layerwise`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from longarena.config import ConfigError
from longarena.mixers import register
from longarena.mixers.base import Mixer, MixerConfig, MixerInputError, check_heads
from longarena.ops.attention import attention

SHARING = ("none", "headwise", "kv")


@dataclasses.dataclass
class LinformerConfig(MixerConfig):
    n_heads: int = 4
    #: the projected length k (the approximation budget)
    proj_len: int = 64
    #: longest sequence accepted (the width of E and F)
    max_len: int = 4096
    #: "none" (E, F per head), "headwise" (one E, F per layer) or "kv" (one E = F per layer)
    sharing: str = "headwise"
    bias: bool = False

    def validate(self) -> None:
        super().validate()
        check_heads(self.d_model, self.n_heads)
        if self.proj_len <= 0:
            raise ConfigError(f"proj_len (the projected length k) must be positive, got {self.proj_len}")
        if self.max_len <= 0:
            raise ConfigError(f"max_len must be positive, got {self.max_len}")
        if self.sharing not in SHARING:
            raise ConfigError(f"sharing must be one of {list(SHARING)}, got {self.sharing!r}")


class LengthProjection(nn.Module):
    """The E and F matrices: ``weight: (P, k, max_len)`` with P = 2H, 2 or 1 by sharing mode.

    Entries start as N(0, 1/max_len), so a projected key or value has about the norm of
    one token's (the N(0, 1/k) of the paper's Johnson–Lindenstrauss argument would make
    them sqrt(T/k) times larger and the initial softmax needlessly peaked).
    """

    def __init__(self, n_heads: int, proj_len: int, max_len: int, sharing: str) -> None:
        super().__init__()
        if sharing not in SHARING:
            raise ConfigError(f"sharing must be one of {list(SHARING)}, got {sharing!r}")
        self.n_heads, self.proj_len, self.max_len, self.sharing = n_heads, proj_len, max_len, sharing
        n = {"none": 2 * n_heads, "headwise": 2, "kv": 1}[sharing]
        self.weight = nn.Parameter(torch.randn(n, proj_len, max_len) / math.sqrt(max_len))

    def matrices(self, seq_len: int) -> tuple[Tensor, Tensor]:
        """E, F for a sequence of ``seq_len`` tokens: the first T columns, (H or 1, k, T) each."""
        w = self.weight[:, :, :seq_len]  # (P, k, T)
        if self.sharing == "none":
            return w[: self.n_heads], w[self.n_heads :]  # (H, k, T)
        if self.sharing == "headwise":
            return w[0:1], w[1:2]  # (1, k, T), broadcast over heads
        return w[0:1], w[0:1]


def linformer_attention(q: Tensor, k: Tensor, v: Tensor, e: Tensor, f: Tensor, *, backend: str = "sdpa") -> Tensor:
    """``softmax(Q (E K)ᵀ / √K) (F V)``: q, k (B, H, T, K), v (B, H, T, V); e, f (H or 1, k, T).

    Zero padded rows of k and v beforehand so they add nothing to the projections.
    Returns (B, H, T, V).
    """
    kp = e.to(k.dtype) @ k  # (B, H, k, K)
    vp = f.to(v.dtype) @ v  # (B, H, k, V)
    return attention(q, kp, vp, causal=False, backend=backend)


@register("linformer")
class Linformer(Mixer):
    """Linformer: softmax attention over keys/values projected to a fixed length k (non-causal)."""

    config_class = LinformerConfig
    backends = ("reference", "sdpa")
    causal = False

    def __init__(self, config: LinformerConfig, projection: LengthProjection | None = None) -> None:
        super().__init__(config)
        self.n_heads = config.n_heads
        self.head_dim = config.d_model // config.n_heads
        self.max_len = config.max_len
        d = config.d_model
        self.q_proj = nn.Linear(d, d, bias=config.bias)
        self.kv_proj = nn.Linear(d, 2 * d, bias=config.bias)
        self.out_proj = nn.Linear(d, d, bias=config.bias)
        if projection is None:
            projection = LengthProjection(config.n_heads, config.proj_len, config.max_len, config.sharing)
        else:
            _check_compatible(projection, config)
        self.projection = projection

    def _forward(self, x: Tensor, state: None, mask: Tensor | None) -> tuple[Tensor, None]:
        b, t, d = x.shape
        if t > self.max_len:
            raise MixerInputError(
                f"Linformer was built for sequences of at most max_len = {self.max_len} tokens "
                f"(the width of its length projections), got T = {t}; build it with a larger max_len"
            )
        h, k = self.n_heads, self.head_dim
        q = self.q_proj(x).view(b, t, h, k).transpose(1, 2)  # (B, H, T, K)
        kk, v = self.kv_proj(x).view(b, t, 2, h, k).unbind(dim=2)
        kk, v = kk.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, K)
        if mask is not None:
            keep = mask[:, None, :, None]
            kk, v = torch.where(keep, kk, 0.0), torch.where(keep, v, 0.0)
        e, f = self.projection.matrices(t)
        y = linformer_attention(q, kk, v, e, f, backend=self.resolve_backend(x.device))  # (B, H, T, K)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, d)), None

    def state_size(self, seq_len: int) -> int:
        return 0  # nothing is carried: Linformer has no state between chunks

    def extra_repr(self) -> str:
        p = self.projection
        return f"{super().extra_repr()}, n_heads={self.n_heads}, proj_len={p.proj_len}, max_len={p.max_len}, sharing={p.sharing!r}"


def _check_compatible(projection: LengthProjection, config: LinformerConfig) -> None:
    if not isinstance(projection, LengthProjection):
        raise ConfigError(f"projection must be a LengthProjection, got {type(projection).__name__}")
    if projection.max_len < config.max_len:
        raise ConfigError(
            f"a shared projection of max_len {projection.max_len} cannot serve a layer of max_len {config.max_len}"
        )
    if projection.sharing == "none" and projection.n_heads != config.n_heads:
        raise ConfigError(
            f"a per-head shared projection for {projection.n_heads} heads cannot serve a layer of {config.n_heads} heads"
        )


def share_layerwise(layers: Sequence[Linformer]) -> LengthProjection:
    """Layer-wise sharing: make every layer use the first layer's projection; returns it."""
    if not layers:
        raise ValueError("share_layerwise needs at least one Linformer layer")
    shared = layers[0].projection
    for layer in layers[1:]:
        _check_compatible(shared, layer.config)
        layer.projection = shared
    return shared
