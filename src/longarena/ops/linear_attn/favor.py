"""FAVOR+ (Performer): positive orthogonal random features and linear attention on them.

The softmax kernel is an expectation over Gaussian directions ``w ~ N(0, I_K)``:

    exp(q·k) = E_w[ exp(w·q - |q|²/2) · exp(w·k - |k|²/2) ],

so with ``M`` directions stacked in ``W: (M, K)`` the positive features
``φ(x) = exp(W x - |x|²/2) / sqrt(M)`` give an unbiased estimate ``φ(q)·φ(k) ≈ exp(q·k)``.
Drawing the directions in orthogonal blocks (rows scaled back to Gaussian norms) keeps
each estimate unbiased and lowers its variance. Softmax attention ``softmax(QKᵀ/√K) V``
becomes, with ``q, k`` scaled by ``K^(-1/4)``,

    y_t = φ(q_t)ᵀ S / φ(q_t)ᵀ z,   S = Σ_s φ(k_s) v_sᵀ  (M, V),   z = Σ_s φ(k_s)  (M,),

summed over every ``s`` (bidirectional) or over ``s <= t`` (causal: a prefix sum, whose
running ``(S, z)`` is the decoding state). Everything here is computed in float32.

Three forms of the same linear attention, each tested against the others:

- :func:`linear_attention_reference`: the quadratic masked form ``(φQ φKᵀ ⊙ mask) V``
  normalised by its row sums — the specification;
- :func:`linear_attention_chunked`: chunks of ``C`` tokens, quadratic inside a chunk and
  prefix sums of per-chunk ``φ(k) vᵀ`` across chunks — linear in ``T``;
- :func:`linear_attention_step`: one token from ``(S, z)`` — O(state) decoding.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

KERNELS = ("softmax", "relu")
#: added to ReLU features so a query whose features are all zero still has a denominator
RELU_EPS = 1e-3

__all__ = [
    "KERNELS",
    "favor_features",
    "linear_attention",
    "linear_attention_chunked",
    "linear_attention_reference",
    "linear_attention_step",
    "orthogonal_gaussian",
    "relu_features",
    "softmax_features",
]


def orthogonal_gaussian(
    n_features: int,
    dim: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``W: (M, K)`` whose rows are N(0, I_K) marginally and orthogonal within blocks of K.

    Each block of ``K`` rows is a Haar-random orthogonal matrix (QR of a Gaussian matrix,
    signs fixed by ``diag(R)``); its unit rows are then scaled by the norms of independent
    Gaussian vectors (chi-distributed), so each row has exactly the law of ``N(0, I_K)``
    and the FAVOR+ estimate stays unbiased.
    """
    if n_features <= 0:
        raise ValueError(f"the number of random features must be positive, got {n_features}")
    if dim <= 0:
        raise ValueError(f"the feature dimension must be positive, got {dim}")
    blocks = []
    for _ in range(math.ceil(n_features / dim)):
        gaussian = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
        q, r = torch.linalg.qr(gaussian)
        blocks.append(q.T * torch.sign(torch.diagonal(r))[:, None])  # rows orthonormal
    w = torch.cat(blocks, dim=0)[:n_features]  # (M, K)
    norms = torch.randn(n_features, dim, generator=generator, dtype=torch.float64).norm(dim=1)
    return (w * norms[:, None]).to(device=device, dtype=dtype)


def softmax_features(x: Tensor, projection: Tensor, *, is_query: bool, stabilize: bool = True) -> Tensor:
    """Positive random features of the softmax kernel: ``exp(W x - |x|²/2) / sqrt(M)``.

    x: (..., T, K) already scaled (``K^(-1/4)`` for softmax attention); projection: (M, K).
    Returns (..., T, M) in float32. With ``stabilize``, each *query* row is divided by its
    largest feature: a per-query constant, so it cancels between numerator and
    denominator and the output is unchanged. Keys are not rescaled, since any rescaling
    that depended on other keys would break chunked and step-by-step computation; their
    exponent ``w·k - |k|²/2`` is at most ``|w|²/2``, finite in float32 for K up to ~128.
    """
    x = x.float()
    logits = x @ projection.float().T - 0.5 * x.pow(2).sum(-1, keepdim=True)  # (..., T, M)
    if is_query and stabilize:
        logits = logits - logits.amax(dim=-1, keepdim=True).detach()
    return torch.exp(logits) / math.sqrt(projection.shape[0])


def relu_features(x: Tensor, projection: Tensor) -> Tensor:
    """Generalised-kernel features ``relu(W x) / sqrt(M) + eps``: x (..., T, K) -> (..., T, M) float32."""
    return torch.relu(x.float() @ projection.float().T) / math.sqrt(projection.shape[0]) + RELU_EPS


def favor_features(x: Tensor, projection: Tensor, *, kernel: str, is_query: bool) -> Tensor:
    """Features of queries or keys for ``kernel`` in :data:`KERNELS`."""
    if kernel == "softmax":
        return softmax_features(x, projection, is_query=is_query)
    if kernel == "relu":
        return relu_features(x, projection)
    raise ValueError(f"unknown FAVOR kernel {kernel!r}; known: {list(KERNELS)}")


def _divide(num: Tensor, den: Tensor) -> Tensor:
    # a query that sees only zero features (every key padded) gets 0, not NaN
    return num / den.clamp_min(torch.finfo(torch.float32).tiny).unsqueeze(-1)


def _initial(state: tuple[Tensor, Tensor] | None, q: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    b, h, _, m = q.shape
    if state is None:
        return q.new_zeros(b, h, m, v.shape[-1]), q.new_zeros(b, h, m)
    return state[0].float(), state[1].float()


def linear_attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool,
    state: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Normalised linear attention written as a masked quadratic form (the specification).

    q, k: feature maps (B, H, T, M); v: (B, H, T, V); state: ``(S: (B, H, M, V),
    z: (B, H, M))`` of the keys before this chunk (causal only). Returns ``y: (B, H, T, V)``
    float32 and the state after the chunk, ``(S + φKᵀV, z + Σ φK)``.
    """
    q, k, v = q.float(), k.float(), v.float()
    s0, z0 = _initial(state, q, v)
    scores = q @ k.transpose(-1, -2)  # (B, H, T, T)
    if causal:
        t = q.shape[2]
        scores = scores * torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
    num = scores @ v + q @ s0  # (B, H, T, V)
    den = scores.sum(-1) + (q * z0[:, :, None, :]).sum(-1)  # (B, H, T)
    y = _divide(num, den)
    return y, (s0 + k.transpose(-1, -2) @ v, z0 + k.sum(2))


def linear_attention_chunked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool,
    state: tuple[Tensor, Tensor] | None = None,
    chunk_size: int = 64,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Same contract as :func:`linear_attention_reference`, in time and memory linear in T.

    Bidirectional: one ``φKᵀV`` sum. Causal: the sequence is cut into chunks of C tokens;
    inside a chunk the masked quadratic form (C x C), across chunks the exclusive prefix
    sums of the per-chunk ``φKᵀV`` and ``Σ φK`` — all chunks in parallel.
    """
    q, k, v = q.float(), k.float(), v.float()
    s0, z0 = _initial(state, q, v)
    kv = k.transpose(-1, -2) @ v  # (B, H, M, V)
    z = k.sum(2)  # (B, H, M)
    if not causal:
        s, zz = s0 + kv, z0 + z
        return _divide(q @ s, (q * zz[:, :, None, :]).sum(-1)), (s, zz)

    b, h, t, m = q.shape
    c = max(1, min(chunk_size, t))
    n = math.ceil(t / c)
    pad = n * c - t
    if pad:
        # zero features and values add nothing to any sum; padded outputs are dropped
        q, k, v = (torch.nn.functional.pad(a, (0, 0, 0, pad)) for a in (q, k, v))
    qc = q.view(b, h, n, c, m)  # (B, H, N, C, M)
    kc = k.view(b, h, n, c, m)
    vc = v.view(b, h, n, c, -1)  # (B, H, N, C, V)
    kv_chunk = kc.transpose(-1, -2) @ vc  # (B, H, N, M, V)
    z_chunk = kc.sum(3)  # (B, H, N, M)
    s_before = s0[:, :, None] + kv_chunk.cumsum(2) - kv_chunk  # exclusive prefix, (B, H, N, M, V)
    z_before = z0[:, :, None] + z_chunk.cumsum(2) - z_chunk  # (B, H, N, M)
    scores = (qc @ kc.transpose(-1, -2)) * torch.ones(c, c, dtype=torch.bool, device=q.device).tril()  # (B, H, N, C, C)
    num = scores @ vc + qc @ s_before  # (B, H, N, C, V)
    den = scores.sum(-1) + (qc @ z_before.unsqueeze(-1)).squeeze(-1)  # (B, H, N, C)
    y = _divide(num, den).reshape(b, h, n * c, -1)[:, :, :t]
    return y, (s0 + kv, z0 + z)


def linear_attention_step(
    q: Tensor, k: Tensor, v: Tensor, state: tuple[Tensor, Tensor]
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """One causal token: q, k (B, H, M) features, v (B, H, V); state (S, z) -> (y (B, H, V), state)."""
    s, z = state
    k, v = k.float(), v.float()
    s = s.float() + k.unsqueeze(-1) * v.unsqueeze(-2)  # (B, H, M, V)
    z = z.float() + k
    q = q.float()
    y = _divide((q.unsqueeze(-2) @ s).squeeze(-2), (q * z).sum(-1))
    return y, (s, z)


def linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool,
    state: tuple[Tensor, Tensor] | None = None,
    backend: str = "chunked",
    chunk_size: int = 64,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Dispatch to ``reference`` or ``chunked`` linear attention."""
    if backend == "reference":
        return linear_attention_reference(q, k, v, causal=causal, state=state)
    if backend == "chunked":
        return linear_attention_chunked(q, k, v, causal=causal, state=state, chunk_size=chunk_size)
    raise ValueError(f"unknown linear-attention backend {backend!r}; known: ['reference', 'chunked']")
