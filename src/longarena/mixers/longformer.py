"""Longformer (Beltagy et al. 2020): sliding-window attention, dilation, global tokens.

Every token attends the ``window`` keys on each side of it (every ``d``-th one, with a
dilation ``d`` per head). Task-chosen *global* tokens (the CLS token at 0, the question
of a QA input) attend every token and every token attends them, with their own query,
key and value projections as in the paper: the global rows are computed by a second,
dense ``G x T`` attention with ``Q_g, K_g, V_g`` and replace the windowed rows (the other
tokens see the global tokens' ordinary keys). Cost ``O(T * window + G * T)``.

``causal=True`` is the variant for language models: the window looks back only, there
are no global tokens, and the state is a bounded KV cache holding the last
``window * max(dilation)`` keys and values, so ``state_size`` stops growing.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from longarena.config import ConfigError
from longarena.mixers import register
from longarena.mixers._sparse_attention import SparseAttentionConfig, SparseAttentionMixer, check_global_indices
from longarena.ops.attention.patterns import GlobalTokens, KeyRange, Pattern, SlidingWindow
from longarena.ops.attention.sparse_reference import sparse_attention_reference


@dataclasses.dataclass
class LongformerConfig(SparseAttentionConfig):
    #: keys on each side of a query (causal: keys before it) at dilation 1
    window: int = 32
    #: one dilation for every head, or one per head
    dilation: int | tuple[int, ...] = 1
    causal: bool = False
    #: positions of global tokens; None means (0,) (a CLS token) when bidirectional and
    #: () when causal
    global_tokens: tuple[int, ...] | None = None

    def validate(self) -> None:
        super().validate()
        if isinstance(self.dilation, list):
            self.dilation = tuple(self.dilation)
        if isinstance(self.global_tokens, list):
            self.global_tokens = tuple(self.global_tokens)
        if not isinstance(self.window, int) or self.window < 0:
            raise ConfigError(f"window must be an int >= 0 (keys on each side), got {self.window!r}")
        dil = (self.dilation,) if isinstance(self.dilation, int) else self.dilation
        if not dil or any(not isinstance(d, int) or d < 1 for d in dil):
            raise ConfigError(f"dilation must be an int >= 1 or a tuple of them, got {self.dilation!r}")
        if len(dil) not in (1, self.n_heads):
            raise ConfigError(f"dilation has {len(dil)} values; give one, or one per head ({self.n_heads})")
        if self.global_tokens is not None:
            bad = [i for i in self.global_tokens if not isinstance(i, int) or i < 0]
            if bad:
                raise ConfigError(f"global_tokens must be positions >= 0, got {bad}")
            if self.causal and self.global_tokens:
                raise ConfigError(
                    "global tokens attend the whole sequence, future included, so causal=True takes "
                    f"global_tokens=() (got {self.global_tokens})"
                )


@dataclasses.dataclass
class WindowCache:
    """The last ``window * max(dilation)`` keys/values: (B, H, L, K); key_mask (B, L);
    ``position`` counts the tokens seen (RoPE places the next one there)."""

    k: Tensor
    v: Tensor
    key_mask: Tensor
    position: int = 0

    @property
    def length(self) -> int:
        return self.k.shape[2]


@register("longformer")
class Longformer(SparseAttentionMixer):
    """Longformer: sliding (dilated) window + global tokens with their own projections."""

    config_class = LongformerConfig

    def __init__(self, config: LongformerConfig) -> None:
        super().__init__(config)
        self.causal = config.causal
        d = config.d_model
        if config.global_tokens is None:
            self.global_tokens: tuple[int, ...] = () if config.causal else (0,)
        else:
            self.global_tokens = tuple(sorted(set(config.global_tokens)))
        self.window = SlidingWindow(config.window, causal=config.causal, dilation=config.dilation)
        self.pattern: Pattern = self.window
        self.q_proj = nn.Linear(d, d, bias=config.bias)
        self.kv_proj = nn.Linear(d, 2 * d, bias=config.bias)
        self.out_proj = nn.Linear(d, d, bias=config.bias)
        if self.global_tokens:
            self.pattern = self.window | GlobalTokens(self.global_tokens)
            # the paper starts the global projections as copies of the local ones
            self.global_q_proj = nn.Linear(d, d, bias=config.bias)
            self.global_kv_proj = nn.Linear(d, 2 * d, bias=config.bias)
            self.global_q_proj.load_state_dict(self.q_proj.state_dict())
            self.global_kv_proj.load_state_dict(self.kv_proj.state_dict())

    @property
    def cache_len(self) -> int:
        """Keys a causal step can reach: the bound on the KV cache."""
        return self.window.span

    def init_state(self, batch_size: int, device=None, dtype=None) -> WindowCache:
        dtype = dtype or self.q_proj.weight.dtype
        empty = torch.zeros(batch_size, self.n_heads, 0, self.head_dim, device=device, dtype=dtype)
        return WindowCache(empty, empty.clone(), torch.zeros(batch_size, 0, dtype=torch.bool, device=device))

    def state_size(self, seq_len: int) -> int:
        kept = min(seq_len, self.cache_len) if self.causal else seq_len
        return 2 * self.n_heads * self.head_dim * kept

    def _project(
        self, x: Tensor, q_proj: nn.Linear, kv_proj: nn.Linear, start: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v: (B, H, T, K) of x: (B, T, D), rotated at positions start .. start+T-1."""
        q = self.rotate(self.split_heads(q_proj(x)), start)  # (B, H, T, K)
        k, v = kv_proj(x).chunk(2, dim=-1)
        return q, self.rotate(self.split_heads(k), start), self.split_heads(v)

    def _forward(
        self, x: Tensor, state: WindowCache | None, mask: Tensor | None
    ) -> tuple[Tensor, WindowCache | None]:
        b, t, _ = x.shape
        check_global_indices(self, self.global_tokens, t)
        backend = self.resolve_backend(x.device)
        start = state.position if state is not None else 0
        q, k, v = self._project(x, self.q_proj, self.kv_proj, start)
        key_mask = mask if mask is not None else torch.ones(b, t, dtype=torch.bool, device=x.device)
        if state is not None:
            k = torch.cat((state.k.to(k.dtype), k), dim=2)  # (B, H, L+T, K)
            v = torch.cat((state.v.to(v.dtype), v), dim=2)
            key_mask = torch.cat((state.key_mask, key_mask), dim=1)
        offset = k.shape[2] - t
        y = self.attend(q, k, v, self.pattern, backend, key_mask=key_mask, q_offset=offset)  # (B, H, T, K)
        if self.global_tokens:
            rows = torch.tensor(self.global_tokens, device=x.device)
            qg, kg, vg = self._project(x, self.global_q_proj, self.global_kv_proj, 0)
            # G x T dense: linear in T, so the readable form is also the fast one
            yg = sparse_attention_reference(qg[:, :, rows], kg, vg, KeyRange(), key_mask=key_mask, q_offset=0)
            y = y.index_copy(2, rows, yg)
        y = self.out_proj(self.merge_heads(y))
        if not self.causal:
            return y, None
        keep = self.cache_len
        new_state = WindowCache(
            k[:, :, k.shape[2] - min(keep, k.shape[2]) :],
            v[:, :, v.shape[2] - min(keep, v.shape[2]) :],
            key_mask[:, key_mask.shape[1] - min(keep, key_mask.shape[1]) :],
            start + t,
        )
        return y, new_state

    def _step(self, x_t: Tensor, state: WindowCache) -> tuple[Tensor, WindowCache]:
        # one query against at most cache_len + 1 keys: the dense form is O(window) and
        # skips the block padding of the gather kernel
        with self.use_backend("reference"):
            y, state = self._forward(x_t.unsqueeze(1), state, None)
        return y.squeeze(1), state
