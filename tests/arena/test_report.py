"""The report folder: results.json against its schema, the self-contained HTML, the plots."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from longarena.arena import report
from longarena.arena.runner import run_suite

from .conftest import tiny_suite

jsonschema = pytest.importorskip("jsonschema")


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    from longarena.arena import studies

    out = tmp_path_factory.mktemp("arena")
    from .conftest import _fake_study

    added = {"fake": _fake_study, "broken": lambda c, o, p: (_ for _ in ()).throw(RuntimeError("always fails"))}
    studies.STUDIES.update(added)
    try:
        run_suite(tiny_suite(), out)
    finally:
        for kind in added:  # only what this fixture added: the built-in kinds stay registered
            studies.STUDIES.pop(kind, None)
    return out


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links, self.ids, self.tags = [], [], set(), []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag in ("a", "link", "script"):
            self.links.append(attrs.get("href") or attrs.get("src"))
        if "id" in attrs:
            self.ids.add(attrs["id"])


def test_results_json_validates_against_the_schema(run_folder):
    schema = json.loads(report.SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    payload = json.loads((run_folder / "results.json").read_text())
    jsonschema.validate(payload, schema)
    assert [(c["task"], c["mixer"]) for c in payload["cells"]] == [
        ("associative_recall", "attention"), ("associative_recall", "s4d"),
        ("majority", "attention"), ("majority", "s4d"), ("majority", "perceiver")]
    assert [s["error"] is None for s in payload["studies"]] == [True, False, False]
    # the schema is not a rubber stamp
    broken = json.loads(json.dumps(payload))
    broken["cells"][0]["accuracy"] = 1.5
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
    del broken["cells"][0]["accuracy"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_schema_ships_as_package_data():
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert re.search(r'\[tool\.setuptools\.package-data\]\s*longarena = \["arena/\*\.json"\]', pyproject)
    assert report.SCHEMA.is_file()


def test_html_is_self_contained_with_every_figure(run_folder):
    text = (run_folder / "report.html").read_text()
    parser = _Collect()
    parser.feed(text)
    pngs = {p.name for p in run_folder.rglob("*.png")}
    assert {"accuracy_matrix.png", "training_loss.png", "line.png"} <= pngs
    assert len(parser.images) == len(pngs)  # every PNG in the folder is shown
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(link.startswith("#") for link in parser.links)  # nothing fetched from elsewhere
    for anchor in re.findall(r'<nav>.*?</nav>', text, re.S)[0].split('href="#')[1:]:
        assert anchor.split('"')[0] in parser.ids  # the table of contents points at real headings
    assert "<table>" in text and "<style>" in text
    assert "missing figure" not in text


def test_markdown_has_the_matrix_cells_and_studies(run_folder):
    payload = json.loads((run_folder / "results.json").read_text())
    md = (run_folder / "report.md").read_text()
    acc = {(c["task"], c["mixer"]): c["accuracy"] for c in payload["cells"]}
    # the matrix row of s4d: its two accuracies, in cell order
    assert f"| s4d | {acc[('associative_recall', 's4d')]:.3f} | {acc[('majority', 's4d')]:.3f} |" in md
    assert f"| perceiver | – | {acc[('majority', 'perceiver')]:.3f} |" in md
    # the reference row: the most frequent label of the majority cell's validation split, counted here
    from longarena import tasks

    cell = payload["suite"]["cells"][1]
    labels = [int(ex["label"]) for ex in tasks.get(cell["task"], **cell["task_config"]).split("validation")]
    share = max(labels.count(v) for v in set(labels)) / len(labels)
    assert payload["references"] == [{"cell": 1, "name": "most frequent class", "accuracy": share}]
    assert f"| *most frequent class* | – | {share:.3f} |" in md
    assert "### A fake study" in md and "#### Reading it" in md  # the study's heading nests under its section
    assert "![fake: line](studies/fake__" in md
    assert "unknown study 'not_a_study'" in md and "**This study failed**" in md
    assert "### Broken" in md


def test_accuracy_matrix_layout():
    payload = {
        "suite": {"name": "x", "cells": [{"task": "a"}, {"task": "b"}, {"task": "a"}]},
        "cells": [
            {"mixer": "m1", "cell": 0, "accuracy": 0.5, "error": None},
            {"mixer": "m2", "cell": 2, "accuracy": None, "error": "boom"},
            {"mixer": "m1", "cell": 2, "accuracy": 0.25, "error": None},
        ],
    }
    rows, cols, values = report.accuracy_matrix(payload)
    assert rows == ["m1", "m2"]
    assert cols == ["a #1", "a #2"]  # the unused cell "b" is left out, repeated tasks numbered
    assert values == [[0.5, 0.25], [None, "error"]]


def test_markdown_to_html_converter(tmp_path):
    (tmp_path / "f.png").write_bytes(b"\x89PNG\r\n\x1a\nrest")
    md = "\n".join([
        "# Title", "", "Some *text* with `a<b>` and **bold**,", "continued [a link](#title).", "",
        "| a | b |", "|---|--:|", "| 1 | <2> |", "",
        "- one", "- two `x`", "", "1. first", "2. second", "",
        "```", "code <here>", "```", "", "![fig](f.png)", "![gone](nope.png)", "## Title",
    ])
    body, headings = report.markdown_to_html(md, tmp_path)
    assert headings == [(1, "title", "Title"), (2, "title-2", "Title")]
    assert '<h1 id="title">Title</h1>' in body
    assert "<p>Some <em>text</em> with <code>a&lt;b&gt;</code> and <strong>bold</strong>, continued " \
           '<a href="#title">a link</a>.</p>' in body
    assert "<tr><th>a</th><th>b</th></tr>\n<tr><td>1</td><td>&lt;2&gt;</td></tr>" in body
    assert "<ul><li>one</li><li>two <code>x</code></li></ul>" in body
    assert "<ol><li>first</li><li>second</li></ol>" in body
    assert "<pre><code>code &lt;here&gt;</code></pre>" in body
    assert f'src="data:image/png;base64,{base64.b64encode((tmp_path / "f.png").read_bytes()).decode()}"' in body
    assert "missing figure: nope.png" in body


def test_plain_makes_study_data_json_ready():
    np = pytest.importorskip("numpy")
    data = report.plain({"a": np.float32(0.5), "b": np.arange(3), "c": float("nan"), "d": (1, Path("x"))})
    assert data == {"a": 0.5, "b": [0, 1, 2], "c": None, "d": [1, "x"]}
    with pytest.raises(TypeError, match="cannot store a object"):
        report.plain({"bad": object()})


def test_html_puts_the_title_then_a_nested_contents(tmp_path):
    text = report.render_html("# T\n\n## A\n\n### a1\n\n### a2\n\n## B\n\ntext", tmp_path, "t")
    body = text.split("<body>\n", 1)[1]
    assert body.startswith('<h1 id="t">T</h1>\n<nav>')
    assert ('<ul><li><a href="#a">A</a><ul><li><a href="#a1">a1</a></li><li><a href="#a2">a2</a></li></ul></li>'
            '<li><a href="#b">B</a><ul></ul></li></ul>') in body
