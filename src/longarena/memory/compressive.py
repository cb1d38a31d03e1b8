"""Compressive Transformer (Rae et al., 2020): Transformer-XL's memory plus a compressed memory.

Per layer the model keeps two FIFOs of that layer's inputs (all detached):

- ``mem`` (length ``mem_len`` = n_m): the most recent hidden states, as in Transformer-XL;
- ``cmem`` (length ``cmem_len`` = n_cm): older states, compressed by the rate c.

Each segment attends over ``[cmem, mem, segment]`` (relative positions as in XL, the
concatenation read as one contiguous sequence). Afterwards the segment's inputs join
``mem``; the oldest states beyond n_m leave it in whole groups of c and are compressed,
c -> 1, by ``f_c`` into ``cmem``, whose oldest entries then fall out. (A state waits in
``mem`` until its group of c is complete, so ``mem`` may briefly hold up to n_m + c - 1
states when segment lengths are not multiples of c; nothing is dropped uncompressed.)

Compression functions ``f_c`` (``compression=``):

- ``"max"`` / ``"mean"``: max or mean pooling over each group of c, no parameters;
- ``"conv"``: a 1-D convolution with kernel and stride c (learned);
- ``"most_used"``: keep, from each group, the state that received the most attention
  (summed over queries, averaged over heads) while it was in ``mem``.

The attention-reconstruction loss trains ``f_c``: for each layer, the content attention
of the current segment's queries over the old states should be reproduced over their
compression, ``|| attn(h, old) - attn(h, f_c(old)) ||^2``. Everything but ``f_c`` is
detached inside it (as in the paper, it trains the compression network only), so it can
simply be added to the LM loss; the output carries it as ``aux_loss`` and
:func:`longarena.memory.runner.train_segments` adds it.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longarena.config import ConfigError
from longarena.memory.common import (
    SegmentConfig,
    SegmentLM,
    check_layer_count,
    check_state_batch,
    check_state_type,
    non_negative,
    split_heads,
)
from longarena.memory.transformer_xl import RelativeAttentionLayer
from longarena.models import register
from longarena.models.backbone import ModelOutput

COMPRESSIONS = ("max", "mean", "conv", "most_used")


@dataclasses.dataclass
class CompressiveConfig(SegmentConfig):
    #: FIFO memory n_m (states per layer)
    mem_len: int = 64
    #: compressed memory n_cm (compressed states per layer); 0 = Transformer-XL
    cmem_len: int = 32
    #: c: states per compressed state
    compression_rate: int = 2
    #: f_c, one of COMPRESSIONS
    compression: str = "conv"

    def validate(self) -> None:
        super().validate()
        non_negative(mem_len=self.mem_len, cmem_len=self.cmem_len)
        if not isinstance(self.compression_rate, int) or self.compression_rate < 1:
            raise ConfigError(f"compression_rate must be an int >= 1, got {self.compression_rate!r}")
        if self.compression not in COMPRESSIONS:
            raise ConfigError(f"compression must be one of {list(COMPRESSIONS)}, got {self.compression!r}")


@dataclasses.dataclass
class CompressiveMemory:
    """Per layer: ``mem[l]`` (B, n, D), ``cmem[l]`` (B, n_c, D); ``usage[l]`` (B, n) for "most_used"."""

    mem: list[Tensor]
    cmem: list[Tensor]
    usage: list[Tensor] | None = None


@dataclasses.dataclass
class CompressiveOutput(ModelOutput):
    #: attention-reconstruction loss, mean over the layers that compressed in this segment
    aux_loss: Tensor | None = None


class Compressor(nn.Module):
    """f_c: old states (B, N, D), N a multiple of c, -> compressed states (B, N / c, D)."""

    def __init__(self, kind: str, rate: int, d_model: int) -> None:
        super().__init__()
        self.kind, self.rate = kind, rate
        self.conv = nn.Conv1d(d_model, d_model, kernel_size=rate, stride=rate) if kind == "conv" else None

    def forward(self, old: Tensor, usage: Tensor | None = None) -> Tensor:
        b, n, d = old.shape
        c = self.rate
        groups = old.view(b, n // c, c, d)  # (B, N/c, c, D)
        if self.kind == "max":
            return groups.amax(dim=2)
        if self.kind == "mean":
            return groups.mean(dim=2)
        if self.kind == "conv":
            return self.conv(old.transpose(1, 2)).transpose(1, 2)  # (B, D, N) -> (B, D, N/c) -> (B, N/c, D)
        pick = usage.view(b, n // c, c).argmax(dim=-1)  # (B, N/c)
        return torch.gather(groups, 2, pick[..., None, None].expand(-1, -1, 1, d)).squeeze(2)


def reconstruction_loss(layer: RelativeAttentionLayer, h: Tensor, old: Tensor, compressed: Tensor) -> Tensor:
    """MSE between content attention of h (B, T, D) over ``old`` (B, N, D) and over ``compressed``.

    The layer's weights, h and old are detached, so only ``compressed`` (f_c) gets a gradient.
    """
    norm_w = layer.norm.weight.detach()

    def normed(x: Tensor) -> Tensor:
        return F.rms_norm(x, (x.shape[-1],), norm_w, layer.norm.eps)

    q = split_heads(F.linear(normed(h.detach()), layer.q_proj.weight.detach()), layer.n_heads)  # (B, H, T, K)

    def read(memory: Tensor) -> Tensor:
        kv = F.linear(normed(memory), layer.kv_proj.weight.detach())
        k, v = (split_heads(z, layer.n_heads) for z in kv.chunk(2, dim=-1))  # (B, H, N, K)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(layer.head_dim), dim=-1)
        return weights @ v  # (B, H, T, K)

    return F.mse_loss(read(compressed), read(old.detach()).detach())


@register("compressive")
class CompressiveTransformer(SegmentLM):
    """Compressive Transformer LM: FIFO memory plus compressed memory, per layer."""

    config_class = CompressiveConfig

    def __init__(self, config: CompressiveConfig) -> None:
        super().__init__(config)
        self.layers = nn.ModuleList(RelativeAttentionLayer(config) for _ in range(config.n_layers))
        self.compressors = nn.ModuleList(
            Compressor(config.compression, config.compression_rate, config.d_model) for _ in range(config.n_layers)
        )
        self._init_embeddings()

    def init_state(self, batch_size: int, device=None, dtype=None) -> CompressiveMemory:
        dtype = dtype or self.embed.weight.dtype
        empty = torch.zeros(batch_size, 0, self.config.d_model, device=device, dtype=dtype)
        usage = None
        if self.config.compression == "most_used":
            usage = [torch.zeros(batch_size, 0, device=device, dtype=torch.float32) for _ in self.layers]
        return CompressiveMemory([empty.clone() for _ in self.layers], [empty.clone() for _ in self.layers], usage)

    def state_size(self, seq_len: int | None = None) -> int:
        """Numbers carried per sequence when both memories are full: L * (n_m + n_cm) * D."""
        c = self.config
        return len(self.layers) * (c.mem_len + c.cmem_len) * c.d_model

    def forward(self, input_ids: Tensor, *, state: CompressiveMemory | None = None, labels: Tensor | None = None) -> CompressiveOutput:
        """input_ids: (B, T), T <= segment_len -> logits (B, T, V), loss, aux_loss, CompressiveMemory."""
        self.check_input(input_ids)
        cfg = self.config
        b, t = input_ids.shape
        if state is None:
            state = self.init_state(b, input_ids.device)
        check_state_type(state, CompressiveMemory, "The Compressive Transformer")
        check_layer_count("CompressiveMemory.mem", state.mem, len(self.layers))
        check_layer_count("CompressiveMemory.cmem", state.cmem, len(self.layers))
        most_used = cfg.compression == "most_used"
        if most_used and (state.usage is None or len(state.usage) != len(self.layers)):
            raise ValueError("a 'most_used' Compressive Transformer needs CompressiveMemory.usage, one entry per layer")
        h = self.embed(input_ids)  # (B, T, D)
        new_mem, new_cmem, new_usage, aux = [], [], [], []
        for i, (layer, compress) in enumerate(zip(self.layers, self.compressors)):
            mem, cmem = state.mem[i], state.cmem[i]
            check_state_batch("CompressiveMemory.mem entry", mem, b, cfg.d_model)
            check_state_batch("CompressiveMemory.cmem entry", cmem, b, cfg.d_model)
            prefix = torch.cat((cmem, mem), dim=1).to(h.dtype)  # (B, n_c + n, D)
            h_out, weights = layer(h, prefix, need_weights=most_used)
            full = torch.cat((mem, h.detach()), dim=1)  # (B, n + T, D): this layer's inputs, oldest first
            usage = None
            if most_used:
                received = weights.detach().float().mean(dim=1).sum(dim=1)[:, cmem.shape[1]:]  # (B, n + T)
                usage = torch.cat((state.usage[i], torch.zeros(b, t, device=h.device)), dim=1) + received
            if cfg.cmem_len == 0:
                evict = max(0, full.shape[1] - cfg.mem_len)  # nothing to compress into: plain XL
            else:
                evict = max(0, full.shape[1] - cfg.mem_len) // cfg.compression_rate * cfg.compression_rate
            if evict and cfg.cmem_len:
                old = full[:, :evict]
                compressed = compress(old, None if usage is None else usage[:, :evict])  # (B, evict / c, D)
                aux.append(reconstruction_loss(layer, h, old, compressed))
                cmem = torch.cat((cmem, compressed.detach()), dim=1)[:, -cfg.cmem_len:]
            new_mem.append(full[:, evict:])
            new_cmem.append(cmem)
            if most_used:
                new_usage.append(usage[:, evict:])
            h = h_out
        logits, loss = self.logits_and_loss(h, labels)
        aux_loss = torch.stack(aux).mean() if aux else None
        memory = CompressiveMemory(new_mem, new_cmem, new_usage if most_used else None)
        return CompressiveOutput(logits=logits, loss=loss, state=memory, aux_loss=aux_loss)
