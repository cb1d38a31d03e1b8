"""Speed and memory of mixers against sequence length: forward, forward+backward, decode step.

Every *subject* of a sweep is a LongArena mixer (``longarena.mixers.get``) or a *peer*: an
outside implementation measured side by side in the same run with the same
``(B, T, D) -> (B, T, D)`` contract (see :data:`PEERS`). Bare PyTorch SDPA is always a peer;
the others (flash-linear-attention, mamba_ssm, lucidrains packages) only when importable,
and a missing one is reported as "not installed", not as an error.

Times are medians over repeats after a warm-up. Peak memory is the CUDA allocator's peak
on GPU. On CPU it is measured in one fresh subprocess per subject that runs each cell once:
the rise of the process's resident set (Linux ``VmHWM``, reset just before the run) over
its resident memory at that moment, so it counts the inputs' activations, workspace and
the allocator's overhead, not the Python/torch import or the weights. The subprocess asks
glibc to return every block above 4 KiB to the system when freed
(``MALLOC_MMAP_THRESHOLD_``), so one cell's freed memory cannot hide the next one's peak.
For the ``step`` mode, the state built by the prefill is counted as resident already.

Out of memory at one length (CUDA OOM, ``MemoryError``, or a RuntimeError saying the CPU
allocator has not enough memory) is recorded for that cell; the longer lengths of the same
subject and mode are then skipped and marked, and the sweep goes on with the others.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longarena import mixers
from longarena.atomic import write_text
from longarena.config import Config, ConfigError

MODES = ("fwd", "fwd_bwd", "step")


@dataclasses.dataclass
class BenchResult:
    """One measured cell. ``status``: ok, error, oom, skipped (after an OOM at a shorter length) or n/a."""

    mixer: str
    seq_len: int
    mode: str
    ms: float | None
    peak_mb: float | None = None
    error: str | None = None
    status: str = "ok"
    #: "mixer" (LongArena) or "peer" (an outside implementation)
    kind: str = "mixer"


class _SDPAPeer(nn.Module):
    """Bare ``F.scaled_dot_product_attention`` on the input split into heads (q = k = v = x).

    No projections: this is the kernel the ``attention`` mixer's cost is made of, so the
    ratio shows what the mixer adds around it. Decoding attends one query to a (B, H, T, K)
    key/value cache.
    """

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ConfigError(f"the sdpa peer splits d_model={d_model} into {n_heads} heads; it must divide evenly")
        self.d_model, self.n_heads = d_model, n_heads

    def _heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.d_model // self.n_heads).transpose(1, 2)  # (B, H, T, K)

    def forward(self, x: Tensor) -> Tensor:
        h = self._heads(x)
        y = F.scaled_dot_product_attention(h, h, h, is_causal=True)  # (B, H, T, K)
        return y.transpose(1, 2).reshape(x.shape)

    def prefill(self, x: Tensor) -> Tensor:
        return self._heads(x)

    def step(self, x_t: Tensor, cache: Tensor) -> Tensor:
        q = self._heads(x_t[:, None])  # (B, H, 1, K)
        return F.scaled_dot_product_attention(q, cache, cache).transpose(1, 2).reshape(x_t.shape)


class _FirstOutput(nn.Module):
    """Adapts a layer returning a tuple (fla layers: output, attentions, cache) to ``x -> y``."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        out = self.layer(x)
        return out[0] if isinstance(out, tuple) else out


def _build_sdpa(d_model: int, n_heads: int) -> nn.Module:
    return _SDPAPeer(d_model, n_heads)


def _build_fla_gla(d_model: int, n_heads: int) -> nn.Module:
    from fla.layers import GatedLinearAttention

    return _FirstOutput(GatedLinearAttention(mode="chunk", hidden_size=d_model, num_heads=n_heads))


def _build_fla_retnet(d_model: int, n_heads: int) -> nn.Module:
    from fla.layers import MultiScaleRetention

    return _FirstOutput(MultiScaleRetention(mode="chunk", hidden_size=d_model, num_heads=n_heads))


def _build_mamba_ssm(d_model: int, n_heads: int) -> nn.Module:
    from mamba_ssm import Mamba

    return Mamba(d_model=d_model)


def _build_performer(d_model: int, n_heads: int) -> nn.Module:
    from performer_pytorch import SelfAttention

    return SelfAttention(dim=d_model, heads=n_heads, dim_head=d_model // n_heads, causal=True)


def _build_linear_attention(d_model: int, n_heads: int) -> nn.Module:
    from linear_attention_transformer.linear_attention_transformer import SelfAttention

    return SelfAttention(d_model, n_heads, causal=True)


def _build_local_attention(d_model: int, n_heads: int) -> nn.Module:
    from local_attention import LocalMHA

    return LocalMHA(dim=d_model, window_size=128, dim_head=d_model // n_heads, heads=n_heads, causal=True)


@dataclasses.dataclass(frozen=True)
class Peer:
    """An outside implementation: ``build(d_model, n_heads)`` returns a module mapping (B, T, D) -> (B, T, D).

    ``module`` is the import name whose presence makes the peer available; ``needs_cuda`` peers
    (Triton/CUDA kernels) are listed as unavailable on CPU. A module with ``prefill(x) -> cache``
    and ``step(x_t, cache) -> y_t`` is also timed in the ``step`` mode.
    """

    name: str
    module: str
    build: Callable[[int, int], nn.Module]
    description: str
    needs_cuda: bool = False

    def import_error(self) -> str | None:
        """None when the peer's package imports; else why not (absent, or a dependency of it missing)."""
        try:
            if importlib.util.find_spec(self.module) is None:
                return f"not installed (import {self.module})"
            importlib.import_module(self.module)
        except Exception as exc:  # a broken install is reported like a missing one, never raised
            return f"not installed: import {self.module} fails ({type(exc).__name__}: {str(exc)[:120]})"
        return None


PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        Peer("sdpa", "torch", _build_sdpa, "bare torch scaled_dot_product_attention, causal, q = k = v = x"),
        Peer("fla_gla", "fla", _build_fla_gla, "flash-linear-attention GatedLinearAttention (chunk)", needs_cuda=True),
        Peer("fla_retnet", "fla", _build_fla_retnet, "flash-linear-attention MultiScaleRetention (chunk)", needs_cuda=True),
        Peer("mamba_ssm", "mamba_ssm", _build_mamba_ssm, "mamba_ssm.Mamba (CUDA selective scan)", needs_cuda=True),
        Peer("performer_pytorch", "performer_pytorch", _build_performer, "lucidrains performer-pytorch SelfAttention, causal"),
        Peer("linear_attention_transformer", "linear_attention_transformer", _build_linear_attention,
             "lucidrains linear-attention-transformer SelfAttention, causal"),
        Peer("local_attention", "local_attention", _build_local_attention, "lucidrains local-attention LocalMHA, window 128, causal"),
    )
}


def peer_availability(names: list[str], device: str) -> tuple[list[str], dict[str, str]]:
    """(peers that can run here, {peer: why not}) -- "not installed" or "needs CUDA"."""
    usable, missing = [], {}
    for name in names:
        peer = PEERS[name]
        problem = peer.import_error()
        if problem is not None:
            missing[name] = problem
        elif peer.needs_cuda and not str(device).startswith("cuda"):
            missing[name] = "needs CUDA"
        else:
            usable.append(name)
    return usable, missing


class _Subject:
    """A mixer or a peer behind one interface: ``forward(x) -> y``, optional prefill/step."""

    def __init__(self, name: str, kind: str, module: nn.Module, d_model: int) -> None:
        self.name, self.kind, self.module, self.d_model = name, kind, module, d_model

    @property
    def causal(self) -> bool:
        return bool(getattr(self.module, "causal", True))

    def can_step(self) -> bool:
        if self.kind == "mixer":
            return self.causal
        return hasattr(self.module, "prefill") and hasattr(self.module, "step")

    def forward(self, x: Tensor) -> Tensor:
        out = self.module(x)
        return out[0] if self.kind == "mixer" else out

    def prefill(self, x: Tensor) -> Any:
        return self.module(x)[1] if self.kind == "mixer" else self.module.prefill(x)

    def step(self, x_t: Tensor, state: Any) -> Any:
        return self.module.step(x_t, state)


def _subject(name: str, kind: str, d_model: int, config: dict[str, Any], device: torch.device, dtype: torch.dtype) -> _Subject:
    if kind == "peer":
        n_heads = int(config.get("n_heads", mixers.get("attention", d_model).n_heads))
        module = PEERS[name].build(d_model, n_heads)
    else:
        module = mixers.get(name, d_model, **config)
    return _Subject(name, kind, module.to(device, dtype), d_model)


def _workload(subject: _Subject, mode: str, seq_len: int, batch: int, device: torch.device, dtype: torch.dtype):
    """A zero-argument function running one cell; the step mode's prefill happens here, outside it."""
    x = torch.randn(batch, seq_len, subject.d_model, device=device, dtype=dtype)
    if mode == "fwd":
        def run():
            with torch.no_grad():
                subject.forward(x)
    elif mode == "fwd_bwd":
        def run():
            xg = x.detach().requires_grad_(True)
            subject.forward(xg).float().sum().backward()
    elif mode == "step":
        if not subject.can_step():
            raise ValueError(f"{subject.name} has no step() (non-causal mixer, or a peer without decoding)")
        with torch.no_grad():
            state = subject.prefill(x)
        x_t = x[:, -1]

        def run():
            with torch.no_grad():
                subject.step(x_t, state)
    else:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    return run


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA OOM, MemoryError, or a RuntimeError from an allocator that ran out (CPU or GPU)."""
    if isinstance(exc, MemoryError):
        return True
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        s in text for s in ("out of memory", "not enough memory", "can't allocate memory", "cannot allocate memory")
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up (allocations, kernel selection, lazily built tables)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure(name: str, seq_len: int, mode: str, *, d_model: int = 64, batch: int = 1, device: str = "cpu",
            dtype: str = "float32", repeats: int = 3, config: dict[str, Any] | None = None,
            kind: str = "mixer") -> BenchResult:
    """Time one (subject, length, mode) in this process; CUDA peak memory when on GPU.

    Never raises for a failing cell: the result carries ``status`` and ``error``.
    """
    dev = torch.device(device)
    torch.manual_seed(0)
    try:
        subject = _subject(name, kind, d_model, dict(config or {}), dev, getattr(torch, dtype))
        if mode == "step" and not subject.can_step():
            return BenchResult(name, seq_len, mode, None, None, "no step(): non-causal or no decoding", "n/a", kind)
        run = _workload(subject, mode, seq_len, batch, dev, getattr(torch, dtype))
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
            base = torch.cuda.memory_allocated(dev)
        ms = _time(run, dev, repeats)
        peak = (torch.cuda.max_memory_allocated(dev) - base) / 2**20 if dev.type == "cuda" else None
        return BenchResult(name, seq_len, mode, ms, peak, kind=kind)
    except Exception as exc:  # one failing cell (an OOM above all) must not stop the sweep
        status = "oom" if is_out_of_memory(exc) else "error"
        return BenchResult(name, seq_len, mode, None, None, f"{type(exc).__name__}: {str(exc)[:300]}", status, kind)
    finally:
        _free(dev)


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}; CPU peak memory needs Linux")


def _child_main(args: dict[str, Any]) -> None:
    """Runs in the subprocess: every (seq_len, mode) cell of one subject once; prints JSON lines."""
    torch.manual_seed(0)
    dtype = getattr(torch, args["dtype"])
    subject = _subject(args["name"], args["kind"], args["d_model"], args["config"], torch.device("cpu"), dtype)
    for seq_len, mode in args["cells"]:
        try:
            run = _workload(subject, mode, seq_len, args["batch"], torch.device("cpu"), dtype)
            # the first run faults in library code and builds lazy tables: resident, but not the cell's
            run()
            gc.collect()
            before = _status_mb("VmRSS")
            with open("/proc/self/clear_refs", "w") as f:  # reset the high-water mark to the current RSS
                f.write("5")
            run()
            peak = _status_mb("VmHWM") - before
            del run
        except Exception:  # the parent already recorded this cell's failure from its timing run
            peak = None
        print(json.dumps({"seq_len": seq_len, "mode": mode, "peak_mb": peak}), flush=True)


def cpu_peaks(name: str, cells: list[tuple[int, str]], *, kind: str = "mixer", d_model: int = 64, batch: int = 1,
              dtype: str = "float32", config: dict[str, Any] | None = None,
              timeout: float = 900) -> dict[tuple[int, str], float | None]:
    """Peak extra resident memory (MiB) of each (seq_len, mode) cell, from one fresh subprocess."""
    if not cells:
        return {}
    args = {"name": name, "kind": kind, "cells": [list(c) for c in cells], "d_model": d_model, "batch": batch, "dtype": dtype,
                "config": config or {}}
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "4096"}
    code = "import json, sys\nfrom longarena.arena.bench import _child_main\n_child_main(json.loads(sys.argv[1]))\n"
    try:
        proc = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True,
                              timeout=timeout, env=env, check=False)
        stdout = proc.stdout
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
    peaks: dict[tuple[int, str], float | None] = {tuple(c): None for c in cells}
    for line in stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            peaks[(row["seq_len"], row["mode"])] = row["peak_mb"]
    return peaks


def cpu_peak_mb(name: str, seq_len: int, mode: str, *, d_model: int = 64, batch: int = 1, dtype: str = "float32",
                config: dict[str, Any] | None = None, timeout: float = 600, kind: str = "mixer") -> float | None:
    """Peak extra resident memory (MiB) of one cell in a fresh subprocess (see module doc)."""
    return cpu_peaks(name, [(seq_len, mode)], kind=kind, d_model=d_model, batch=batch, dtype=dtype, config=config,
                     timeout=timeout)[(seq_len, mode)]


def check_request(names: list[str], lengths: list[int], modes: list[str], peers: list[str] = ()) -> None:
    """ConfigError naming what is known for unknown mixers/peers/modes or non-positive lengths."""
    known = mixers.names()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"unknown mixer(s) {unknown}; known mixers: {', '.join(known)}")
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        raise ConfigError(f"unknown peer(s) {unknown}; known peers: {', '.join(PEERS)}")
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ConfigError(f"unknown mode(s) {bad or '(none given)'}; expected some of {', '.join(MODES)}")
    if not lengths or any(not isinstance(n, int) or isinstance(n, bool) or n <= 0 for n in lengths):
        raise ConfigError(f"lengths must be positive integers, got {list(lengths)}")


def sweep(names: list[str], lengths: list[int], modes: list[str], *, d_model: int = 64, batch: int = 1,
          device: str = "cpu", dtype: str = "float32", repeats: int = 3, memory: bool = False,
          configs: dict[str, dict[str, Any]] | None = None, progress=None, peers: list[str] = ()) -> list[BenchResult]:
    """Measure every (subject, length, mode): the mixers ``names``, then the ``peers`` that can run here.

    Lengths run from short to long. After an out-of-memory at length T, the longer lengths of
    that subject and mode are recorded as ``skipped``. ``memory`` adds CPU peak memory (one
    subprocess per subject); on GPU the allocator's peak is always recorded.
    """
    check_request(names, lengths, modes, peers)
    usable, _ = peer_availability(list(peers), device)
    subjects = [(n, "mixer") for n in names] + [(p, "peer") for p in usable]
    results = []
    for name, kind in subjects:
        cfg = (configs or {}).get(name, {})
        oom_at: dict[str, int] = {}
        mine = []
        for seq_len in sorted(dict.fromkeys(lengths)):
            for mode in modes:
                if mode in oom_at:
                    r = BenchResult(name, seq_len, mode, None, None, f"skipped: out of memory at T={oom_at[mode]}",
                                    "skipped", kind)
                else:
                    r = measure(name, seq_len, mode, d_model=d_model, batch=batch, device=device, dtype=dtype,
                                repeats=repeats, config=cfg, kind=kind)
                    if r.status == "oom":
                        oom_at[mode] = seq_len
                    elif r.status == "n/a":  # a mode this subject does not have (step of a non-causal mixer)
                        continue
                mine.append(r)
                if progress is not None:
                    progress(r)
        if memory and torch.device(device).type == "cpu":
            peaks = cpu_peaks(name, [(r.seq_len, r.mode) for r in mine if r.status == "ok"], kind=kind,
                              d_model=d_model, batch=batch, dtype=dtype, config=cfg)
            for r in mine:
                r.peak_mb = peaks.get((r.seq_len, r.mode), r.peak_mb)
        results += mine
    return results


@dataclasses.dataclass
class BenchConfig(Config):
    mixers: tuple[str, ...] = ("attention",)
    lengths: tuple[int, ...] = (1024, 4096, 16384)
    modes: tuple[str, ...] = MODES
    #: peers measured beside the mixers; "auto" in the list means every registered peer
    peers: tuple[str, ...] = ("auto",)
    #: the subject (mixer or peer) every ratio is taken against; added to the run if missing
    baseline: str = "attention"
    d_model: int = 64
    batch: int = 1
    device: str = "cpu"
    dtype: str = "float32"
    repeats: int = 3
    memory: bool = True
    #: per-mixer config overrides, e.g. {"longformer": {"window": 64}}
    mixer_config: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def validate(self) -> None:
        self.mixers, self.lengths, self.modes, self.peers = (
            tuple(self.mixers), tuple(self.lengths), tuple(self.modes), tuple(self.peers))
        if "all" in self.mixers:
            self.mixers = tuple(mixers.names())
        if not self.mixers and not self.peer_names():
            raise ConfigError("nothing to measure: give at least one mixer or peer")
        check_request(list(self.mixers), list(self.lengths), list(self.modes), self.peer_names())
        if self.baseline not in mixers.names() and self.baseline not in PEERS:
            raise ConfigError(f"unknown baseline {self.baseline!r}; expected a mixer ({', '.join(mixers.names())}) "
                              f"or a peer ({', '.join(PEERS)})")
        if self.d_model <= 0 or self.batch <= 0 or self.repeats <= 0:
            raise ConfigError(f"d_model, batch and repeats must be positive, got {self.d_model}, {self.batch}, {self.repeats}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        try:
            device = torch.device(self.device)
        except RuntimeError as exc:
            raise ConfigError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}") from exc
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {self.device!r} asked for, but torch sees no CUDA GPU here; use --device cpu")

    def peer_names(self) -> list[str]:
        names = list(PEERS) if "auto" in self.peers else [p for p in self.peers if p != "none"]
        if self.baseline in PEERS and self.baseline not in names:
            names.append(self.baseline)
        return names

    def mixer_names(self) -> list[str]:
        names = list(self.mixers)
        if self.baseline in mixers.names() and self.baseline not in names:
            names.insert(0, self.baseline)
        return names


@dataclasses.dataclass
class BenchReport:
    config: BenchConfig
    results: list[BenchResult]
    #: peers that were asked for but could not run here: {name: "not installed (...)" | "needs CUDA"}
    peers_missing: dict[str, str]
    device_name: str
    seconds: float = 0.0

    def subjects(self) -> list[str]:
        return list(dict.fromkeys(r.mixer for r in self.results))

    def ratios(self) -> list[dict[str, Any]]:
        """Every measured cell with its time and memory as multiples of the baseline's (same T and mode)."""
        return ratios(self.results, self.config.baseline)

    def to_dict(self) -> dict[str, Any]:
        measured = [p for p in self.config.peer_names() if p not in self.peers_missing]
        return {
            "config": self.config.to_dict(),
            "device": self.device_name,
            "seconds": self.seconds,
            "baseline": self.config.baseline,
            "peers": {"measured": measured, "missing": self.peers_missing},
            "results": [dataclasses.asdict(r) for r in self.results],
            "ratios": self.ratios(),
        }

    def write_json(self, path: str | os.PathLike) -> Path:
        return write_text(path, json.dumps(self.to_dict(), indent=2, allow_nan=False, default=_json_default))

    def write_markdown(self, path: str | os.PathLike) -> Path:
        return write_text(path, self.markdown() + "\n")

    def table_rows(self) -> tuple[list[str], list[list[str]]]:
        base = self.config.baseline
        header = ["subject", "T", "mode", "ms", f"time x {base}", "peak MiB", f"memory x {base}"]
        by_cell = {(r["subject"], r["seq_len"], r["mode"]): r for r in self.ratios()}
        rows = []
        for r in self.results:
            q = by_cell.get((r.mixer, r.seq_len, r.mode), {})
            label = r.mixer + (" (peer)" if r.kind == "peer" else "")
            ms = f"{r.ms:.2f}" if r.ms is not None else r.status
            rows.append([label, str(r.seq_len), r.mode, ms, _fmt_ratio(q.get("time_ratio")),
                         "" if r.peak_mb is None else f"{r.peak_mb:.1f}", _fmt_ratio(q.get("memory_ratio"))])
        return header, rows

    def markdown(self) -> str:
        from longarena.arena.plots import markdown_table

        header, rows = self.table_rows()
        lines = [markdown_table(header, rows)]
        if self.peers_missing:
            lines += ["", "Peers not measured: " + "; ".join(f"`{k}` {v}" for k, v in self.peers_missing.items()) + "."]
        return "\n".join(lines)

    def plot(self, out_dir: str | os.PathLike, prefix: str = "bench") -> list[Path]:
        """``<prefix>_time.png`` and (when measured) ``<prefix>_memory.png``: log-log, one panel per mode."""
        from longarena.arena.plots import loglog_panels

        out = Path(out_dir)
        peers = [r.mixer for r in self.results if r.kind == "peer"]
        modes = [m for m in self.config.modes if any(r.mode == m for r in self.results)]
        where = f"{self.device_name}, {self.config.dtype}, d_model {self.config.d_model}, batch {self.config.batch}"
        oom_note = "; x: out of memory" if any(r.status == "oom" for r in self.results) else ""
        paths = []
        for field, label, name in (("ms", "time (ms)", "time"), ("peak_mb", "peak memory (MiB)", "memory")):
            if not any(getattr(r, field) is not None for r in self.results):
                continue
            panels = {m: {s: [(r.seq_len, getattr(r, field)) for r in self.results if r.mixer == s and r.mode == m]
                          for s in self.subjects()} for m in modes}
            marks = {m: {s: [r.seq_len for r in self.results if r.mixer == s and r.mode == m and r.status == "oom"]
                         for s in self.subjects()} for m in modes}
            paths.append(loglog_panels(panels, out / f"{prefix}_{name}.png", xlabel="sequence length T", ylabel=label,
                                       title=f"{name} vs length ({where})" + oom_note, dashed=peers,
                                       marks=marks))
        return paths


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON-able: {type(value).__name__}")


def _fmt_ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


#: peaks below this are within the noise of the resident-set measurement (page granularity,
#: allocator slack), so no memory ratio is taken against a baseline peak this small
MIN_RATIO_MB = 0.5


def ratios(results: list[BenchResult], baseline: str) -> list[dict[str, Any]]:
    """Each successful cell's time (and peak memory) divided by the baseline's at the same (T, mode)."""
    base = {(r.seq_len, r.mode): r for r in results if r.mixer == baseline and r.status == "ok"}
    out = []
    for r in results:
        if r.status != "ok":
            continue
        b = base.get((r.seq_len, r.mode))
        time_ratio = r.ms / b.ms if b is not None and b.ms else None
        memory_ratio = (r.peak_mb / b.peak_mb if b is not None and r.peak_mb is not None and b.peak_mb is not None
                        and b.peak_mb >= MIN_RATIO_MB else None)
        out.append({"subject": r.mixer, "kind": r.kind, "seq_len": r.seq_len, "mode": r.mode, "ms": r.ms,
                    "peak_mb": r.peak_mb, "time_ratio": time_ratio, "memory_ratio": memory_ratio})
    return out


def device_name(device: str) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"CPU ({torch.get_num_threads()} threads)"


def run_bench(config: BenchConfig | None = None, *, progress: Callable[[BenchResult], None] | None = None,
              **overrides: Any) -> BenchReport:
    """Run the sweep ``config`` describes (mixers, then the peers that can run here)."""
    if config is None:
        config = BenchConfig(**overrides)
    elif overrides:
        config = BenchConfig.from_dict({**config.to_dict(), **overrides})
    start = time.perf_counter()
    _, missing = peer_availability(config.peer_names(), config.device)
    results = sweep(config.mixer_names(), list(config.lengths), list(config.modes), d_model=config.d_model,
                    batch=config.batch, device=config.device, dtype=config.dtype, repeats=config.repeats,
                    memory=config.memory, configs=config.mixer_config, progress=progress, peers=config.peer_names())
    return BenchReport(config, results, missing, device_name(config.device), time.perf_counter() - start)
