"""LongT5 transient-global attention (TGlobal, Guo et al. 2022), encoder side.

Each token attends

- the tokens within ``local_radius`` of it, with a T5 bucketed relative bias on
  ``k - q``, and
- every *transient global token*: the input cut into fixed blocks of
  ``global_block_size`` tokens, each block summed (real tokens only) and RMS-normalised,
  then projected by the same key/value maps. These are rebuilt from the input in every
  layer, hence "transient". Their score bias is a second bucketed table, on the distance
  ``global block - the query's block``.

Tokens of a final incomplete block join the previous block (as in the reference
implementation), so a sequence of ``L`` real tokens has ``L // global_block_size`` global
tokens, whatever the padding after it. Non-causal. Cost
``O(T * (2 * local_radius + 1) + T * T / global_block_size)``: the global part is still
quadratic, 1/16 of dense attention at the default block of 16.

Scores use the usual ``1/sqrt(K)`` scaling (T5 folds it into its initialisation instead),
so that the mixer trains with the same default init as the other attention mixers.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor, nn

from longarena.config import ConfigError
from longarena.mixers import register
from longarena.mixers.base import Mixer, MixerConfig, check_heads
from longarena.ops.attention.patterns import KeyRange, SlidingWindow
from longarena.ops.attention.sparse import sparse_attention, sparse_backends_for


@dataclasses.dataclass
class LongT5Config(MixerConfig):
    n_heads: int = 4
    #: keys on each side of a query (127 in the paper)
    local_radius: int = 32
    #: tokens summed into one transient global token (16 in the paper)
    global_block_size: int = 16
    #: T5 relative-position buckets and the distance where the last bucket starts
    num_buckets: int = 32
    max_distance: int = 128
    #: tile edge of the block-sparse kernels
    block_size: int = 64
    eps: float = 1e-6

    def validate(self) -> None:
        super().validate()
        check_heads(self.d_model, self.n_heads)
        if not isinstance(self.local_radius, int) or self.local_radius < 0:
            raise ConfigError(f"local_radius must be an int >= 0, got {self.local_radius!r}")
        for name in ("global_block_size", "block_size", "max_distance"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name} must be an int >= 1, got {getattr(self, name)!r}")
        if not isinstance(self.num_buckets, int) or self.num_buckets < 4 or self.num_buckets % 2:
            raise ConfigError(f"num_buckets must be an even int >= 4 (half each way), got {self.num_buckets!r}")


def relative_bucket(relative: Tensor, num_buckets: int, max_distance: int) -> Tensor:
    """T5's bidirectional bucket of an integer relative position (int64, same shape).

    Half the buckets per direction; within a half, distances below a quarter of the
    buckets get one bucket each and longer ones share log-spaced buckets up to
    ``max_distance``, beyond which everything falls in the last bucket.
    """
    half = num_buckets // 2
    exact = half // 2
    side = (relative > 0).long() * half
    n = relative.abs()
    logs = torch.log(n.clamp(min=1).float() / exact) / math.log(max_distance / exact)
    far = (exact + (logs * (half - exact)).long()).clamp(max=half - 1)
    return side + torch.where(n < exact, n, far)


def global_block_ids(mask: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Transient-global block of every token and which global tokens exist.

    mask: (B, T) bool. Returns ``ids: (B, T)`` int64 (-1 for padding and for sequences
    shorter than one block) and ``valid: (B, T // size)`` bool. The tail of an incomplete
    final block joins the last complete one.
    """
    b, t = mask.shape
    pos = torch.arange(t, device=mask.device)
    complete = (mask & (pos % size == size - 1)).sum(-1, keepdim=True)  # (B, 1): full blocks
    ids = torch.minimum(pos // size, complete - 1)
    ids = torch.where(mask, ids, torch.full_like(ids, -1))
    valid = torch.arange(t // size, device=mask.device) < complete  # (B, Ng)
    return ids, valid


@register("longt5")
class LongT5(Mixer):
    """LongT5 TGlobal: local window + transient global tokens (block sums), relative biases."""

    config_class = LongT5Config
    backends = ("reference", "blocked", "flex")
    causal = False

    def __init__(self, config: LongT5Config) -> None:
        super().__init__(config)
        d, h = config.d_model, config.n_heads
        self.n_heads, self.head_dim = h, d // h
        self.q_proj = nn.Linear(d, d, bias=False)
        self.kv_proj = nn.Linear(d, 2 * d, bias=False)
        self.out_proj = nn.Linear(d, d, bias=False)
        self.global_norm_weight = nn.Parameter(torch.ones(d))
        self.local_bias = nn.Embedding(config.num_buckets, h)
        self.global_bias = nn.Embedding(config.num_buckets, h)
        self.local = SlidingWindow(config.local_radius)

    def available_backends(self, device: torch.device) -> tuple[str, ...]:
        return sparse_backends_for(device, self.head_dim)

    def state_size(self, seq_len: int) -> int:
        return 2 * self.d_model * (seq_len + seq_len // self.config.global_block_size)

    def _heads(self, t: Tensor) -> Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, n, K)

    def global_tokens(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Block sums of the real tokens, RMS-normalised: (B, T // g, D); ids (B, T); valid (B, T // g)."""
        b, t, d = x.shape
        g = self.config.global_block_size
        ids, valid = global_block_ids(mask, g)
        n = t // g
        slot = torch.where(ids >= 0, ids, torch.full_like(ids, n))  # padding goes to a dropped slot
        sums = x.new_zeros(b, n + 1, d).scatter_add(1, slot[..., None].expand(-1, -1, d), x)[:, :n]
        rms = sums.float().pow(2).mean(-1, keepdim=True).add(self.config.eps).rsqrt()
        return (sums.float() * rms).to(x.dtype) * self.global_norm_weight.to(x.dtype), ids, valid

    def attention_inputs(self, x: Tensor, mask: Tensor | None) -> dict[str, Any]:
        """Arguments of :func:`~longarena.ops.attention.sparse.sparse_attention` for ``x``.

        Keys are the T tokens followed by the ``T // global_block_size`` global tokens:
        q (B, H, T, K), k/v (B, H, T + Ng, K), the pattern, key_mask and score_bias.
        """
        b, t, d = x.shape
        c = self.config
        mask = mask if mask is not None else torch.ones(b, t, dtype=torch.bool, device=x.device)
        glob, ids, valid = self.global_tokens(x, mask)  # (B, Ng, D)
        n_glob = glob.shape[1]
        q = self._heads(self.q_proj(x))  # (B, H, T, K)
        k, v = self.kv_proj(torch.cat((x, glob), dim=1)).chunk(2, dim=-1)
        k, v = self._heads(k), self._heads(v)  # (B, H, T+Ng, K): token keys, then global keys
        local_table = self.local_bias.weight.t()  # (H, buckets)
        global_table = self.global_bias.weight.t()

        def score_bias(bi: Tensor, hi: Tensor, qi: Tensor, ki: Tensor) -> Tensor:
            # kernels may ask about padded query rows past T: their block id is irrelevant
            q_block = ids[bi, qi.clamp(max=t - 1)]
            near = local_table[hi, relative_bucket(ki - qi, c.num_buckets, c.max_distance)]
            far = global_table[hi, relative_bucket(ki - t - q_block, c.num_buckets, c.max_distance)]
            return torch.where(ki < t, near, far)

        return dict(
            q=q,
            k=k,
            v=v,
            pattern=(self.local & KeyRange(0, t)) | KeyRange(t, t + n_glob),
            key_mask=torch.cat((mask, valid), dim=1),
            score_bias=score_bias,
            q_offset=0,
        )

    def _forward(self, x: Tensor, state: None, mask: Tensor | None) -> tuple[Tensor, None]:
        b, t, d = x.shape
        backend = self.resolve_backend(x.device)
        inputs = self.attention_inputs(x, mask)
        y = sparse_attention(**inputs, backend=backend, block_size=self.config.block_size)  # (B, H, T, K)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, d)), None  # (B, T, H*K) -> (B, T, D)
