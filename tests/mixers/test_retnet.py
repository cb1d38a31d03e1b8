"""RetNet: conformance of each form, equality of the three forms, an independent layer computation."""

from __future__ import annotations

import os

import torch

# Triton reads TRITON_INTERPRET when it is imported: without CUDA its kernels run interpreted
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from longarena import mixers  # noqa: E402
from longarena.config import ConfigError  # noqa: E402
from longarena.mixers.retnet import RetNetConfig  # noqa: E402
from longarena.testing import check_mixer  # noqa: E402
from longarena.testing.conformance import rel_error  # noqa: E402


def test_retnet_conformance_all_forms():
    """Lists reference (recurrent), parallel and chunked, so ``backends`` compares all three."""
    check_mixer(lambda: mixers.get("retnet", 32, n_heads=4, chunk_size=8), long_len=16384)


def test_retnet_triton_backend_matches_its_reference():
    """Output, state, every gradient, and a second chunk from the reference state, on the
    kernels (interpreted on CPU): T = 70 spans two chunks of 64 and fills neither."""
    pytest.importorskip("triton")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    check_mixer(
        lambda: mixers.get("retnet", 32, n_heads=2, backend="triton"),
        checks=("backends",),
        seq_len=70,
        device=device,
        tolerance={torch.float32: 1e-4, torch.bfloat16: 5e-2},
    )


def test_retnet_conformance_default_chunk_and_custom_decays():
    check_mixer(
        lambda: mixers.get("retnet", 16, n_heads=2, value_factor=1, gammas=(0.5, 0.95)),
        checks=("backends", "chunked", "step"),
        dtypes=(torch.float32,),
    )


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_three_forms_give_the_same_layer_output(dtype, tol):
    torch.manual_seed(0)
    m = mixers.get("retnet", 32, n_heads=4, chunk_size=5)
    x = torch.randn(2, 23, 32)
    with m.use_backend("reference"):
        y_ref, s_ref = m(x)
    m = m.to(dtype)
    for backend in ("parallel", "chunked"):
        with m.use_backend(backend):
            y, s = m(x.to(dtype))
        assert rel_error(y, y_ref) < tol and rel_error(s.s, s_ref.s) < tol
        assert s.position == 23


def test_layer_matches_an_independent_computation():
    """Explicit decay matrix, complex-number rotation, per-head group norm, swish gate."""
    torch.manual_seed(0)
    d, h, t = 8, 2, 7
    m = mixers.get("retnet", d, n_heads=h, value_factor=1, gammas=(0.6, 0.9))
    with torch.no_grad():
        m.norm_weight.uniform_(0.5, 1.5)
        m.norm_bias.uniform_(-0.5, 0.5)
    x = torch.randn(1, t, d)
    y, _ = m(x)
    kd = d // h
    q, k, v, g = (x[0] @ w.weight.T for w in (m.q_proj, m.k_proj, m.v_proj, m.g_proj))
    freqs = 10000.0 ** (-torch.arange(0, kd, 2).double() / kd)
    outs = []
    for head, gamma in enumerate((0.6, 0.9)):
        sl = slice(kd * head, kd * head + kd)
        # rotate-half layout: channel i pairs with i + K/2, read as one complex number
        qc = torch.complex(q[:, sl][:, : kd // 2].double(), q[:, sl][:, kd // 2 :].double())
        kc = torch.complex(k[:, sl][:, : kd // 2].double(), k[:, sl][:, kd // 2 :].double())
        n = torch.arange(t).double()[:, None]
        qc, kc = qc * torch.exp(1j * n * freqs), kc * torch.exp(1j * n * freqs)
        scores = (qc @ kc.conj().T).real / kd**0.5  # (T, T)
        lag = n - n.T
        decay = torch.where(lag >= 0, gamma ** lag.clamp(min=0), torch.zeros(()).double())
        o = (scores * decay) @ v[:, sl].double()
        o = (o - o.mean(-1, keepdim=True)) / torch.sqrt(o.var(-1, unbiased=False, keepdim=True) + 1e-5)
        outs.append(o)
    o = torch.cat(outs, -1).float() * m.norm_weight + m.norm_bias
    expected = (F.silu(g) * o) @ m.out_proj.weight.T
    torch.testing.assert_close(y[0], expected, rtol=1e-4, atol=1e-4)


def test_state_is_constant_size_and_step_is_constant_time():
    m = mixers.get("retnet", 32, n_heads=4)
    assert m.state_size(10) == m.state_size(100_000) == 4 * 8 * 16
    state = m.init_state(2)
    for _ in range(3):
        _, state = m.step(torch.randn(2, 32), state)
    assert state.s.shape == (2, 4, 8, 16) and state.position == 3


def test_config_round_trip_and_bad_configs():
    config = mixers.make_config("retnet", 32, n_heads=2, gammas=(0.9, 0.99))
    assert RetNetConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match=r"in \(0, 1\)"):
        mixers.get("retnet", 32, n_heads=2, gammas=(0.9, 1.0))
    with pytest.raises(ConfigError, match="one decay per head"):
        mixers.get("retnet", 32, n_heads=4, gammas=(0.9, 0.99))
    with pytest.raises(ConfigError, match="must be even"):
        mixers.get("retnet", 12, n_heads=4)
    with pytest.raises(ConfigError, match="chunk_size"):
        mixers.get("retnet", 32, chunk_size=0)
