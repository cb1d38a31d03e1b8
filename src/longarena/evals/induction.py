"""Induction heads (Olsson et al. 2022) on repeated random tokens, and the in-context-learning score.

A batch of sequences ``[prefix] r r`` where ``r`` is ``seq_len`` uniformly random tokens.
On the second copy, a model that has induction heads predicts every token by finding the
previous occurrence of the current token and copying the token that followed it.

- ``prefix_matching[l, h]``: for each position ``t`` in the second copy (token ``r[i]``),
  the attention weight of head ``h`` in layer ``l`` on the induction target, the position
  just after the earlier ``r[i]``; averaged over positions and sequences. 1 = a perfect
  induction head; a uniform head scores about 1/t.
- ``loss_first`` / ``loss_repeat``: mean next-token loss on ``r[1:]`` in the first and in
  the second copy (the second ``r[0]`` follows ``r[-1]``, a pair never seen, so it is left
  out of both); random tokens cannot be predicted the first time (about log V), so the drop
  ``loss_first - loss_repeat`` measures in-context copying; ``copy_accuracy`` is the fraction
  of those second-copy tokens the model predicts exactly (argmax).
- ``icl_score(adapter, ids)``: loss at a late token minus loss at an early one on natural
  text (Olsson et al. use tokens 500 and 50); negative when later tokens benefit from context.

Attention weights come from ``Adapter.attention_maps`` (HF models through their eager path,
LongArena ``attention`` mixers recomputed from q and k). Models without softmax attention get
the loss-based scores only.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from longarena.config import Config, ConfigError
from longarena.evals.adapter import Adapter, EvalError
from longarena.evals.common import Progress, tick, write_json
from longarena.plotting import pyplot, save_png


@dataclasses.dataclass
class InductionConfig(Config):
    seq_len: int = 64
    batch: int = 4
    seed: int = 0
    #: random tokens are drawn from [low, high); high = 0 means the vocabulary size
    low: int = 0
    high: int = 0
    #: begin every sequence with the tokenizer's special prefix (BOS), as the model was trained
    prefix: bool = True

    def validate(self) -> None:
        if self.seq_len < 2 or self.batch < 1:
            raise ConfigError(f"seq_len must be >= 2 and batch >= 1, got {self.seq_len}, {self.batch}")
        if self.low < 0 or (self.high and self.high - self.low < 2):
            raise ConfigError(f"token range [{self.low}, {self.high}) must hold at least 2 tokens")


def repeated_sequences(config: InductionConfig, vocab_size: int, prefix: Sequence[int] = ()) -> torch.Tensor:
    """(B, P + 2 * seq_len) ids: prefix, then random tokens, then the same tokens again."""
    high = config.high or vocab_size
    if high > vocab_size or high - config.low < 2:
        raise EvalError(f"token range [{config.low}, {high}) does not fit the vocabulary of {vocab_size}")
    g = torch.Generator().manual_seed(config.seed)
    r = torch.randint(config.low, high, (config.batch, config.seq_len), generator=g)
    p = torch.tensor(list(prefix), dtype=torch.long).expand(config.batch, len(prefix))
    return torch.cat([p, r, r], dim=1)


def prefix_matching(maps: torch.Tensor, offset: int, seq_len: int) -> torch.Tensor:
    """maps (L, H, T, T) of one ``[prefix] r r`` sequence -> (L, H) mean attention on induction targets.

    Query ``offset + seq_len + i`` holds ``r[i]``; its earlier occurrence is at ``offset + i``,
    so the induction target is ``offset + i + 1``.
    """
    i = torch.arange(seq_len)
    return maps[:, :, offset + seq_len + i, offset + i + 1].mean(-1)


@dataclasses.dataclass
class InductionResult:
    config: InductionConfig
    model: dict[str, Any]
    prefix_matching: list[list[float]] | None
    loss_first: float
    loss_repeat: float
    copy_accuracy: float
    note: str = ""

    @property
    def loss_drop(self) -> float:
        return self.loss_first - self.loss_repeat

    def top_heads(self, k: int = 5) -> list[tuple[int, int, float]]:
        if self.prefix_matching is None:
            return []
        flat = [(l, h, s) for l, row in enumerate(self.prefix_matching) for h, s in enumerate(row)]
        return sorted(flat, key=lambda x: -x[2])[:k]

    def to_dict(self) -> dict[str, Any]:
        return {
            "eval": "induction",
            "config": self.config.to_dict(),
            "model": self.model,
            "loss_first": self.loss_first,
            "loss_repeat": self.loss_repeat,
            "loss_drop": self.loss_drop,
            "copy_accuracy": self.copy_accuracy,
            "top_heads": [{"layer": l, "head": h, "score": s} for l, h, s in self.top_heads()],
            "prefix_matching": self.prefix_matching,
            "note": self.note,
        }

    def save(self, folder: str | os.PathLike, name: str = "induction") -> dict[str, Path]:
        folder = Path(folder)
        out = {"json": write_json(self.to_dict(), folder / f"{name}.json")}
        if self.prefix_matching is not None:
            out["png"] = plot_heads(self, folder / f"{name}.png")
        return out


def evaluate(
    adapter: Adapter, config: InductionConfig | None = None, progress: Progress = None, **overrides: Any
) -> InductionResult:
    if config is None:
        config = InductionConfig(**overrides)
    elif overrides:
        config = InductionConfig.from_dict({**config.to_dict(), **overrides})
    prefix = adapter.encode("") if config.prefix else []
    x = repeated_sequences(config, adapter.vocab_size, prefix)  # (B, P + 2N)
    p, n = len(prefix), config.seq_len
    first, repeat, hits, scores = [], [], [], []
    note = ""
    for b in range(config.batch):
        tick(progress, b, config.batch, "induction")
        ids = x[b].tolist()
        losses = adapter.token_losses(ids)  # entry j predicts ids[j + 1]
        # predictions of r[1..N-1]: in the first copy from positions p..p+N-2, in the second from p+N on
        first.append(losses[p : p + n - 1].mean())
        repeat.append(losses[p + n :].mean())
        hits.append(_copy_hits(adapter, ids, p, n))
        if note:
            continue
        try:
            scores.append(prefix_matching(adapter.attention_maps(ids), p, n))
        except EvalError as exc:
            note = f"no attention maps: {exc}"
    tick(progress, config.batch, config.batch, "induction")
    pm = torch.stack(scores).mean(0).tolist() if scores and not note else None
    return InductionResult(
        config,
        adapter.describe(),
        pm,
        float(torch.stack(first).mean()),
        float(torch.stack(repeat).mean()),
        sum(hits) / len(hits),
        note,
    )


@torch.no_grad()
def _copy_hits(adapter: Adapter, ids: list[int], p: int, n: int) -> float:
    """Fraction of the second copy's r[1..N-1] that are the argmax prediction."""
    x = adapter._tensor(ids)
    h = adapter._hidden(x)[:, p + n : -1]  # (1, N-1, D): the states that predict r[1..N-1] again
    pred = adapter._head(h).argmax(-1)[0].cpu()
    return float((pred == x[0, p + n + 1 :].cpu()).float().mean())


def icl_score(
    adapter: Adapter, documents: Sequence[Sequence[int]], late: int = 500, early: int = 50
) -> float:
    """Mean over documents of loss(token ``late``) - loss(token ``early``); each document needs > ``late`` tokens."""
    if not 0 < early < late:
        raise EvalError(f"need 0 < early < late, got early={early}, late={late}")
    diffs = []
    for doc in documents:
        if len(doc) <= late:
            raise EvalError(f"a document has {len(doc)} tokens; the ICL score needs more than {late}")
        losses = adapter.token_losses(list(doc)[: late + 1])  # entry j predicts token j + 1
        diffs.append(float(losses[late - 1] - losses[early - 1]))
    if not diffs:
        raise EvalError("no documents given")
    return sum(diffs) / len(diffs)


def plot_heads(result: InductionResult, path: str | os.PathLike) -> Path:
    """Layer (y) x head (x) heatmap of the prefix-matching score, colours fixed to 0-1."""
    plt = pyplot()
    m = result.prefix_matching
    fig, ax = plt.subplots(figsize=(1.5 + 0.45 * len(m[0]), 1.0 + 0.25 * len(m)))
    im = ax.imshow(m, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(len(m[0])))
    ax.set_title(
        f"prefix matching: {result.model.get('name', '')}\nloss {result.loss_first:.2f} -> {result.loss_repeat:.2f} on the repeat",
        fontsize=8,
    )
    fig.colorbar(im, ax=ax, label="attention on induction target")
    fig.tight_layout()
    return save_png(fig, path)
