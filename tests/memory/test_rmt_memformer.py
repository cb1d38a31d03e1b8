"""RMT and Memformer: layout, memory shapes, the Memformer write and its forgetting, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import longarena.memory  # noqa: F401  (registers the memory models)
from longarena import models
from longarena.config import ConfigError
from longarena.memory.common import MemoryStateError
from longarena.memory.runner import run_segments

V = 20
SMALL = dict(vocab_size=V, d_model=16, n_layers=2, n_heads=2, segment_len=6)


def _rmt(**overrides):
    torch.manual_seed(0)
    return models.get("rmt", **{**SMALL, "num_mem_tokens": 3, **overrides})


def _memformer(**overrides):
    torch.manual_seed(0)
    return models.get("memformer", **{**SMALL, "n_slots": 4, **overrides})


def test_rmt_decoder_layout():
    """Read tokens first, write tokens last: the written memory is the backbone's output at
    the last m positions of [memory, tokens, memory], and the logits are those of the tokens."""
    model = _rmt().eval()
    ids = torch.randint(0, V, (2, 5))
    with torch.no_grad():
        out = model(ids)
        mem = model.init_state(2).memory
        h, _ = model.backbone(torch.cat((mem, model.embed(ids), mem), dim=1))
    assert out.state.memory.shape == (2, 3, 16)
    torch.testing.assert_close(out.state.memory, h[:, -3:])
    torch.testing.assert_close(out.logits, h[:, 3:8] @ model.embed.weight.T)
    # the memory carries content: a different first segment changes the second one's logits
    with torch.no_grad():
        other = model(torch.randint(0, V, (2, 5)))
        a = model(ids, state=out.state).logits
        b = model(ids, state=other.state).logits
    assert not torch.allclose(a, b)


def test_memformer_write_is_slot_attention_over_self_and_tokens():
    """With zero query weights the slot attention is uniform over [own slot; T tokens], so the
    write is rms_normalize(W_o W_v (m_i + sum_j norm(h_j)) / (1 + T) + b_i), computed here by hand."""
    model = _memformer()
    writer = model.writer
    with torch.no_grad():
        writer.q_proj.weight.zero_()
        writer.forget_bias.normal_()
    slots = model.init_state(2).slots.detach()
    h = torch.randn(2, 5, 16)
    d = 16
    w_v = writer.kv_proj.weight[d:]
    hn = F.rms_norm(h, (d,), writer.norm.weight, writer.norm.eps)
    mixed = (slots + hn.sum(1, keepdim=True)) / 6  # (B, K, D)
    want = F.rms_norm(mixed @ w_v.T @ writer.out_proj.weight.T + writer.forget_bias, (d,), eps=writer.eps)
    torch.testing.assert_close(writer(slots, h), want)


def test_memformer_memory_shapes_and_forgetting():
    model = _memformer().eval()
    writer = model.writer
    segments = [torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    a = model.init_state(2).slots.detach()
    b = F.rms_norm(torch.randn(2, 4, 16), (16,))
    gaps = []
    with torch.no_grad():
        for h in segments:
            a, b = writer(a, h), writer(b, h)
            assert a.shape == (2, 4, 16)
            torch.testing.assert_close(a.pow(2).mean(-1), torch.ones(2, 4), atol=1e-2, rtol=0)
            gaps.append(float((a - b).norm()))
    # two different memories written with the same segments forget their difference geometrically
    assert all(later < earlier for earlier, later in zip(gaps, gaps[1:])), gaps
    assert gaps[-1] < 0.05 * gaps[0], gaps
    # the bias is the terminal state: when it dominates, every slot becomes its direction
    with torch.no_grad():
        target = torch.randn(4, 16)
        writer.forget_bias.copy_(1e4 * target)
        torch.testing.assert_close(writer(a, segments[0]), F.rms_norm(target, (16,)).expand(2, -1, -1), atol=1e-3, rtol=1e-3)
    # one distribution per slot and head over [own slot ; 6 tokens]
    weights, _ = writer.slot_weights(a, segments[0])
    assert weights.shape == (2, 2, 4, 7)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 4))


def test_memformer_tokens_read_the_memory():
    model = _memformer().eval()
    ids = torch.randint(0, V, (2, 6))
    with torch.no_grad():
        state = model(torch.randint(0, V, (2, 6))).state
        assert not torch.allclose(model(ids).logits, model(ids, state=state).logits)


@pytest.mark.parametrize("build", [_rmt, _memformer])
def test_bad_states_and_inputs(build):
    model = build()
    state = model(torch.zeros(2, 6, dtype=torch.long)).state
    with pytest.raises(MemoryStateError, match="batch of the same size"):
        model(torch.zeros(3, 6, dtype=torch.long), state=state)
    with pytest.raises(ValueError, match="segment_len"):
        model(torch.zeros(2, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(torch.full((2, 6), V))
    with pytest.raises(ValueError, match="T = 0"):
        model(torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="this model has"):
        build(**({"num_mem_tokens": 2} if build is _rmt else {"n_slots": 2}))(torch.zeros(2, 6, dtype=torch.long), state=state)


def test_zero_memory_slots_are_refused():
    with pytest.raises(ConfigError, match="num_mem_tokens must be a positive int"):
        _rmt(num_mem_tokens=0)
    with pytest.raises(ConfigError, match="n_slots must be a positive int"):
        _memformer(n_slots=0)


def test_memory_off_ablation_resets_every_segment():
    model = _rmt().eval()
    ids = torch.randint(0, V, (1, 12))
    with torch.no_grad():
        off = run_segments(model, ids, carry=False).logits
        torch.testing.assert_close(off[:, 6:], model(ids[:, 6:]).logits)
