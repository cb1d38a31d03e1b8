"""Hyena: conformance, FFT = direct convolution, an explicit order-2/3 computation, O(T) state."""

from __future__ import annotations

import pytest
import torch

from longarena import mixers, tasks
from longarena.config import ConfigError
from longarena.models.backbone import LanguageModel, ModelConfig
from longarena.mixers.hyena import HyenaConfig
from longarena.ops.conv import long_conv
from longarena.testing import check_mixer

SMALL = dict(filter_width=16, filter_emb_dim=5, max_len=64)

#: multi-query associative recall, 4 key-value pairs then 28 queries: 63 tokens, vocabulary 16
RECALL = dict(vocab_size=16, num_pairs=4, num_queries=28)


def train_recall(mixer: str, config: dict, *, steps: int, d_model: int = 64, batch_size: int = 32, lr: float = 5e-3, seed: int = 0):
    """Train a 2-layer LM of ``mixer`` (the library backbone: embedding, [norm, mixer, residual,
    MLP] x 2, tied head) on fresh recall batches with AdamW and a one-cycle schedule.

    Returns (accuracy on 256 unseen sequences, first loss, mean of the last 10 losses).
    """
    torch.manual_seed(seed)
    task = tasks.get("associative_recall", **RECALL)
    model = LanguageModel(
        ModelConfig(vocab_size=task.vocab_size, d_model=d_model, n_layers=2, pattern=(mixer,), mixer={mixer: config})
    )
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)

    def batch(n, generator):
        examples = task.generate("train", n, generator)
        return (torch.stack([e[k] for e in examples]) for k in ("input_ids", "labels"))

    losses = []
    for _ in range(steps):
        ids, labels = batch(batch_size, g)
        loss = model(ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    ids, labels = batch(256, torch.Generator().manual_seed(10_000 + seed))
    with torch.no_grad():
        pred = model(ids).logits.argmax(-1)
    scored = labels != -100
    accuracy = (pred[scored] == labels[scored]).float().mean().item()
    return accuracy, losses[0], sum(losses[-10:]) / 10


def bf16_exact(m):
    """Round the weights to bf16 values, so the suite's fp32 reference and its bf16 copy
    hold the same weights and only the arithmetic differs."""
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(p.bfloat16().float())
    return m


@pytest.mark.parametrize("order", [2, 3])
def test_hyena_conformance(order):
    check_mixer(lambda: bf16_exact(mixers.get("hyena", 16, order=order, **SMALL)), long_len=16384)


def test_fft_convolution_equals_direct_convolution():
    """With Hyena's own filters, at a length where the FFT path is used."""
    torch.manual_seed(0)
    m = mixers.get("hyena", 8, **SMALL)
    h = m.filter(300)[0]  # (D, L)
    u = torch.randn(2, 300, 8)
    torch.testing.assert_close(
        long_conv(u, h, backend="fft"), long_conv(u, h, backend="reference"), rtol=1e-4, atol=1e-5
    )
    x = torch.randn(2, 300, 8)
    with m.use_backend("reference"):
        y_ref, _ = m(x)
    with m.use_backend("fft"):
        y_fft, _ = m(x)
    torch.testing.assert_close(y_fft, y_ref, rtol=1e-4, atol=1e-5)


def test_fft_path_is_causal_up_to_rounding():
    torch.manual_seed(0)
    m = mixers.get("hyena", 8, **SMALL)
    x = torch.randn(1, 128, 8, requires_grad=True)
    with m.use_backend("fft"):
        y, _ = m(x)
    y[:, 60].pow(2).sum().backward()
    assert x.grad[:, 61:].abs().max() < 1e-6 * x.grad[:, :61].abs().max()


@pytest.mark.parametrize("order", [2, 3])
def test_matches_explicit_gating_and_convolution_sums(order):
    torch.manual_seed(0)
    d, t = 4, 7
    m = mixers.get("hyena", d, order=order, short_size=2, **SMALL)
    x = torch.randn(1, t, d)
    y, _ = m(x)
    u = x[0] @ m.in_proj.weight.T + m.in_proj.bias  # (T, (N+1) D)
    w = m.short_kernel.detach()
    u = torch.stack([w[:, 0] * u[s] + (w[:, 1] * u[s - 1] if s else 0) for s in range(t)]) + m.short_bias
    streams = u.split(d, dim=-1)  # x_0 .. x_{N-1}, v
    h = m.filter(t)  # (N-1, D, T)
    z = streams[-1]
    for i in range(order - 1):
        g = streams[order - 1 - i] * z
        conv = torch.stack([sum(h[i, :, j] * g[s - j] for j in range(s + 1)) for s in range(t)])
        z = conv + m.filter_bias[i] * g
    expected = (streams[0] * z) @ m.out_proj.weight.T + m.out_proj.bias
    torch.testing.assert_close(y[0], expected, rtol=1e-4, atol=1e-5)


def test_filters_depend_on_the_lag_only_and_decay():
    m = mixers.get("hyena", 8, **SMALL)
    with torch.no_grad():
        short, long = m.filter(50), m.filter(400)
    torch.testing.assert_close(long[..., :50], short)
    # past the slowest window's 1e-2 point (1.5 max_len) the filter is small
    assert long[..., 200:].abs().max() < 0.1 * long[..., :10].abs().max()


def test_step_state_grows_with_the_sequence():
    m = mixers.get("hyena", 8, order=3, short_size=3, **SMALL)
    assert m.state_size(100) == 2 * 8 * 100 + 2 * 4 * 8
    assert m.state_size(200) - m.state_size(100) == 2 * 8 * 100
    state = m.init_state(2)
    for _ in range(5):
        _, state = m.step(torch.randn(2, 8), state)
    assert [s.shape for s in state.inputs] == [(2, 5, 8)] * 2


def test_config_round_trip_and_bad_configs():
    config = mixers.make_config("hyena", 16, order=3)
    assert HyenaConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="order >= 2"):
        mixers.get("hyena", 16, order=1)
    with pytest.raises(ConfigError, match="odd"):
        mixers.get("hyena", 16, filter_emb_dim=4)
    with pytest.raises(ConfigError, match="fast_decay <= slow_decay"):
        mixers.get("hyena", 16, fast_decay=2.0, slow_decay=1.0)


def test_recall_training_runs_and_lowers_the_loss():
    """Fast stand-in for the slow learning test: same helper, same code paths, a few steps."""
    accuracy, first, last = train_recall("hyena", dict(SMALL, backend="fft"), steps=30, d_model=16, batch_size=8)
    assert 0.0 <= accuracy <= 1.0 and last < first


@pytest.mark.slow
def test_hyena_solves_associative_recall_where_s4d_does_not():
    accuracy, _, _ = train_recall("hyena", dict(filter_width=32, max_len=128, backend="fft"), steps=400)
    assert accuracy >= 0.9
    if "s4d" not in mixers.names():
        pytest.skip(f"no 's4d' mixer to compare with (hyena reached {accuracy:.1%})")
    baseline, _, _ = train_recall("s4d", {}, steps=300)
    assert baseline < 0.6, f"a same-size S4D model reached {baseline:.1%} on recall"
