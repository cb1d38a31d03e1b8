"""Pieces every segment-memory model shares: the config fields, the LM shell (embedding,
final norm, head, loss) and the input/state checks that turn shape mistakes into clear
errors.

Shapes: B batch, T segment length, D model width, H heads, K head width, M memory length.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longarena.config import Config, ConfigError
from longarena.constants import IGNORE
from longarena.models.backbone import SwiGLU
from longarena.ops.attention import BACKENDS


class MemoryStateError(ValueError):
    """A memory state handed to a segment model does not fit the model or the batch."""


@dataclasses.dataclass
class SegmentConfig(Config):
    """Fields shared by the segment-memory language models."""

    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    #: the longest segment one forward accepts (the runner splits longer inputs)
    segment_len: int = 64
    #: SwiGLU hidden width; 0 means round(8/3 * d_model) to a multiple of 8
    mlp_hidden: int = 0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    dropout: float = 0.0
    #: attention op: "sdpa" or "reference"
    backend: str = "sdpa"

    def validate(self) -> None:
        _positive(vocab_size=self.vocab_size, d_model=self.d_model, n_layers=self.n_layers,
                  n_heads=self.n_heads, segment_len=self.segment_len)
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {sorted(BACKENDS)}, got {self.backend!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")

    def hidden_width(self) -> int:
        if self.mlp_hidden:
            return self.mlp_hidden
        return max(8, int(round(8 * self.d_model / 3 / 8)) * 8)


def _positive(**fields: Any) -> None:
    for name, value in fields.items():
        if not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{name} must be a positive int, got {value!r}")


def non_negative(**fields: Any) -> None:
    for name, value in fields.items():
        if not isinstance(value, int) or value < 0:
            raise ConfigError(f"{name} must be an int >= 0, got {value!r}")


class SegmentLM(nn.Module):
    """Embedding, final RMSNorm and (tied) head around a subclass's segment stack."""

    config_class: type[SegmentConfig] = SegmentConfig

    def __init__(self, config: SegmentConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.head.weight = self.embed.weight

    def _init_embeddings(self) -> None:
        nn.init.normal_(self.embed.weight, std=0.02)

    def check_input(self, input_ids: Tensor) -> None:
        """input_ids must be (B, T) integer ids with 1 <= T <= segment_len."""
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.dtype not in (torch.long, torch.int):
            shape = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids must be an integer tensor of shape (B, T), got {shape}")
        t, s = input_ids.shape[1], self.config.segment_len
        if t == 0:
            raise ValueError("input_ids has no tokens (T = 0); a segment needs at least one token")
        if t > s:
            raise ValueError(
                f"a segment of {t} tokens is longer than this model's segment_len ({s}); feed long inputs "
                "through longarena.memory.runner (run_segments / train_segments / perplexity), which splits them"
            )
        if input_ids.min() < 0 or input_ids.max() >= self.config.vocab_size:
            raise ValueError(
                f"input_ids holds ids in [{int(input_ids.min())}, {int(input_ids.max())}], outside the "
                f"vocabulary 0..{self.config.vocab_size - 1}"
            )

    def logits_and_loss(self, h: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """h: (B, T, D) final hidden states -> logits (B, T, V) and the mean loss on ``labels``.

        ``labels`` are already the next tokens (no shift here), IGNORE where unscored, so
        a runner can give the last token of a segment the first token of the next one.
        """
        logits = self.head(self.norm(h))
        if labels is None:
            return logits, None
        if labels.shape != logits.shape[:2]:
            raise ValueError(f"labels must have shape {tuple(logits.shape[:2])} like input_ids, got {tuple(labels.shape)}")
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE)
        return logits, loss


def check_state_batch(name: str, tensor: Tensor, batch: int, width: int) -> None:
    """A carried tensor (B, M, D) must match the batch and the model width."""
    if tensor.dim() != 3 or tensor.shape[0] != batch or tensor.shape[2] != width:
        raise MemoryStateError(
            f"{name} has shape {tuple(tensor.shape)}, expected (B={batch}, M, D={width}); the state must come "
            "from the same model and a batch of the same size (pass state=None to start a new sequence)"
        )


def check_state_type(state: Any, expected: type, model: str) -> None:
    if not isinstance(state, expected):
        raise MemoryStateError(
            f"{model} expects a {expected.__name__} state (or None to start), got {type(state).__name__}; "
            "pass the .state of this model's previous output"
        )


def check_layer_count(name: str, entries: list[Any], n_layers: int) -> None:
    if len(entries) != n_layers:
        raise MemoryStateError(
            f"{name} has {len(entries)} layer entries but the model has {n_layers} layers; "
            "the state must come from a model with the same config"
        )


class MLPBlock(nn.Module):
    """The pre-norm SwiGLU half of a block: ``x + dropout(mlp(norm(x)))``."""

    def __init__(self, config: SegmentConfig) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.mlp = SwiGLU(config.d_model, config.hidden_width())
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.dropout(self.mlp(self.norm(x)))


def split_heads(x: Tensor, n_heads: int) -> Tensor:
    """(B, T, H*K) -> (B, H, T, K)."""
    b, t, _ = x.shape
    return x.view(b, t, n_heads, -1).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, H, T, K) -> (B, T, H*K)."""
    b, h, t, k = x.shape
    return x.transpose(1, 2).reshape(b, t, h * k)
