"""Nyströmformer: conformance, exactness with m = T landmarks, an independent Nyström
computation, segment means for T not divisible by m, the pseudo-inverse and clear errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from longarena import mixers
from longarena.config import ConfigError
from longarena.mixers.base import MixerInputError
from longarena.mixers.nystrom import NystromConfig, iterative_pinv, segment_means_matrix
from longarena.testing import check_mixer


@pytest.mark.parametrize("conv_kernel", [5, 0], ids=["conv-skip", "no-conv"])
def test_nystromformer_conformance(conv_kernel):
    long_len = 16384 if conv_kernel else 64
    report = check_mixer(
        lambda: mixers.get("nystromformer", 16, n_heads=2, n_landmarks=8, conv_kernel=conv_kernel),
        long_len=long_len,
    )
    assert "padding/bfloat16" in report.passed


def _exact_twin(m):
    a = mixers.get("attention", m.d_model, n_heads=m.n_heads, causal=False, position="none")
    a.load_state_dict({"q_proj.weight": m.q_proj.weight, "kv_proj.weight": m.kv_proj.weight,
                       "out_proj.weight": m.out_proj.weight})
    return a


def test_as_many_landmarks_as_tokens_gives_exact_attention():
    torch.manual_seed(0)
    t = 12
    m = mixers.get("nystromformer", 16, n_heads=2, n_landmarks=t, conv_kernel=0, pinv_iterations=30).double()
    exact = _exact_twin(m).double()
    x = torch.randn(2, t, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x)[0], exact(x)[0], rtol=1e-7, atol=1e-7)


def test_matches_an_independent_nystrom_computation():
    """T = 10, m = 4: segments of 3, 2, 3, 2 tokens; the formula with torch.linalg.pinv plus the conv."""
    torch.manual_seed(0)
    t, m_land, h, dk = 10, 4, 2, 4
    m = mixers.get("nystromformer", h * dk, n_heads=h, n_landmarks=m_land, conv_kernel=3, pinv_iterations=40).double()
    x = torch.randn(1, t, h * dk, dtype=torch.float64)
    with torch.no_grad():
        y, _ = m(x)
        q = x[0] @ m.q_proj.weight.T
        keys, values = (x[0] @ m.kv_proj.weight.T).chunk(2, dim=-1)
        segments = [range(3), range(3, 5), range(5, 8), range(8, 10)]
        heads = []
        for i in range(h):
            cols = slice(i * dk, (i + 1) * dk)
            qh, kh, vh = q[:, cols], keys[:, cols], values[:, cols]
            q_land = torch.stack([qh[list(s)].mean(0) for s in segments])
            k_land = torch.stack([kh[list(s)].mean(0) for s in segments])
            f = torch.softmax(qh @ k_land.T / math.sqrt(dk), -1)
            a = torch.softmax(q_land @ k_land.T / math.sqrt(dk), -1)
            b = torch.softmax(q_land @ kh.T / math.sqrt(dk), -1)
            out = f @ torch.linalg.pinv(a) @ b @ vh
            w = m.conv[i]
            padded = F.pad(vh, (0, 0, 1, 1))
            out = out + sum(w[j] * padded[j : j + t] for j in range(3))
            heads.append(out)
        expected = torch.cat(heads, -1) @ m.out_proj.weight.T
    torch.testing.assert_close(y[0], expected, rtol=1e-6, atol=1e-6)


def test_segment_means_handle_indivisible_lengths_and_padding():
    mask = torch.tensor([[True] * 10, [True] * 6 + [False] * 4])
    p = segment_means_matrix(mask, 4)  # (B, m, T)
    sizes = (p > 0).sum(-1)
    assert sizes[0].tolist() == [3, 2, 3, 2]
    assert sizes[1].tolist() == [2, 1, 2, 1]
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 4))
    assert (p[1, :, 6:] == 0).all()  # padding never enters a landmark
    equal = segment_means_matrix(torch.ones(1, 8, dtype=torch.bool), 4)
    torch.testing.assert_close(equal[0], torch.kron(torch.eye(4), torch.full((1, 2), 0.5)))


def test_iterative_pinv_converges_to_the_moore_penrose_inverse():
    torch.manual_seed(0)
    a = torch.softmax(torch.randn(3, 8, 8, dtype=torch.float64), -1)
    expected = torch.linalg.pinv(a)
    errors = [((iterative_pinv(a, n) - expected).norm() / expected.norm()).item() for n in (2, 6, 25)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-8, errors


def test_bad_inputs_and_configs_say_what_was_expected():
    m = mixers.get("nystromformer", 16, n_heads=2, n_landmarks=8)
    with pytest.raises(MixerInputError, match="at least 8 real tokens.*got 5"):
        m(torch.randn(1, 5, 16))
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 6:] = False
    with pytest.raises(MixerInputError, match="got 6"):
        m(torch.randn(2, 10, 16), mask=mask)
    with pytest.raises(ConfigError, match="n_landmarks must be positive"):
        mixers.get("nystromformer", 16, n_landmarks=0)
    with pytest.raises(ConfigError, match="odd"):
        mixers.get("nystromformer", 16, conv_kernel=4)
    config = mixers.make_config("nystromformer", 32, n_landmarks=16)
    assert NystromConfig.from_dict(config.to_dict()) == config
