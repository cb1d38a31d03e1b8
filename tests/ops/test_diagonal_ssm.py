"""Diagonal SSM op: the convolution form equals the recurrence, the kernel equals its definition."""

from __future__ import annotations

import pytest
import torch

from longarena.ops.linear_attn import diagonal_ssm as dssm
from longarena.ops.linear_attn.diagonal_ssm import diagonal_ssm, diagonal_ssm_kernel, diagonal_ssm_step
from longarena.testing.conformance import rel_error


def _params(complex_: bool, d=3, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    if complex_:
        log_a = torch.complex(-torch.rand(d, n, generator=g) * 0.3 - 0.01, torch.randn(d, n, generator=g))
        b = torch.complex(torch.randn(d, n, generator=g), torch.randn(d, n, generator=g))
        c = torch.complex(torch.randn(d, n, generator=g), torch.randn(d, n, generator=g))
    else:
        log_a = torch.log(torch.rand(d, n, generator=g) * 0.9 + 0.05)
        b, c = torch.randn(d, n, generator=g), torch.randn(d, n, generator=g)
    return log_a, b, c


@pytest.mark.parametrize("complex_", [False, True])
def test_kernel_is_re_sum_of_c_b_a_to_the_s(complex_):
    log_a, b, c = _params(complex_)
    k = diagonal_ssm_kernel(log_a, b, c, 9)
    a = torch.exp(log_a.to(torch.complex128))
    for s in range(9):
        expected = (c.to(torch.complex128) * b.to(torch.complex128) * a**s).sum(-1).real
        torch.testing.assert_close(k[:, s].double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("complex_", [False, True])
@pytest.mark.parametrize("backend", ["reference", "direct", "fft"])
def test_conv_form_equals_the_recurrence_with_state_and_gradients(complex_, backend, monkeypatch):
    # small blocks so that the blocked power sums cross block boundaries
    monkeypatch.setattr(dssm, "BLOCK", 4)
    log_a, b, c = _params(complex_)
    g = torch.Generator().manual_seed(1)
    u = torch.randn(2, 11, 3, generator=g)
    h0 = torch.randn(2, 3, 4, generator=g).to(log_a.dtype if complex_ else torch.float32)
    if complex_:
        h0 = h0 + 1j * torch.randn(2, 3, 4, generator=g)
    results = []
    for mode, be in (("scan", "reference"), ("conv", backend)):
        leaves = [x.clone().requires_grad_(True) for x in (u, log_a, b, c, h0)]
        y, h = diagonal_ssm(*leaves[:4], leaves[4], mode=mode, backend=be)
        w = torch.randn(y.shape, generator=torch.Generator().manual_seed(2))
        ((y * w).sum() + torch.view_as_real(h.to(torch.complex64)).square().sum()).backward()
        results.append((y, h, [x.grad for x in leaves]))
    (y0, h0_, g0), (y1, h1, g1) = results
    assert rel_error(y1, y0) < 1e-5
    assert rel_error(torch.view_as_real(h1.to(torch.complex64)), torch.view_as_real(h0_.to(torch.complex64))) < 1e-5
    for a, b_ in zip(g0, g1):
        if a.is_complex():
            a, b_ = torch.view_as_real(a), torch.view_as_real(b_)
        assert rel_error(b_, a) < 1e-4


def test_recurrence_matches_a_hand_loop_and_steps_continue_it():
    log_a, b, c = _params(False, d=2, n=3)
    u = torch.randn(1, 6, 2)
    y, h = diagonal_ssm(u, log_a, b, c, mode="conv", backend="reference")
    state = torch.zeros(2, 3)
    for t in range(6):
        state = torch.exp(log_a) * state + b * u[0, t, :, None]
        torch.testing.assert_close(y[0, t], (c * state).sum(-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h[0], state, rtol=1e-5, atol=1e-5)
    y_a, h_a = diagonal_ssm(u[:, :4], log_a, b, c)
    y_t, h_b = diagonal_ssm_step(u[:, 4], log_a, b, c, h_a)
    y_t2, h_c = diagonal_ssm_step(u[:, 5], log_a, b, c, h_b)
    torch.testing.assert_close(torch.stack((y_t, y_t2), 1), y[:, 4:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h_c, h, rtol=1e-5, atol=1e-5)


def test_bad_shapes_and_modes_are_named():
    log_a, b, c = _params(False)
    with pytest.raises(ValueError, match=r"\(G, N\) with G dividing D = 5"):
        diagonal_ssm(torch.randn(1, 4, 5), log_a, b, c)
    with pytest.raises(ValueError, match="mode"):
        diagonal_ssm(torch.randn(1, 4, 3), log_a, b, c, mode="parallel")


@pytest.mark.parametrize("mode", ["scan", "conv"])
def test_shared_parameter_rows_equal_repeated_rows(mode):
    """Parameters (G, N) serve D / G consecutive channels each, as if repeated to (D, N)."""
    log_a, b, c = _params(True, d=2, n=3)
    u = torch.randn(2, 9, 6)
    h0 = torch.randn(2, 6, 3, dtype=torch.complex64)
    y, h = diagonal_ssm(u, log_a, b, c, h0, mode=mode)
    rep = [p.repeat_interleave(3, dim=0) for p in (log_a, b, c)]
    y_full, h_full = diagonal_ssm(u, *rep, h0, mode=mode)
    torch.testing.assert_close(y, y_full)
    torch.testing.assert_close(h, h_full)
    y_t, h_t = diagonal_ssm_step(u[:, 0], log_a, b, c, h0)
    y_t_full, _ = diagonal_ssm_step(u[:, 0], *rep, h0)
    torch.testing.assert_close(y_t, y_t_full)
