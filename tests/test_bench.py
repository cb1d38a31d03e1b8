"""The benchmark harness measures what it says (no timings are asserted)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from longarena.arena.bench import cpu_peak_mb, measure, sweep
from longarena.cli import app


def test_sweep_covers_every_cell_and_records_errors_instead_of_stopping():
    results = sweep(["attention"], [16, 32], ["fwd", "fwd_bwd", "step"], d_model=16, repeats=1)
    assert [(r.seq_len, r.mode) for r in results] == [(16, "fwd"), (16, "fwd_bwd"), (16, "step"), (32, "fwd"), (32, "fwd_bwd"), (32, "step")]
    assert all(r.error is None and r.ms > 0 for r in results)
    bad = measure("attention", 16, "backward-only", d_model=16)
    assert bad.ms is None and "unknown mode" in bad.error


def test_cpu_peak_memory_grows_with_the_activations():
    small = cpu_peak_mb("attention", 256, "fwd_bwd", d_model=16, batch=1)
    large = cpu_peak_mb("attention", 256, "fwd_bwd", d_model=16, batch=64)
    assert small is not None and large is not None
    assert large > small + 2.0  # 64x the activations of a (B, 256, 16) input


def test_bench_command_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--mixers", "attention", "--lengths", "16", "--modes", "fwd",
                                      "--d-model", "16", "--repeats", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())[0]["mixer"] == "attention"
    bad = CliRunner().invoke(app, ["bench", "--mixers", "nope"])
    assert bad.exit_code == 2 and "known mixers" in bad.output
