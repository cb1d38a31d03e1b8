"""long_conv: FFT path against the tap-loop reference and torch's conv1d; both kernel shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longarena.ops.conv import long_conv
from longarena.testing.conformance import rel_error

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def _run(backend, u, k, causal):
    u, k = u.detach().clone().requires_grad_(), k.detach().clone().requires_grad_()
    y = long_conv(u, k, causal=causal, backend=backend)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(5))
    (y.float() * w).sum().backward()
    return y.detach(), u.grad, k.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "two-sided"])
@pytest.mark.parametrize("t_len,l_len", [(33, 33), (33, 5), (20, 64), (1, 3)])
@pytest.mark.parametrize("backend", ["fft", "direct"])
def test_fast_paths_match_reference(backend, dtype, causal, t_len, l_len):
    g = torch.Generator().manual_seed(t_len * 100 + l_len)
    u = torch.randn(2, t_len, 3, generator=g)
    k = torch.randn(3, l_len if causal else 2 * l_len - 1, generator=g) / l_len**0.5
    ref = _run("reference", u, k, causal)
    out = _run(backend, u.to(dtype), k.to(dtype), causal)
    assert out[0].dtype == dtype
    for x, y in zip(out, ref):
        assert rel_error(x, y) < TOL[dtype]


def test_reference_matches_conv1d():
    """torch's conv1d is a cross-correlation: flip the kernel, pad left (causal) or both sides."""
    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, 17, 4, generator=g)
    k = torch.randn(4, 6, generator=g)
    y = long_conv(u, k, backend="reference")
    expected = F.conv1d(F.pad(u.transpose(1, 2), (5, 0)), k.flip(-1)[:, None], groups=4).transpose(1, 2)
    torch.testing.assert_close(y, expected)
    k2 = torch.randn(4, 11, generator=g)
    y2 = long_conv(u, k2, causal=False, backend="reference")
    expected2 = F.conv1d(u.transpose(1, 2), k2.flip(-1)[:, None], padding=5, groups=4).transpose(1, 2)
    torch.testing.assert_close(y2, expected2)


def test_no_circular_wrap_at_long_lengths():
    """An impulse at the last position must not leak into the start of the output."""
    u = torch.zeros(1, 4096, 1)
    u[0, -1, 0] = 1.0
    k = torch.ones(1, 4096)
    y = long_conv(u, k, backend="fft")
    assert y[0, :-1].abs().max() < 1e-5
    assert abs(y[0, -1, 0].item() - 1.0) < 1e-5


def test_direct_path_is_exactly_causal_and_auto_uses_it_for_short_kernels():
    u = torch.randn(1, 40, 2, requires_grad=True)
    y = long_conv(u, torch.randn(2, 40))  # auto: 40 taps -> direct
    y[0, 10].sum().backward()
    assert u.grad[0, 11:].abs().max() == 0.0
    assert u.grad[0, :11].abs().max() > 0.0


def test_bad_inputs_say_what_was_expected():
    u = torch.randn(2, 8, 3)
    with pytest.raises(ValueError, match=r"\(D, L\) with D = 3"):
        long_conv(u, torch.randn(4, 5))
    with pytest.raises(ValueError, match=r"\(B, T, D\)"):
        long_conv(u[0], torch.randn(3, 5))
    with pytest.raises(ValueError, match="odd length"):
        long_conv(u, torch.randn(3, 4), causal=False)
    with pytest.raises(ValueError, match="real"):
        long_conv(u, torch.randn(3, 4, dtype=torch.complex64))
    with pytest.raises(ValueError, match="unknown long_conv backend"):
        long_conv(u, torch.randn(3, 4), backend="cuda")
