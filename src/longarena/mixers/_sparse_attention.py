"""What Longformer and BigBird share: heads, rotary positions and the sparse backends.

Not a registered mixer (the leading underscore keeps it out of discovery).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from longarena import positions
from longarena.config import ConfigError
from longarena.mixers.base import Mixer, MixerConfig, MixerInputError, check_heads
from longarena.ops.attention.patterns import Pattern
from longarena.ops.attention.sparse import sparse_attention, sparse_backends_for


@dataclasses.dataclass
class SparseAttentionConfig(MixerConfig):
    n_heads: int = 4
    #: a rotation scheme from ``longarena.positions.names()`` ("rope", "none", ...); schemes
    #: that add a dense (T, T) score bias would undo the sparsity and are refused
    position: str = "rope"
    position_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: tile edge of the block-sparse kernels (lengths it does not divide are padded)
    block_size: int = 64
    bias: bool = False

    def validate(self) -> None:
        super().validate()
        check_heads(self.d_model, self.n_heads)
        if not isinstance(self.block_size, int) or self.block_size < 1:
            raise ConfigError(f"block_size must be an int >= 1, got {self.block_size!r}")


class SparseAttentionMixer(Mixer):
    """Base of the block-sparse attention mixers: pattern attention through one backend."""

    backends = ("reference", "blocked", "flex")

    def __init__(self, config: SparseAttentionConfig) -> None:
        super().__init__(config)
        self.n_heads = config.n_heads
        self.head_dim = config.d_model // config.n_heads
        self.block_size = config.block_size
        self.position = positions.get(
            config.position, head_dim=self.head_dim, n_heads=self.n_heads, **config.position_params
        )
        probe = torch.arange(2)
        if self.position.bias(probe, probe) is not None:
            raise ConfigError(
                f"{type(self).__name__} takes a rotation position scheme (e.g. 'rope', 'none'); "
                f"{config.position!r} adds a dense score bias, which sparse attention cannot use"
            )

    def available_backends(self, device: torch.device) -> tuple[str, ...]:
        return sparse_backends_for(device, self.head_dim)

    def split_heads(self, t: Tensor) -> Tensor:
        """(B, T, H*K) -> (B, H, T, K)."""
        b, n, _ = t.shape
        return t.view(b, n, self.n_heads, self.head_dim).transpose(1, 2)

    def merge_heads(self, t: Tensor) -> Tensor:
        """(B, H, T, K) -> (B, T, H*K)."""
        b, _, n, _ = t.shape
        return t.transpose(1, 2).reshape(b, n, self.n_heads * self.head_dim)

    def rotate(self, t: Tensor, start: int = 0) -> Tensor:
        """Apply the position scheme to t: (B, H, T, K) at positions start .. start+T-1."""
        return self.position.rotate(t, torch.arange(start, start + t.shape[2], device=t.device))

    def attend(self, q: Tensor, k: Tensor, v: Tensor, pattern: Pattern, backend: str, **kwargs: Any) -> Tensor:
        """Sparse attention (B, H, Tq, K) through ``backend`` with this mixer's block size."""
        return sparse_attention(q, k, v, pattern, backend=backend, block_size=self.block_size, **kwargs)


def check_global_indices(mixer: Mixer, indices: tuple[int, ...], length: int) -> None:
    """Raise MixerInputError if a global token index does not fit a sequence of ``length``."""
    out = [i for i in indices if i >= length]
    if out:
        raise MixerInputError(
            f"{type(mixer).__name__} has global token(s) at {out} but the input has only {length} tokens; "
            f"use sequences longer than {max(out)} or choose global_tokens inside the sequence"
        )
