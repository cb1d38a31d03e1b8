"""The benchmark harness measures what it says (no timings are asserted): cells, OOM handling,
peers, ratios, CPU peak memory, plots, JSON and the command."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from longarena import mixers
from longarena.arena import bench
from longarena.arena.bench import BenchConfig, BenchResult, Peer, cpu_peaks, measure, ratios, run_bench, sweep
from longarena.cli import app
from longarena.config import ConfigError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_sweep_covers_every_cell_and_records_errors_instead_of_stopping():
    results = sweep(["attention"], [32, 16], ["fwd", "fwd_bwd", "step"], d_model=16, repeats=1)
    # lengths run short to long whatever order they were given in
    assert [(r.seq_len, r.mode) for r in results] == [(16, "fwd"), (16, "fwd_bwd"), (16, "step"), (32, "fwd"), (32, "fwd_bwd"), (32, "step")]
    assert all(r.status == "ok" and r.error is None and r.ms > 0 for r in results)
    bad = measure("attention", 16, "backward-only", d_model=16)
    assert bad.ms is None and bad.status == "error" and "unknown mode" in bad.error
    # a non-causal mixer has no step: the cell is left out, not recorded as a failure
    cells = sweep(["linformer"], [16], ["fwd", "step"], d_model=16, repeats=1)
    assert [r.mode for r in cells] == ["fwd"]


def _oom_above(monkeypatch, name: str, limit: int, message: str):
    """Make mixer ``name`` raise an out-of-memory error on inputs longer than ``limit``."""
    real_get = mixers.get

    def get(mixer_name, d_model=None, **kw):
        m = real_get(mixer_name, d_model, **kw)
        if mixer_name == name:
            inner = m.forward

            def forward(x, *args, **kwargs):
                if x.shape[1] > limit:
                    raise RuntimeError(message)
                return inner(x, *args, **kwargs)

            m.forward = forward
        return m

    monkeypatch.setattr(mixers, "get", get)


def test_out_of_memory_is_recorded_and_longer_lengths_are_skipped(monkeypatch, tmp_path):
    _oom_above(monkeypatch, "retnet", 32, "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory: "
                                          "you tried to allocate 68719476736 bytes.")
    report = run_bench(mixers=("attention", "retnet"), lengths=(16, 64, 128), modes=("fwd", "fwd_bwd"),
                       peers=("none",), d_model=16, repeats=1, memory=False)
    status = {(r.mixer, r.seq_len, r.mode): r.status for r in report.results}
    for mode in ("fwd", "fwd_bwd"):
        assert [status[("retnet", n, mode)] for n in (16, 64, 128)] == ["ok", "oom", "skipped"]
        assert all(status[("attention", n, mode)] == "ok" for n in (16, 64, 128))
    skipped = next(r for r in report.results if r.status == "skipped")
    assert skipped.ms is None and "out of memory at T=64" in skipped.error
    # failed cells get no ratio, and the JSON and plots still come out
    assert {(q["subject"], q["seq_len"]) for q in report.ratios() if q["subject"] == "retnet"} == {("retnet", 16)}
    data = json.loads(report.write_json(tmp_path / "b.json").read_text())
    assert [r["status"] for r in data["results"] if r["mixer"] == "retnet" and r["mode"] == "fwd"] == ["ok", "oom", "skipped"]
    assert [p.name for p in report.plot(tmp_path)] == ["bench_time.png"]
    # with peaks filled in (as on GPU), the memory figure appears too
    for r in report.results:
        r.peak_mb = None if r.ms is None else float(r.seq_len)
    paths = report.plot(tmp_path, prefix="m")
    assert [p.name for p in paths] == ["m_time.png", "m_memory.png"]
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in paths)


def test_what_counts_as_out_of_memory():
    assert bench.is_out_of_memory(MemoryError())
    assert bench.is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert bench.is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"))
    assert not bench.is_out_of_memory(RuntimeError("shape mismatch"))
    assert not bench.is_out_of_memory(ValueError("not enough memory"))  # only allocator errors are RuntimeErrors


def test_ratios_are_each_cell_over_the_baseline_at_the_same_length_and_mode():
    report = run_bench(mixers=("retnet",), lengths=(16, 32), modes=("fwd", "fwd_bwd"), peers=("sdpa",),
                       baseline="attention", d_model=16, repeats=1, memory=False)
    # the baseline is measured in the same run even when not asked for
    assert report.subjects() == ["attention", "retnet", "sdpa"]
    base = {(r.seq_len, r.mode): r.ms for r in report.results if r.mixer == "attention"}
    rows = report.ratios()
    assert len(rows) == 3 * 2 * 2
    for q in rows:
        assert q["time_ratio"] == pytest.approx(q["ms"] / base[(q["seq_len"], q["mode"])])
        assert q["memory_ratio"] is None  # no memory measured
    header, table = report.table_rows()
    assert header[4] == "time x attention"
    sdpa_row = next(row for row in table if row[0] == "sdpa (peer)" and row[1] == "32" and row[2] == "fwd")
    sdpa = next(r for r in report.results if r.mixer == "sdpa" and r.seq_len == 32 and r.mode == "fwd")
    assert sdpa_row[4] == f"{sdpa.ms / base[(32, 'fwd')]:.2f}"


def test_memory_ratios_skip_baselines_below_the_noise_floor():
    cells = [BenchResult("attention", 16, "fwd", 2.0, 4.0), BenchResult("retnet", 16, "fwd", 3.0, 1.0),
             BenchResult("attention", 32, "fwd", 4.0, 0.1), BenchResult("retnet", 32, "fwd", 5.0, 2.0),
             BenchResult("retnet", 64, "fwd", None, None, "boom", "error")]
    got = {(q["subject"], q["seq_len"]): (q["time_ratio"], q["memory_ratio"]) for q in ratios(cells, "attention")}
    assert got == {("attention", 16): (1.0, 1.0), ("retnet", 16): (1.5, 0.25),
                   ("attention", 32): (1.0, None), ("retnet", 32): (1.25, None)}


def test_missing_peers_are_reported_not_raised(monkeypatch):
    monkeypatch.setitem(bench.PEERS, "ghost", Peer("ghost", "surely_not_a_module_xyz", bench._build_sdpa, "absent"))
    monkeypatch.setitem(bench.PEERS, "gpu_only", Peer("gpu_only", "torch", bench._build_sdpa, "CUDA kernels", needs_cuda=True))
    report = run_bench(mixers=("attention",), lengths=(16,), modes=("fwd",), peers=("ghost", "gpu_only", "sdpa"),
                       d_model=16, repeats=1, memory=False)
    assert report.peers_missing == {"ghost": "not installed (import surely_not_a_module_xyz)", "gpu_only": "needs CUDA"}
    assert report.subjects() == ["attention", "sdpa"]
    assert all(r.status == "ok" for r in report.results)
    data = report.to_dict()
    assert data["peers"] == {"measured": ["sdpa"], "missing": report.peers_missing}
    assert "`ghost` not installed" in report.markdown()


def test_sdpa_peer_is_causal_softmax_attention_and_decodes_from_its_cache():
    torch.manual_seed(0)
    peer = bench._SDPAPeer(8, 2)
    x = torch.randn(2, 5, 8)
    h = x.view(2, 5, 2, 4).transpose(1, 2)  # (B, H, T, K)
    scores = h @ h.transpose(-1, -2) / 2.0  # sqrt(K) = 2
    scores = scores.masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf"))
    want = (scores.softmax(-1) @ h).transpose(1, 2).reshape(2, 5, 8)
    torch.testing.assert_close(peer(x), want)
    # one decoding step with the whole sequence cached is the forward's last position
    torch.testing.assert_close(peer.step(x[:, -1], peer.prefill(x)), want[:, -1])


def test_cpu_peak_memory_counts_each_cell_alone():
    cells = [(1024, "fwd_bwd"), (4096, "fwd_bwd"), (2048, "fwd_bwd"), (4096, "step")]
    peaks = cpu_peaks("attention", cells, d_model=64, batch=1)
    assert all(v is not None for v in peaks.values())
    # the fresh input gradient (B, T, D) fp32 alone is live at the end of a fwd_bwd call
    for n in (1024, 2048, 4096):
        assert peaks[(n, "fwd_bwd")] >= n * 64 * 4 / 2**20
    assert peaks[(4096, "fwd_bwd")] > peaks[(1024, "fwd_bwd")] + 2.0
    # measured after a larger cell, T = 2048 still counts its own activations (freed memory went back to the
    # system instead of being reused unseen) and lands between its neighbours
    assert peaks[(1024, "fwd_bwd")] < peaks[(2048, "fwd_bwd")] < peaks[(4096, "fwd_bwd")]
    # a decode step only adds one token to the cache the prefill already built
    assert peaks[(4096, "step")] < peaks[(4096, "fwd_bwd")]


def test_bad_requests_name_what_is_known():
    with pytest.raises(ConfigError, match="known mixers: .*attention"):
        BenchConfig(mixers=("nope",))
    with pytest.raises(ConfigError, match="positive integers"):
        BenchConfig(lengths=(1024, 0))
    with pytest.raises(ConfigError, match="expected some of fwd, fwd_bwd, step"):
        BenchConfig(modes=("bwd",))
    with pytest.raises(ConfigError, match="known peers: sdpa"):
        BenchConfig(peers=("flash",))
    with pytest.raises(ConfigError, match="unknown baseline"):
        BenchConfig(baseline="nope")
    assert BenchConfig(mixers=("all",)).mixers == tuple(mixers.names())


def test_bench_command_writes_json_table_and_plots(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["bench", "--mixers", "retnet", "--lengths", "16,32", "--modes", "fwd",
                                      "--peers", "sdpa,fla_gla", "--d-model", "16", "--repeats", "1", "--no-memory",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "bench.json").read_text())
    assert {r["mixer"] for r in data["results"]} == {"attention", "retnet", "sdpa"}
    assert data["baseline"] == "attention" and "fla_gla" in data["peers"]["missing"]
    assert "peer fla_gla:" in result.output
    for name in ("bench_time.png",):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    assert "| retnet | 16 | fwd |" in (out / "bench.md").read_text()
    # a .json path keeps the older form: the file there, the plots beside it
    single = tmp_path / "one" / "b.json"
    ok = CliRunner().invoke(app, ["bench", "--lengths", "16", "--modes", "fwd", "--peers", "none", "--d-model", "16",
                                  "--repeats", "1", "--no-memory", "--out", str(single)])
    assert ok.exit_code == 0, ok.output
    assert json.loads(single.read_text())["results"][0]["mixer"] == "attention"
    for args, expected in ((["--mixers", "nope"], "known mixers"), (["--lengths", "16,-4"], "positive integers"),
                           (["--lengths", "a,b"], "positive integers"), (["--modes", "bwd"], "fwd, fwd_bwd, step"),
                           (["--peers", "flash"], "known peers")):
        bad = CliRunner().invoke(app, ["bench", *args, "--out", str(tmp_path / "bad")])
        assert bad.exit_code == 2 and expected in bad.output, (args, bad.output)


OUTSIDE_PEERS = [name for name, peer in bench.PEERS.items() if name != "sdpa" and not peer.needs_cuda]


@pytest.mark.parametrize("name", OUTSIDE_PEERS)
def test_an_installed_outside_peer_keeps_the_causal_bt_d_contract(name):
    peer = bench.PEERS[name]
    if peer.import_error() is not None:
        pytest.skip(f"{name}: {peer.import_error()}")
    torch.manual_seed(0)
    module = peer.build(16, 2).eval()
    x = torch.randn(2, 40, 16)
    y = module(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    # causal: changing the future leaves the past's outputs as they were, up to rounding (performer-pytorch
    # stabilises its key features with a maximum over the whole sequence, which cancels only in exact arithmetic)
    x2 = x.clone()
    x2[:, 25:] += 1.0
    y2 = module(x2)
    assert (y2[:, 25:] - y[:, 25:]).abs().max() > 0.05
    torch.testing.assert_close(y2[:, :25], y[:, :25], atol=5e-3, rtol=0)
