"""Transformer-XL (Dai et al., 2019): segment recurrence over cached hidden states.

Layer n of segment s attends over ``[mem^{n-1}, h^{n-1}_s]``: the cached inputs of this
layer from the previous segment(s) (memory length M, stored *detached*: no gradient flows
into the cache) followed by the segment itself, causally. With L layers the receptive
field grows to about L * M tokens at the cost of one segment's compute.

Positions are relative (``longarena.positions`` scheme ``"xl"``): the score of query i and
key j is ``(q_i + u).k_j + (q_i + v).W_r R_{i-j}`` over sqrt(K), so cached keys need no
re-encoding. Query i of a segment has position M + i in the key sequence (memory first),
so the distances are exact. ``u`` and ``v`` are learned per layer and head (the paper's
"untied" variant).

The memory length is a runtime argument: ``model(ids, state=..., mem_len=1600)`` keeps a
longer cache at evaluation than the ``config.mem_len`` used in training (the paper trains
with M = S and evaluates with M several times longer). ``mem_len=0`` switches memory off
(the ablation baseline).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn

from longarena import positions
from longarena.memory.common import (
    MLPBlock,
    SegmentConfig,
    SegmentLM,
    check_layer_count,
    check_state_batch,
    check_state_type,
    merge_heads,
    non_negative,
    split_heads,
)
from longarena.models import register
from longarena.models.backbone import ModelOutput
from longarena.ops.attention import attention


@dataclasses.dataclass
class TransformerXLConfig(SegmentConfig):
    #: cached hidden states per layer carried to the next segment (training default)
    mem_len: int = 64

    def validate(self) -> None:
        super().validate()
        non_negative(mem_len=self.mem_len)


@dataclasses.dataclass
class XLMemory:
    """Per layer, the last M inputs of that layer (detached): ``hidden[l]`` is (B, M, D)."""

    hidden: list[Tensor]

    @property
    def length(self) -> int:
        return self.hidden[0].shape[1] if self.hidden else 0


class RelativeAttentionLayer(nn.Module):
    """Pre-norm block whose attention reads ``[prefix, h]`` with XL relative scores.

    ``prefix`` (B, P, D) is whatever precedes the segment (XL's cache; the Compressive
    Transformer's compressed + FIFO memories); all of it is visible to every query.
    """

    def __init__(self, config: SegmentConfig) -> None:
        super().__init__()
        d, self.n_heads = config.d_model, config.n_heads
        self.head_dim = d // config.n_heads
        self.backend = config.backend
        self.norm = nn.RMSNorm(d, eps=config.norm_eps)
        self.q_proj = nn.Linear(d, d, bias=False)
        self.kv_proj = nn.Linear(d, 2 * d, bias=False)
        self.out_proj = nn.Linear(d, d, bias=False)
        self.position = positions.get("xl", head_dim=self.head_dim, n_heads=self.n_heads)
        self.dropout = nn.Dropout(config.dropout)
        self.mlp = MLPBlock(config)

    def forward(self, h: Tensor, prefix: Tensor, *, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """h: (B, T, D), prefix: (B, P, D) -> (B, T, D) and, if asked, weights (B, H, T, P+T)."""
        t, p = h.shape[1], prefix.shape[1]
        x = self.norm(torch.cat((prefix, h), dim=1))  # (B, P+T, D)
        q = split_heads(self.q_proj(x[:, p:]), self.n_heads)  # (B, H, T, K)
        k, v = (split_heads(z, self.n_heads) for z in self.kv_proj(x).chunk(2, dim=-1))  # (B, H, P+T, K)
        k_pos = torch.arange(p + t, device=h.device)
        bias = self.position.score_bias(q, k, k_pos[p:], k_pos)  # (B, H, T, P+T)
        weights = None
        if need_weights:
            # the weights are part of the output (usage statistics), so compute them explicitly
            scores = torch.einsum("bhqk,bhsk->bhqs", q, k) / math.sqrt(self.head_dim) + bias
            visible = k_pos[None, :] <= k_pos[p:, None]  # (T, P+T): prefix always, segment causally
            weights = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
            y = weights @ v
        else:
            y = attention(q, k, v, causal=True, backend=self.backend, bias=bias)  # (B, H, T, K)
        h = h + self.dropout(self.out_proj(merge_heads(y)))
        return self.mlp(h), weights


@register("transformer_xl")
class TransformerXL(SegmentLM):
    """Transformer-XL language model: per-layer cache of the previous segments' hidden states."""

    config_class = TransformerXLConfig

    def __init__(self, config: TransformerXLConfig) -> None:
        super().__init__(config)
        self.layers = nn.ModuleList(RelativeAttentionLayer(config) for _ in range(config.n_layers))
        self._init_embeddings()

    def init_state(self, batch_size: int, device=None, dtype=None) -> XLMemory:
        dtype = dtype or self.embed.weight.dtype
        empty = torch.zeros(batch_size, 0, self.config.d_model, device=device, dtype=dtype)
        return XLMemory([empty.clone() for _ in self.layers])

    def state_size(self, mem_len: int | None = None) -> int:
        """Numbers carried per sequence between segments: L * M * D."""
        m = self.config.mem_len if mem_len is None else mem_len
        return len(self.layers) * m * self.config.d_model

    def forward(
        self,
        input_ids: Tensor,
        *,
        state: XLMemory | None = None,
        labels: Tensor | None = None,
        mem_len: int | None = None,
    ) -> ModelOutput:
        """input_ids: (B, T) with T <= segment_len -> logits (B, T, V), loss, next XLMemory.

        ``mem_len`` overrides ``config.mem_len`` for this call (a longer memory at
        evaluation); the returned memory keeps the last ``mem_len`` hidden states per layer.
        """
        self.check_input(input_ids)
        m = self.config.mem_len if mem_len is None else mem_len
        non_negative(mem_len=m)
        b = input_ids.shape[0]
        if state is None:
            state = self.init_state(b, input_ids.device)
        check_state_type(state, XLMemory, "Transformer-XL")
        check_layer_count("XLMemory.hidden", state.hidden, len(self.layers))
        h = self.embed(input_ids)  # (B, T, D)
        new_memory = []
        for layer, mem in zip(self.layers, state.hidden):
            check_state_batch("XLMemory.hidden entry", mem, b, self.config.d_model)
            # the cache is the layer's *input*; stop-gradient as in the paper
            new_memory.append(torch.cat((mem, h), dim=1)[:, max(0, mem.shape[1] + h.shape[1] - m):].detach())
            h, _ = layer(h, mem.to(h.dtype))
        logits, loss = self.logits_and_loss(h, labels)
        return ModelOutput(logits=logits, loss=loss, state=XLMemory(new_memory))
