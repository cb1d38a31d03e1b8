"""linear_scan and selective_scan: fast paths against the loop reference (outputs, states,
gradients), state carry, the log-space range guard."""

from __future__ import annotations

import pytest
import torch

from longarena.ops.scan import linear_scan, selective_scan
from longarena.ops.scan.selective import _plan
from longarena.ops.scan.selective_logspace import LOG_LIMIT, log_range
from longarena.testing.conformance import rel_error

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.complex64: 1e-5}


def _inputs(shape, dtype, seed=0, a_shape=None):
    g = torch.Generator().manual_seed(seed)
    a_shape = a_shape or shape
    if dtype.is_complex:
        mag = torch.rand(a_shape, generator=g)
        phase = torch.rand(a_shape, generator=g) * 6.28
        a = torch.polar(mag, phase)
        b = torch.complex(torch.randn(shape, generator=g), torch.randn(shape, generator=g))
        state = shape[:1] + shape[2:]
        h0 = torch.complex(torch.randn(state, generator=g), torch.randn(state, generator=g))
    else:
        # decays in (-1, 1), including values near zero and negative ones
        a = (torch.rand(a_shape, generator=g) * 2 - 1).to(dtype)
        b = torch.randn(shape, generator=g).to(dtype)
        h0 = torch.randn(shape[:1] + shape[2:], generator=g).to(dtype)
    return a, b, h0


def _run(backend, a, b, h0, **kw):
    a, b = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    h0 = None if h0 is None else h0.detach().clone().requires_grad_()
    h, h_last = linear_scan(a, b, h0, backend=backend, **kw)
    g = torch.Generator().manual_seed(9)
    w = torch.randn(h.shape, generator=g, dtype=torch.float32)
    w_last = torch.randn(h_last.shape, generator=g, dtype=torch.float32)
    as_real = lambda t: torch.view_as_real(t).float().sum(-1) if t.is_complex() else t.float()  # noqa: E731
    loss = as_real(h).mul(w).sum() + as_real(h_last).mul(w_last).sum()
    loss.backward()
    grads = [a.grad, b.grad] + ([] if h0 is None else [h0.grad])
    return h.detach(), h_last.detach(), grads


def _real(t):
    return torch.view_as_real(t) if t.is_complex() else t


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.complex64], ids=str)
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize(
    "backend,chunk", [("chunked", None), ("chunked", 1), ("chunked", 4), ("chunked", 50), ("parallel", None)]
)
def test_fast_paths_match_reference(dtype, with_h0, backend, chunk):
    a, b, h0 = _inputs((2, 37, 3, 2), dtype)
    h0 = h0 if with_h0 else None
    ref_dtype = dtype if dtype.is_complex else torch.float32
    # the fp32 reference of the same numbers is the truth, also for bf16 inputs
    ref = _run("reference", a.to(ref_dtype), b.to(ref_dtype), None if h0 is None else h0.to(ref_dtype))
    out = _run(backend, a, b, h0, **({} if backend == "parallel" else {"chunk_size": chunk}))
    assert out[0].dtype == dtype and out[1].dtype == dtype
    for x, y in zip([out[0], out[1], *out[2]], [ref[0], ref[1], *ref[2]]):
        assert rel_error(_real(x), _real(y)) < TOL[dtype]


def test_reference_matches_explicit_sum():
    """h_t = sum_s (prod_{r=s+1}^t a_r) b_s + (prod_{r<=t} a_r) h0, written out."""
    a, b, h0 = _inputs((1, 6, 2), torch.float64)
    h, h_last = linear_scan(a, b, h0, backend="reference")
    for t in range(6):
        expected = torch.prod(a[:, : t + 1], dim=1) * h0
        for s in range(t + 1):
            expected = expected + torch.prod(a[:, s + 1 : t + 1], dim=1) * b[:, s]
        torch.testing.assert_close(h[:, t], expected)
    torch.testing.assert_close(h_last, h[:, -1])


@pytest.mark.parametrize("backend", ["reference", "chunked", "parallel"])
def test_two_pieces_with_carried_state_equal_one_scan(backend):
    a, b, h0 = _inputs((2, 29, 5), torch.float32, seed=3)
    h, h_last = linear_scan(a, b, h0, backend=backend)
    h1, mid = linear_scan(a[:, :11], b[:, :11], h0, backend=backend)
    h2, end = linear_scan(a[:, 11:], b[:, 11:], mid, backend=backend)
    torch.testing.assert_close(torch.cat((h1, h2), 1), h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(end, h_last, rtol=1e-5, atol=1e-6)


def test_broadcast_decay_and_zero_decays_are_safe():
    """A time-invariant decay (T axis of size 1) broadcasts; exact zeros reset the state."""
    g = torch.Generator().manual_seed(1)
    b = torch.randn(2, 40, 3, 4, generator=g)
    a = torch.rand(1, 1, 3, 1, generator=g)
    torch.testing.assert_close(
        linear_scan(a, b, backend="chunked", chunk_size=6)[0], linear_scan(a, b, backend="reference")[0]
    )
    a0 = torch.rand(2, 40, 3, 4, generator=g) * 1e-30
    a0[:, ::3] = 0.0
    for h, _ in (linear_scan(a0, b, backend="chunked", chunk_size=7), linear_scan(a0, b, backend="parallel")):
        assert torch.isfinite(h).all()
        torch.testing.assert_close(h, linear_scan(a0, b, backend="reference")[0])
        torch.testing.assert_close(h[:, ::3], b[:, ::3])


def test_empty_sequence_returns_initial_state():
    b = torch.zeros(2, 0, 3)
    h0 = torch.randn(2, 3)
    for backend in ("reference", "chunked", "parallel"):
        h, h_last = linear_scan(b, b, h0, backend=backend)
        assert h.shape == (2, 0, 3)
        torch.testing.assert_close(h_last, h0)


def test_bad_inputs_say_what_was_expected():
    b = torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match="same rank"):
        linear_scan(torch.rand(5, 3), b)
    with pytest.raises(ValueError, match="does not broadcast"):
        linear_scan(torch.rand(2, 5, 4), b)
    with pytest.raises(ValueError, match=r"h0 broadcastable to \(B, \*S\)"):
        linear_scan(torch.rand(2, 5, 3), b, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="unknown linear_scan backend"):
        linear_scan(torch.rand(2, 5, 3), b, backend="cuda")


def _selective_inputs(bsz, t_len, e, n, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(bsz, t_len, e, generator=g)
    delta = torch.nn.functional.softplus(torch.randn(bsz, t_len, e, generator=g) - 1)
    a = -torch.exp(torch.randn(e, n, generator=g))
    b, c = torch.randn(bsz, t_len, n, generator=g), torch.randn(bsz, t_len, n, generator=g)
    d, h0 = torch.randn(e, generator=g), torch.randn(bsz, e, n, generator=g)
    return [t.to(dtype) for t in (u, delta, b, c)], a, d, h0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("block,chunk", [(1024, 32), (20, 7), (45, 1)])
def test_selective_scan_chunked_matches_reference(dtype, block, chunk):
    (u, delta, b, c), a, d, h0 = _selective_inputs(2, 45, 3, 4, dtype)

    def run(backend, cast, **kw):
        leaves = [t.detach().to(cast).requires_grad_() for t in (u, delta, a, b, c, d, h0)]
        y, h = selective_scan(*leaves, backend=backend, **kw)
        w = torch.randn(y.shape, generator=torch.Generator().manual_seed(2))
        ((y.float() * w).sum() + h.float().sum()).backward()
        return [y.detach(), h.detach()] + [t.grad for t in leaves]

    ref = run("reference", torch.float32)
    out = run("chunked", dtype, block=block, chunk_size=chunk)
    assert out[0].dtype == dtype and out[1].dtype == torch.float32
    for x, y in zip(out, ref):
        assert rel_error(x, y) < TOL[dtype]


def test_selective_scan_matches_closed_form_and_carries_state():
    """h_t = sum_s exp(A sum_{r=s+1}^t dt_r) dt_s u_s B_s; two pieces with the state carried = one."""
    (u, delta, b, c), a, d, h0 = _selective_inputs(1, 9, 2, 3, torch.float64, seed=4)
    a = a.double()
    y, h_last = selective_scan(u, delta, a, b, c, None, None, backend="reference")
    for t in range(9):
        h = torch.zeros(2, 3, dtype=torch.float64)
        for s in range(t + 1):
            decay = torch.exp(a * delta[0, s + 1 : t + 1].sum(0)[:, None])
            h = h + decay * (delta[0, s] * u[0, s])[:, None] * b[0, s]
        torch.testing.assert_close(y[0, t], (h * c[0, t]).sum(-1))
    y1, mid = selective_scan(u[:, :4], delta[:, :4], a, b[:, :4], c[:, :4], backend="chunked", chunk_size=3)
    rest = (u[:, 4:], delta[:, 4:], a, b[:, 4:], c[:, 4:])
    y2, end = selective_scan(*rest, h0=mid, backend="chunked", chunk_size=3)
    torch.testing.assert_close(torch.cat((y1, y2), 1), y)
    torch.testing.assert_close(end, h_last)
    with pytest.raises(ValueError, match=r"B of shape \(1, 9, 3\)"):
        selective_scan(u, delta, a, b[..., :2], c)


def _grads_of(backend, leaves, **kw):
    leaves = [t.detach().clone().requires_grad_() for t in leaves]
    y, h = selective_scan(*leaves, backend=backend, **kw)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(5)).to(y.dtype)
    ((y * w).sum() + h.sum()).backward()
    return [y.detach(), h.detach()] + [t.grad for t in leaves]


def test_log_range_is_the_largest_decay_exponent_of_any_chunk():
    (u, delta, b, c), a, d, h0 = _selective_inputs(2, 11, 3, 4, torch.float32, seed=6)
    expected = 0.0
    for start in range(0, 11, 4):  # chunks of 4 from the block start, the last one 3 long
        for t in range(start, min(start + 4, 11)):
            s = a[None] * delta[:, start : t + 1].sum(1)[:, :, None]  # (B, E, N): A sum dt
            expected = max(expected, s.abs().max().item())
    assert log_range(delta, a, 4) == pytest.approx(expected, rel=1e-6)


def test_selective_scan_runs_huge_steps_in_product_form():
    """A block whose chunks decay by more than exp(-LOG_LIMIT) runs in product form (log space
    would overflow), the others in log space; together they equal the loop, gradients too."""
    (u, delta, b, c), a, d, h0 = _selective_inputs(2, 40, 3, 4, torch.float32, seed=7)
    delta[:, 10:20] = 30.0  # |A dt| up to ~100 per step: exp(-S) overflows fp32 beyond ~88
    plan = _plan(delta, a, block=10, chunk_size=5)
    assert [log for _, _, log in plan] == [True, False, True, True]
    ref = _grads_of("reference", (u, delta, a, b, c, d, h0))
    out = _grads_of("chunked", (u, delta, a, b, c, d, h0), block=10, chunk_size=5)
    for x, y in zip(out, ref):
        assert torch.isfinite(x).all()
        assert rel_error(x, y) < 1e-5


def test_log_space_near_its_limit_keeps_fp32_precision():
    """Chunks whose decays reach exp(-55) (terms of the closed-form sum ~1e24 apart) agree with
    a float64 loop as closely as the fp32 loop does."""
    (u, delta, b, c), a, d, h0 = _selective_inputs(1, 64, 4, 4, torch.float64, seed=8)
    a = -torch.linspace(0.5, 8.0, 16, dtype=torch.float64).view(4, 4)
    delta = torch.full_like(delta, 55.0 / (8.0 * 16))  # the steepest channel reaches 55 per 16 steps
    assert LOG_LIMIT - 6 < log_range(delta, a, 16) <= LOG_LIMIT
    truth = _grads_of("reference", (u, delta, a, b, c, d, h0))
    f32 = [t.float() for t in (u, delta, a, b, c, d, h0)]
    loop = _grads_of("reference", f32)
    fast = _grads_of("chunked", f32, chunk_size=16)
    for x, lp, y in zip(fast, loop, truth):
        assert rel_error(x, y) < max(10 * rel_error(lp, y), 1e-6)
