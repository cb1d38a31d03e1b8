"""Mamba-2: conformance of every form, the Triton path against the loop, an independent layer computation."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from longarena import mixers  # noqa: E402
from longarena.config import ConfigError  # noqa: E402
from longarena.testing import check_mixer  # noqa: E402
from longarena.testing.conformance import rel_error  # noqa: E402

SMALL = {"d_state": 8, "head_dim": 8, "expand": 2}


def test_mamba2_conformance():
    assert check_mixer(lambda: mixers.get("mamba2", 16, **SMALL), long_len=16384).ok


def test_mamba2_conformance_with_groups():
    check_mixer(
        lambda: mixers.get("mamba2", 16, d_state=4, head_dim=4, n_groups=2, d_conv=3),
        checks=("backends", "chunked", "step", "causality"),
        dtypes=(torch.float32,),
    )


def test_mamba2_triton_backend_matches_its_reference():
    """Output, state, every gradient, and a second chunk from the reference state, on the
    kernels (interpreted on CPU): T = 70 spans two chunks of 64 and fills neither."""
    pytest.importorskip("triton")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    check_mixer(
        lambda: mixers.get("mamba2", 16, **SMALL, backend="triton"),
        checks=("backends",),
        seq_len=70,
        device=device,
        tolerance={torch.float32: 1e-4, torch.bfloat16: 5e-2},
    )


def test_layer_matches_an_independent_computation():
    """The SSD recurrence written out per head with explicit (N, P) states and group sharing."""
    torch.manual_seed(0)
    d, t = 8, 9
    m = mixers.get("mamba2", d, d_state=3, head_dim=4, n_groups=2, d_conv=2)
    with torch.no_grad():
        m.norm_weight.uniform_(0.5, 1.5)
        m.D.uniform_(-1, 1)
    x = torch.randn(1, t, d)
    y, _ = m(x)
    e, h, n, p = 16, 4, 3, 4
    proj = x[0] @ m.in_proj.weight.T  # (T, E + conv + H)
    z, xbc, dt = proj[:, :e], proj[:, e : e + e + 2 * 2 * n], proj[:, -h:]
    padded = torch.cat((torch.zeros(1, xbc.shape[1]), xbc))  # one zero step: k - 1 = 1
    w = m.conv1d.weight[:, 0]  # (channels, 2)
    conv = F.silu(padded[:-1] * w[:, 0] + padded[1:] * w[:, 1] + m.conv1d.bias)
    xs, bs, cs = conv[:, :e], conv[:, e : e + 2 * n], conv[:, e + 2 * n :]
    dt = F.softplus(dt + m.dt_bias)
    a = -torch.exp(m.A_log)
    ys = torch.zeros(t, e)
    for head in range(h):
        grp = head // 2  # 4 heads in 2 groups
        s = torch.zeros(n, p)
        for i in range(t):
            xh = xs[i, head * p : (head + 1) * p]
            bh, ch = bs[i, grp * n : (grp + 1) * n], cs[i, grp * n : (grp + 1) * n]
            s = torch.exp(dt[i, head] * a[head]) * s + torch.outer(bh, dt[i, head] * xh)
            ys[i, head * p : (head + 1) * p] = ch @ s + m.D[head] * xh
    gated = ys * F.silu(z)
    normed = gated / torch.sqrt(gated.square().mean(-1, keepdim=True) + 1e-5) * m.norm_weight
    expected = normed @ m.out_proj.weight.T
    assert rel_error(y[0], expected) < 1e-5


def test_state_size_and_bad_configs():
    m = mixers.get("mamba2", 16, d_state=8, head_dim=8)  # E 32, H 4, conv channels 32 + 16
    assert m.state_size(10) == m.state_size(10_000) == 48 * 3 + 4 * 8 * 8
    with pytest.raises(ConfigError, match="multiple of head_dim"):
        mixers.get("mamba2", 16, head_dim=12)
    with pytest.raises(ConfigError, match="n_groups"):
        mixers.get("mamba2", 16, head_dim=8, n_groups=3)
    with pytest.raises(ConfigError, match="dt_min"):
        mixers.get("mamba2", 16, head_dim=8, dt_min=0.0)
