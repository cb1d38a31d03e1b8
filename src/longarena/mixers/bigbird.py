"""BigBird (Zaheer et al. 2020): block window + global tokens + random blocks.

The sequence is cut into blocks of ``block_size`` tokens. A query block attends

- its own block and ``window_blocks`` blocks on each side (the sliding window),
- the global tokens, which also attend every token, and
- ``n_random_blocks`` key blocks chosen pseudo-randomly per head and query block among
  the blocks the first two parts do not reach.

Global tokens come in the paper's two flavours: ``mode="itc"`` (internal) makes the first
``n_global`` tokens of the input global; ``mode="etc"`` (extended) prepends ``n_global``
learned tokens that serve as global keys/values and queries, and drops their outputs (in a
single mixer they are learned memory slots, rebuilt at every call).

Random blocks are a pure function of ``(seed, head, query block, key block)``
(:func:`~longarena.ops.attention.patterns.block_hash`): the same seed gives the same blocks,
and padding a sequence does not change the blocks of its real tokens. Non-causal. Cost
``O(T * block_size * (2 * window_blocks + 1 + n_random_blocks) + n_global * T)``.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from longarena.config import ConfigError
from longarena.mixers import register
from longarena.mixers._sparse_attention import SparseAttentionConfig, SparseAttentionMixer
from longarena.ops.attention.patterns import BlockLocal, Geometry, GlobalTokens, Pattern, RandomBlocks

MODES = ("itc", "etc")


@dataclasses.dataclass
class BigBirdConfig(SparseAttentionConfig):
    #: BigBird's block: the unit of the window and of the random blocks (also the kernel tile)
    block_size: int = 16
    #: blocks on each side of a query's own block (1: three blocks in all, as in the paper)
    window_blocks: int = 1
    #: global tokens: the first n_global tokens ("itc") or n_global extra learned ones ("etc")
    n_global: int = 16
    mode: str = "itc"
    n_random_blocks: int = 3
    seed: int = 0

    def validate(self) -> None:
        super().validate()
        if self.mode not in MODES:
            raise ConfigError(
                f"mode must be one of {MODES} (internal / extended global tokens), got {self.mode!r}"
            )
        for name in ("window_blocks", "n_global", "n_random_blocks"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be an int >= 0, got {value!r}")
        if not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an int, got {self.seed!r}")


@register("bigbird")
class BigBird(SparseAttentionMixer):
    """BigBird: block sliding window + global tokens (ITC/ETC) + seeded random blocks."""

    config_class = BigBirdConfig
    causal = False

    def __init__(self, config: BigBirdConfig) -> None:
        super().__init__(config)
        d = config.d_model
        self.mode = config.mode
        self.n_global = config.n_global
        self.q_proj = nn.Linear(d, d, bias=config.bias)
        self.kv_proj = nn.Linear(d, 2 * d, bias=config.bias)
        self.out_proj = nn.Linear(d, d, bias=config.bias)
        if self.mode == "etc" and self.n_global:
            self.global_embed = nn.Parameter(torch.randn(self.n_global, d) * d**-0.5)

    def pattern(self, seq_len: int) -> Pattern:
        """The attention pattern over ``seq_len`` positions (extra global tokens included)."""
        c = self.config
        n = min(c.n_global, seq_len)
        local = BlockLocal(c.block_size, c.window_blocks)
        if n:
            local = local | GlobalTokens(tuple(range(n)))
        if not c.n_random_blocks:
            return local
        return local | RandomBlocks(c.block_size, c.n_random_blocks, c.seed, n_heads=self.n_heads, avoid=local)

    def random_blocks(self, seq_len: int, key_mask: Tensor | None = None) -> Tensor:
        """(B|1, H, nQb, nKb) bool: the random key blocks of each query block."""
        total = self._extended_len(seq_len)
        if not self.config.n_random_blocks:
            raise ValueError("this BigBird has n_random_blocks = 0")
        rand = self.pattern(total).parts[-1]
        return rand.table(Geometry(total, total, 0, self.n_heads, key_mask))

    def _extended_len(self, seq_len: int) -> int:
        return seq_len + (self.n_global if self.mode == "etc" else 0)

    def state_size(self, seq_len: int) -> int:
        return 2 * self.config.d_model * self._extended_len(seq_len)

    def _forward(self, x: Tensor, state: None, mask: Tensor | None) -> tuple[Tensor, None]:
        b, t, _ = x.shape
        key_mask = mask if mask is not None else torch.ones(b, t, dtype=torch.bool, device=x.device)
        q = self.rotate(self.split_heads(self.q_proj(x)))  # (B, H, T, K)
        k, v = self.kv_proj(x).chunk(2, dim=-1)
        k, v = self.rotate(self.split_heads(k)), self.split_heads(v)
        g = 0
        if self.mode == "etc" and self.n_global:
            # extra tokens carry no position: they are the same for every offset
            g = self.n_global
            extra = self.global_embed.to(x.dtype).expand(b, g, -1)
            gk, gv = self.kv_proj(extra).chunk(2, dim=-1)
            q = torch.cat((self.split_heads(self.q_proj(extra)), q), dim=2)  # (B, H, G+T, K)
            k = torch.cat((self.split_heads(gk), k), dim=2)
            v = torch.cat((self.split_heads(gv), v), dim=2)
            key_mask = torch.cat((torch.ones(b, g, dtype=torch.bool, device=x.device), key_mask), dim=1)
        backend = self.resolve_backend(x.device)
        y = self.attend(q, k, v, self.pattern(t + g), backend, key_mask=key_mask)  # (B, H, G+T, K)
        return self.out_proj(self.merge_heads(y[:, :, g:])), None
