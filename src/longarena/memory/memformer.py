"""Memformer (Wu et al., 2020), as a decoder-only LM: an external memory bank of K slots.

Per segment:

- **read**: every layer is causal self-attention over the segment (RoPE within the
  segment), then cross-attention from the tokens to the K memory slots (no positions:
  the bank is a set), then the MLP;
- **write** (after the stack): slot attention. Slot i attends over its own content and
  the segment's final hidden states only (not over other slots), which lets each slot
  decide how much to keep (its weight on itself) and what to take from the segment::

      u_i = sum_j a_ij W_v [m_i ; h_1..T]_j,   a_i = softmax_j((W_q m_i) . (W_k [m_i ; h]_j) / sqrt(K))
      m'_i = rms_normalize(W_o u_i + b_i)

- **forgetting** (the paper's biased memory normalisation): the learned per-slot bias
  b_i is added before normalising, so content a slot does not re-attend decays
  geometrically (by its self-weight per write) and the slot drifts towards the terminal
  direction b_i; the initial memory is a learned bank as well.

Memory is carried with its autograd history: the runner's ``bptt`` decides how many
segments a loss reaches back, and :func:`longarena.memory.runner.train_mrbp` (memory
replay back-propagation) back-propagates through every write with one segment's graph in
memory at a time. The paper's encoder-decoder layout (for seq2seq) is not built here.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longarena import mixers
from longarena.config import ConfigError
from longarena.memory.common import (
    MLPBlock,
    SegmentConfig,
    SegmentLM,
    check_state_batch,
    check_state_type,
    merge_heads,
    split_heads,
)
from longarena.models import register
from longarena.models.backbone import ModelOutput
from longarena.ops.attention import attention


@dataclasses.dataclass
class MemformerConfig(SegmentConfig):
    #: memory slots K in the bank
    n_slots: int = 8

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.n_slots, int) or self.n_slots <= 0:
            raise ConfigError(
                f"n_slots must be a positive int, got {self.n_slots!r}; Memformer needs a memory bank "
                "(to switch memory off for an ablation, run with carry=False in longarena.memory.runner)"
            )


@dataclasses.dataclass
class MemformerMemory:
    """The memory bank (B, K, D), unit RMS per slot, with its autograd history."""

    slots: Tensor


class CrossAttention(nn.Module):
    """Tokens (B, T, D) read memory slots (B, K, D); every token sees every slot."""

    def __init__(self, config: SegmentConfig) -> None:
        super().__init__()
        d, self.n_heads, self.backend = config.d_model, config.n_heads, config.backend
        self.q_proj = nn.Linear(d, d, bias=False)
        self.kv_proj = nn.Linear(d, 2 * d, bias=False)
        self.out_proj = nn.Linear(d, d, bias=False)

    def forward(self, x: Tensor, slots: Tensor) -> Tensor:
        q = split_heads(self.q_proj(x), self.n_heads)  # (B, H, T, K)
        k, v = (split_heads(z, self.n_heads) for z in self.kv_proj(slots).chunk(2, dim=-1))  # (B, H, K_slots, K)
        return self.out_proj(merge_heads(attention(q, k, v, causal=False, backend=self.backend)))


class MemformerLayer(nn.Module):
    def __init__(self, config: SegmentConfig) -> None:
        super().__init__()
        d = config.d_model
        self.norm_self = nn.RMSNorm(d, eps=config.norm_eps)
        self.self_attn = mixers.get("attention", d, n_heads=config.n_heads, position="rope", backend=config.backend)
        self.norm_read = nn.RMSNorm(d, eps=config.norm_eps)
        self.norm_slots = nn.RMSNorm(d, eps=config.norm_eps)
        self.read = CrossAttention(config)
        self.mlp = MLPBlock(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, h: Tensor, slots: Tensor) -> Tensor:
        y, _ = self.self_attn(self.norm_self(h))
        h = h + self.dropout(y)
        h = h + self.dropout(self.read(self.norm_read(h), self.norm_slots(slots)))
        return self.mlp(h)


class MemoryWriter(nn.Module):
    """Slot attention over [own slot ; segment], then the biased normalisation (forgetting)."""

    def __init__(self, config: MemformerConfig) -> None:
        super().__init__()
        d, self.n_heads = config.d_model, config.n_heads
        self.head_dim = d // config.n_heads
        self.norm = nn.RMSNorm(d, eps=config.norm_eps)
        self.q_proj = nn.Linear(d, d, bias=False)
        self.kv_proj = nn.Linear(d, 2 * d, bias=False)
        self.out_proj = nn.Linear(d, d, bias=False)
        #: b_i, the terminal direction each slot forgets towards
        self.forget_bias = nn.Parameter(torch.zeros(config.n_slots, d))
        self.eps = config.norm_eps

    def slot_weights(self, slots: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """Weights (B, H, K_slots, 1 + T) over [own slot ; tokens] and the values (B, H, K_slots, 1 + T, K)."""
        hn = self.norm(h)
        q = split_heads(self.q_proj(slots), self.n_heads)  # (B, H, Ks, K)
        k_self, v_self = (split_heads(z, self.n_heads) for z in self.kv_proj(slots).chunk(2, dim=-1))  # (B, H, Ks, K)
        k_tok, v_tok = (split_heads(z, self.n_heads) for z in self.kv_proj(hn).chunk(2, dim=-1))  # (B, H, T, K)
        scale = 1.0 / math.sqrt(self.head_dim)
        s_self = (q * k_self).sum(-1, keepdim=True) * scale  # (B, H, Ks, 1)
        s_tok = q @ k_tok.transpose(-1, -2) * scale  # (B, H, Ks, T)
        weights = torch.softmax(torch.cat((s_self, s_tok), dim=-1), dim=-1)  # (B, H, Ks, 1 + T)
        return weights, torch.cat((v_self[..., None, :], v_tok[:, :, None].expand(-1, -1, slots.shape[1], -1, -1)), dim=3)

    def forward(self, slots: Tensor, h: Tensor) -> Tensor:
        """slots (B, Ks, D), h (B, T, D) -> new slots (B, Ks, D) of unit RMS."""
        weights, values = self.slot_weights(slots, h)
        u = torch.einsum("bhst,bhstk->bhsk", weights, values)  # (B, H, Ks, K)
        new = self.out_proj(merge_heads(u)) + self.forget_bias
        return F.rms_norm(new, (new.shape[-1],), eps=self.eps)


@register("memformer")
class Memformer(SegmentLM):
    """Memformer LM: tokens read a memory bank by cross-attention; slot attention writes it."""

    config_class = MemformerConfig

    def __init__(self, config: MemformerConfig) -> None:
        super().__init__(config)
        self.layers = nn.ModuleList(MemformerLayer(config) for _ in range(config.n_layers))
        self.writer = MemoryWriter(config)
        self.initial_slots = nn.Parameter(torch.randn(config.n_slots, config.d_model))
        self._init_embeddings()

    def init_state(self, batch_size: int, device=None, dtype=None) -> MemformerMemory:
        slots = F.rms_norm(self.initial_slots, (self.config.d_model,), eps=self.config.norm_eps)
        return MemformerMemory(slots.to(device=device, dtype=dtype or slots.dtype).expand(batch_size, -1, -1))

    def state_size(self, seq_len: int | None = None) -> int:
        """Numbers carried per sequence: K * D, whatever the length read."""
        return self.config.n_slots * self.config.d_model

    def forward(self, input_ids: Tensor, *, state: MemformerMemory | None = None, labels: Tensor | None = None) -> ModelOutput:
        """input_ids: (B, T), T <= segment_len -> logits (B, T, V), loss, MemformerMemory (B, K, D)."""
        self.check_input(input_ids)
        b = input_ids.shape[0]
        if state is None:
            state = self.init_state(b, input_ids.device)
        check_state_type(state, MemformerMemory, "Memformer")
        check_state_batch("MemformerMemory.slots", state.slots, b, self.config.d_model)
        if state.slots.shape[1] != self.config.n_slots:
            raise ValueError(f"MemformerMemory holds {state.slots.shape[1]} slots, this model has n_slots={self.config.n_slots}")
        slots = state.slots.to(self.embed.weight.dtype)
        h = self.embed(input_ids)  # (B, T, D)
        for layer in self.layers:
            h = layer(h, slots)
        logits, loss = self.logits_and_loss(h, labels)
        return ModelOutput(logits=logits, loss=loss, state=MemformerMemory(self.writer(slots, h)))
