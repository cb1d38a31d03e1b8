"""Compressive Transformer: memory sizes follow the rates, compression functions, the
reconstruction loss trains only f_c, and with no compressed memory it is Transformer-XL."""

from __future__ import annotations

import pytest
import torch

import longarena.memory  # noqa: F401  (registers the memory models)
from longarena import models
from longarena.config import ConfigError
from longarena.memory.compressive import Compressor
from longarena.memory.runner import next_token_labels, run_segments

V = 30
SMALL = dict(vocab_size=V, d_model=16, n_layers=2, n_heads=2)


def _model(**overrides):
    torch.manual_seed(0)
    return models.get("compressive", **{**SMALL, **overrides})


@pytest.mark.parametrize("seg,mem,cmem,rate", [(4, 6, 3, 2), (6, 6, 4, 3), (5, 4, 10, 2)])
def test_memory_sizes_follow_the_rates(seg, mem, cmem, rate):
    model = _model(segment_len=seg, mem_len=mem, cmem_len=cmem, compression_rate=rate, compression="mean")
    state, seen = None, 0
    ids = torch.randint(0, V, (2, seg))
    for _ in range(7):
        state = model(ids, state=state).state
        seen += seg
        # states leave the FIFO in whole groups of c, each group becoming one compressed state
        evicted = max(0, seen - mem) // rate * rate
        assert [m.shape[1] for m in state.mem] == [seen - evicted] * 2
        assert [c.shape[1] for c in state.cmem] == [min(evicted // rate, cmem)] * 2
        assert all(m.shape[1] < mem + rate for m in state.mem)


def test_compressed_states_are_the_pooled_oldest_states():
    """Layer 0's memories are token embeddings, so the compressed memory is checkable by hand."""
    model = _model(segment_len=4, mem_len=4, cmem_len=4, compression_rate=2, compression="mean")
    ids = torch.randint(0, V, (1, 12))
    state = run_segments(model, ids).state
    emb = model.embed.weight.detach()[ids[0]]  # (12, D)
    torch.testing.assert_close(state.mem[0][0], emb[8:])
    torch.testing.assert_close(state.cmem[0][0], emb[:8].view(4, 2, -1).mean(1))


def test_compression_functions():
    old = torch.randn(2, 6, 4)
    torch.testing.assert_close(Compressor("max", 3, 4)(old), torch.stack([old[:, :3].amax(1), old[:, 3:].amax(1)], 1))
    torch.testing.assert_close(Compressor("mean", 2, 4)(old), (old[:, 0::2] + old[:, 1::2]) / 2)
    conv = Compressor("conv", 3, 4)
    w, b = conv.conv.weight, conv.conv.bias  # (D_out, D_in, c), (D_out,)
    want = torch.stack([torch.einsum("oik,bki->bo", w, old[:, g * 3:(g + 1) * 3]) + b for g in range(2)], 1)
    torch.testing.assert_close(conv(old), want)
    usage = torch.tensor([[0.1, 0.9, 0.3, 0.2, 0.7, 0.6], [0.5, 0.1, 0.0, 0.0, 0.0, 0.4]])
    got = Compressor("most_used", 3, 4)(old, usage)
    torch.testing.assert_close(got, torch.stack([old[0, [1, 4]], old[1, [0, 5]]]))


def test_most_used_tracks_the_attention_each_memory_received():
    model = _model(segment_len=4, mem_len=8, cmem_len=4, compression_rate=2, compression="most_used")
    ids = torch.randint(0, V, (2, 4))
    state = model(ids).state
    # four queries, each distributing weight 1 over the causal prefix: mean over heads keeps the total
    for usage in state.usage:
        assert usage.shape == (2, 4)
        torch.testing.assert_close(usage.sum(-1), torch.full((2,), 4.0))
    state = model(ids, state=state).state
    for usage in state.usage:
        torch.testing.assert_close(usage.sum(-1), torch.full((2,), 8.0))


def test_reconstruction_loss_trains_only_the_compression_network():
    model = _model(segment_len=4, mem_len=4, cmem_len=4, compression_rate=2, compression="conv")
    state = model(torch.randint(0, V, (2, 4))).state
    out = model(torch.randint(0, V, (2, 4)), state=state)
    assert out.aux_loss is not None and out.aux_loss > 0
    out.aux_loss.backward()
    for name, p in model.named_parameters():
        has_grad = p.grad is not None and bool(p.grad.abs().sum() > 0)
        assert has_grad == name.startswith("compressors."), name
    assert model(torch.randint(0, V, (2, 4))).aux_loss is None  # nothing was compressed yet


def test_without_compressed_memory_it_is_transformer_xl():
    model = _model(segment_len=4, mem_len=5, cmem_len=0)
    torch.manual_seed(1)
    xl = models.get("transformer_xl", **SMALL, segment_len=4, mem_len=5)
    xl.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("compressors.")})
    ids = torch.randint(0, V, (2, 19))
    with torch.no_grad():
        torch.testing.assert_close(run_segments(model, ids).logits, run_segments(xl, ids).logits)


def test_loss_and_bad_configs():
    model = _model(segment_len=4, mem_len=4)
    ids = torch.randint(0, V, (2, 8))
    assert torch.isfinite(run_segments(model, ids, next_token_labels(ids)).loss)
    with pytest.raises(ConfigError, match="compression must be one of"):
        _model(compression="median")
    with pytest.raises(ConfigError, match="compression_rate"):
        _model(compression_rate=0)
    with pytest.raises(ConfigError, match="cmem_len"):
        _model(cmem_len=-1)
