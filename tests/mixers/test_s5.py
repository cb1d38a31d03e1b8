"""S5: conformance, equality with the real MIMO system it diagonalises, HiPPO-N spectrum, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longarena import mixers
from longarena.config import ConfigError
from longarena.mixers.base import MixerInputError
from longarena.testing import check_mixer
from tests.mixers.first_token import train_first_token


@pytest.mark.parametrize(
    "config",
    [dict(d_state=16), dict(d_state=16, blocks=2, discretization="bilinear"), dict(d_state=16, causal=False)],
    ids=["hippo-n-zoh", "2-blocks-bilinear", "bidirectional"],
)
def test_conformance(config):
    assert check_mixer(lambda: mixers.get("s5", 16, **config), long_len=16384).ok


def _hippo_n(p):
    """The normal part of HiPPO-LegS from its definition: -1/2 on the diagonal,
    -+sqrt((n+1/2)(k+1/2)) below/above it."""
    a = torch.zeros(p, p, dtype=torch.float64)
    for n in range(p):
        for k in range(p):
            s = ((n + 0.5) * (k + 0.5)) ** 0.5
            a[n, k] = -0.5 if n == k else (-s if n > k else s)
    return a


def test_init_spectrum_is_hippo_n_with_conjugate_symmetry():
    m = mixers.get("s5", 4, d_state=8)
    lam = torch.complex(-torch.exp(m.log_neg_re.double()), m.lam_im.double())
    ev = torch.linalg.eigvals(_hippo_n(8))
    upper = ev[ev.imag > 0]
    torch.testing.assert_close(
        torch.sort(lam.imag).values, torch.sort(upper.imag).values, rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(lam.real, torch.full_like(lam.real, -0.5))


def test_matches_the_real_mimo_system_it_diagonalises():
    """Put a real (A, B, C) into the diagonal basis by hand; the layer must equal the real system
    run with a matrix exponential, one step at a time, in float64."""
    torch.manual_seed(0)
    p, h, t = 6, 3, 40
    m = mixers.get("s5", h, d_state=p)
    a = _hippo_n(p)
    b, c = torch.randn(p, h, dtype=torch.float64), torch.randn(h, p, dtype=torch.float64)
    ev, v = torch.linalg.eig(a)
    keep = ev.imag > 0
    lam, v_half = ev[keep], v[:, keep]
    v_inv = torch.linalg.inv(v)[keep]  # rows of V^-1 for the kept modes
    dt = 0.05
    with torch.no_grad():
        m.log_neg_re.copy_(torch.log(-lam.real))
        m.lam_im.copy_(lam.imag)
        m.b.copy_(torch.view_as_real(v_inv @ b.to(torch.complex128)))
        m.c.copy_(torch.view_as_real(c.to(torch.complex128) @ v_half))
        m.log_dt.fill_(torch.log(torch.tensor(dt)).item())
    u = torch.randn(1, t, h, dtype=torch.float64)
    abar = torch.linalg.matrix_exp(dt * a)
    bbar = torch.linalg.solve(a, abar - torch.eye(p, dtype=torch.float64)) @ b
    x, ys = torch.zeros(p, dtype=torch.float64), []
    for s in range(t):
        x = abar @ x + bbar @ u[0, s]
        ys.append(c @ x + m.d.double() * u[0, s])
    expected = m.out_proj(F.gelu(torch.stack(ys)).float())
    y, _ = m(u.float())
    torch.testing.assert_close(y[0], expected, rtol=1e-4, atol=1e-4)


def test_bidirectional_adds_a_backward_scan_read_by_its_own_c():
    """y = forward part + the causal layer's SSM run on the reversed sequence with C[1]."""
    torch.manual_seed(0)
    bi = mixers.get("s5", 4, d_state=8, causal=False)
    x = torch.randn(1, 30, 4)
    lam_bar, b_bar, c = bi.discrete()
    u = x[0].to(torch.complex64)
    h_f, h_b = torch.zeros(4, dtype=torch.complex64), torch.zeros(4, dtype=torch.complex64)
    fwd, bwd = [], []
    for t in range(30):
        h_f = lam_bar * h_f + b_bar @ u[t]
        h_b = lam_bar * h_b + b_bar @ u[29 - t]
        fwd.append(2 * (c[0] @ h_f).real)
        bwd.append(2 * (c[1] @ h_b).real)
    ssm = torch.stack(fwd) + torch.stack(bwd[::-1]) + bi.d * x[0]
    y, state = bi(x)
    assert state is None
    torch.testing.assert_close(y[0], bi.out_proj(F.gelu(ssm)), rtol=1e-4, atol=1e-5)


def test_long_input_is_finite_at_64k():
    m = mixers.get("s5", 8, d_state=16)
    with torch.no_grad():
        y, state = m(torch.randn(1, 65536, 8))
    assert torch.isfinite(y).all() and torch.isfinite(torch.view_as_real(state)).all()


def test_padding_mask_holds_the_state():
    torch.manual_seed(0)
    m = mixers.get("s5", 8, d_state=8)
    x = torch.randn(1, 10, 8)
    mask = torch.ones(1, 10, dtype=torch.bool)
    mask[:, 6:] = False
    _, s_masked = m(x, mask=mask)
    _, s_short = m(x[:, :6])
    torch.testing.assert_close(s_masked, s_short)


def test_bad_configs_and_states_say_what_was_expected():
    with pytest.raises(ConfigError, match="multiple of 2 \\* blocks"):
        mixers.get("s5", 8, d_state=12, blocks=4)
    with pytest.raises(ConfigError, match="dt_min"):
        mixers.get("s5", 8, dt_min=-1e-3)
    with pytest.raises(ConfigError, match="discretization"):
        mixers.get("s5", 8, discretization="euler")
    m = mixers.get("s5", 8, d_state=8)
    with pytest.raises(MixerInputError, match=r"\(B, P/2\) = \(2, 4\)"):
        m.step(torch.randn(2, 8), torch.zeros(2, 8, dtype=torch.complex64))




@pytest.mark.slow
def test_s5_remembers_the_first_token_of_1024():
    """~1.5 min on a contended CPU; the loss leaves chance level near step 550, recorded 100 %."""
    assert train_first_token("s5", 1000, d_state=16, dt_min=1e-3, dt_max=1e-2) >= 0.95
