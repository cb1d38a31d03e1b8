"""Recurrent Memory Transformer (Bulatov et al., 2022), decoder layout.

Each segment is wrapped in memory tokens and read by an ordinary causal transformer::

    input  = [ read memory (m) | segment tokens (T) | write memory (m) ]   (B, 2m + T, D)
    output = [       --        |   logits of T     |  next memory (m)  ]

The read tokens at the start let every token use the memory; the write tokens at the end
see the memory and the whole segment (causal attention), and their final hidden states
become the next segment's read (and write-input) memory. The first segment reads a
learned initial memory. Memory is the only thing carried between segments, and it is
*not* detached: the loss of a segment back-propagates through the memory into earlier
segments, as far as the runner's ``bptt`` window allows.

The stack is the generic :class:`longarena.models.backbone.Backbone` of softmax attention
blocks with RoPE over the 2m + T positions of a segment.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from longarena.config import ConfigError
from longarena.memory.common import SegmentConfig, SegmentLM, check_state_batch, check_state_type
from longarena.models import register
from longarena.models.backbone import Backbone, ModelConfig, ModelOutput


@dataclasses.dataclass
class RMTConfig(SegmentConfig):
    #: memory tokens m (read and write) per segment
    num_mem_tokens: int = 4

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.num_mem_tokens, int) or self.num_mem_tokens <= 0:
            raise ConfigError(
                f"num_mem_tokens must be a positive int, got {self.num_mem_tokens!r}; an RMT needs memory tokens "
                "(to switch memory off for an ablation, run with carry=False in longarena.memory.runner)"
            )

    def backbone_config(self) -> ModelConfig:
        return ModelConfig(
            vocab_size=self.vocab_size, d_model=self.d_model, n_layers=self.n_layers, pattern=("attention",),
            mixer={"attention": {"n_heads": self.n_heads, "position": "rope", "backend": self.backend}},
            mlp_hidden=self.mlp_hidden, norm_eps=self.norm_eps, dropout=self.dropout,
        )


@dataclasses.dataclass
class RMTMemory:
    """The memory tokens (B, m, D) carried to the next segment (with their autograd history)."""

    memory: Tensor


@register("rmt")
class RecurrentMemoryTransformer(SegmentLM):
    """Recurrent Memory Transformer LM: read tokens first, write tokens last, memory passed on."""

    config_class = RMTConfig

    def __init__(self, config: RMTConfig) -> None:
        super().__init__(config)
        self.backbone = Backbone(config.backbone_config())
        self.norm = nn.Identity()  # the backbone ends with its own RMSNorm
        self.initial_memory = nn.Parameter(torch.randn(config.num_mem_tokens, config.d_model))
        self._init_embeddings()

    def init_state(self, batch_size: int, device=None, dtype=None) -> RMTMemory:
        memory = self.initial_memory.to(device=device, dtype=dtype or self.initial_memory.dtype)
        return RMTMemory(memory.expand(batch_size, -1, -1))

    def state_size(self, seq_len: int | None = None) -> int:
        """Numbers carried per sequence: m * D, whatever the length read."""
        return self.config.num_mem_tokens * self.config.d_model

    def forward(self, input_ids: Tensor, *, state: RMTMemory | None = None, labels: Tensor | None = None) -> ModelOutput:
        """input_ids: (B, T), T <= segment_len -> logits (B, T, V), loss, RMTMemory (B, m, D)."""
        self.check_input(input_ids)
        b, t = input_ids.shape
        m = self.config.num_mem_tokens
        if state is None:
            state = self.init_state(b, input_ids.device)
        check_state_type(state, RMTMemory, "RMT")
        check_state_batch("RMTMemory.memory", state.memory, b, self.config.d_model)
        if state.memory.shape[1] != m:
            raise ValueError(f"RMTMemory holds {state.memory.shape[1]} tokens, this model has num_mem_tokens={m}")
        memory = state.memory.to(self.embed.weight.dtype)
        x = torch.cat((memory, self.embed(input_ids), memory), dim=1)  # (B, m + T + m, D)
        h, _ = self.backbone(x)
        logits, loss = self.logits_and_loss(h[:, m:m + t], labels)
        return ModelOutput(logits=logits, loss=loss, state=RMTMemory(h[:, m + t:]))
