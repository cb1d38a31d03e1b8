"""Linformer: conformance, exactness with identity projections, a hand-written projection
check, sharing modes, the length limit and clear errors."""

from __future__ import annotations

import math

import pytest
import torch

from longarena import mixers
from longarena.config import ConfigError
from longarena.mixers.base import MixerInputError
from longarena.mixers.linformer import LengthProjection, Linformer, LinformerConfig, share_layerwise
from longarena.testing import check_mixer


def test_linformer_conformance_long():
    report = check_mixer(
        lambda: mixers.get("linformer", 16, n_heads=2, proj_len=8, max_len=16384), long_len=16384
    )
    assert "padding/bfloat16" in report.passed and "backends/bfloat16" in report.passed
    assert not mixers.get("linformer", 16).causal


@pytest.mark.parametrize("sharing", ["none", "kv"])
def test_linformer_conformance_sharing_modes(sharing):
    check_mixer(
        lambda: mixers.get("linformer", 16, n_heads=2, proj_len=8, max_len=32, sharing=sharing),
        long_len=32,
        checks=("backends", "batch", "padding", "long"),
    )


@pytest.mark.parametrize("sharing", ["none", "headwise", "kv"])
def test_identity_projections_with_k_equal_to_t_give_exact_attention(sharing):
    torch.manual_seed(0)
    t = 12
    m = mixers.get("linformer", 16, n_heads=2, proj_len=t, max_len=t, sharing=sharing)
    with torch.no_grad():
        m.projection.weight.copy_(torch.eye(t).expand_as(m.projection.weight))
    exact = mixers.get("attention", 16, n_heads=2, causal=False, position="none")
    exact.load_state_dict({"q_proj.weight": m.q_proj.weight, "kv_proj.weight": m.kv_proj.weight,
                           "out_proj.weight": m.out_proj.weight})
    x = torch.randn(2, t, 16)
    with torch.no_grad():
        torch.testing.assert_close(m(x)[0], exact(x)[0], rtol=1e-5, atol=1e-5)


def test_matches_hand_written_per_head_projections():
    """sharing='none': head h attends with softmax(Q_h (E_h K_h)ᵀ / √K) (F_h V_h)."""
    torch.manual_seed(0)
    h, dk, t, k = 2, 4, 7, 3
    m = mixers.get("linformer", h * dk, n_heads=h, proj_len=k, max_len=10, sharing="none")
    x = torch.randn(1, t, h * dk)
    with torch.no_grad():
        y, _ = m(x)
        q = x[0] @ m.q_proj.weight.T
        keys, values = (x[0] @ m.kv_proj.weight.T).chunk(2, dim=-1)
        heads = []
        for i in range(h):
            cols = slice(i * dk, (i + 1) * dk)
            e = m.projection.weight[i, :, :t]  # E_i uses the first T columns
            f = m.projection.weight[h + i, :, :t]
            scores = q[:, cols] @ (e @ keys[:, cols]).T / math.sqrt(dk)
            heads.append(torch.softmax(scores, -1) @ (f @ values[:, cols]))
        expected = torch.cat(heads, -1) @ m.out_proj.weight.T
    torch.testing.assert_close(y[0], expected, rtol=1e-5, atol=1e-5)


def test_parameter_count_follows_the_sharing_mode():
    counts = {
        s: mixers.get("linformer", 16, n_heads=4, proj_len=8, max_len=32, sharing=s).projection.weight.numel()
        for s in ("none", "headwise", "kv")
    }
    assert counts == {"none": 8 * 8 * 32, "headwise": 2 * 8 * 32, "kv": 8 * 32}


def test_layerwise_sharing():
    config = LinformerConfig(d_model=16, n_heads=2, proj_len=4, max_len=20, sharing="kv")
    shared = LengthProjection(2, 4, 20, "kv")
    layers = torch.nn.ModuleList(Linformer(config, projection=shared) for _ in range(3))
    assert all(layer.projection is shared for layer in layers)
    # the shared matrix is counted (and trained) once
    assert sum(p.numel() for p in layers.parameters()) == 3 * 4 * 16 * 16 + 4 * 20

    separate = [Linformer(config) for _ in range(2)]
    tied = share_layerwise(separate)
    assert separate[1].projection is tied is separate[0].projection
    with pytest.raises(ConfigError, match="max_len 20 cannot serve a layer of max_len 40"):
        Linformer(config.replace(max_len=40), projection=shared)


def test_too_long_sequences_are_refused():
    m = mixers.get("linformer", 16, n_heads=2, proj_len=4, max_len=8)
    m(torch.randn(1, 8, 16))
    m(torch.randn(1, 3, 16))  # shorter sequences use the first T columns
    with pytest.raises(MixerInputError, match="at most max_len = 8 tokens.*T = 9"):
        m(torch.randn(1, 9, 16))


def test_bad_configs_and_state_say_what_was_expected():
    with pytest.raises(ConfigError, match="proj_len"):
        mixers.get("linformer", 16, proj_len=0)
    with pytest.raises(ConfigError, match="sharing must be one of"):
        mixers.get("linformer", 16, sharing="layer")
    m = mixers.get("linformer", 16, n_heads=2, max_len=8)
    with pytest.raises(MixerInputError, match="non-causal"):
        m(torch.randn(1, 4, 16), state=object())
    with pytest.raises(MixerInputError, match="non-causal"):
        m.step(torch.randn(1, 16), None)
    config = mixers.make_config("linformer", 32, proj_len=16, sharing="kv")
    assert LinformerConfig.from_dict(config.to_dict()) == config
