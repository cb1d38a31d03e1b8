"""The conformance suite passes a correct mixer and catches a planted bug of each kind."""

from __future__ import annotations

import torch
import pytest
from torch import Tensor, nn

from longarena.mixers.base import Mixer, MixerConfig, MixerInputError
from longarena.testing import ConformanceError, check_mixer


class ToyEMA(Mixer):
    """y_t = W h_t with h_t = 0.9 h_{t-1} + x_t: a loop reference and a parallel path."""

    backends = ("reference", "parallel")
    decay = 0.9

    def __init__(self, d_model: int = 8) -> None:
        super().__init__(MixerConfig(d_model=d_model))
        self.proj = nn.Linear(d_model, d_model)

    def init_state(self, batch_size, device=None, dtype=None):
        return torch.zeros(batch_size, self.d_model, device=device, dtype=dtype or self.proj.weight.dtype)

    def state_size(self, seq_len):
        return self.d_model

    def _scan(self, x: Tensor, h: Tensor) -> Tensor:
        if self.resolve_backend(x.device) == "reference":
            hs = []
            for t in range(x.shape[1]):
                h = self.decay * h + x[:, t]
                hs.append(h)
            return torch.stack(hs, dim=1)
        t = torch.arange(x.shape[1], device=x.device, dtype=torch.float32)
        powers = self.decay ** (t[:, None] - t[None, :])  # (T, T): decay^(t-s)
        weights = torch.tril(powers).to(x.dtype)
        carry = (self.decay ** (t + 1)).to(x.dtype)[None, :, None] * h[:, None, :]
        return torch.einsum("ts,bsd->btd", weights, x) + carry

    def _forward(self, x, state, mask):
        h = state if state is not None else self.init_state(x.shape[0], x.device, x.dtype)
        hs = self._scan(x, h)
        return self.proj(hs), hs[:, -1]

    def _step(self, x_t, state):
        h = self.decay * state + x_t
        return self.proj(h), h


class PeeksAhead(ToyEMA):
    def _forward(self, x, state, mask):
        y, s = super()._forward(x, state, mask)
        return y + 0.1 * torch.roll(x, -1, dims=1), s  # uses x[t+1] at t


class StepDropsState(ToyEMA):
    def _step(self, x_t, state):
        h = x_t  # forgets the past
        return self.proj(h), h


class ForwardIgnoresState(ToyEMA):
    def _forward(self, x, state, mask):
        return super()._forward(x, None, mask)


class WrongFastPath(ToyEMA):
    def _scan(self, x, h):
        out = super()._scan(x, h)
        return out * 1.01 if self.resolve_backend(x.device) == "parallel" else out


class WrongFastGradient(ToyEMA):
    """Right values, wrong gradient on the fast path (a detached carry-in)."""

    def _scan(self, x, h):
        if self.resolve_backend(x.device) == "parallel":
            return super()._scan(x, h.detach() if h.requires_grad else h) + 0 * x
        return super()._scan(x, h)


class MixesBatch(ToyEMA):
    def _forward(self, x, state, mask):
        y, s = super()._forward(x, state, mask)
        return y + 0.1 * x.mean(dim=0, keepdim=True), s


class BidirectionalIgnoresMask(ToyEMA):
    """Non-causal: adds the sequence mean, counting padded positions."""

    causal = False

    def _forward(self, x, state, mask):
        return self.proj(x + x.mean(dim=1, keepdim=True)), None


class BidirectionalMasked(BidirectionalIgnoresMask):
    def _forward(self, x, state, mask):
        if mask is None:
            mean = x.mean(dim=1, keepdim=True)
        else:
            m = mask[..., None].to(x.dtype)
            mean = (x * m).sum(1, keepdim=True) / m.sum(1, keepdim=True)
        return self.proj(x + mean), None


class BlowsUpWhenLong(ToyEMA):
    def _forward(self, x, state, mask):
        y, s = super()._forward(x, state, mask)
        return y * torch.exp(torch.arange(x.shape[1], device=x.device, dtype=torch.float32) / 10)[None, :, None].to(x.dtype), s


class AcceptsAnyState(ToyEMA):
    def check_state(self, state, batch_size):
        pass

    def _forward(self, x, state, mask):
        if state is not None and state.shape[0] != x.shape[0]:
            state = state[:1]  # broadcasts silently
        return super()._forward(x, state, mask)


FAST = dict(long_len=4096, seq_len=16)


def test_correct_toy_mixer_passes_every_check():
    report = check_mixer(ToyEMA, **FAST)
    assert report.ok and not report.failures
    assert "backends/float32" in report.passed and "step/bfloat16" in report.passed


def test_correct_bidirectional_mixer_passes():
    report = check_mixer(BidirectionalMasked, **FAST)
    assert "padding/float32" in report.passed
    assert any(s.startswith("causality") for s in report.skipped)


@pytest.mark.parametrize(
    "cls, check",
    [
        (PeeksAhead, "causality"),
        (StepDropsState, "step"),
        (ForwardIgnoresState, "chunked"),
        (WrongFastPath, "backends"),
        (WrongFastGradient, "backends"),
        (MixesBatch, "batch"),
        (BidirectionalIgnoresMask, "padding"),
        (BlowsUpWhenLong, "long"),
        (AcceptsAnyState, "errors"),
    ],
)
def test_planted_bug_is_caught_by_its_check(cls, check):
    report = check_mixer(cls, raise_on_failure=False, **FAST)
    assert check in report.failed_checks(), str(report)
    with pytest.raises(ConformanceError, match=check):
        check_mixer(cls, checks=[check], **FAST)


def test_only_the_fast_gradient_is_wrong():
    report = check_mixer(WrongFastGradient, checks=["backends"], dtypes=[torch.float32], raise_on_failure=False, **FAST)
    messages = " ".join(f.message for f in report.failures)
    assert "grad" in messages and "output:" not in messages


def test_unknown_check_name_is_refused():
    with pytest.raises(ValueError, match="known"):
        check_mixer(ToyEMA, checks=["nonsense"])


def test_base_class_rejects_bad_inputs():
    m = ToyEMA(8)
    with pytest.raises(MixerInputError, match=r"\(B, T, D\)"):
        m(torch.randn(4, 8))
    with pytest.raises(MixerInputError, match="width D = 8"):
        m(torch.randn(2, 4, 7))
    with pytest.raises(MixerInputError, match="mask"):
        m(torch.randn(2, 4, 8), mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(MixerInputError, match="init_state"):
        m.step(torch.randn(2, 8), None)


class TinyLeak(ToyEMA):
    """Leaks 1e-3 of the next input: small, but far above FFT rounding."""

    def _forward(self, x, state, mask):
        y, s = super()._forward(x, state, mask)
        return y + 1e-3 * torch.roll(x, -1, dims=1), s


def test_a_small_leak_is_still_caught():
    report = check_mixer(TinyLeak, checks=["causality"], dtypes=[torch.float32], raise_on_failure=False, **FAST)
    assert "causality" in report.failed_checks()
