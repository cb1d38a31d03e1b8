"""Study "train_short_test_long": tiny LMs per position scheme, trained at length L, scored at L, 2L, 4L, 8L.

The figure ALiBi's paper is known for, at toy size on CPU. The corpus is a seeded synthetic
language that, like text, rewards looking far back: a hidden *topic* (one of a few order-1
Markov chains over the vocabulary) switches now and then, so the best prediction reads the
whole context to infer the current topic. The Bayes-optimal perplexity (HMM forward
filtering with the true chains) is reported beside the models as the floor.

Models: a pre-norm Transformer (attention + SwiGLU MLP, tied embeddings) built from
``longarena.mixers.get("attention", position=...)``; the sinusoidal model adds
``scheme.embed`` to its inputs. Optionally the RoPE model is also scored zero-shot with each
RoPE scaling (``zero_shot``), and fine-tuned briefly at a longer length with Position
Interpolation versus plain RoPE (``finetune_steps``). ``benchmarks/train_short_test_long.py``
runs the long version of the same code.

Config keys (defaults: the quick suite's, ~20 s on one CPU core):

- ``schemes`` ("alibi", "rope", "sinusoidal"): position schemes trained (also "t5", "xl", "none")
- ``zero_shot`` (): RoPE scalings scored on the trained RoPE model ("linear", "ntk", "dynamic_ntk", "yarn")
- ``train_len`` 32, ``multiples`` (1, 2, 4, 8): evaluation lengths are ``train_len * m``
- ``steps`` 600, ``batch`` 16, ``lr`` 3e-3, ``seed`` 0
- ``vocab`` 32, ``d_model`` 32, ``layers`` 2, ``heads`` 2
- ``eval_seqs`` 16: sequences of ``train_len * max(multiples)`` tokens scored at every length
- ``finetune_steps`` 0, ``finetune_points`` 3, ``finetune_multiple`` 4: the PI fine-tuning comparison
- ``threads`` None: torch CPU threads during the run (None: leave as is)
- ``device`` "cpu": where the models train and are scored ("cuda" on a GPU machine: the
  ``full`` suite); the data are drawn on the CPU either way, so both give the same text
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longarena import mixers, positions
from longarena.arena.study_base import StudyResult, register
from longarena.arena.study_kinds.common import check_device, torch_threads
from longarena.config import Config, ConfigError
from longarena.models.backbone import SwiGLU

TRAINED = ("alibi", "rope", "t5", "xl", "sinusoidal", "none")
ZERO_SHOT = ("linear", "ntk", "dynamic_ntk", "yarn")


@dataclasses.dataclass
class TopicLanguage:
    """``topics`` order-1 Markov chains over ``vocab`` tokens; the topic switches with prob ``switch``."""

    vocab: int = 64
    topics: int = 4
    switch: float = 1 / 48
    concentration: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        # sparse rows (small Dirichlet concentration): each topic has its own likely successors
        self.transitions = rng.dirichlet(np.full(self.vocab, self.concentration), size=(self.topics, self.vocab))

    def sample(self, batch: int, length: int, rng: np.random.Generator) -> Tensor:
        """(B, T) int64 token ids."""
        topic = rng.integers(self.topics, size=batch)
        token = rng.integers(self.vocab, size=batch)
        out = np.empty((batch, length), dtype=np.int64)
        cdf = self.transitions.cumsum(-1)
        for t in range(length):
            out[:, t] = token
            jump = rng.random(batch) < self.switch
            topic = np.where(jump, (topic + rng.integers(1, self.topics, size=batch)) % self.topics, topic)
            u = rng.random(batch)[:, None]
            token = np.minimum((u > cdf[topic, token]).sum(-1), self.vocab - 1)
        return torch.from_numpy(out)

    def optimal_nll(self, tokens: Tensor) -> float:
        """Mean NLL (nats) of tokens[:, 1:] under the true model (forward filtering over topics)."""
        x = tokens.numpy()
        b, t = x.shape
        k = self.topics
        stay = np.full((k, k), self.switch / (k - 1))
        np.fill_diagonal(stay, 1 - self.switch)
        belief = np.full((b, k), 1 / k)  # topic used for the transition out of token t
        total = 0.0
        for i in range(1, t):
            like = self.transitions[:, x[:, i - 1], x[:, i]].T  # (B, K)
            p = (belief * like).sum(-1)
            total -= np.log(p).sum()
            belief = belief * like / p[:, None]
            belief = belief @ stay
        return total / (b * (t - 1))


class TinyLM(nn.Module):
    """Pre-norm Transformer LM whose attention layers use position scheme ``position``."""

    def __init__(self, vocab: int, d: int, layers: int, heads: int, position: str, params: dict | None = None) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        # the head is tied: unit-norm rows keep the first logits O(1)
        nn.init.normal_(self.embed.weight, std=d**-0.5)
        self.d = d
        self.mixers = nn.ModuleList(
            mixers.get("attention", d, n_heads=heads, position=position, position_params=params or {})
            for _ in range(layers)
        )
        # hidden width 8/3 d rounded up to a multiple of 8 (the figures in docs were made so)
        self.mlps = nn.ModuleList(SwiGLU(d, 8 * ((8 * d // 3 + 7) // 8)) for _ in range(layers))
        self.norms = nn.ModuleList(nn.RMSNorm(d) for _ in range(2 * layers + 1))
        scheme = self.mixers[0].position
        self.absolute = scheme if scheme.absolute else None

    def forward(self, ids: Tensor) -> Tensor:
        """ids (B, T) -> logits (B, T, V)."""
        h = self.embed(ids)  # (B, T, D)
        if self.absolute is not None:
            h = h + self.absolute.embed(torch.arange(ids.shape[1], device=ids.device), self.d).to(h.dtype)
        for i, (mixer, mlp) in enumerate(zip(self.mixers, self.mlps)):
            h = h + mixer(self.norms[2 * i](h))[0]
            h = h + mlp(self.norms[2 * i + 1](h))
        return self.norms[-1](h) @ self.embed.weight.T


def nll(model: nn.Module, ids: Tensor) -> Tensor:
    ids = ids.to(model.embed.weight.device)
    logits = model(ids[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def train(model: nn.Module, lang: TopicLanguage, length: int, steps: int, batch: int, lr: float, seed: int) -> float:
    """AdamW with warmup + cosine decay on fresh samples of ``length`` tokens; returns the last loss."""
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        ids = lang.sample(batch, length + 1, rng)
        loss = nll(model, ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    return float(loss.detach())


@torch.no_grad()
def perplexity(model: nn.Module, ids: Tensor) -> float:
    model.eval()
    return math.exp(float(nll(model, ids)))


def windows(text: Tensor, length: int) -> Tensor:
    """Non-overlapping windows of ``length`` predicted tokens: (B, N) -> (B * N / length, length + 1).

    Every evaluation length scores the same tokens; only how much context each gets changes.
    """
    n = text.shape[1] - 1
    if n % length:
        raise ValueError(f"evaluation text of {n} tokens does not split into windows of {length}")
    return torch.cat([text[:, s : s + length + 1] for s in range(0, n, length)])


@dataclasses.dataclass
class LengthConfig(Config):
    schemes: tuple[str, ...] = ("alibi", "rope", "sinusoidal")
    zero_shot: tuple[str, ...] = ()
    train_len: int = 32
    multiples: tuple[int, ...] = (1, 2, 4, 8)
    steps: int = 600
    batch: int = 16
    lr: float = 3e-3
    vocab: int = 32
    d_model: int = 32
    layers: int = 2
    heads: int = 2
    eval_seqs: int = 16
    finetune_steps: int = 0
    finetune_points: int = 3
    finetune_multiple: int = 4
    seed: int = 0
    threads: int | None = None
    device: str = "cpu"

    def validate(self) -> None:
        check_device(self.device)
        self.schemes, self.zero_shot, self.multiples = tuple(self.schemes), tuple(self.zero_shot), tuple(self.multiples)
        bad = [s for s in self.schemes if s not in TRAINED]
        if bad or not self.schemes:
            raise ConfigError(f"schemes must be some of {TRAINED}, got {list(self.schemes)}")
        bad = [s for s in self.zero_shot if s not in ZERO_SHOT]
        if bad:
            raise ConfigError(f"zero_shot must be some of {ZERO_SHOT}, got {list(self.zero_shot)}")
        if not self.multiples or any(not isinstance(m, int) or m < 1 for m in self.multiples):
            raise ConfigError(f"multiples must be positive integers, got {list(self.multiples)}")
        for name in ("train_len", "steps", "batch", "vocab", "d_model", "layers", "heads", "eval_seqs",
                     "finetune_points", "finetune_multiple"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.finetune_steps < 0 or self.lr <= 0:
            raise ConfigError(f"need finetune_steps >= 0 and lr > 0, got {self.finetune_steps}, {self.lr}")
        if self.d_model % self.heads:
            raise ConfigError(f"heads ({self.heads}) must divide d_model ({self.d_model})")


def run(config: LengthConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train one model per scheme and score it at every length; returns the result dict.

    ``result["ppl"][name][n]`` is the perplexity of model ``name`` on windows of ``n`` tokens;
    ``result["optimal"][n]`` the true model's. Lengths are int keys.
    """
    with torch_threads(config.threads):
        return _run(config, log or (lambda _msg: None))


def _run(c: LengthConfig, say: Callable[[str], None]) -> dict[str, Any]:
    torch.manual_seed(c.seed)
    lang = TopicLanguage(vocab=c.vocab, seed=c.seed)
    L = c.train_len
    lengths = [m * L for m in c.multiples]
    text = lang.sample(c.eval_seqs, max(lengths) + 1, np.random.default_rng(c.seed + 10_000))
    eval_sets = {n: windows(text, n) for n in lengths}
    result: dict[str, Any] = {
        "config": c.to_dict(),
        "lengths": lengths,
        "eval_tokens": text.shape[0] * (text.shape[1] - 1),
        "optimal": {n: math.exp(lang.optimal_nll(eval_sets[n])) for n in lengths},
        "ppl": {},
        "train_seconds": {},
    }
    trained: dict[str, nn.Module] = {}
    for name in c.schemes:
        torch.manual_seed(c.seed)
        model = TinyLM(c.vocab, c.d_model, c.layers, c.heads, name).to(c.device)
        start = time.perf_counter()
        train(model, lang, L, c.steps, c.batch, c.lr, c.seed)
        result["train_seconds"][name] = time.perf_counter() - start
        result["ppl"][name] = {n: perplexity(model, eval_sets[n]) for n in lengths}
        trained[name] = model
        say(f"trained {name:<11} in {result['train_seconds'][name]:5.1f}s: "
            + "  ".join(f"{n}: {p:.3f}" for n, p in result["ppl"][name].items()))

    if "rope" in trained:
        for method in c.zero_shot:
            params = {"original_max_len": L} if method in ("dynamic_ntk", "yarn") else {}
            # dynamic NTK takes a fixed factor: its scale follows the length by itself
            factors = {n: 2.0 if method == "dynamic_ntk" else n / L for n in lengths}
            ppl = {}
            for n in lengths:
                model = positions.extend(copy.deepcopy(trained["rope"]), method, factors[n], **params)
                ppl[n] = perplexity(model, eval_sets[n])
            result["ppl"][f"rope+{method}"] = ppl
            say(f"rope+{method:<12} (zero-shot): " + "  ".join(f"{n}: {p:.3f}" for n, p in ppl.items()))

        if c.finetune_steps:
            result["finetune"] = _finetune(c, lang, trained["rope"], text, say)
    return result


def _finetune(c: LengthConfig, lang: TopicLanguage, rope: nn.Module, text: Tensor, say) -> dict[str, Any]:
    """The PI paper's claim: fine-tuning at a longer length works better with Position Interpolation."""
    long = c.finetune_multiple * c.train_len
    ft_eval = windows(text, long)
    finetune: dict[str, Any] = {"length": long, "steps": c.finetune_steps}
    for label, method in (("direct", None), ("PI", "linear")):
        model = copy.deepcopy(rope)
        if method:
            positions.extend(model, method, float(c.finetune_multiple))
        before = perplexity(model, ft_eval)
        curve = []
        for chunk in range(c.finetune_points):
            train(model, lang, long, c.finetune_steps // c.finetune_points, c.batch, c.lr / 3, c.seed + 1 + chunk)
            curve.append(perplexity(model, ft_eval))
        finetune[label] = {"before": before, "curve": curve}
        say(f"fine-tune at {long} ({label}): before {before:.3f} -> " + ", ".join(f"{p:.3f}" for p in curve))
    return finetune


def table(result: dict[str, Any]) -> str:
    """Markdown: one row per model (and the optimal floor), one column per evaluation length."""
    from longarena.arena.plots import markdown_table

    lengths = result["lengths"]
    rows = [[name] + [f"{ppl[n]:.3f}" for n in lengths] for name, ppl in result["ppl"].items()]
    rows.append(["optimal (true model)"] + [f"{result['optimal'][n]:.3f}" for n in lengths])
    return markdown_table(["scheme"] + [f"ppl @ {n}" for n in lengths], rows)


def plot(result: dict[str, Any], path: str | Path) -> Path:
    """Perplexity vs evaluation length, one line per model, the optimal floor dotted (log axes)."""
    from longarena.arena.plots import pyplot, save_png

    plt = pyplot()
    lengths = result["lengths"]
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    for name, ppl in result["ppl"].items():
        ax.plot(lengths, [ppl[n] for n in lengths], "--" if name.startswith("rope+") else "-", marker="o", label=name)
    ax.plot(lengths, [result["optimal"][n] for n in lengths], ":", color="black", label="optimal")
    ax.axvline(result["config"]["train_len"], color="gray", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.set_xlabel("evaluation length (tokens); trained at the grey line")
    ax.set_ylabel("perplexity")
    ax.set_title("Train short, test long (synthetic topic language)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return save_png(fig, path)


@register("train_short_test_long")
def study(config: dict[str, Any], out_dir: Path, progress: bool) -> StudyResult:
    c = LengthConfig.from_dict(config)
    result = run(c, print if progress else None)
    figure = plot(result, out_dir / "train_short_test_long.png").name
    L, longest = c.train_len, max(result["lengths"])
    growth = {name: ppl[longest] / ppl[L] for name, ppl in result["ppl"].items()}
    best = min(growth, key=growth.get)
    markdown = "\n\n".join([
        table(result),
        (f"Each model was trained on sequences of {L} tokens ({c.steps} steps) and scored on the same "
         f"{result['eval_tokens']:,} held-out tokens cut into windows of each length; lower is better, and the "
         "dotted floor is the true model's perplexity. A scheme that extrapolates stays flat (or improves) "
         f"past {L}: here {best} changes least, by a factor {growth[best]:.2f} at {longest} tokens."),
    ])
    data = {
        "lengths": result["lengths"],
        "ppl": {name: {str(n): v for n, v in ppl.items()} for name, ppl in result["ppl"].items()},
        "optimal": {str(n): v for n, v in result["optimal"].items()},
        "train_seconds": result["train_seconds"],
        "eval_tokens": result["eval_tokens"],
        "config": result["config"],
    }
    if "finetune" in result:
        data["finetune"] = result["finetune"]
    return StudyResult("train_short_test_long", "Train short, test long: perplexity vs evaluation length", data,
                       [figure], markdown)
