"""The conformance suite: the invariants every mixer must keep (DESIGN.md).

1. ``backends``:   every computation path equals the reference (outputs, states, gradients);
2. ``chunked``:    forward over chunks with the state carried equals the whole forward,
   ``step``:       and so does token-by-token ``step()`` (also after a prefill);
3. ``causality``:  no gradient from ``y[:, t]`` to ``x[:, t+1:]`` (beyond FFT rounding);
4. ``batch``:      batch elements are independent; ``padding``: padded positions do not leak;
5. ``long``:       finite outputs and gradients on a long input;
plus ``errors``:   a state made for another batch size is refused with a clear error.

fp32 runs compare with a tight tolerance; bf16 runs compare against the fp32 reference of
the same (bf16-rounded) weights with a tolerance that fits bf16 arithmetic. Errors are relative RMS errors,
``||a - b|| / ||b||``, so one rule serves outputs, states and gradients of any scale.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from longarena.mixers.base import Mixer, MixerInputError, flatten_state, map_state

CHECKS = ("backends", "chunked", "step", "causality", "batch", "padding", "long", "errors")
#: largest gradient from a future input allowed, relative to the largest past one
CAUSAL_LEAK = 1e-6
#: relative RMS error allowed, by dtype. fp32 checks exactness; bf16 (8-bit mantissa, and
#: gradients through normalisations and softmax that cancel most of their terms) checks
#: numerical health: overflow, catastrophic cancellation, a path that loses the state
TOLERANCE = {torch.float32: 2e-4, torch.bfloat16: 1e-1, torch.float16: 2e-2}


class ConformanceError(AssertionError):
    """A mixer broke one or more invariants; the message lists each failure."""


@dataclasses.dataclass
class Failure:
    check: str
    dtype: str
    message: str

    def __str__(self) -> str:
        return f"[{self.check}/{self.dtype}] {self.message}"


@dataclasses.dataclass
class Report:
    mixer: str
    passed: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    failures: list[Failure] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def failed_checks(self) -> set[str]:
        return {f.check for f in self.failures}

    def __str__(self) -> str:
        lines = [f"conformance of {self.mixer}: {len(self.passed)} passed, {len(self.failures)} failed"]
        lines += [f"  FAIL {f}" for f in self.failures]
        lines += [f"  skip {s}" for s in self.skipped]
        return "\n".join(lines)


def rel_error(a: Tensor, b: Tensor) -> float:
    """``||a - b|| / ||b||`` in float64 (0 when both are zero)."""
    a, b = a.detach().double(), b.detach().double()
    denom = b.norm().item()
    diff = (a - b).norm().item()
    if denom == 0.0:
        return diff
    return diff / denom


def _compare(name: str, a: Any, b: Any, tol: float) -> list[str]:
    """Compare two tensors or two states leaf by leaf; return problems found."""
    la, lb = flatten_state(a), flatten_state(b)
    if len(la) != len(lb):
        return [f"{name}: structure differs ({len(la)} vs {len(lb)} leaves)"]
    problems = []
    for i, (x, y) in enumerate(zip(la, lb)):
        where = name if len(la) == 1 else f"{name}[leaf {i}]"
        if isinstance(x, Tensor) != isinstance(y, Tensor):
            problems.append(f"{where}: tensor vs non-tensor")
        elif isinstance(x, Tensor):
            if x.shape != y.shape:
                problems.append(f"{where}: shape {tuple(x.shape)} vs {tuple(y.shape)}")
                continue
            if x.is_complex() or y.is_complex():
                x, y = torch.view_as_real(x.to(torch.complex128)), torch.view_as_real(y.to(torch.complex128))
            elif not x.is_floating_point():
                if not torch.equal(x, y):
                    problems.append(f"{where}: integer/bool tensors differ")
                continue
            if not torch.isfinite(x).all():
                problems.append(f"{where}: non-finite values")
                continue
            err = rel_error(x, y)
            if err > tol:
                problems.append(f"{where}: relative error {err:.2e} > {tol:.0e}")
        elif x != y:
            problems.append(f"{where}: {x!r} vs {y!r}")
    return problems


def _cast_state(state: Any, dtype: torch.dtype) -> Any:
    """A copy of a state with floating tensors cast to ``dtype`` (complex kept complex)."""
    return map_state(state, lambda t: t.to(dtype) if t.is_floating_point() else t)


def _requires_grad(state: Any) -> Any:
    """A copy of ``state`` whose floating leaves are fresh leaves that require grad."""
    return map_state(
        state, lambda t: t.detach().clone().requires_grad_(True) if t.is_floating_point() or t.is_complex() else t
    )


def _detach(state: Any) -> Any:
    return map_state(state, Tensor.detach)


class _Harness:
    """Builds the mixer under test once per dtype and runs it in controlled ways."""

    def __init__(self, factory: Callable[[], Mixer], seed: int, device: torch.device) -> None:
        torch.manual_seed(seed)
        self.base = factory().to(device).eval()
        self.device = device
        self.seed = seed
        self.d = self.base.d_model

    def mixer(self, dtype: torch.dtype) -> Mixer:
        m = copy.deepcopy(self.base).to(dtype)
        m.eval()
        return m

    def reference(self, dtype: torch.dtype) -> Mixer:
        """The fp32 mixer a ``dtype`` run is compared with: its weights rounded to ``dtype``
        first, so the comparison measures the arithmetic, not the rounding of the weights."""
        m = copy.deepcopy(self.base)
        if dtype != torch.float32:
            m = m.to(dtype)
        m = m.to(torch.float32)
        m.eval()
        return m

    def inputs(self, batch: int, length: int, dtype: torch.dtype, seed_offset: int = 0) -> Tensor:
        g = torch.Generator().manual_seed(self.seed + 1 + seed_offset)
        return torch.randn(batch, length, self.d, generator=g).to(self.device, dtype)

    @staticmethod
    def forward_with_grads(mixer: Mixer, x: Tensor, state: Any = None, mask: Tensor | None = None):
        """Output, final state and gradients (input + parameters) of a fixed random loss."""
        x = x.detach().clone().requires_grad_(True)
        state = _requires_grad(state)
        mixer.zero_grad(set_to_none=True)
        y, new_state = mixer(x, state=state, mask=mask)
        g = torch.Generator().manual_seed(1234)
        w = torch.randn(y.shape, generator=g).to(y.device, y.dtype)
        (y.float() * w.float()).sum().backward()
        grads = {"x": x.grad}
        for i, leaf in enumerate(flatten_state(state)):
            if isinstance(leaf, Tensor) and leaf.requires_grad:
                grads[f"state_in[{i}]"] = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
        for name, p in mixer.named_parameters():
            if p.grad is not None:
                grads[name] = p.grad
        return y.detach(), _detach(new_state), grads


def _grad_problems(prefix: str, a: dict[str, Tensor], b: dict[str, Tensor], tol: float) -> list[str]:
    problems = []
    if set(a) != set(b):
        problems.append(f"{prefix}: parameters with gradients differ: {sorted(set(a) ^ set(b))}")
    for name in sorted(set(a) & set(b)):
        problems += _compare(f"{prefix} grad {name}", a[name], b[name], tol)
    return problems


def _check_backends(h: _Harness, dtype: torch.dtype, tol: float, batch: int, length: int) -> list[str]:
    ref = h.reference(dtype)
    available = ref.available_backends(h.device)
    x = h.inputs(batch, length, torch.float32)
    problems = []
    with ref.use_backend(ref.backends[0]):
        y_ref, s_ref, g_ref = h.forward_with_grads(ref, x)
        if ref.causal:
            x2 = h.inputs(batch, length // 2 + 1, torch.float32, seed_offset=7)
            y2_ref, s2_ref, g2_ref = h.forward_with_grads(ref, x2, state=s_ref)
    for backend in available:
        if dtype == torch.float32 and backend == ref.backends[0]:
            continue
        m = h.mixer(dtype)
        with m.use_backend(backend):
            y, s, g = h.forward_with_grads(m, x.to(dtype))
            problems += _compare(f"{backend} output", y, y_ref, tol)
            problems += _grad_problems(backend, g, g_ref, tol)
            if m.causal:
                problems += _compare(f"{backend} state", s, s_ref, tol)
                # continue from the *reference* state so the state-input path is tested alone
                y2, s2, g2 = h.forward_with_grads(m, x2.to(dtype), state=_cast_state(s_ref, dtype))
                problems += _compare(f"{backend} output after state", y2, y2_ref, tol)
                problems += _compare(f"{backend} state after state", s2, s2_ref, tol)
                problems += _grad_problems(f"{backend} after state", g2, g2_ref, tol)
    return problems


def _full_reference(h: _Harness, dtype: torch.dtype, x: Tensor) -> tuple[Tensor, Any]:
    """The fp32 whole-sequence output the chunked/step paths are compared with."""
    with torch.no_grad():
        return h.reference(dtype)(x.float())


def _check_chunked(h: _Harness, dtype: torch.dtype, tol: float, batch: int, length: int) -> list[str]:
    m = h.mixer(dtype)
    x = h.inputs(batch, length, dtype)
    y_full, s_full = _full_reference(h, dtype, x)
    # irregular chunk sizes, including a single token, catch off-by-one offsets
    sizes, left = [], length
    for size in (5, 1, 7, 3, length):
        if left <= 0:
            break
        sizes.append(min(size, left))
        left -= sizes[-1]
    ys, state = [], None
    with torch.no_grad():
        for chunk in x.split(sizes, dim=1):
            y, state = m(chunk, state=state)
            ys.append(y)
    y = torch.cat(ys, dim=1)
    return _compare("chunked output", y, y_full, tol) + _compare("chunked final state", state, s_full, tol)


def _check_step(h: _Harness, dtype: torch.dtype, tol: float, batch: int, length: int) -> list[str]:
    m = h.mixer(dtype)
    x = h.inputs(batch, length, dtype)
    y_full, s_full = _full_reference(h, dtype, x)
    problems = []
    with torch.no_grad():
        state = m.init_state(batch, device=h.device, dtype=dtype)
        ys = []
        for t in range(length):
            y_t, state = m.step(x[:, t], state)
            ys.append(y_t)
        problems += _compare("step output", torch.stack(ys, dim=1), y_full, tol)
        problems += _compare("step final state", state, s_full, tol)
        # prefill with forward, then decode with step
        prefill = length // 2
        _, state = m(x[:, :prefill])
        ys = [m.step(x[:, t], state) for t in [prefill]]
        y_t, state = ys[0]
        ys = [y_t]
        for t in range(prefill + 1, length):
            y_t, state = m.step(x[:, t], state)
            ys.append(y_t)
        problems += _compare("step after forward prefill", torch.stack(ys, dim=1), y_full[:, prefill:], tol)
    return problems


def _check_causality(h: _Harness, dtype: torch.dtype, tol: float, batch: int, length: int) -> list[str]:
    m = h.mixer(dtype)
    problems = []
    for t in sorted({0, length // 3, length // 2, length - 2}):
        x = h.inputs(1, length, dtype).requires_grad_(True)
        y, _ = m(x)
        y[:, t].float().pow(2).sum().backward()
        future = x.grad[:, t + 1 :].float().abs()
        past = x.grad[:, : t + 1].float().abs().max().item()
        if past == 0.0:
            problems.append(f"output at t={t} does not depend on any input at or before t")
        # FFT convolutions leave rounding-level (~1e-8 relative) gradients on future inputs;
        # anything above CAUSAL_LEAK of the largest past gradient is a real leak
        elif future.numel() and future.max().item() > CAUSAL_LEAK * past:
            first = int((future.amax(dim=(0, 2)) > CAUSAL_LEAK * past).nonzero()[0]) + t + 1
            problems.append(
                f"output at t={t} has a gradient from the future input at t={first} "
                f"({future.max().item() / past:.1e} of the largest past gradient)"
            )
    return problems


def _check_batch(h: _Harness, dtype: torch.dtype, tol: float, batch: int, length: int) -> list[str]:
    m = h.mixer(dtype)
    n = max(batch, 3)
    x = h.inputs(n, length, dtype).requires_grad_(True)
    y, _ = m(x)
    problems = []
    with torch.no_grad():
        for i in range(n):
            y_i, _ = m(x[i : i + 1].detach())
            problems += _compare(f"batch element {i} alone vs in batch", y[i : i + 1], y_i, tol)
    y[0].float().pow(2).sum().backward()
    if x.grad[1:].abs().max().item() != 0.0:
        problems.append("output of batch element 0 has a gradient from other batch elements")
    return problems


def _check_padding(h: _Harness, dtype: torch.dtype, tol: float, batch: int, length: int) -> list[str]:
    m = h.mixer(dtype)
    lengths = [length, max(1, length - 5), max(1, length // 2 + 1)]
    x = h.inputs(len(lengths), length, dtype)
    mask = torch.zeros(len(lengths), length, dtype=torch.bool, device=h.device)
    for i, n in enumerate(lengths):
        mask[i, :n] = True
    # large garbage in the padding makes any leak visible
    x = torch.where(mask[..., None], x, 50.0 * torch.ones_like(x)).detach().requires_grad_(True)
    y, _ = m(x, mask=mask)
    problems = []
    with torch.no_grad():
        for i, n in enumerate(lengths):
            y_i, _ = m(x[i : i + 1, :n].detach(), mask=mask[i : i + 1, :n])
            problems += _compare(f"padded element {i} (length {n} of {length})", y[i : i + 1, :n], y_i, tol)
    (y.float() * mask[..., None]).pow(2).sum().backward()
    leak = (x.grad * (~mask)[..., None]).abs().max().item()
    if leak != 0.0:
        problems.append("real outputs have a gradient from padded positions")
    return problems


def _check_long(h: _Harness, dtype: torch.dtype, tol: float, long_len: int) -> list[str]:
    m = h.mixer(dtype)
    x = h.inputs(1, long_len, dtype).requires_grad_(True)
    y, _ = m(x)
    y.float().pow(2).mean().backward()
    problems = []
    if y.shape != x.shape:
        problems.append(f"output shape {tuple(y.shape)} != input shape {tuple(x.shape)}")
    if not torch.isfinite(y).all():
        problems.append(f"non-finite output at T={long_len}")
    if not torch.isfinite(x.grad).all():
        problems.append(f"non-finite input gradient at T={long_len}")
    for name, p in m.named_parameters():
        if p.grad is not None and not torch.isfinite(p.grad).all():
            problems.append(f"non-finite gradient of {name} at T={long_len}")
    return problems


def _check_errors(h: _Harness, dtype: torch.dtype, tol: float, batch: int, length: int) -> list[str]:
    m = h.mixer(dtype)
    with torch.no_grad():
        _, state = m(h.inputs(2, 4, dtype))
        try:
            m(h.inputs(3, 4, dtype), state=state)
        except MixerInputError:
            return []
        except Exception as exc:  # noqa: BLE001 - we report what was raised instead
            return [f"a state for batch 2 with an input of batch 3 raised {type(exc).__name__}, not MixerInputError: {exc}"]
    return ["a state for batch 2 with an input of batch 3 was accepted silently"]


def check_mixer(
    factory: Callable[[], Mixer],
    *,
    dtypes: Sequence[torch.dtype] = (torch.float32, torch.bfloat16),
    checks: Iterable[str] = CHECKS,
    batch: int = 2,
    seq_len: int = 24,
    long_len: int = 16384,
    device: str | torch.device = "cpu",
    seed: int = 0,
    tolerance: dict[torch.dtype, float] | None = None,
    raise_on_failure: bool = True,
) -> Report:
    """Run the conformance suite on the mixer ``factory()`` builds.

    ``factory`` takes no arguments and returns a fresh mixer (the suite seeds torch first,
    so every call gives the same weights). Causal-only checks are skipped for non-causal
    mixers. Raises :class:`ConformanceError` listing every failure unless
    ``raise_on_failure=False``, in which case the :class:`Report` says what failed.
    """
    checks = list(checks)
    unknown = sorted(set(checks) - set(CHECKS))
    if unknown:
        raise ValueError(f"unknown check(s) {unknown}; known: {list(CHECKS)}")
    tolerance = {**TOLERANCE, **(tolerance or {})}
    device = torch.device(device)
    h = _Harness(factory, seed, device)
    report = Report(mixer=type(h.base).__name__)
    causal_only = {"chunked", "step", "causality", "errors"}
    for dtype in dtypes:
        dname = str(dtype).removeprefix("torch.")
        tol = tolerance[dtype]
        for check in checks:
            label = f"{check}/{dname}"
            if check in causal_only and not h.base.causal:
                report.skipped.append(f"{label} (non-causal)")
                continue
            if check == "long" and dtype != dtypes[0]:
                report.skipped.append(f"{label} (long inputs run once, in {dtypes[0]})")
                continue
            if check == "long":
                problems = _check_long(h, dtype, tol, long_len)
            else:
                fn = {
                    "backends": _check_backends,
                    "chunked": _check_chunked,
                    "step": _check_step,
                    "causality": _check_causality,
                    "batch": _check_batch,
                    "padding": _check_padding,
                    "errors": _check_errors,
                }[check]
                try:
                    problems = fn(h, dtype, tol, batch, seq_len)
                except Exception as exc:  # a crash is a failure of that check, not of the suite
                    problems = [f"raised {type(exc).__name__}: {exc}"]
            if problems:
                report.failures += [Failure(check, dname, p) for p in problems]
            else:
                report.passed.append(label)
    if raise_on_failure and report.failures:
        raise ConformanceError(str(report))
    return report
