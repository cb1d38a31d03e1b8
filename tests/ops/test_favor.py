"""FAVOR+: random features estimate the softmax kernel without bias; the three linear-attention
forms (masked quadratic reference, chunked prefix sums, token steps) agree."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from longarena.ops.attention import attention_reference
from longarena.ops.linear_attn.favor import (
    RELU_EPS,
    favor_features,
    linear_attention_chunked,
    linear_attention_reference,
    linear_attention_step,
    orthogonal_gaussian,
    relu_features,
    softmax_features,
)
from longarena.testing.conformance import rel_error


def test_orthogonal_gaussian_rows_are_orthogonal_within_blocks():
    w = orthogonal_gaussian(10, 4, generator=torch.Generator().manual_seed(0))
    assert w.shape == (10, 4)
    for block in (w[0:4], w[4:8]):
        gram = block @ block.T
        off_diagonal = gram - torch.diag(torch.diagonal(gram))
        assert off_diagonal.abs().max() < 1e-5
    with pytest.raises(ValueError, match="number of random features must be positive"):
        orthogonal_gaussian(0, 4)


def test_orthogonal_rows_have_gaussian_norms():
    """E|w|² = K for w ~ N(0, I_K): the chi scaling keeps each row's law Gaussian."""
    g = torch.Generator().manual_seed(1)
    w = torch.cat([orthogonal_gaussian(8, 8, generator=g) for _ in range(400)])  # 3200 rows
    sq = w.double().pow(2).sum(1)
    standard_error = sq.std() / math.sqrt(len(sq))
    assert abs(sq.mean() - 8) < 4 * standard_error


def test_softmax_features_are_unbiased_for_the_kernel():
    """Mean over independent draws of φ(q)·φ(k) -> exp(q·k), within 4 standard errors."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(5, 4, generator=g) * 0.6
    k = torch.randn(5, 4, generator=g) * 0.6
    exact = torch.exp((q * k).sum(-1)).double()  # (5,)
    draws = 3000
    estimates = torch.empty(draws, 5, dtype=torch.float64)
    for i in range(draws):
        w = orthogonal_gaussian(8, 4, generator=g)
        phi_q = softmax_features(q, w, is_query=True, stabilize=False)
        phi_k = softmax_features(k, w, is_query=False)
        estimates[i] = (phi_q * phi_k).sum(-1).double()
    mean = estimates.mean(0)
    standard_error = estimates.std(0) / math.sqrt(draws)
    z = (mean - exact) / standard_error
    assert z.abs().max() < 4.0, f"z-scores {z.tolist()}"
    # the estimate is not trivially exact: single draws scatter
    assert (estimates.std(0) > 1e-3 * exact).all()


def _approximation_error(n_features: int, draws: int) -> float:
    g = torch.Generator().manual_seed(0)
    dim = 16
    # moderate norms (|q|, |k| ~ 2 before scaling): the estimator's variance grows like exp(|q + k|²)
    q = 0.5 * torch.randn(1, 1, 64, dim, generator=g)
    k = 0.5 * torch.randn(1, 1, 64, dim, generator=g)
    v = torch.randn(1, 1, 64, dim, generator=g)
    exact = attention_reference(q, k, v, causal=False)
    scale = dim**-0.25
    errors = []
    for _ in range(draws):
        w = orthogonal_gaussian(n_features, dim, generator=g)
        qf = favor_features(q * scale, w, kernel="softmax", is_query=True)
        kf = favor_features(k * scale, w, kernel="softmax", is_query=False)
        y, _ = linear_attention_reference(qf, kf, v, causal=False)
        errors.append(rel_error(y, exact))
    return sum(errors) / len(errors)


def test_error_against_exact_attention_falls_with_more_features():
    errors = [_approximation_error(m, draws=6) for m in (8, 32, 128, 512)]
    assert all(a > b for a, b in itertools.pairwise(errors)), errors
    # Monte Carlo: about 1/sqrt(M), so 64x the features gives well under a third of the error
    assert errors[-1] < errors[0] / 3, errors


def test_query_stabiliser_cancels():
    g = torch.Generator().manual_seed(0)
    w = orthogonal_gaussian(16, 8, generator=g)
    q, k, v = (torch.randn(2, 1, 7, 8, generator=g) for _ in range(3))
    plain = softmax_features(q, w, is_query=True, stabilize=False)
    stable = softmax_features(q, w, is_query=True)
    assert stable.amax(-1).allclose(torch.full((2, 1, 7), 1 / 4.0))
    kf = softmax_features(k, w, is_query=False)
    y_plain, _ = linear_attention_reference(plain, kf, v, causal=True)
    y_stable, _ = linear_attention_reference(stable, kf, v, causal=True)
    torch.testing.assert_close(y_plain, y_stable, rtol=1e-5, atol=1e-6)


def test_relu_features_formula():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 3, generator=g)
    x = torch.randn(4, 3, generator=g)
    expected = torch.clamp(x @ w.T, min=0) / math.sqrt(6) + RELU_EPS
    torch.testing.assert_close(relu_features(x, w), expected)
    with pytest.raises(ValueError, match="unknown FAVOR kernel"):
        favor_features(x, w, kernel="cosine", is_query=True)


def _positive(*shape, generator):
    return torch.rand(*shape, generator=generator) + 0.05


def test_reference_matches_an_explicit_loop():
    """y_t = Σ_{s<=t} (q_t·k_s) v_s / Σ_{s<=t} q_t·k_s, starting from a given (S, z)."""
    g = torch.Generator().manual_seed(0)
    b, h, t, m, dv = 1, 2, 6, 5, 3
    q, k = _positive(b, h, t, m, generator=g), _positive(b, h, t, m, generator=g)
    v = torch.randn(b, h, t, dv, generator=g)
    s0, z0 = _positive(b, h, m, dv, generator=g), _positive(b, h, m, generator=g)
    y, (s, z) = linear_attention_reference(q, k, v, causal=True, state=(s0, z0))
    for hh in range(h):
        for i in range(t):
            num = q[0, hh, i] @ s0[0, hh]
            den = q[0, hh, i] @ z0[0, hh]
            for j in range(i + 1):
                weight = q[0, hh, i] @ k[0, hh, j]
                num = num + weight * v[0, hh, j]
                den = den + weight
            torch.testing.assert_close(y[0, hh, i], num / den, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s, s0 + torch.einsum("bhtm,bhtv->bhmv", k, v))
    torch.testing.assert_close(z, z0 + k.sum(2))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("chunk_size", [1, 3, 8, 64])
def test_chunked_matches_reference_with_gradients(causal, chunk_size):
    g = torch.Generator().manual_seed(chunk_size)
    b, h, t, m, dv = 2, 2, 11, 6, 4
    inputs = [
        _positive(b, h, t, m, generator=g),
        _positive(b, h, t, m, generator=g),
        torch.randn(b, h, t, dv, generator=g),
        _positive(b, h, m, dv, generator=g),
        _positive(b, h, m, generator=g),
    ]
    w = torch.randn(b, h, t, dv, generator=g)

    def run(fn, **kw):
        leaves = [a.clone().requires_grad_(True) for a in inputs]
        q, k, v, s0, z0 = leaves
        y, (s, z) = fn(q, k, v, causal=causal, state=(s0, z0), **kw)
        ((y * w).sum() + s.sum() + z.sum()).backward()
        return [y, s, z] + [a.grad for a in leaves]

    ref = run(linear_attention_reference)
    fast = run(linear_attention_chunked, chunk_size=chunk_size)
    for a, r in zip(fast, ref):
        assert rel_error(a, r) < 1e-5


def test_steps_match_the_whole_sequence():
    g = torch.Generator().manual_seed(3)
    b, h, t, m, dv = 2, 3, 9, 4, 5
    q, k = _positive(b, h, t, m, generator=g), _positive(b, h, t, m, generator=g)
    v = torch.randn(b, h, t, dv, generator=g)
    y_full, (s_full, z_full) = linear_attention_reference(q, k, v, causal=True)
    state = (torch.zeros(b, h, m, dv), torch.zeros(b, h, m))
    ys = []
    for i in range(t):
        y_t, state = linear_attention_step(q[:, :, i], k[:, :, i], v[:, :, i], state)
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, dim=2), y_full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state[0], s_full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state[1], z_full, rtol=1e-5, atol=1e-6)


def test_all_zero_keys_give_zero_not_nan():
    q = torch.rand(1, 1, 4, 3)
    k = torch.zeros(1, 1, 4, 3)
    v = torch.randn(1, 1, 4, 2)
    for fn in (linear_attention_reference, linear_attention_chunked):
        y, _ = fn(q, k, v, causal=True)
        assert torch.equal(y, torch.zeros_like(y))
