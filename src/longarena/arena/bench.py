"""Speed and memory of mixers against sequence length: forward, forward+backward, decode step.

Times are medians over repeats after a warm-up. Peak memory is the CUDA allocator's peak
on GPU; on CPU it is the peak resident memory of a fresh subprocess that runs only that
measurement (Linux ``VmHWM``, reset just before the run), minus its resident memory at
that moment, so it counts the inputs' activations, workspace and the allocator's
overhead, not the Python/torch import or the weights. For the ``step`` mode, the state
built by the prefill is counted as resident already.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

from longarena import mixers


@dataclasses.dataclass
class BenchResult:
    mixer: str
    seq_len: int
    mode: str
    ms: float | None
    peak_mb: float | None = None
    error: str | None = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up (allocations, kernel selection)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _workload(mixer: torch.nn.Module, mode: str, seq_len: int, batch: int, device: torch.device, dtype: torch.dtype):
    x = torch.randn(batch, seq_len, mixer.d_model, device=device, dtype=dtype)
    if mode == "fwd":
        def run():
            with torch.no_grad():
                mixer(x)
    elif mode == "fwd_bwd":
        def run():
            xg = x.detach().requires_grad_(True)
            y, _ = mixer(xg)
            y.float().sum().backward()
    elif mode == "step":
        if not mixer.causal:
            raise ValueError("non-causal mixers have no step()")
        with torch.no_grad():
            _, state = mixer(x)
        x_t = x[:, -1]

        def run():
            with torch.no_grad():
                mixer.step(x_t, state)
    else:
        raise ValueError(f"unknown mode {mode!r}; expected fwd, fwd_bwd or step")
    return run


def measure(name: str, seq_len: int, mode: str, *, d_model: int = 64, batch: int = 1, device: str = "cpu",
            dtype: str = "float32", repeats: int = 3, config: dict[str, Any] | None = None) -> BenchResult:
    """Time one (mixer, length, mode) in this process; CUDA peak memory when on GPU."""
    dev = torch.device(device)
    torch.manual_seed(0)
    try:
        mixer = mixers.get(name, d_model, **(config or {})).to(dev, getattr(torch, dtype))
        run = _workload(mixer, mode, seq_len, batch, dev, getattr(torch, dtype))
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
            base = torch.cuda.memory_allocated(dev)
        ms = _time(run, dev, repeats)
        peak = (torch.cuda.max_memory_allocated(dev) - base) / 2**20 if dev.type == "cuda" else None
        return BenchResult(name, seq_len, mode, ms, peak)
    except Exception as exc:  # an out-of-memory at one length must not stop the sweep
        return BenchResult(name, seq_len, mode, None, None, f"{type(exc).__name__}: {str(exc)[:200]}")


_CHILD = """
import json, sys, torch
from longarena import mixers
from longarena.arena.bench import _workload

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
a = json.loads(sys.argv[1])
torch.manual_seed(0)
m = mixers.get(a["name"], a["d_model"], **a["config"]).to(getattr(torch, a["dtype"]))
run = _workload(m, a["mode"], a["seq_len"], a["batch"], torch.device("cpu"), getattr(torch, a["dtype"]))
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:  # reset the high-water mark to the current RSS
    f.write("5")
run()
print(json.dumps({"peak_mb": status("VmHWM") - before}))
"""


def cpu_peak_mb(name: str, seq_len: int, mode: str, *, d_model: int = 64, batch: int = 1, dtype: str = "float32",
                config: dict[str, Any] | None = None, timeout: float = 600) -> float | None:
    """Peak extra resident memory (MiB) of one run in a fresh subprocess (see module doc)."""
    args = dict(name=name, seq_len=seq_len, mode=mode, d_model=d_model, batch=batch, dtype=dtype, config=config or {})
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(args)], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"]


def sweep(names: list[str], lengths: list[int], modes: list[str], *, d_model: int = 64, batch: int = 1,
          device: str = "cpu", dtype: str = "float32", repeats: int = 3, memory: bool = False,
          configs: dict[str, dict[str, Any]] | None = None, progress=None) -> list[BenchResult]:
    """Measure every (mixer, length, mode); ``memory`` adds CPU peak memory via subprocesses."""
    results = []
    for name in names:
        for seq_len in lengths:
            for mode in modes:
                if mode == "step" and not mixers.REGISTRY.factory(name).causal:
                    continue
                cfg = (configs or {}).get(name, {})
                r = measure(name, seq_len, mode, d_model=d_model, batch=batch, device=device, dtype=dtype,
                            repeats=repeats, config=cfg)
                if memory and device == "cpu" and r.error is None:
                    r.peak_mb = cpu_peak_mb(name, seq_len, mode, d_model=d_model, batch=batch, dtype=dtype, config=cfg)
                results.append(r)
                if progress is not None:
                    progress(r)
    return results
