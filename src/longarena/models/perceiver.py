"""Perceiver (Jaegle et al., 2021) and Perceiver AR (Hawthorne et al., 2022).

**Perceiver** (``"perceiver"``, a sequence classifier): a learned latent array ``(N, D_lat)``
reads the input ``(T, D)`` through cross-attention (cost O(N·T)), then a stack of latent
self-attention blocks (O(N²), independent of T) refines it. The read-then-think pair is
repeated ``n_repeats`` times; with ``share_weights`` (the paper's choice) every repeat after
the first reuses one cross-attention block, and every repeat reuses one latent stack.
The class logits come from the mean latent. Padding (``attention_mask`` or ``pad_id``) is kept out
of every cross-attention, so it cannot leak. Non-causal by nature.

``"perceiver_dual"`` is the pair classifier of retrieval tasks: the same encoder reads both
sequences and an MLP classifies ``[u, v, u*v, u-v]`` of the two pooled latents.

**Perceiver AR** (``"perceiver_ar"``, a causal LM): the last ``N`` positions of the input
are the latents. Their cross-attention to the whole sequence is causally masked (the
latent at position p sees tokens <= p), then causal latent self-attention follows, so the
logits at the latents are next-token predictions conditioned on the whole long prefix
while the deep stack only costs O(N²). ``forward(input_ids) -> (B, N', vocab)`` with
``N' = min(N, T)``, the logits of the last ``N'`` positions.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longarena import positions
from longarena.config import Config, ConfigError
from longarena.constants import IGNORE
from longarena.models import register
from longarena.ops.attention import attention


def _positive(**fields: int) -> None:
    for name, value in fields.items():
        if not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{name} must be a positive int, got {value!r}")


def _divisible(width_name: str, width: int, heads_name: str, heads: int) -> None:
    if width % heads:
        raise ConfigError(f"{width_name} ({width}) must be a multiple of {heads_name} ({heads})")


@dataclasses.dataclass
class PerceiverConfig(Config):
    vocab_size: int = 256
    num_classes: int = 2
    #: width of the token embeddings the latents read
    d_model: int = 64
    n_latents: int = 32
    d_latent: int = 64
    n_cross_heads: int = 1
    n_heads: int = 4
    #: latent self-attention blocks per repeat
    n_latent_layers: int = 2
    #: cross-attend + latent stack, repeated
    n_repeats: int = 2
    #: repeats after the first share one cross-attention; all repeats share one latent stack
    share_weights: bool = True
    mlp_ratio: int = 4
    #: token id treated as padding when no attention_mask is given (None: no padding id)
    pad_id: int | None = None
    backend: str = "sdpa"

    def validate(self) -> None:
        _positive(
            vocab_size=self.vocab_size, num_classes=self.num_classes, d_model=self.d_model,
            n_latents=self.n_latents, d_latent=self.d_latent, n_cross_heads=self.n_cross_heads,
            n_heads=self.n_heads, n_latent_layers=self.n_latent_layers, n_repeats=self.n_repeats,
            mlp_ratio=self.mlp_ratio,
        )
        _divisible("d_latent", self.d_latent, "n_cross_heads", self.n_cross_heads)
        _divisible("d_latent", self.d_latent, "n_heads", self.n_heads)
        _check_backend(self.backend)


@dataclasses.dataclass
class PerceiverARConfig(Config):
    vocab_size: int = 256
    d_model: int = 64
    #: the last n_latents positions become latents (and get logits)
    n_latents: int = 64
    n_heads: int = 4
    #: causal latent self-attention blocks after the cross-attention
    n_layers: int = 2
    mlp_ratio: int = 4
    rope_theta: float = 10000.0
    tie_embeddings: bool = True
    backend: str = "sdpa"

    def validate(self) -> None:
        _positive(
            vocab_size=self.vocab_size, d_model=self.d_model, n_latents=self.n_latents,
            n_heads=self.n_heads, n_layers=self.n_layers, mlp_ratio=self.mlp_ratio,
        )
        _divisible("d_model", self.d_model, "n_heads", self.n_heads)
        if (self.d_model // self.n_heads) % 2:
            raise ConfigError(f"RoPE needs an even head width; d_model / n_heads = {self.d_model // self.n_heads}")
        _check_backend(self.backend)


def _check_backend(backend: str) -> None:
    if backend not in ("reference", "sdpa"):
        raise ConfigError(f"backend must be 'reference' or 'sdpa', got {backend!r}")


def _check_ids(input_ids: Tensor, vocab_size: int, name: str = "input_ids") -> None:
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
        got = f"{input_ids.dtype} {tuple(input_ids.shape)}" if isinstance(input_ids, Tensor) else type(input_ids).__name__
        raise ValueError(f"{name} must be an integer tensor of shape (B, T), got {got}")
    if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab_size):
        raise ValueError(
            f"token ids of {name} must lie in [0, vocab_size = {vocab_size}), got ids in "
            f"[{int(input_ids.min())}, {int(input_ids.max())}]"
        )


def _check_mask(mask: Tensor | None, input_ids: Tensor) -> None:
    if mask is not None and (mask.shape != input_ids.shape or mask.dtype != torch.bool):
        raise ValueError(
            f"attention_mask must be a bool tensor of shape (B, T) = {tuple(input_ids.shape)}, "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )


def sinusoidal_positions(length: int, dim: int, device: torch.device | None = None) -> Tensor:
    """Fixed sin/cos position codes (T, D) of the Transformer; any length, no parameters."""
    pos = torch.arange(length, dtype=torch.float32, device=device)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    codes = torch.zeros(length, dim, device=device)
    codes[:, 0::2] = torch.sin(pos * freq)
    codes[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return codes


class MLP(nn.Module):
    def __init__(self, dim: int, ratio: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, ratio * dim)
        self.down = nn.Linear(ratio * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.down(F.gelu(self.up(self.norm(x))))


class CrossAttention(nn.Module):
    """Pre-norm cross-attention + MLP: queries (B, N, Dq) read keys/values (B, T, Dkv).

    ``causal`` aligns queries to the last N key positions (Perceiver AR); ``rope``
    rotates queries at ``q_pos`` and keys at ``k_pos``.
    """

    def __init__(self, d_query: int, d_input: int, n_heads: int, mlp_ratio: int, backend: str,
                 rope: nn.Module | None = None) -> None:
        super().__init__()
        self.n_heads, self.head_dim, self.backend = n_heads, d_query // n_heads, backend
        self.q_norm, self.kv_norm = nn.LayerNorm(d_query), nn.LayerNorm(d_input)
        self.q_proj = nn.Linear(d_query, d_query, bias=False)
        self.kv_proj = nn.Linear(d_input, 2 * d_query, bias=False)
        self.out_proj = nn.Linear(d_query, d_query, bias=False)
        self.mlp = MLP(d_query, mlp_ratio)
        self.rope = rope

    def forward(self, queries: Tensor, inputs: Tensor, *, key_mask: Tensor | None = None, causal: bool = False,
                q_pos: Tensor | None = None, k_pos: Tensor | None = None) -> Tensor:
        b, n, d = queries.shape
        t = inputs.shape[1]
        h, k = self.n_heads, self.head_dim
        q = self.q_proj(self.q_norm(queries)).view(b, n, h, k).transpose(1, 2)  # (B, H, N, K)
        kk, v = self.kv_proj(self.kv_norm(inputs)).view(b, t, 2, h, k).unbind(dim=2)
        kk, v = kk.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, K)
        if self.rope is not None:
            q, kk = self.rope.rotate(q, q_pos), self.rope.rotate(kk, k_pos)
        y = attention(q, kk, v, causal=causal, backend=self.backend, key_mask=key_mask)  # (B, H, N, K)
        x = queries + self.out_proj(y.transpose(1, 2).reshape(b, n, d))
        return self.mlp(x)


class SelfAttention(CrossAttention):
    """Pre-norm self-attention + MLP on (B, N, D)."""

    def __init__(self, dim: int, n_heads: int, mlp_ratio: int, backend: str, rope: nn.Module | None = None) -> None:
        super().__init__(dim, dim, n_heads, mlp_ratio, backend, rope)
        # one norm serves queries and keys, as in a standard Transformer block
        self.kv_norm = self.q_norm

    def forward(self, x: Tensor, *, causal: bool = False, pos: Tensor | None = None,
                key_mask: Tensor | None = None) -> Tensor:
        return super().forward(x, x, key_mask=key_mask, causal=causal, q_pos=pos, k_pos=pos)


@register("perceiver")
class PerceiverClassifier(nn.Module):
    """Perceiver classifier: latents cross-attend to the tokens, then latent self-attention."""

    config_class = PerceiverConfig

    def __init__(self, config: PerceiverConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.latents = nn.Parameter(torch.randn(c.n_latents, c.d_latent) * 0.02)
        n_cross = min(2, c.n_repeats) if c.share_weights else c.n_repeats
        n_stacks = 1 if c.share_weights else c.n_repeats
        self.cross = nn.ModuleList(
            CrossAttention(c.d_latent, c.d_model, c.n_cross_heads, c.mlp_ratio, c.backend) for _ in range(n_cross)
        )
        self.stacks = nn.ModuleList(
            nn.ModuleList(SelfAttention(c.d_latent, c.n_heads, c.mlp_ratio, c.backend) for _ in range(c.n_latent_layers))
            for _ in range(n_stacks)
        )
        self.norm = nn.LayerNorm(c.d_latent)
        self.head = nn.Linear(c.d_latent, c.num_classes)

    def forward(self, input_ids: Tensor, *, attention_mask: Tensor | None = None) -> Tensor:
        """input_ids (B, T) int, attention_mask (B, T) bool (True = real token) -> logits (B, num_classes)."""
        return self.head(self.encode(input_ids, attention_mask=attention_mask))

    def encode(self, input_ids: Tensor, *, attention_mask: Tensor | None = None, name: str = "input_ids") -> Tensor:
        """The pooled latent: input_ids (B, T) -> (B, D_lat)."""
        _check_ids(input_ids, self.config.vocab_size, name)
        b, t = input_ids.shape
        mask = attention_mask
        if mask is None and self.config.pad_id is not None:
            mask = input_ids != self.config.pad_id
        _check_mask(mask, input_ids)
        inputs = self.embed(input_ids) + sinusoidal_positions(t, self.config.d_model, input_ids.device)  # (B, T, D)
        z = self.latents.expand(b, -1, -1)  # (B, N, D_lat)
        for r in range(self.config.n_repeats):
            z = self.cross[min(r, len(self.cross) - 1)](z, inputs, key_mask=mask)
            for block in self.stacks[min(r, len(self.stacks) - 1)]:
                z = block(z)
        return self.norm(z.mean(dim=1))


@register("perceiver_dual")
class PerceiverDualEncoder(PerceiverClassifier):
    """Perceiver pair classifier for retrieval (LRA AAN): one shared encoder, features [u, v, u*v, u-v]."""

    def __init__(self, config: PerceiverConfig) -> None:
        super().__init__(config)
        d = config.d_latent
        self.head = nn.Sequential(nn.Linear(4 * d, d), nn.GELU(), nn.Linear(d, config.num_classes))

    def forward(
        self,
        input_ids: Tensor,
        input_ids_2: Tensor,
        *,
        attention_mask: Tensor | None = None,
        attention_mask_2: Tensor | None = None,
    ) -> Tensor:
        """Two sequences (B, T1), (B, T2) -> logits (B, num_classes)."""
        u = self.encode(input_ids, attention_mask=attention_mask)
        v = self.encode(input_ids_2, attention_mask=attention_mask_2, name="input_ids_2")
        return self.head(torch.cat([u, v, u * v, u - v], dim=-1))


@register("perceiver_ar")
class PerceiverAR(nn.Module):
    """Perceiver AR: causal cross-attention from the last N positions to the long prefix (an LM)."""

    config_class = PerceiverARConfig
    causal = True

    def __init__(self, config: PerceiverARConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        # small, since a tied output layer reads logits off these same vectors
        nn.init.normal_(self.embed.weight, std=0.02)
        self.rope = positions.get("rope", head_dim=c.d_model // c.n_heads, n_heads=c.n_heads, theta=c.rope_theta)
        self.cross = CrossAttention(c.d_model, c.d_model, c.n_heads, c.mlp_ratio, c.backend, self.rope)
        self.layers = nn.ModuleList(
            SelfAttention(c.d_model, c.n_heads, c.mlp_ratio, c.backend, self.rope) for _ in range(c.n_layers)
        )
        self.norm = nn.LayerNorm(c.d_model)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def forward(self, input_ids: Tensor, *, attention_mask: Tensor | None = None) -> Tensor:
        """input_ids (B, T) -> next-token logits (B, N', vocab) of the last N' = min(N, T) positions.

        ``attention_mask: (B, T)`` bool marks real tokens (left padding of a batch of prompts).
        """
        _check_ids(input_ids, self.config.vocab_size)
        _check_mask(attention_mask, input_ids)
        mask = attention_mask
        t = input_ids.shape[1]
        n = min(self.config.n_latents, t)
        x = self.embed(input_ids)  # (B, T, D)
        k_pos = torch.arange(t, device=input_ids.device)
        q_pos = k_pos[t - n :]
        # the cross-attention mask is bottom-right aligned: latent i (position t-n+i) sees keys <= t-n+i
        z = self.cross(x[:, t - n :], x, key_mask=mask, causal=True, q_pos=q_pos, k_pos=k_pos)  # (B, N', D)
        latent_mask = mask[:, t - n :] if mask is not None else None
        for layer in self.layers:
            z = layer(z, causal=True, pos=q_pos, key_mask=latent_mask)
        return self.lm_head(self.norm(z))

    def loss(self, input_ids: Tensor, *, attention_mask: Tensor | None = None) -> Tensor:
        """Mean next-token cross-entropy over the latent positions that have a next token."""
        mask = attention_mask
        logits = self(input_ids[:, :-1], attention_mask=mask[:, :-1] if mask is not None else None)  # (B, N', V)
        n = logits.shape[1]
        targets = input_ids[:, -n:]
        if mask is not None:
            targets = targets.masked_fill(~mask[:, -n:], IGNORE)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE)
