"""Softmax attention on ``torch.nn.functional.scaled_dot_product_attention``.

SDPA picks FlashAttention / memory-efficient kernels on GPU and a fused kernel on CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from longarena.ops.attention.reference import attention_mask


def attention_sdpa(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool,
    bias: Tensor | None = None,
    key_mask: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """Same contract as :func:`attention_reference`."""
    tq, tk = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if bias is None and key_mask is None and (not causal or tq == tk):
        # the fused kernels only see is_causal with a square mask (no cache offset)
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=gqa)
    mask = attention_mask(tq, tk, causal=causal, key_mask=key_mask, device=q.device)
    attn: Tensor | None = mask
    if bias is not None:
        attn = bias.to(q.dtype)
        if mask is not None:
            attn = attn.masked_fill(~mask, float("-inf"))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn, scale=scale, enable_gqa=gqa)
    if key_mask is not None:
        # a query whose keys are all padding gets NaN from SDPA; the reference gives 0
        out = torch.nan_to_num(out, nan=0.0)
    return out
