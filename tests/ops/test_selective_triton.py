"""The Triton selective scan against the loop reference: outputs, final state, every gradient.

On a machine without CUDA the kernels run in Triton's CPU interpreter, hence the tiny sizes:
T = 33 is a multiple of no block, E and N not of the kernel's tiles either. Triton reads
``TRITON_INTERPRET`` when it is imported (its own library functions are kernels too), so it
is set here, at collection, before anything imports triton.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from longarena.ops.scan import selective_scan  # noqa: E402
from longarena.testing.conformance import rel_error  # noqa: E402

pytest.importorskip("triton")

from longarena.ops.scan.selective_triton import Tiles  # noqa: E402

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


@pytest.fixture(scope="module")
def device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(bsz, t_len, e, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(bsz, t_len, e, generator=g)
    delta = torch.nn.functional.softplus(torch.randn(bsz, t_len, e, generator=g) - 1)
    a = -torch.exp(torch.randn(e, n, generator=g))
    b, c = torch.randn(bsz, t_len, n, generator=g), torch.randn(bsz, t_len, n, generator=g)
    d, h0 = torch.randn(e, generator=g), torch.randn(bsz, e, n, generator=g)
    return u, delta, a, b, c, d, h0


def _run(backend, inputs, dtype, device, **kw):
    """y, h_last and the gradients of (u, delta, A, B, C, D, h0) of a fixed random loss;
    A stays fp32 (Mamba keeps it so), everything else is cast to ``dtype``."""
    dtypes = [dtype, dtype, torch.float32] + [dtype] * 4
    leaves = [t.detach().to(device, dt).requires_grad_() for t, dt in zip(inputs, dtypes)]
    y, h = selective_scan(*leaves, backend=backend, **kw)
    g = torch.Generator().manual_seed(2)
    w, w_h = torch.randn(y.shape, generator=g).to(device), torch.randn(h.shape, generator=g).to(device)
    ((y.float() * w).sum() + (h.float() * w_h).sum()).backward()
    return [y.detach(), h.detach()] + [t.grad for t in leaves]


NAMES = ("y", "h_last", "du", "ddelta", "dA", "dB", "dC", "dD", "dh0")


ONE_CHUNK = ((2, 33, 8, 4), Tiles(tile=1, chunk=40))
CHUNKS = ((2, 33, 8, 4), Tiles(block_e=4, tile=4, chunk=8))
PADDED = ((2, 33, 6, 3), Tiles(block_e=4, tile=4, chunk=8))


@pytest.mark.parametrize(
    "dtype,case",
    [
        # the same kernels as the other cases with other tile constants: slow under the interpreter
        pytest.param(torch.float32, ONE_CHUNK, marks=pytest.mark.slow),
        (torch.float32, PADDED),
        (torch.bfloat16, CHUNKS),
    ],
    ids=["fp32-one-chunk-step-tiles", "fp32-chunks-padded-channels", "bf16-chunks-and-channel-blocks"],
)
def test_triton_matches_reference(device, dtype, case):
    """One chunk: inputs loaded a step at a time, one checkpoint (7 steps of padding). Chunks:
    the backward restarts from 5 checkpoints (the last holding 1 real step of 8), 4-step tiles,
    E = 8 over two programs; padded: E = 6 (the second program half empty) and N = 3 (a tile
    of 4)."""
    shape, tiles = case
    inputs = _inputs(*shape)
    ref = _run("reference", inputs, torch.float32, "cpu")
    out = _run("triton", inputs, dtype, device, tiles=tiles)
    assert out[0].dtype == dtype and out[1].dtype == torch.float32
    for name, x, r in zip(NAMES, out, ref):
        assert x.dtype == (torch.float32 if name in ("h_last", "dA") else dtype), name
        assert rel_error(x.cpu(), r) < TOL[dtype], name


def test_triton_carries_state_and_runs_without_grad(device):
    """Two pieces with the state carried = one scan; no-grad calls and T = 0 work."""
    u, delta, a, b, c, d, h0 = (t.to(device) for t in _inputs(1, 21, 5, 4, seed=3))
    with torch.no_grad():
        y, h_last = selective_scan(u, delta, a, b, c, d, h0, backend="triton", tiles=Tiles(tile=4, chunk=4))
        y1, mid = selective_scan(u[:, :8], delta[:, :8], a, b[:, :8], c[:, :8], d, h0, backend="triton")
        rest = (u[:, 8:], delta[:, 8:], a, b[:, 8:], c[:, 8:], d)
        y2, end = selective_scan(*rest, mid, backend="triton", tiles=Tiles(tile=2, chunk=3))
        ref_y, ref_h = selective_scan(u, delta, a, b, c, d, h0, backend="reference")
        none = (u[:, :0], delta[:, :0], a, b[:, :0], c[:, :0], d, h0)
        empty_y, empty_h = selective_scan(*none, backend="triton")
    torch.testing.assert_close(y, ref_y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h_last, ref_h, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat((y1, y2), 1), ref_y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(end, ref_h, rtol=1e-5, atol=1e-5)
    assert empty_y.shape == (1, 0, 5)
    torch.testing.assert_close(empty_h, h0)


def test_triton_bad_tiles_say_what_was_expected(device):
    u, delta, a, b, c, d, h0 = (t.to(device) for t in _inputs(1, 4, 4, 2))
    with pytest.raises(ValueError, match="block_e must be a power of two"):
        selective_scan(u, delta, a, b, c, backend="triton", tiles=Tiles(block_e=6))
    with pytest.raises(ValueError, match="chunk must be a positive int"):
        selective_scan(u, delta, a, b, c, backend="triton", tiles=Tiles(chunk=0))
