"""S4 (DPLR) and S4D: conformance, kernels against explicit matrix powers, FFT vs recurrence, errors."""

from __future__ import annotations

import math

import pytest
import torch

from longarena import mixers
from longarena.config import ConfigError
from longarena.mixers.base import MixerInputError
from longarena.mixers.s4 import S4Config
from longarena.testing import check_mixer
from tests.mixers.first_token import train_first_token


@pytest.mark.parametrize(
    "name,config",
    [
        ("s4", dict(d_state=8)),
        ("s4d", dict(d_state=8)),
        ("s4d", dict(d_state=8, init="lin", discretization="bilinear")),
        ("s4", dict(d_state=8, causal=False)),
        ("s4d", dict(d_state=8, causal=False)),
        ("s4d", dict(d_state=8, output="glu")),
    ],
    ids=["s4-dplr", "s4d-legs-zoh", "s4d-lin-bilinear", "s4-bidirectional", "s4d-bidirectional", "s4d-glu"],
)
def test_conformance(name, config):
    report = check_mixer(lambda: mixers.get(name, 16, **config), long_len=16384)
    assert report.ok


def _legs(n):
    """HiPPO-LegS written from its definition, independently of the library's builder."""
    a = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for k in range(n):
            if i > k:
                a[i, k] = -math.sqrt((2 * i + 1) * (2 * k + 1))
            elif i == k:
                a[i, k] = -(i + 1)
    b = torch.tensor([math.sqrt(2 * i + 1) for i in range(n)], dtype=torch.float64)
    return a, b


def _explicit_kernel(abar, bbar, c, length):
    """K_l = Re(C Abar^l Bbar) by repeated multiplication, float64/complex128."""
    out, v = [], bbar.clone()
    for _ in range(length):
        out.append((c * v).sum(-1).real)
        v = (abar @ v[..., None])[..., 0] if abar.dim() == 3 else abar * v
    return torch.stack(out, dim=-1)


def _perturbed(name, **config):
    """A mixer whose parameters were moved off their init, so the check is not init-specific."""
    torch.manual_seed(0)
    m = mixers.get(name, 3, **config)
    with torch.no_grad():
        for p in (m.log_neg_re, m.lam_im, m.b, m.c, m.log_dt):
            p.add_(0.05 * torch.randn_like(p))
        if m.p is not None:
            m.p.add_(0.05 * torch.randn_like(m.p))
    return m


def test_dplr_cauchy_kernel_equals_powers_of_the_bilinear_matrix():
    m = _perturbed("s4", d_state=8)
    length = 50
    lam = m.eigenvalues().to(torch.complex128)
    p = torch.view_as_complex(m.p.detach().double())
    b = torch.view_as_complex(m.b.detach().double())
    c = torch.view_as_complex(m.c.detach().double())[0]
    full = lambda v: torch.cat((v, v.conj()), -1)  # noqa: E731
    a = torch.diag_embed(full(lam)) - full(p)[:, :, None] * full(p).conj()[:, None, :]
    dt = torch.exp(m.log_dt.detach().double())[:, None, None]
    eye = torch.eye(8, dtype=torch.complex128)
    inv = torch.linalg.inv(eye - dt / 2 * a)
    abar, bbar = inv @ (eye + dt / 2 * a), (inv @ (dt * full(b)[..., None]))[..., 0]
    expected = _explicit_kernel(abar, bbar, full(c), length)
    got = m.kernel(length)[0].double()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
def test_s4d_vandermonde_kernel_equals_powers_of_the_diagonal(disc):
    m = _perturbed("s4d", d_state=8, discretization=disc)
    lam = m.eigenvalues().to(torch.complex128)
    b = torch.view_as_complex(m.b.detach().double())
    c = torch.view_as_complex(m.c.detach().double())[0]
    dt = torch.exp(m.log_dt.detach().double())[:, None]
    if disc == "zoh":
        abar = torch.exp(dt * lam)
        bbar = (abar - 1) / lam * b
    else:
        abar = (1 + dt / 2 * lam) / (1 - dt / 2 * lam)
        bbar = dt * b / (1 - dt / 2 * lam)
    expected = 2 * _explicit_kernel(abar, bbar, c, 200)
    got = m.kernel(200)[0].double()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


def test_dplr_init_is_hippo_legs_up_to_a_unitary_change_of_basis():
    """Same spectrum as HiPPO-LegS, and same B and P norms (a unitary basis change keeps both)."""
    n = 8
    m = mixers.get("s4", 2, d_state=n)
    a_legs, b_legs = _legs(n)
    a_full = m.dense_a()[0].to(torch.complex128)
    trace_legs = torch.tensor(a_legs.trace().item() + 0j, dtype=torch.complex128)
    torch.testing.assert_close(a_full.trace(), trace_legs, rtol=1e-5, atol=1e-4)
    ev = torch.linalg.eigvals(a_full)
    ev_legs = torch.linalg.eigvals(a_legs.to(torch.complex128))
    key = lambda e: torch.sort(e.real * 1000 + e.imag).values  # noqa: E731
    torch.testing.assert_close(key(ev), key(ev_legs), rtol=1e-3, atol=1e-3)
    b = torch.view_as_complex(m.b[0].detach().double())
    assert abs(2 * (b.abs() ** 2).sum().item() - (b_legs**2).sum().item()) < 1e-3


@pytest.mark.parametrize("name", ["s4", "s4d"])
def test_fft_convolution_equals_the_unrolled_recurrence_with_state(name):
    """At 150 tokens (FFT path) and with a state carried in: conv mode == recurrent mode."""
    torch.manual_seed(1)
    m = mixers.get(name, 4, d_state=8)
    x = torch.randn(2, 150, 4)
    _, state = m(torch.randn(2, 20, 4))
    y_conv, s_conv = m(x, state=state)
    with m.use_backend("reference"):
        y_rec, s_rec = m(x, state=state)
    torch.testing.assert_close(y_conv, y_rec, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(s_conv, s_rec, rtol=1e-4, atol=1e-5)


def test_bidirectional_sees_the_future_and_counts_each_input_once():
    torch.manual_seed(0)
    m = mixers.get("s4d", 4, d_state=8, causal=False)
    x = torch.randn(1, 100, 4, requires_grad=True)
    y, state = m(x)
    assert state is None
    y[0, 10].sum().backward()
    assert x.grad[0, 11:].abs().sum() > 0  # depends on later inputs
    with m.use_backend("reference"):
        y_ref, _ = m(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)


def test_parameters_stay_fp32_under_a_bf16_cast():
    m = mixers.get("s4", 8, d_state=8).to(torch.bfloat16)
    assert m.log_dt.dtype == torch.float32 and m.lam_im.dtype == torch.float32
    assert m.out_proj.weight.dtype == torch.bfloat16
    y, state = m(torch.randn(1, 5, 8, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and state.dtype == torch.complex64


def test_long_input_is_finite_at_64k():
    for name in ("s4", "s4d"):
        m = mixers.get(name, 4, d_state=8)
        with torch.no_grad():
            y, _ = m(torch.randn(1, 65536, 4))
        assert torch.isfinite(y).all()


def test_state_size_and_config_round_trip():
    m = mixers.get("s4d", 16, d_state=32)
    assert m.state_size(10) == m.state_size(10_000) == 16 * 32
    config = mixers.make_config("s4", 16, d_state=16, causal=False)
    assert S4Config.from_dict(config.to_dict()) == config


def test_bad_configs_and_states_say_what_was_expected():
    with pytest.raises(ConfigError, match="bilinear"):
        mixers.get("s4", 8, discretization="zoh")
    with pytest.raises(ConfigError, match="even int"):
        mixers.get("s4d", 8, d_state=7)
    with pytest.raises(ConfigError, match="dt_min"):
        mixers.get("s4d", 8, dt_min=0.0)
    with pytest.raises(ConfigError, match="dt_min"):
        mixers.get("s4", 8, dt_min=float("nan"))
    with pytest.raises(ConfigError, match="init must be 'legs'"):
        mixers.get("s4", 8, init="lin")
    with pytest.raises(ConfigError, match="output must be 'linear' or 'glu'"):
        mixers.get("s4", 8, output="gelu")
    m = mixers.get("s4d", 8, d_state=8)
    other = mixers.get("s4d", 8, d_state=16).init_state(2)
    with pytest.raises(MixerInputError, match=r"\(B, H, N/2\) = \(2, 8, 4\)"):
        m.step(torch.randn(2, 8), other)
    with pytest.raises(MixerInputError, match="non-causal"):
        mixers.get("s4d", 8, causal=False).step(torch.randn(2, 8), m.init_state(2))


@pytest.mark.slow
def test_s4_remembers_the_first_token_of_1024():
    """~2 min on a contended CPU; the loss leaves chance level near step 450, recorded 100 %."""
    assert train_first_token("s4", 700, d_state=16, dt_min=1e-3, dt_max=1e-2) >= 0.95


def test_dplr_step_cache_follows_parameter_updates():
    """Decoding caches the discretised matrices under no_grad; an in-place update must show."""
    torch.manual_seed(0)
    m = mixers.get("s4", 4, d_state=8)
    x = torch.randn(1, 4)
    with torch.no_grad():
        y1, _ = m.step(x, m.init_state(1))
        m.log_dt.add_(1.0)
        y2, _ = m.step(x, m.init_state(1))
        y_full, _ = m(x[:, None])
    torch.testing.assert_close(y2, y_full[:, 0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(y1, y2)


@pytest.mark.parametrize("name", ["s4", "s4d"])
def test_time_blocked_tables_equal_the_recurrence(name, monkeypatch):
    """Powers / Krylov columns are built per block of TIME_BLOCK steps; with tiny blocks
    (several, the last one partial) the conv path still equals the recurrence."""
    from longarena.mixers import s4 as s4_module

    monkeypatch.setattr(s4_module, "TIME_BLOCK", 7)
    torch.manual_seed(0)
    m = mixers.get(name, 4, d_state=8)
    _, state = m(torch.randn(2, 5, 4))
    x = torch.randn(2, 40, 4)
    y, s = m(x, state=state)
    with m.use_backend("reference"):
        y_ref, s_ref = m(x, state=state)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(s, s_ref, rtol=1e-4, atol=1e-5)


def test_glu_output_gates_half_the_projection_by_the_other():
    """output='glu': out = a * sigmoid(b) for [a, b] = W gelu(y + D u) + bias, checked by hand."""
    torch.manual_seed(0)
    m = mixers.get("s4d", 6, d_state=4, output="glu")
    x = torch.randn(2, 5, 6)
    out, _ = m(x)
    with torch.no_grad():
        inner = m.kernel(5)[0]  # (H, T): the causal kernel
        y = torch.stack([sum(inner[:, j] * x[:, t - j] for j in range(t + 1)) for t in range(5)], dim=1)
        z = torch.nn.functional.gelu(y + m.d * x) @ m.out_proj.weight.T + m.out_proj.bias
    assert m.out_proj.weight.shape == (12, 6)
    torch.testing.assert_close(out, z[..., :6] * torch.sigmoid(z[..., 6:]), atol=1e-5, rtol=1e-5)
