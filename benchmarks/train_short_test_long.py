"""Train short, test long: one small LM per position scheme, trained at length L, scored at L, 2L, 4L, 8L.

The figure ALiBi's paper is known for, at toy size on CPU. The corpus is a seeded synthetic
language that, like text, rewards looking far back: a hidden *topic* (one of a few order-1
Markov chains over the vocabulary) switches now and then, so the best prediction reads the
whole context to infer the current topic. The Bayes-optimal perplexity (HMM forward
filtering with the true chains) is reported beside the models as the floor.

Models: a pre-norm Transformer (attention + SwiGLU MLP, tied embeddings) built from
``longarena.mixers.get("attention", position=...)``; the sinusoidal model adds
``scheme.embed`` to its inputs. The RoPE model is also scored zero-shot with each RoPE
scaling (``longarena.positions.extend`` with factor = eval length / L). Finally, the PI
paper's claim: fine-tune the RoPE model briefly at 4L with Position Interpolation versus
with plain RoPE (direct extrapolation).

    python benchmarks/train_short_test_long.py            # a few minutes on one CPU core
    python benchmarks/train_short_test_long.py --steps 100 --multiples 1 4   # quick look
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longarena import mixers, positions

ROOT = Path(__file__).resolve().parents[1]
TRAINED = ("alibi", "rope", "t5", "xl", "sinusoidal", "none")
ZERO_SHOT = ("linear", "ntk", "dynamic_ntk", "yarn")


# --- the synthetic language ---------------------------------------------------------------------


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


# --- the model ----------------------------------------------------------------------------------


class SwiGLU(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        hidden = 8 * ((8 * d // 3 + 7) // 8)
        self.gate_up = nn.Linear(d, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


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
        self.mlps = nn.ModuleList(SwiGLU(d) for _ in range(layers))
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


# --- the experiment -----------------------------------------------------------------------------


def windows(text: Tensor, length: int) -> Tensor:
    """Non-overlapping windows of ``length`` predicted tokens: (B, N) -> (B * N / length, length + 1).

    Every evaluation length scores the same tokens; only how much context each gets changes.
    """
    n = text.shape[1] - 1
    if n % length:
        raise ValueError(f"evaluation text of {n} tokens does not split into windows of {length}")
    return torch.cat([text[:, s : s + length + 1] for s in range(0, n, length)])


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    lang = TopicLanguage(vocab=args.vocab, seed=args.seed)
    L = args.train_len
    lengths = [m * L for m in args.multiples]
    text = lang.sample(args.eval_seqs, max(lengths) + 1, np.random.default_rng(args.seed + 10_000))
    eval_sets = {n: windows(text, n) for n in lengths}
    result: dict = {
        "config": vars(args) | {"multiples": list(args.multiples)},
        "lengths": lengths,
        "eval_tokens": text.shape[0] * (text.shape[1] - 1),
        "optimal": {n: math.exp(lang.optimal_nll(eval_sets[n])) for n in lengths},
        "ppl": {},
        "train_seconds": {},
    }
    trained: dict[str, nn.Module] = {}
    for name in args.schemes:
        torch.manual_seed(args.seed)
        model = TinyLM(args.vocab, args.d_model, args.layers, args.heads, name)
        start = time.perf_counter()
        train(model, lang, L, args.steps, args.batch, args.lr, args.seed)
        result["train_seconds"][name] = time.perf_counter() - start
        result["ppl"][name] = {n: perplexity(model, eval_sets[n]) for n in lengths}
        trained[name] = model
        print(f"trained {name:<11} in {result['train_seconds'][name]:5.1f}s: "
              + "  ".join(f"{n}: {p:.3f}" for n, p in result["ppl"][name].items()), flush=True)

    if "rope" in trained:
        for method in args.zero_shot:
            params = {"original_max_len": L} if method in ("dynamic_ntk", "yarn") else {}
            if method == "dynamic_ntk":
                factors = {n: 2.0 for n in lengths}  # a fixed factor: the scale follows the length
            else:
                factors = {n: n / L for n in lengths}
            ppl = {}
            for n in lengths:
                model = positions.extend(copy.deepcopy(trained["rope"]), method, factors[n], **params)
                ppl[n] = perplexity(model, eval_sets[n])
            result["ppl"][f"rope+{method}"] = ppl
            print(f"rope+{method:<12} (zero-shot): " + "  ".join(f"{n}: {p:.3f}" for n, p in ppl.items()), flush=True)

        if args.finetune_steps:
            long = args.finetune_multiple * L
            ft_eval = windows(text, long)
            finetune = {"length": long, "steps": args.finetune_steps}
            for label, method in (("direct", None), ("PI", "linear")):
                model = copy.deepcopy(trained["rope"])
                if method:
                    positions.extend(model, method, float(args.finetune_multiple))
                before = perplexity(model, ft_eval)
                curve = []
                for chunk in range(args.finetune_points):
                    train(model, lang, long, args.finetune_steps // args.finetune_points, args.batch, args.lr / 3,
                          args.seed + 1 + chunk)
                    curve.append(perplexity(model, ft_eval))
                finetune[label] = {"before": before, "curve": curve}
                print(f"fine-tune at {long} ({label}): before {before:.3f} -> " + ", ".join(f"{p:.3f}" for p in curve), flush=True)
            result["finetune"] = finetune
    return result


def table(result: dict) -> str:
    lengths = result["lengths"]
    head = "| scheme | " + " | ".join(f"ppl @ {n}" for n in lengths) + " |"
    rows = [head, "|" + " --- |" * (len(lengths) + 1)]
    for name, ppl in result["ppl"].items():
        rows.append(f"| {name} | " + " | ".join(f"{ppl[n]:.3f}" for n in lengths) + " |")
    rows.append("| optimal (true model) | " + " | ".join(f"{result['optimal'][n]:.3f}" for n in lengths) + " |")
    return "\n".join(rows)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = result["lengths"]
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    for name, ppl in result["ppl"].items():
        style = "--" if name.startswith("rope+") else "-"
        ax.plot(lengths, [ppl[n] for n in lengths], style, marker="o", label=name)
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-len", type=int, default=32)
    p.add_argument("--multiples", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--schemes", nargs="+", default=list(TRAINED), choices=TRAINED)
    p.add_argument("--zero-shot", nargs="*", default=list(ZERO_SHOT), choices=ZERO_SHOT)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--vocab", type=int, default=32)
    p.add_argument("--d-model", type=int, default=32)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--eval-seqs", type=int, default=32)
    p.add_argument("--finetune-steps", type=int, default=60)
    p.add_argument("--finetune-points", type=int, default=3)
    p.add_argument("--finetune-multiple", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="more than 1 is much slower on a shared CPU")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/train_short_test_long.json")
    p.add_argument("--plot", type=Path, default=ROOT / "docs/figures/train_short_test_long.png")
    args = p.parse_args()
    result = run(args)
    print()
    print(table(result))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str))
    plot(result, args.plot)
    print(f"\nwrote {args.json} and {args.plot}")


if __name__ == "__main__":
    main()
