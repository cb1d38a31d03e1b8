"""Decayed linear attention: the chunked torch path and the Triton kernels against the loop reference.

Outputs, final states and every gradient (q, k, v, the per-step log decay, the carried-in
state), fp32 and bf16, each decay form, T a multiple of no chunk, K and V powers of two
neither. Without CUDA the kernels run in Triton's CPU interpreter (tiny sizes); Triton reads
``TRITON_INTERPRET`` when it is imported, hence the setting at collection.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from longarena.ops.linear_attn import linear_attention, resolve_backend  # noqa: E402
from longarena.testing.conformance import rel_error  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
#: fp32 must be exact up to summation order; bf16 rounds q, k, v and the chunk states
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}
MODES = ("none", "gamma", "log_decay")


def _run(backend, mode, dtype, *, b=2, h=3, t=70, dk=20, dv=24, state=True, layout="bhtk", seed=0):
    """(o, S_last, dq, dk, dv, [dlog_decay], [dS0]) of a fixed random loss; the inputs are drawn
    in fp32, the leaves cast to ``dtype`` (decays and state stay fp32)."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = torch.randn(b, h, t, dk, generator=g), torch.randn(b, h, t, dk, generator=g), torch.randn(b, h, t, dv, generator=g)
    log_decay = F.logsigmoid(torch.randn(b, h, t, generator=g) + 2)
    s0 = torch.randn(b, h, dk, dv, generator=g)
    w_o, w_s = torch.randn(b, h, t, dv, generator=g), torch.randn(b, h, dk, dv, generator=g)
    if layout == "bthk":
        # (B, T, H, K) memory read through a transposed view, as projections hand it over
        leaves = [x.transpose(1, 2).contiguous().to(DEVICE, dtype).requires_grad_() for x in (q, k, v)]
        qkv = [x.transpose(1, 2) for x in leaves]
    else:
        leaves = [x.to(DEVICE, dtype).requires_grad_() for x in (q, k, v)]
        qkv = leaves
    kw = {}
    if mode == "gamma":
        kw["gamma"] = torch.tensor([0.5, 0.9, 0.999])[:h].to(DEVICE)
    elif mode == "log_decay":
        kw["log_decay"] = log_decay.to(DEVICE).requires_grad_()
        leaves.append(kw["log_decay"])
    if state:
        kw["state"] = s0.to(DEVICE).requires_grad_()
        leaves.append(kw["state"])
    o, s = linear_attention(*qkv[:3], scale=0.4, backend=backend, **kw)
    ((o.float() * w_o.to(DEVICE)).sum() + (s * w_s.to(DEVICE)).sum()).backward()
    grads = [x.grad.transpose(1, 2) if (layout == "bthk" and i < 3) else x.grad for i, x in enumerate(leaves)]
    return [o.detach(), s.detach()] + grads


def _names(mode, state=True):
    return ["o", "S_last", "dq", "dk", "dv"] + (["dlog_decay"] if mode == "log_decay" else []) + (["dS0"] if state else [])


def _assert_close(got, ref, names, tol):
    bad = {n: rel_error(a, r) for n, a, r in zip(names, got, ref) if not rel_error(a, r) <= tol}
    assert not bad, f"relative errors over {tol}: {bad}"


@pytest.mark.parametrize("mode", MODES)
def test_chunked_matches_the_reference(mode):
    ref = _run("reference", mode, torch.float32, t=37)
    got = _run("chunked", mode, torch.float32, t=37)
    _assert_close(got, ref, _names(mode), 1e-5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_triton_matches_the_reference(mode, dtype):
    pytest.importorskip("triton")
    ref = _run("reference", mode, torch.float32)
    got = _run("triton", mode, dtype)
    _assert_close(got, ref, _names(mode), TOL[dtype])


def test_triton_reads_transposed_inputs_in_place_and_runs_without_state():
    pytest.importorskip("triton")
    ref = _run("reference", "log_decay", torch.float32, state=False, t=64, dk=16, dv=40)
    got = _run("triton", "log_decay", torch.float32, state=False, t=64, dk=16, dv=40, layout="bthk")
    _assert_close(got, ref, _names("log_decay", state=False), TOL[torch.float32])


def test_strong_decay_stays_finite():
    """A decay of 1e-30 per step: every exponent the kernels take is <= 0, nothing overflows."""
    pytest.importorskip("triton")
    q = torch.randn(1, 2, 70, 16, device=DEVICE)
    gamma = torch.tensor([1e-30, 0.5], device=DEVICE)
    o, s = linear_attention(q, q, q, gamma=gamma, backend="triton")
    o_ref, s_ref = linear_attention(q, q, q, gamma=gamma, backend="reference")
    assert torch.isfinite(o).all() and rel_error(o, o_ref) < 1e-5 and rel_error(s, s_ref) < 1e-5


def test_chunks_carry_state_exactly():
    """Two calls with the state carried equal one call over the whole sequence."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 50, 8, generator=g) for _ in range(3))
    ld = F.logsigmoid(torch.randn(1, 2, 50, generator=g))
    o, s = linear_attention(q, k, v, log_decay=ld, backend="chunked", chunk_size=16)
    o1, s1 = linear_attention(q[:, :, :21], k[:, :, :21], v[:, :, :21], log_decay=ld[..., :21], backend="chunked")
    o2, s2 = linear_attention(q[:, :, 21:], k[:, :, 21:], v[:, :, 21:], log_decay=ld[..., 21:], state=s1, backend="chunked")
    assert rel_error(torch.cat((o1, o2), 2), o) < 1e-6 and rel_error(s2, s) < 1e-6


def test_bad_input_is_named():
    q = torch.randn(1, 2, 8, 4)
    with pytest.raises(ValueError, match=r"q, k: \(B, H, T, K\)"):
        linear_attention(q, q[:, :, :4], q)
    with pytest.raises(ValueError, match=r"gamma must have shape \(H,\)"):
        linear_attention(q, q, q, gamma=torch.tensor([0.5]))
    with pytest.raises(ValueError, match=r"lie in \(0, 1\]"):
        linear_attention(q, q, q, gamma=torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match=r"log_decay must have shape \(B, H, T\)"):
        linear_attention(q, q, q, log_decay=torch.zeros(1, 2, 7))
    with pytest.raises(ValueError, match="log_decay must be <= 0"):
        linear_attention(q, q, q, log_decay=torch.ones(1, 2, 8))
    with pytest.raises(ValueError, match="not both"):
        linear_attention(q, q, q, gamma=torch.tensor([0.5, 0.5]), log_decay=torch.zeros(1, 2, 8))
    with pytest.raises(ValueError, match=r"state must have shape \(B, H, K, V\)"):
        linear_attention(q, q, q, state=torch.zeros(1, 2, 4, 5))
    with pytest.raises(ValueError, match="unknown linear attention backend 'fused'"):
        linear_attention(q, q, q, backend="fused")


def test_triton_refuses_what_it_cannot_take():
    pytest.importorskip("triton")
    from longarena.ops.linear_attn.triton_chunk import linear_attention_triton

    q = torch.randn(1, 1, 8, 300)
    with pytest.raises(ValueError, match="K and V up to 256; got K=300"):
        linear_attention_triton(q, q, q)
    with pytest.raises(ValueError, match="one dtype"):
        linear_attention_triton(q[..., :8], q[..., :8].bfloat16(), q[..., :8])


def test_auto_picks_chunked_off_cuda_and_says_why_it_cannot_take_the_kernels(caplog):
    q = torch.randn(1, 1, 4, 8)
    assert resolve_backend(q, q) == "chunked"
    if torch.cuda.is_available():
        big = torch.randn(1, 1, 4, 300, device="cuda")
        with caplog.at_level("WARNING"):
            assert resolve_backend(big, big) == "chunked"
        assert "K=300" in caplog.text


def test_triton_takes_keys_shared_by_heads_as_a_stride_0_view():
    """Mamba-2's B and C are one per group, broadcast to its heads without a copy."""
    pytest.importorskip("triton")
    g = torch.Generator().manual_seed(5)
    b, t, h, n, p = 2, 40, 3, 16, 16
    shared_q, shared_k = (torch.randn(b, t, 1, n, generator=g) for _ in range(2))
    v = torch.randn(b, h, t, p, generator=g)
    ld = F.logsigmoid(torch.randn(b, h, t, generator=g))
    results = []
    for backend in ("reference", "triton"):
        leaves = [x.clone().to(DEVICE).requires_grad_() for x in (shared_q, shared_k, v)]
        q, k = (x.expand(b, t, h, n).transpose(1, 2) for x in leaves[:2])  # (B, H, T, N), head stride 0
        o, s = linear_attention(q, k, leaves[2], log_decay=ld.to(DEVICE), backend=backend)
        (o.square().sum() + s.sum()).backward()
        results.append([o.detach(), s] + [x.grad for x in leaves])
    _assert_close(results[1], results[0], ["o", "S_last", "dq", "dk", "dv"], TOL[torch.float32])
