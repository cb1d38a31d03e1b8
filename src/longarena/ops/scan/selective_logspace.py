"""One block of Mamba's selective scan in closed form inside short chunks (log space).

Inside a chunk that starts from state ``h0``, with ``S_t = A sum_{r<=t} dt_r`` (``(N, E)`` per
step, the log of the decay since the chunk start) and ``x_s = dt_s u_s B_s``::

    h_t = exp(S_t) * (h0 + sum_{s<=t} exp(-S_s) * x_s)

so a whole chunk is one ``exp``, one division, a cumulative sum over its ``C`` steps and a
multiply, each done for every chunk of the block at once; a loop over the block's ``n``
chunk ends then carries the true state from chunk to chunk. ``y_t = C_t . h_t`` is a
batched ``(1, N) @ (N, E)`` product. The work is arranged ``(B, n, C, N, E)``, ``E``
innermost, so every elementwise pass and the read-out run over contiguous channels.

Why it is fast on CPU: ``exp2`` is about 3x cheaper than ``exp`` in PyTorch's vectorised
CPU kernels, so ``A`` is pre-scaled by ``log2(e)``, and ``exp(-S)`` is never computed (a
division by ``exp(S)`` costs one cheap pass). The price is range: ``exp(-S)`` grows as fast
as ``exp(S)`` shrinks, so a chunk is only run this way while ``|S| <= LOG_LIMIT`` over it
(``exp(60) ~ 1e26`` is far inside fp32); :func:`log_range` tells the caller, which falls
back to the product-only form for blocks beyond it. Precision is that of the recurrence:
the terms of the sum span up to ``exp(60)`` in size, but a term swamped in the sum at step
``t`` is one whose true contribution ``exp(S_t - S_s) x_s`` is equally small there.

:func:`log_block_backward` is the matching hand-written backward (it recomputes the
states instead of storing them): the state gradient runs backwards in time,
``gh_t = G_t + Abar_{t+1} gh_{t+1}`` with ``G_t = dy_t C_t``, which inside a chunk is the
mirror of the forward, ``gh_t = exp(-S_t) (sum_{s>=t} exp(S_s) G_s + exp(S_end) gh_end)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

LOG2E = 1.0 / math.log(2.0)
#: largest |A sum dt| over one chunk run in log space: exp(+-60) stays inside fp32's range
#: (~1e38) with room for the inputs' own magnitude
LOG_LIMIT = 60.0


def _chunked(t: Tensor, n: int, chunk: int, last: bool) -> Tensor:
    """``(B, L, F) -> (B, n, C, F, 1)`` (``last``) or ``(B, n, C, 1, F)``, zero-padded to
    ``n C`` steps: zero ``dt`` steps keep the state and add nothing, so padding is exact."""
    bsz, length, f = t.shape
    pad = n * chunk - length
    if pad:
        t = torch.cat((t, t.new_zeros(bsz, pad, f)), dim=1)
    t = t.reshape(bsz, n, chunk, f)
    return t[..., None] if last else t[..., None, :]


def log_range(delta: Tensor, a: Tensor, chunk: int) -> float:
    """``max |A sum dt|`` over any chunk of ``chunk`` steps of ``delta: (B, L, E)`` (chunks
    counted from the block start), for ``a: (E, N)``: the block runs in log space when this
    is at most ``LOG_LIMIT``."""
    n = -(-delta.shape[1] // chunk)
    cs = _chunked(delta, n, chunk, last=False).cumsum(2).abs()  # (B, n, C, 1, E)
    per_channel = cs.amax(dim=(0, 1, 2, 3))  # (E,)
    return (per_channel * a.abs().amax(dim=-1)).max().item()


class Workspace:
    """Reused ``(B, n, C, N, E)`` buffers, one per name, shared by the blocks of one call.

    Fresh multi-MiB tensors per block cost more than the arithmetic on CPU (each new
    allocation is new pages to fault in: measured 4x slower at 2 MiB per tensor), and a
    reused buffer stays in cache from one block to the next.
    """

    def __init__(self) -> None:
        self.buffers: dict[str, Tensor] = {}

    def get(self, name: str, like: Tensor, shape: tuple[int, ...]) -> Tensor:
        buf = self.buffers.get(name)
        if buf is None or buf.shape != shape or buf.dtype != like.dtype or buf.device != like.device:
            buf = self.buffers[name] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return buf


def _states(dt, u, b, a2t, h, ws: Workspace):
    """States of every step of a chunked block.

    dt, u: (B, n, C, 1, E); b: (B, n, C, N, 1); a2t: (N, E) = A^T log2(e); h: (B, N, E).
    Returns ``(hs (B, n, C, N, E), p = exp(S) (B, n, C, N, E), h_last (B, N, E))``, the
    first two in ``ws``'s buffers ``"hs"`` and ``"p"``.
    """
    shape = (*dt.shape[:3], a2t.shape[0], dt.shape[-1])
    p = torch.mul(dt.cumsum(2), a2t, out=ws.get("p", dt, shape)).exp2_()  # exp(S_t) since the chunk start
    hs = torch.mul(dt * u, b, out=ws.get("hs", dt, shape)).div_(p)  # x_s exp(-S_s)
    chunk = hs.shape[2]
    for i in range(1, chunk):  # a loop over C slabs beats torch.cumsum on a non-inner dim
        hs[:, :, i] += hs[:, :, i - 1]
    p_end = p[:, :, -1]  # (B, n, N, E)
    h_end = hs[:, :, -1] * p_end  # each chunk's end from a zero start
    carries = []
    for p_k, h_k in zip(p_end.unbind(1), h_end.unbind(1)):
        carries.append(h)
        h = torch.addcmul(h_k, p_k, h)
    hs.add_(torch.stack(carries, dim=1)[:, :, None]).mul_(p)
    return hs, p, h


def log_block_forward(
    u: Tensor, delta: Tensor, a: Tensor, b: Tensor, c: Tensor, h: Tensor, chunk: int, ws: Workspace
) -> tuple[Tensor, Tensor]:
    """One block in log space. u, delta: (B, L, E); a: (E, N); b, c: (B, L, N);
    h: (B, E, N) entering the block. Returns ``(y (B, L, E), h (B, E, N))``."""
    bsz, length, e = u.shape
    chunk = min(chunk, length)
    n = -(-length // chunk)
    a2t = (a * LOG2E).t().contiguous()  # (N, E): a strided operand would slow every pass 10x
    dt5, u5 = _chunked(delta, n, chunk, False), _chunked(u, n, chunk, False)  # (B, n, C, 1, E)
    b5, c5 = _chunked(b, n, chunk, True), _chunked(c, n, chunk, False)  # (B, n, C, N, 1), (B, n, C, 1, N)
    hs, _, h_last = _states(dt5, u5, b5, a2t, h.transpose(1, 2), ws)
    y = torch.matmul(c5, hs)  # (B, n, C, 1, E)
    return y.view(bsz, n * chunk, e)[:, :length], h_last.transpose(1, 2)


def log_block_backward(u, delta, a, b, c, h, gy, gh_out, chunk, ws: Workspace):
    """Gradients of one log-space block; inputs as :func:`log_block_forward`, ``gy: (B, L, E)``
    the output gradient and ``gh_out: (B, E, N)`` the gradient of the state leaving it.
    Returns ``(gu, gdelta (B, L, E), ga (E, N), gb, gc (B, L, N), gh_in (B, E, N))``."""
    bsz, length, e = u.shape
    chunk = min(chunk, length)
    n = -(-length // chunk)
    a2t = (a * LOG2E).t().contiguous()
    dt5, u5 = _chunked(delta, n, chunk, False), _chunked(u, n, chunk, False)
    b5, c5 = _chunked(b, n, chunk, True), _chunked(c, n, chunk, False)
    gy5 = _chunked(gy, n, chunk, False)  # (B, n, C, 1, E)
    hs, p, _ = _states(dt5, u5, b5, a2t, h.transpose(1, 2), ws)
    gc = torch.matmul(hs, gy5.transpose(-1, -2))  # (B, n, C, N, 1): sum_e dy_te h_tne

    # gh_t = exp(-S_t) (sum_{s>=t} exp(S_s) G_s + exp(S_end) gh_end), G_s = dy_s C_s
    r = torch.mul(c5.transpose(-1, -2), gy5, out=ws.get("r", p, p.shape)).mul_(p)  # (B, n, C, N, E)
    for i in range(chunk - 2, -1, -1):
        r[:, :, i] += r[:, :, i + 1]
    p_end = p[:, :, -1]
    g = gh_out.transpose(1, 2)  # (B, N, E): gradient of the state leaving the current chunk
    g_ends = []
    for k in range(n - 1, -1, -1):
        g_ends.append(g)
        g = torch.addcmul(r[:, k, 0], p_end[:, k], g)  # gradient of the state entering chunk k
    g_ends = torch.stack(g_ends[::-1], dim=1)  # (B, n, N, E)
    gh = r.addcmul_(p_end[:, :, None], g_ends[:, :, None]).div_(p)

    dtu = dt5 * u5  # (B, n, C, 1, E)
    # gradient of the log decay dt_t A: gh_t * Abar_t h_{t-1} = gh_t * (h_t - x_t)
    scratch = ws.get("x", p, p.shape)
    g_log = hs.sub_(torch.mul(dtu, b5, out=scratch)).mul_(gh)
    ga = torch.mul(g_log, dt5, out=scratch).sum(dim=(0, 1, 2)).t()  # (E, N)
    g_dtu = torch.matmul(b5.transpose(-1, -2), gh)  # (B, n, C, 1, E): sum_n gh B
    gdelta = g_dtu * u5 + g_log.mul_(a.t().contiguous()).sum(dim=3, keepdim=True)
    gu = g_dtu * dt5
    gb = torch.matmul(gh, dtu.transpose(-1, -2))  # (B, n, C, N, 1): sum_e gh dtu

    def unchunk(t: Tensor) -> Tensor:
        return t.reshape(bsz, n * chunk, -1)[:, :length]

    return unchunk(gu), unchunk(gdelta), ga, unchunk(gb), unchunk(gc), g.transpose(1, 2)
