"""Retention op: the parallel and chunked forms equal the recurrence and an explicit sum."""

from __future__ import annotations

import pytest
import torch

from longarena.ops.linear_attn.retention import (
    default_gammas,
    retention,
    retention_chunkwise,
    retention_parallel,
    retention_recurrent,
    retention_step,
)
from longarena.testing.conformance import rel_error


def _inputs(b=2, h=3, t=19, dk=4, dv=6, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(b, h, t, dk, generator=g).to(dtype) for _ in range(2))
    v = torch.randn(b, h, t, dv, generator=g).to(dtype)
    s0 = torch.randn(b, h, dk, dv, generator=g)
    return q, k, v, s0


def test_default_gammas_follow_the_paper():
    assert default_gammas(3).tolist() == [1 - 1 / 32, 1 - 1 / 64, 1 - 1 / 128]


def test_recurrence_equals_an_explicit_double_sum():
    q, k, v, s0 = _inputs(b=1, h=2, t=6)
    gamma = torch.tensor([0.5, 0.9], dtype=torch.float64)
    o, s = retention_recurrent(q, k, v, gamma, s0)
    for h in range(2):
        g = gamma[h].item()
        for t in range(6):
            expected = g ** (t + 1) * q[0, h, t] @ s0[0, h]
            for j in range(t + 1):
                expected = expected + g ** (t - j) * (q[0, h, t] @ k[0, h, j]) * v[0, h, j]
            torch.testing.assert_close(o[0, h, t], expected, rtol=1e-5, atol=1e-5)
        s_expected = g**6 * s0[0, h] + sum(g ** (5 - j) * torch.outer(k[0, h, j], v[0, h, j]) for j in range(6))
        torch.testing.assert_close(s[0, h], s_expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 4, 5, 19, 64])
def test_three_forms_agree_in_fp32(with_state, chunk_size):
    q, k, v, s0 = _inputs()
    gamma = default_gammas(3)
    state = s0 if with_state else None
    o_ref, s_ref = retention_recurrent(q, k, v, gamma, state)
    o_par, s_par = retention_parallel(q, k, v, gamma, state)
    o_chk, s_chk = retention_chunkwise(q, k, v, gamma, state, chunk_size=chunk_size)
    for o, s in ((o_par, s_par), (o_chk, s_chk)):
        assert rel_error(o, o_ref) < 1e-5 and rel_error(s, s_ref) < 1e-5


@pytest.mark.parametrize("backend", ["parallel", "chunked"])
def test_gradients_agree_with_the_recurrence(backend):
    q, k, v, s0 = _inputs(t=11)
    gamma = torch.tensor([0.3, 0.8, 0.99], dtype=torch.float64)
    grads = []
    for name in ("reference", backend):
        leaves = [x.clone().requires_grad_(True) for x in (q, k, v, s0)]
        o, s = retention(*leaves[:3], gamma, leaves[3], backend=name, chunk_size=4)
        w = torch.randn(o.shape, generator=torch.Generator().manual_seed(1))
        ((o * w).sum() + s.square().sum()).backward()
        grads.append([x.grad for x in leaves])
    for a, b in zip(*grads):
        assert rel_error(a, b) < 1e-5


@pytest.mark.parametrize("backend", ["parallel", "chunked"])
def test_bf16_inputs_stay_within_bf16_tolerance(backend):
    q, k, v, s0 = _inputs(t=40)
    gamma = default_gammas(3)
    o_ref, s_ref = retention_recurrent(q, k, v, gamma, s0)
    o, s = retention(q.bfloat16(), k.bfloat16(), v.bfloat16(), gamma, s0.bfloat16(), backend=backend, chunk_size=16)
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
    assert rel_error(o, o_ref) < 2e-2 and rel_error(s, s_ref) < 2e-2


def test_step_and_chunk_splits_continue_exactly():
    q, k, v, s0 = _inputs(t=13)
    gamma = default_gammas(3)
    o_full, s_full = retention_chunkwise(q, k, v, gamma, s0, chunk_size=4)
    o1, s1 = retention_chunkwise(q[:, :, :6], k[:, :, :6], v[:, :, :6], gamma, s0, chunk_size=4)
    outs, s = [o1], s1
    for t in range(6, 13):
        o_t, s = retention_step(q[:, :, t], k[:, :, t], v[:, :, t], gamma, s)
        outs.append(o_t[:, :, None])
    assert rel_error(torch.cat(outs, dim=2), o_full) < 1e-5 and rel_error(s, s_full) < 1e-5


def test_bad_shapes_and_backends_are_named():
    q, k, v, s0 = _inputs()
    with pytest.raises(ValueError, match=r"gamma must have shape \(H,\)"):
        retention(q, k, v, default_gammas(2))
    with pytest.raises(ValueError, match="state must have shape"):
        retention(q, k, v, default_gammas(3), s0[:, :, :2])
    with pytest.raises(ValueError, match="known: .*chunked"):
        retention(q, k, v, default_gammas(3), backend="fused")
    with pytest.raises(ValueError, match=r"q, k: \(B, H, T, K\)"):
        retention(q, k[:, :, :3], v, default_gammas(3))
