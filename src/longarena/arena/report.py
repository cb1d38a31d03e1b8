"""The arena's report folder, built from the ``results.json`` payload alone.

``write_report(payload, out_dir)`` writes

- ``results.json``: the payload (it validates against ``results.schema.json``);
- ``accuracy_matrix.png``: mixer x cell heatmap with the accuracy written in each square;
- ``training_loss.png``: training-loss curves, one panel per cell;
- ``report.md``: the tables, the figures and one section per study (its own markdown);
- ``report.html``: the same, self-contained (inline CSS, PNGs as base64 data URIs, a
  table of contents), from the small markdown converter below.

Every file is written to a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
from pathlib import Path
from typing import Any

from longarena.atomic import write_text
from longarena.plotting import save_png

MATRIX_PNG = "accuracy_matrix.png"
CURVES_PNG = "training_loss.png"
SCHEMA = Path(__file__).with_name("results.schema.json")


def _figure(**kwargs: Any) -> Any:
    """A matplotlib Figure outside pyplot: the caller's backend and open figures are left alone."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _save_figure(fig: Any, path: Path) -> None:
    save_png(fig, path, dpi=110, bbox_inches="tight")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def cell_labels(payload: dict[str, Any]) -> list[str]:
    """One column label per suite cell: the task name, numbered when a task appears twice."""
    tasks = [c["task"] for c in payload["suite"]["cells"]]
    return [f"{t} #{tasks[:i].count(t) + 1}" if tasks.count(t) > 1 else t for i, t in enumerate(tasks)]


def accuracy_matrix(payload: dict[str, Any]) -> tuple[list[str], list[str], list[list[float | str | None]]]:
    """(mixers, cell labels, values): values[i][j] is an accuracy, "error", or None (not in that cell)."""
    labels = cell_labels(payload)
    rows: list[str] = []
    for c in payload["cells"]:
        if c["mixer"] not in rows:
            rows.append(c["mixer"])
    values: list[list[float | str | None]] = [[None] * len(labels) for _ in rows]
    for c in payload["cells"]:
        values[rows.index(c["mixer"])][c["cell"]] = "error" if c["error"] else c["accuracy"]
    used = [j for j in range(len(labels)) if any(v[j] is not None for v in values)]
    return rows, [labels[j] for j in used], [[v[j] for j in used] for v in values]


def _references(payload: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Cell label -> {reference name: accuracy} (e.g. the most frequent class of a classification task)."""
    labels = cell_labels(payload)
    out: dict[str, dict[str, float]] = {}
    for ref in payload.get("references", []):
        out.setdefault(labels[ref["cell"]], {})[ref["name"]] = ref["accuracy"]
    return out


def plot_accuracy_matrix(payload: dict[str, Any], path: Path) -> bool:
    """The mixer x cell heatmap; False (nothing written) when no cell ran."""
    rows, cols, values = accuracy_matrix(payload)
    if not rows:
        return False
    import matplotlib
    import numpy as np

    grid = np.array([[v if _number(v) else np.nan for v in row] for row in values], dtype=float)
    fig = _figure(figsize=(1.6 + 1.5 * max(len(cols), 1), 0.9 + 0.36 * max(len(rows), 1)))
    ax = fig.subplots()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#dddddd")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            if _number(v):
                text, colour = f"{v:.2f}", "black" if v > 0.6 else "white"
            else:
                text, colour = ("error" if v == "error" else "–"), ("#b00020" if v == "error" else "#777777")
            ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=9)
    refs = _references(payload)
    ticks = [label + "".join(f"\n({name} {acc:.2f})" for name, acc in refs.get(label, {}).items()) for label in cols]
    ax.set_xticks(range(len(cols)), ticks, rotation=0 if len(cols) < 4 else 20, ha="center" if len(cols) < 4 else "right",
                  fontsize=9)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_title(f"accuracy, suite {payload['suite']['name']} (– : not run in that cell)", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    _save_figure(fig, path)
    return True


def plot_training_curves(payload: dict[str, Any], path: Path) -> bool:
    """Training loss against step, one panel per cell; False (nothing written) without curves."""
    labels = cell_labels(payload)
    panels = [j for j in range(len(labels)) if any(c["cell"] == j and c["curve"] for c in payload["cells"])]
    if not panels:
        return False
    import matplotlib

    fig = _figure(figsize=(5.2 * len(panels), 3.8))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, j in zip(axes[0], panels):
        cells = [c for c in payload["cells"] if c["cell"] == j and c["curve"]]
        cmap = matplotlib.colormaps["tab20"]
        for k, c in enumerate(cells):
            steps, losses = zip(*c["curve"])
            ax.plot(steps, losses, label=c["mixer"], color=cmap(k % 20), linewidth=1.2)
        ax.set_title(labels[j], fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    _save_figure(fig, path)
    return True


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _fmt(v: Any, spec: str = ".3f") -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return format(v, spec) if math.isfinite(v) else str(v)
    return str(v)


def _demote(markdown: str, level: int) -> str:
    """Push a study's own headings below its section heading (level ``level``)."""

    def shift(m: re.Match) -> str:
        return "#" * max(len(m.group(1)), level + 1) + " "

    return re.sub(r"^(#{1,6}) ", shift, markdown, flags=re.M)


def _cell_sections(payload: dict[str, Any], *, matrix: bool, curves: bool) -> list[str]:
    """The accuracy matrix, one table per cell and the training curves."""
    rows, cols, values = accuracy_matrix(payload)
    lines = [
        "", "## Accuracy matrix", "",
        "Validation accuracy of every mixer on every cell: over the scored tokens for "
        "language-modelling tasks, over sequences for classification. Every mixer of a cell has "
        "the same width, depth, data, steps and seed. `–`: not in that cell (non-causal mixers "
        "are not trained as language models). Rows in italics are references that need no model "
        "(the most frequent class of a classification task's validation split).",
        "",
    ]
    if matrix:
        lines += [f"![accuracy matrix]({MATRIX_PNG})", ""]
    table = [[r, *(_fmt(v) if v is not None else "–" for v in vals)] for r, vals in zip(rows, values)]
    refs = _references(payload)
    for name in sorted({n for r in refs.values() for n in r}):
        table.append([f"*{name}*", *(_fmt(refs.get(c, {}).get(name)) or "–" for c in cols)])
    lines += _table(["mixer", *cols], table)
    lines += ["", "## Cells", ""]
    labels = cell_labels(payload)
    for j, cell in enumerate(payload["suite"]["cells"]):
        runs = [c for c in payload["cells"] if c["cell"] == j]
        if not runs:
            continue
        lines += [
            f"### {labels[j]}", "",
            f"Task `{cell['task']}` ({runs[0]['task_kind']}) with {json.dumps(cell['task_config'])}; "
            f"d_model {cell['d_model']}, {cell['n_layers']} layer(s); training {json.dumps(cell['train'])}.",
            "",
        ]
        lines += _table(
            ["mixer", "accuracy", "loss", "params", "state@T", "seconds", "CPU s"],
            [[c["mixer"], "error" if c["error"] else _fmt(c["accuracy"]), _fmt(c["loss"]), f"{c['parameters']:,}",
              "" if c["state_size"] is None else f"{c['state_size']:,}",
              _fmt(c["seconds"], ".1f") + (" (cached)" if c["cached"] else ""), _fmt(c["cpu_seconds"], ".1f")]
             for c in runs],
        )
        lines.append("")
    lines += ["state@T: numbers carried per sequence after the task's full length (KV cache or recurrent state). "
              "seconds: wall time of training and evaluation; CPU s: the CPU time it used (all threads), "
              "steadier than wall time on a shared machine.", ""]
    if curves:
        lines += ["### Training loss", "", f"![training loss]({CURVES_PNG})", ""]
    return lines


def render_markdown(payload: dict[str, Any], *, matrix: bool = True, curves: bool = True) -> str:
    suite, machine = payload["suite"], payload["machine"]
    n_cached = sum(c["cached"] for c in payload["cells"])
    lines = [
        f"# LongArena — suite `{suite['name']}`",
        "",
        suite["description"],
        "",
        f"longarena {payload['library']['version']} · {payload['created']} · {machine['cpu']} "
        f"({machine['cpu_cores']} cores, torch threads {machine['torch_threads']})"
        + (f" · GPU {machine['gpu']}" if machine.get("gpu") else "")
        + f" · torch {machine['torch']} · {payload['seconds']:.0f} s this run"
        + (f" ({n_cached} cells loaded from the cache)" if n_cached else ""),
    ]
    if payload.get("selected_mixers"):
        lines += ["", f"Only these mixers were run: {', '.join(payload['selected_mixers'])}."]
    if payload["cells"]:
        lines += _cell_sections(payload, matrix=matrix, curves=curves)
    if payload["studies"]:
        lines += ["", "## Studies", ""]
    for s in payload["studies"]:
        lines += [f"### {s['title']}", ""]
        if s["error"]:
            lines += [f"**This study failed**: `{s['error']}`", ""]
        if s["markdown"].strip():
            lines += [_demote(s["markdown"].strip(), 3), ""]
        lines += [f"![{s['kind']}: {Path(f).stem}]({f})" for f in s["figures"]]
        lines += ["", f"*{s['kind']} study, {s['seconds']:.1f} s" + (", cached" if s["cached"] else "")
                  + f"; data in results.json and `{s['folder']}/`.*", ""]
    errors = [c for c in payload["cells"] if c["error"]] + [s for s in payload["studies"] if s["error"]]
    if errors:
        lines += ["## Errors", ""]
        lines += [f"- cell `{c['task']}` / `{c['mixer']}`: {c['error']}" for c in payload["cells"] if c["error"]]
        lines += [f"- study `{s['kind']}`: {s['error']}" for s in payload["studies"] if s["error"]]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# --- a small markdown to HTML converter: headings, paragraphs, pipe tables, lists, code, images ------

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#1d1d1f;line-height:1.5}
h1{border-bottom:2px solid #ddd;padding-bottom:.3em}h2{border-bottom:1px solid #eee;margin-top:2em}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .6em}
th{background:#f3f3f3}td{text-align:right}td:first-child{text-align:left}
code{background:#f3f3f3;padding:0 .25em;border-radius:3px}pre{background:#f6f6f6;padding:.8em;overflow-x:auto}
pre code{background:none;padding:0}img{max-width:100%;height:auto;display:block;margin:1em 0}
nav{background:#fafafa;border:1px solid #eee;padding:.5em 1.2em;margin:1em 0}nav ul{margin:.2em 0}
.missing{color:#b00020;font-weight:bold}
"""


def _slug(text: str, used: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
    slug, n = base, 1
    while slug in used:
        n += 1
        slug = f"{base}-{n}"
    used.add(slug)
    return slug


def _image(alt: str, src: str, root: Path) -> str:
    path = (root / src).resolve()
    if src.startswith(("http://", "https://", "data:")):
        return f'<img alt="{html.escape(alt)}" src="{html.escape(src)}">'
    if not path.is_file():
        return f'<p class="missing">missing figure: {html.escape(src)}</p>'
    mime = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}.get(path.suffix.lower(), "image/png")
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:{mime};base64,{data}">'


def inline(text: str, root: Path) -> str:
    """Inline markdown: `code`, **bold**, *italic*, images and links; everything else escaped."""
    spans: list[str] = []

    def keep(fragment: str) -> str:
        spans.append(fragment)
        return f"\x00{len(spans) - 1}\x00"

    text = re.sub(r"`([^`]+)`", lambda m: keep(f"<code>{html.escape(m.group(1))}</code>"), text)
    text = re.sub(r"!\[([^\]]*)\]\(([^)\s]+)\)", lambda m: keep(_image(m.group(1), m.group(2), root)), text)
    text = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)",
                  lambda m: keep(f'<a href="{html.escape(m.group(2))}">{html.escape(m.group(1))}</a>'), text)
    text = html.escape(text, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    text = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<em>\1</em>", text)
    return re.sub(r"\x00(\d+)\x00", lambda m: spans[int(m.group(1))], text)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def markdown_to_html(markdown: str, root: Path) -> tuple[str, list[tuple[int, str, str]]]:
    """(body HTML, headings as (level, id, text)); images are read from ``root`` and embedded."""
    out: list[str] = []
    headings: list[tuple[int, str, str]] = []
    used: set[str] = set()
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if not stripped:
            i += 1
        elif stripped.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            out.append("<pre><code>" + html.escape("\n".join(lines[i + 1:j])) + "</code></pre>")
            i = j + 1
        elif m := re.match(r"(#{1,6})\s+(.*)", stripped):
            level, text = len(m.group(1)), m.group(2).strip()
            anchor = _slug(re.sub(r"[`*]", "", text), used)
            headings.append((level, anchor, re.sub(r"[`*]", "", text)))
            out.append(f'<h{level} id="{anchor}">{inline(text, root)}</h{level}>')
            i += 1
        elif stripped.startswith("|") and i + 1 < len(lines) and re.fullmatch(r"\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?", lines[i + 1].strip()):
            header = _cells(stripped)
            j = i + 2
            body = []
            while j < len(lines) and lines[j].strip().startswith("|"):
                body.append(_cells(lines[j]))
                j += 1
            rows = ["<tr>" + "".join(f"<th>{inline(c, root)}</th>" for c in header) + "</tr>"]
            rows += ["<tr>" + "".join(f"<td>{inline(c, root)}</td>" for c in r) + "</tr>" for r in body]
            out.append("<table>\n" + "\n".join(rows) + "\n</table>")
            i = j
        elif re.match(r"([-*]|\d+\.)\s+", stripped):
            ordered = stripped[0].isdigit()
            items = []
            while i < len(lines) and (m := re.match(r"\s*([-*]|\d+\.)\s+(.*)", lines[i])):
                items.append(f"<li>{inline(m.group(2), root)}</li>")
                i += 1
            tag = "ol" if ordered else "ul"
            out.append(f"<{tag}>" + "".join(items) + f"</{tag}>")
        elif re.fullmatch(r"!\[[^\]]*\]\([^)\s]+\)", stripped):
            out.append(inline(stripped, root))
            i += 1
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not re.match(r"(#{1,6}\s|\||```|[-*]\s|\d+\.\s|!\[)", lines[i].strip()):
                para.append(lines[i].strip())
                i += 1
            if not para:  # a line no block rule claimed (e.g. a lone '|'): keep it as text
                para, i = [stripped], i + 1
            out.append("<p>" + inline(" ".join(para), root) + "</p>")
    return "\n".join(out), headings


def _toc(headings: list[tuple[int, str, str]]) -> str:
    """List items of the level-2 headings, each with its level-3 headings nested under it."""
    parts: list[str] = []
    open_item = False
    for level, anchor, text in headings:
        link = f'<a href="#{anchor}">{html.escape(text)}</a>'
        if level == 2:
            if open_item:
                parts.append("</ul></li>")
            parts.append(f"<li>{link}<ul>")
            open_item = True
        elif level == 3 and open_item:
            parts.append(f"<li>{link}</li>")
    if open_item:
        parts.append("</ul></li>")
    return "".join(parts)


def render_html(markdown: str, root: Path, title: str) -> str:
    body, headings = markdown_to_html(markdown, root)
    toc = _toc(headings)
    nav = f"<nav><strong>Contents</strong><ul>{toc}</ul></nav>"
    # the title first, then the contents
    first, _, rest = body.partition("\n")
    body = f"{first}\n{nav}\n{rest}" if first.startswith("<h1") else f"{nav}\n{body}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"{body}\n</body>\n</html>\n"
    )


def write_report(payload: dict[str, Any], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write results.json, the PNGs, report.md and report.html into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"results": out / "results.json"}
    payload = plain(payload)
    write_text(files["results"], json.dumps(payload, indent=2, allow_nan=False))
    matrix = plot_accuracy_matrix(payload, out / MATRIX_PNG)
    if matrix:
        files["matrix"] = out / MATRIX_PNG
    curves = plot_training_curves(payload, out / CURVES_PNG)
    if curves:
        files["curves"] = out / CURVES_PNG
    markdown = render_markdown(payload, matrix=matrix, curves=curves)
    files["markdown"] = out / "report.md"
    files["html"] = out / "report.html"
    write_text(files["markdown"], markdown)
    write_text(files["html"], render_html(markdown, out, f"LongArena — {payload['suite']['name']}"))
    return files


def plain(value: Any) -> Any:
    """JSON-ready copy: numpy values as Python ones, paths as strings, NaN/inf as None (JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"results.json: cannot store a {type(value).__name__} ({value!r:.80})")
