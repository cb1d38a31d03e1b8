"""The generic backbone and its heads: causal LM, sequence classifier, dual encoder.

A backbone is a stack of pre-norm residual blocks ``x + mixer(norm(x))`` then
``x + mlp(norm(x))`` (SwiGLU MLP, RMSNorm), one mixer per layer chosen by a pattern of
mixer names, so hybrids such as ``["mamba", "mamba", "attention"]`` are one config line.
The state of a backbone is the list of its layers' mixer states.

Three fields give the other block shapes of the literature: ``prenorm=False`` puts the norm
after the residual sum, ``norm(x + mixer(x))`` (S4's ListOps model); ``norm="batch"`` is
BatchNorm over the batch's real tokens (padding stays out of the statistics and comes out as zeros),
the S4 papers' LRA norm; ``mlp=False`` drops the MLP, leaving the mixer alone in each block
(S4's LRA blocks, whose layer ends in its own output map).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longarena import mixers
from longarena.config import Config, ConfigError
from longarena.constants import IGNORE
from longarena.models import register


NORMS = ("rms", "batch")


class MaskedBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the feature axis of ``(B, T, D)`` or ``(B, D)``, statistics over the
    positions where ``mask`` is True only; masked-out positions come out as zeros.

    The masked statistics are weighted sums (no boolean indexing, so no host sync on a GPU);
    the running statistics are updated as ``nn.BatchNorm1d`` updates them (momentum, the
    unbiased variance). Zeroing the padding keeps it bounded: in a post-norm stack nothing
    else normalises it, and a residual MLP grows it layer on layer until it overflows (a
    whole batch's loss became NaN that way on a GPU, docs/training.md)."""

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        if x.dim() == 2:
            return super().forward(x).to(x.dtype)
        if mask is None or not self.training:
            # evaluation normalises each position by the running statistics alone
            y = super().forward(x.reshape(-1, x.shape[-1])).to(x.dtype).view_as(x)
            return y if mask is None else y.masked_fill(~mask[..., None], 0.0)
        m = mask[..., None].to(torch.float32)
        xf = x.float()
        n = m.sum()
        mean = (xf * m).sum((0, 1)) / n
        var = ((xf - mean).square() * m).sum((0, 1)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var * n / (n - 1).clamp_min(1.0), self.momentum)
                self.num_batches_tracked += 1
        y = (xf - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight + self.bias
        return y.to(x.dtype).masked_fill(~mask[..., None], 0.0)


def make_norm(config: "ModelConfig") -> nn.Module:
    if config.norm == "batch":
        return MaskedBatchNorm(config.d_model, eps=config.norm_eps)
    return nn.RMSNorm(config.d_model, eps=config.norm_eps)


def apply_norm(norm: nn.Module, x: Tensor, mask: Tensor | None = None) -> Tensor:
    return norm(x, mask) if isinstance(norm, MaskedBatchNorm) else norm(x)


@dataclasses.dataclass
class ModelConfig(Config):
    """Backbone shape: ``pattern`` is cycled over ``n_layers`` layers.

    ``mixer`` maps a mixer name to config overrides for every layer of that mixer, e.g.
    ``{"attention": {"n_heads": 2}, "mamba": {"d_state": 8}}``.
    """

    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 2
    pattern: tuple[str, ...] = ("attention",)
    mixer: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    #: SwiGLU hidden width; 0 means round(8/3 * d_model) to a multiple of 8
    mlp_hidden: int = 0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    dropout: float = 0.0
    #: "rms" (RMSNorm) or "batch" (BatchNorm over the real tokens of the batch)
    norm: str = "rms"
    #: True: ``x + f(norm(x))``; False: ``norm(x + f(x))`` (post-norm, no final norm)
    prenorm: bool = True
    #: False: no MLP after the mixer (each block is ``mixer`` and its residual alone)
    mlp: bool = True

    def validate(self) -> None:
        if self.norm not in NORMS:
            raise ConfigError(f"norm must be one of {', '.join(map(repr, NORMS))}, got {self.norm!r}")
        for name in ("prenorm", "mlp"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if isinstance(self.pattern, str):
            self.pattern = (self.pattern,)
        self.pattern = tuple(self.pattern)
        for name, value in (("vocab_size", self.vocab_size), ("d_model", self.d_model), ("n_layers", self.n_layers)):
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        if not self.pattern:
            raise ConfigError("pattern must name at least one mixer, e.g. ('attention',)")
        if self.n_layers % len(self.pattern):
            raise ConfigError(
                f"n_layers ({self.n_layers}) must be a multiple of the pattern length ({len(self.pattern)}: "
                f"{list(self.pattern)}) so the pattern repeats evenly"
            )
        known = mixers.names()
        for name in list(self.pattern) + list(self.mixer):
            if name not in known:
                raise ConfigError(f"unknown mixer {name!r} in the model config; known mixers: {', '.join(known)}")
        unused = sorted(set(self.mixer) - set(self.pattern))
        if unused:
            raise ConfigError(f"mixer overrides given for {unused}, which the pattern {list(self.pattern)} does not use")

    def layer_mixers(self) -> list[str]:
        return [self.pattern[i % len(self.pattern)] for i in range(self.n_layers)]

    def hidden_width(self) -> int:
        if self.mlp_hidden:
            return self.mlp_hidden
        return max(8, int(round(8 * self.d_model / 3 / 8)) * 8)


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    """Residual block: mixer then SwiGLU MLP (optional), pre- or post-norm."""

    def __init__(self, mixer: mixers.Mixer, config: ModelConfig) -> None:
        super().__init__()
        self.prenorm = config.prenorm
        self.norm1 = make_norm(config)
        self.mixer = mixer
        if config.mlp:
            self.norm2 = make_norm(config)
            self.mlp = SwiGLU(config.d_model, config.hidden_width())
        else:
            self.norm2 = self.mlp = None
        self.dropout = nn.Dropout(config.dropout)

    def _residual(self, x: Tensor, f, norm: nn.Module, mask: Tensor | None) -> tuple[Tensor, Any]:
        """``x + f(norm(x))`` (pre-norm) or ``norm(x + f(x))``; ``f`` returns (y, extra)."""
        if self.prenorm:
            y, extra = f(apply_norm(norm, x, mask))
            return x + self.dropout(y), extra
        y, extra = f(x)
        return apply_norm(norm, x + self.dropout(y), mask), extra

    def forward(self, x: Tensor, state: Any = None, mask: Tensor | None = None) -> tuple[Tensor, Any]:
        x, state = self._residual(x, lambda h: self.mixer(h, state=state, mask=mask), self.norm1, mask)
        if self.mlp is not None:
            x, _ = self._residual(x, lambda h: (self.mlp(h), None), self.norm2, mask)
        return x, state

    def step(self, x_t: Tensor, state: Any) -> tuple[Tensor, Any]:
        x_t, state = self._residual(x_t, lambda h: self.mixer.step(h, state), self.norm1, None)
        if self.mlp is not None:
            x_t, _ = self._residual(x_t, lambda h: (self.mlp(h), None), self.norm2, None)
        return x_t, state


class Backbone(nn.Module):
    """Stack of blocks over ``(B, T, D)``; its state is a list with one entry per layer."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(
            Block(mixers.get(name, config.d_model, **config.mixer.get(name, {})), config)
            for name in config.layer_mixers()
        )
        # post-norm blocks end normalised already
        self.norm = make_norm(config) if config.prenorm else nn.Identity()

    @property
    def causal(self) -> bool:
        return all(layer.mixer.causal for layer in self.layers)

    def forward(self, x: Tensor, state: list[Any] | None = None, mask: Tensor | None = None) -> tuple[Tensor, list[Any]]:
        if state is not None and len(state) != len(self.layers):
            raise ValueError(f"state has {len(state)} layer entries, the model has {len(self.layers)} layers")
        if mask is not None and bool(mask.all()):
            # no padding (the usual batch): checked once here rather than in every layer, it
            # keeps attention on SDPA's fused causal kernel and spares mixers their mask work
            mask = None
        states = []
        for i, layer in enumerate(self.layers):
            x, s = layer(x, None if state is None else state[i], mask)
            states.append(s)
        return apply_norm(self.norm, x, mask), states

    def step(self, x_t: Tensor, state: list[Any]) -> tuple[Tensor, list[Any]]:
        states = []
        for layer, s in zip(self.layers, state):
            x_t, s = layer.step(x_t, s)
            states.append(s)
        return self.norm(x_t), states

    def init_state(self, batch_size: int, device=None, dtype=None) -> list[Any]:
        return [layer.mixer.init_state(batch_size, device=device, dtype=dtype) for layer in self.layers]

    def state_size(self, seq_len: int) -> int:
        return sum(layer.mixer.state_size(seq_len) for layer in self.layers)


@dataclasses.dataclass
class ModelOutput:
    logits: Tensor
    loss: Tensor | None = None
    state: Any = None


def _check_ids(input_ids: Tensor, vocab_size: int, name: str = "input_ids") -> None:
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.dtype not in (torch.long, torch.int):
        shape = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
        raise ValueError(f"{name} must be an integer tensor of shape (B, T), got {shape}")
    if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= vocab_size):
        raise ValueError(
            f"{name} holds ids in [{int(input_ids.min())}, {int(input_ids.max())}], outside the vocabulary 0..{vocab_size - 1}"
        )


@register("lm")
class LanguageModel(nn.Module):
    """Causal language model: embedding, backbone, tied output head; ``generate()`` decodes with states."""

    config_class = ModelConfig

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.backbone = Backbone(config)
        non_causal = [
            f"{name!r} (layer {i})" for i, (name, layer) in enumerate(zip(config.layer_mixers(), self.backbone.layers))
            if not layer.mixer.causal
        ]
        if non_causal:
            causal_names = [n for n in mixers.names() if mixers.is_causal(n)]
            raise ConfigError(
                f"a causal language model needs causal mixers, but {', '.join(non_causal)} "
                f"{'is' if len(non_causal) == 1 else 'are'} non-causal; "
                f"use a classifier for it, a causal configuration of it if it has one, or one of these "
                f"(causal by default): {', '.join(causal_names)}"
            )
        if config.norm == "batch":
            raise ConfigError(
                "norm='batch' takes its training statistics over every position of the batch, so a causal "
                "language model would see later tokens through them; use norm='rms' for language models "
                "(batch norm is for classifiers)"
            )
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.head.weight = self.embed.weight
        self.apply(_init_weights)

    def forward(
        self,
        input_ids: Tensor,
        *,
        state: Any = None,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> ModelOutput:
        """input_ids: (B, T) -> logits (B, T, V); ``labels`` (B, T) give the next-token loss."""
        _check_ids(input_ids, self.config.vocab_size)
        h, state = self.backbone(self.embed(input_ids), state=state, mask=attention_mask)
        logits = self.head(h)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE)
        return ModelOutput(logits=logits, loss=loss, state=state)

    @torch.no_grad()
    def generate(self, input_ids: Tensor, max_new_tokens: int, *, temperature: float = 0.0, eos_id: int | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Greedy (temperature 0) or sampled continuation; returns (B, T + new) ids.

        The prompt is prefilled in one forward; each new token then costs one ``step()``
        per layer, i.e. O(state) work rather than a recomputation of the prefix.
        """
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        out = self(input_ids)
        state, logits = out.state, out.logits[:, -1]
        tokens = [input_ids]
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for i in range(max_new_tokens):
            if temperature > 0:
                probs = torch.softmax(logits.float() / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            else:
                nxt = logits.argmax(dim=-1)
            if eos_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
                done |= nxt == eos_id
            tokens.append(nxt[:, None])
            if i == max_new_tokens - 1 or (eos_id is not None and bool(done.all())):
                break
            h, state = self.backbone.step(self.embed(nxt), state)
            logits = self.head(h)
        return torch.cat(tokens, dim=1)

    def state_size(self, seq_len: int) -> int:
        return self.backbone.state_size(seq_len)


POOLINGS = ("mean", "first", "last")
INPUT_ENCODINGS = ("embedding", "scalar")


class ScalarEmbedding(nn.Module):
    """Token id ``v`` read as the number ``2 v / (vocab_size - 1) - 1`` in [-1, 1] and mapped
    to ``d_model`` by a linear layer: a grey level as an intensity, not a symbol (S4's LRA
    image and Pathfinder inputs: pixels normalised to [-1, 1], a linear encoder)."""

    def __init__(self, vocab_size: int, d_model: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.proj = nn.Linear(1, d_model)

    def forward(self, input_ids: Tensor) -> Tensor:
        value = input_ids.to(self.proj.weight.dtype) * (2.0 / max(self.vocab_size - 1, 1)) - 1.0
        return self.proj(value[..., None])


@dataclasses.dataclass
class ClassifierConfig(ModelConfig):
    num_classes: int = 2
    #: "mean" over real tokens, "first" (a CLS-style first token) or "last" (the last real
    #: token: with a two-sided mixer its forward half has read the whole sequence; S4's
    #: published Pathfinder models read out this way)
    pooling: str = "mean"
    #: "embedding" (a learned vector per token id) or "scalar" (the id as an intensity in
    #: [-1, 1] through a linear layer: for pixel tasks, as S4 reads LRA images)
    input_encoding: str = "embedding"

    def validate(self) -> None:
        super().validate()
        if self.input_encoding not in INPUT_ENCODINGS:
            raise ConfigError(
                f"input_encoding must be one of {', '.join(map(repr, INPUT_ENCODINGS))}, got {self.input_encoding!r}"
            )
        if self.num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {', '.join(map(repr, POOLINGS))}, got {self.pooling!r}")


#: the fields a classifier adds to the backbone's (a language model has none of them)
CLASSIFIER_ONLY = tuple(
    f.name for f in dataclasses.fields(ClassifierConfig) if f.name not in {g.name for g in dataclasses.fields(ModelConfig)}
)


class _Encoder(nn.Module):
    """Embedding + backbone + pooling: (B, T) ids -> (B, D)."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        if config.input_encoding == "scalar":
            self.embed: nn.Module = ScalarEmbedding(config.vocab_size, config.d_model)
        else:
            self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.backbone = Backbone(config)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None, name: str = "input_ids") -> Tensor:
        _check_ids(input_ids, self.config.vocab_size, name)
        h, _ = self.backbone(self.embed(input_ids), mask=attention_mask)
        if self.config.pooling == "first":
            return h[:, 0]
        if self.config.pooling == "last":
            if attention_mask is None:
                return h[:, -1]
            # the highest real position of each row, wherever the padding sits: (B,)
            positions = torch.arange(1, h.shape[1] + 1, device=h.device) * attention_mask.to(torch.long)
            return h[torch.arange(h.shape[0], device=h.device), positions.argmax(dim=1)]
        if attention_mask is None:
            return h.mean(dim=1)
        m = attention_mask[..., None].to(h.dtype)
        return (h * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


@register("classifier")
class SequenceClassifier(nn.Module):
    """Sequence classifier: backbone, mean, first- or last-token pooling, linear head."""

    config_class = ClassifierConfig

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = _Encoder(config)
        self.head = nn.Linear(config.d_model, config.num_classes)
        self.apply(_init_weights)

    def forward(self, input_ids: Tensor, *, attention_mask: Tensor | None = None, labels: Tensor | None = None) -> ModelOutput:
        logits = self.head(self.encoder(input_ids, attention_mask))
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return ModelOutput(logits=logits, loss=loss)


@register("dual_encoder")
class DualEncoder(nn.Module):
    """Pair classifier for retrieval (LRA AAN): one shared encoder, features [u, v, u*v, u-v]."""

    config_class = ClassifierConfig

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = _Encoder(config)
        d = config.d_model
        self.head = nn.Sequential(nn.Linear(4 * d, d), nn.GELU(), nn.Linear(d, config.num_classes))
        self.apply(_init_weights)

    def forward(
        self,
        input_ids: Tensor,
        input_ids_2: Tensor,
        *,
        attention_mask: Tensor | None = None,
        attention_mask_2: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> ModelOutput:
        u = self.encoder(input_ids, attention_mask)
        v = self.encoder(input_ids_2, attention_mask_2, "input_ids_2")
        logits = self.head(torch.cat([u, v, u * v, u - v], dim=-1))
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return ModelOutput(logits=logits, loss=loss)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
