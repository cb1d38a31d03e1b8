"""Transformer-XL against an independent dense computation, and its memory contract."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import longarena.memory  # noqa: F401  (registers the memory models)
from longarena import models
from longarena.config import ConfigError
from longarena.memory.common import MemoryStateError
from longarena.memory.runner import run_segments

V, D, L, H = 50, 32, 2, 4


def _xl(**overrides):
    torch.manual_seed(0)
    config = dict(vocab_size=V, d_model=D, n_layers=L, n_heads=H, segment_len=6, mem_len=4, backend="reference")
    config.update(overrides)
    model = models.get("transformer_xl", **config)
    # random u, v, W_r so the relative terms matter as much as the content term
    with torch.no_grad():
        for layer in model.layers:
            layer.position.u.normal_()
            layer.position.v.normal_()
            layer.position.r_proj.weight.normal_(std=0.3)
    return model.eval()


def _rms(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def dense_reference(model, ids, segment_len, mem_len):
    """Every position of the whole sequence in one pass, each query i seeing exactly keys
    j with seg_start(i) - M <= j <= i, written out with explicit loops over heads."""
    b, t = ids.shape
    k_dim = D // H
    pos = torch.arange(t)
    start = pos // segment_len * segment_len
    visible = (pos[None, :] <= pos[:, None]) & (pos[None, :] >= start[:, None] - mem_len)  # (T, T)
    dist = pos[:, None] - pos[None, :]  # (T, T) = i - j
    h = model.embed.weight[ids]  # (B, T, D)
    for layer in model.layers:
        x = _rms(h, layer.norm.weight, layer.norm.eps)
        q = x @ layer.q_proj.weight.T
        kv = x @ layer.kv_proj.weight.T
        k, v = kv[..., :D], kv[..., D:]
        rel_dim = D
        inv_freq = 10000.0 ** (-torch.arange(0, rel_dim, 2, dtype=torch.float64) / rel_dim)
        angle = dist.to(torch.float64)[..., None] * inv_freq  # (T, T, rel/2)
        r = torch.cat((angle.sin(), angle.cos()), -1).float() @ layer.position.r_proj.weight.T  # (T, T, D)
        heads = []
        for hh in range(H):
            sl = slice(hh * k_dim, (hh + 1) * k_dim)
            u, vb = layer.position.u[hh], layer.position.v[hh]
            content = torch.einsum("bik,bjk->bij", q[..., sl] + u, k[..., sl])
            position = torch.einsum("bik,ijk->bij", q[..., sl] + vb, r[..., sl])
            scores = (content + position) / math.sqrt(k_dim)
            weights = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
            heads.append(weights @ v[..., sl])
        h = h + torch.cat(heads, -1) @ layer.out_proj.weight.T
        mlp = layer.mlp
        gate, up = (_rms(h, mlp.norm.weight, mlp.norm.eps) @ mlp.mlp.gate_up.weight.T).chunk(2, -1)
        h = h + (F.silu(gate) * up) @ mlp.mlp.down.weight.T
    return _rms(h, model.norm.weight, model.norm.eps) @ model.head.weight.T


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
@pytest.mark.parametrize("mem_len", [4, 6, 9])
def test_matches_dense_reference(backend, mem_len):
    """M < S, M = S and M > S (memory spanning two earlier segments); last segment partial."""
    model = _xl(backend=backend, mem_len=mem_len)
    ids = torch.randint(0, V, (2, 23), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = run_segments(model, ids).logits
        want = dense_reference(model, ids, 6, mem_len)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)


def test_longer_memory_at_evaluation_is_a_runtime_argument():
    model = _xl(mem_len=3)
    ids = torch.randint(0, V, (1, 24), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        short = run_segments(model, ids).logits
        long = run_segments(model, ids, mem_len=12).logits
        torch.testing.assert_close(long, dense_reference(model, ids, 6, 12), atol=2e-5, rtol=2e-5)
    assert not torch.allclose(short[:, 6:], long[:, 6:])
    # the first segment has no memory either way
    torch.testing.assert_close(short[:, :6], long[:, :6])


def test_memory_is_detached_and_has_the_right_length():
    model = _xl(mem_len=5).train()
    ids = torch.randint(0, V, (2, 6))
    out = model(ids)
    assert [m.shape for m in out.state.hidden] == [torch.Size([2, 5, D])] * L
    assert all(not m.requires_grad for m in out.state.hidden)
    # layer 0's memory is the last 5 token embeddings of the segment
    torch.testing.assert_close(out.state.hidden[0], model.embed.weight[ids[:, 1:]].detach())


def test_zero_memory_switches_memory_off():
    model = _xl(mem_len=0)
    ids = torch.randint(0, V, (1, 12))
    with torch.no_grad():
        whole = run_segments(model, ids).logits
        second_alone = model(ids[:, 6:]).logits
    torch.testing.assert_close(whole[:, 6:], second_alone)


def test_bad_inputs_and_states():
    model = _xl()
    with pytest.raises(ValueError, match="longer than this model's segment_len"):
        model(torch.zeros(1, 7, dtype=torch.long))
    state = model(torch.zeros(2, 6, dtype=torch.long)).state
    with pytest.raises(MemoryStateError, match="batch of the same size"):
        model(torch.zeros(3, 6, dtype=torch.long), state=state)
    other = _xl(d_model=16, n_heads=2)
    with pytest.raises(MemoryStateError):
        other(torch.zeros(2, 6, dtype=torch.long), state=state)
    with pytest.raises(ConfigError, match="mem_len"):
        models.get("transformer_xl", mem_len=-1)
    with pytest.raises(ValueError, match="mem_len"):
        model(torch.zeros(1, 6, dtype=torch.long), mem_len=-2)
