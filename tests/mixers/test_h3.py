"""H3: conformance, an explicit loop over heads and SSM modes, ZOH parameters, errors, learning."""

from __future__ import annotations


import pytest
import torch

from longarena import mixers
from longarena.config import ConfigError
from longarena.mixers.h3 import H3Config
from longarena.testing import check_mixer
from tests.mixers.test_hyena import train_recall



def bf16_exact(m):
    """Round the weights to bf16 values, so the suite's fp32 reference and its bf16 copy hold
    the same weights (an SSM's step size rounded to bf16 moves its decays by ~1%)."""
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(p.bfloat16().float())
    return m


@pytest.mark.parametrize("config", [dict(head_dim=1, d_state=8), dict(head_dim=4, d_state=4, shift_size=2)], ids=["h3", "multihead"])
def test_h3_conformance(config):
    check_mixer(lambda: bf16_exact(mixers.get("h3", 16, **config)), long_len=16384)


def test_matches_an_explicit_loop_over_heads_entries_and_modes():
    torch.manual_seed(0)
    d, kd, t = 4, 2, 6
    m = mixers.get("h3", d, head_dim=kd, d_state=4, shift_size=3)
    x = torch.randn(1, t, d)
    y, _ = m(x)
    q, k, v = (x[0] @ m.qkv_proj.weight.T + m.qkv_proj.bias).chunk(3, dim=-1)
    w = m.shift_kernel.detach()
    kbar = torch.stack([sum(w[:, i] * k[s - i] for i in range(3) if s - i >= 0) for s in range(t)])
    # zero-order hold of dx/dt = A x + u with A = -exp(log_neg_a_real) + i a_imag, step dt
    dt = m.log_dt.exp().double()
    a_cont = torch.complex(-m.log_neg_a_real.double().exp(), m.a_imag.double())  # (H, N/2)
    a_bar = torch.exp(dt[:, None] * a_cont)
    b_bar = (a_bar - 1) / a_cont
    c = torch.view_as_complex(m.c.double().contiguous())
    o = torch.zeros(t, d, dtype=torch.float64)
    for h in range(d // kd):
        sl = slice(h * kd, h * kd + kd)
        for i in range(kd):
            for j in range(kd):
                s = torch.zeros(2, dtype=torch.complex128)
                for step in range(t):
                    u = kbar[step, sl][i].double() * v[step, sl][j].double()
                    s = a_bar[h] * s + b_bar[h] * u
                    y_ij = 2 * (c[h] * s).sum().real + m.skip[h].double() * u
                    o[step, h * kd + j] += q[step, sl][i].double() * y_ij
    expected = o.float() @ m.out_proj.weight.T + m.out_proj.bias
    torch.testing.assert_close(y[0], expected, rtol=1e-4, atol=1e-5)


def test_fft_path_equals_the_recurrence_past_the_direct_cutoff():
    torch.manual_seed(0)
    m = mixers.get("h3", 8, head_dim=2, d_state=8)
    x = torch.randn(2, 150, 8)
    with m.use_backend("reference"):
        y_ref, s_ref = m(x)
    y, s = m(x)  # auto: FFT convolution at this length
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(s.ssm, s_ref.ssm, rtol=1e-4, atol=1e-5)


def test_state_size_is_constant():
    m = mixers.get("h3", 16, head_dim=4, d_state=8, shift_size=4)
    assert m.state_size(10) == m.state_size(10**6) == 3 * 16 + 4 * 16 * 4 * 2


def test_config_round_trip_and_bad_configs():
    config = mixers.make_config("h3", 16, head_dim=4)
    assert H3Config.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="multiple of head_dim"):
        mixers.get("h3", 16, head_dim=3)
    with pytest.raises(ConfigError, match="even"):
        mixers.get("h3", 16, d_state=5)
    with pytest.raises(ConfigError, match="dt_min <= dt_max"):
        mixers.get("h3", 16, dt_min=0.1, dt_max=0.01)
    with pytest.raises(ConfigError, match="shift_size"):
        mixers.get("h3", 16, shift_size=0)


def test_recall_training_runs_and_lowers_the_loss():
    """Fast stand-in for the slow learning test: same helper, same code paths, a few steps."""
    accuracy, first, last = train_recall("h3", dict(head_dim=4, d_state=8, backend="fft"), steps=30, d_model=16, batch_size=8)
    assert 0.0 <= accuracy <= 1.0 and last < first


@pytest.mark.slow
def test_multihead_h3_solves_associative_recall_where_s4d_does_not():
    accuracy, _, _ = train_recall("h3", dict(head_dim=4, d_state=8, backend="fft"), steps=300)
    assert accuracy >= 0.9
    if "s4d" not in mixers.names():
        pytest.skip(f"no 's4d' mixer to compare with (h3 reached {accuracy:.1%})")
    baseline, _, _ = train_recall("s4d", {}, steps=300)
    assert baseline < 0.6, f"a same-size S4D model reached {baseline:.1%} on recall"
