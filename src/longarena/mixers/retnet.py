"""RetNet's multi-scale retention (Sun et al. 2023).

Per head h with its own decay ``gamma_h = 1 - 2^(-5 - h)``::

    q, k = rotate(x W_Q, n), rotate(x W_K, n) / sqrt(K)     xPos-style rotation at position n
    v = x W_V
    Y_h = GroupNorm_h(Retention_gamma_h(q, k, v))           (see ops/linear_attn/retention.py)
    y = (swish(x W_G) * Y) W_O

The rotation makes ``q_n . k_m`` depend on ``n - m`` only and the decay gives the
``gamma^(n - m)`` amplitude of xPos, so together they are xPos with a fixed per-head
scale. The state is the (B, H, K, V) retention matrix plus the position reached, so
``step`` costs O(1) in T and ``state_size`` does not grow.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longarena.config import ConfigError
from longarena.mixers import register
from longarena.mixers.base import Mixer, MixerConfig, check_heads
from longarena.ops.linear_attn.retention import default_gammas, retention, retention_step
from longarena.positions.rope import apply_rotary


@dataclasses.dataclass
class RetNetConfig(MixerConfig):
    n_heads: int = 4
    #: value width per head over key width per head (the paper uses 2)
    value_factor: int = 2
    #: decay per head, each in (0, 1); None = RetNet's ``1 - 2^(-5 - h)``
    gammas: tuple[float, ...] | None = None
    #: tokens per chunk of the chunked torch form (the Triton kernels use 64)
    chunk_size: int = 64
    #: base of the rotation frequencies ``theta^(-2i/K)``
    theta: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        # Config.from_dict turns lists back into tuples only for plain tuple fields, not
        # for ``tuple | None``; normalise here so configs read from JSON compare equal
        if isinstance(self.gammas, list):
            self.gammas = tuple(self.gammas)
        super().__post_init__()

    def validate(self) -> None:
        super().validate()
        check_heads(self.d_model, self.n_heads)
        if (self.d_model // self.n_heads) % 2:
            raise ConfigError(
                f"the xPos rotation pairs channels, so the key width per head d_model / n_heads "
                f"= {self.d_model // self.n_heads} must be even"
            )
        if self.value_factor <= 0:
            raise ConfigError(f"value_factor must be a positive int, got {self.value_factor}")
        if self.gammas is not None:
            if len(self.gammas) != self.n_heads:
                raise ConfigError(f"gammas needs one decay per head ({self.n_heads}), got {len(self.gammas)}")
            bad = [g for g in self.gammas if not 0.0 < g < 1.0]
            if bad:
                raise ConfigError(f"every decay in gammas must lie in (0, 1), got {bad}")
        if self.chunk_size <= 0:
            raise ConfigError(f"chunk_size must be a positive int, got {self.chunk_size}")
        if self.theta <= 1:
            raise ConfigError(f"theta must be > 1, got {self.theta}")


@dataclasses.dataclass
class RetentionState:
    """Retention matrix ``s: (B, H, K, V)`` (float32) and the number of tokens seen."""

    s: Tensor
    position: int


@register("retnet")
class RetNet(Mixer):
    """Multi-scale retention (RetNet): decayed linear attention, recurrent/parallel/chunked/Triton."""

    config_class = RetNetConfig
    #: the recurrent loop is the specification; ``chunked`` is the CPU path, ``triton`` the
    #: same chunked form as GPU kernels (:mod:`longarena.ops.linear_attn.triton_chunk`)
    backends = ("reference", "parallel", "chunked", "triton")
    triton_backends = ("triton",)

    def __init__(self, config: RetNetConfig) -> None:
        super().__init__(config)
        d, h = config.d_model, config.n_heads
        self.n_heads = h
        self.key_dim = d // h
        self.value_dim = self.key_dim * config.value_factor
        self.chunk_size = config.chunk_size
        self.norm_eps = config.norm_eps
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, h * self.value_dim, bias=False)
        self.g_proj = nn.Linear(d, h * self.value_dim, bias=False)
        self.out_proj = nn.Linear(h * self.value_dim, d, bias=False)
        self.norm_weight = nn.Parameter(torch.ones(h * self.value_dim))
        self.norm_bias = nn.Parameter(torch.zeros(h * self.value_dim))
        # fixed, not learned; kept out of the buffers so that casting the module to bf16
        # cannot round 1 - gamma away
        self.gammas = tuple(default_gammas(h).tolist()) if config.gammas is None else tuple(config.gammas)
        inv_freq = config.theta ** (-torch.arange(0, self.key_dim, 2, dtype=torch.float64) / self.key_dim)
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)

    def gamma(self, device: torch.device) -> Tensor:
        """Decays (H,) in float64."""
        return torch.tensor(self.gammas, dtype=torch.float64, device=device)

    def init_state(self, batch_size: int, device=None, dtype=None) -> RetentionState:
        s = torch.zeros(batch_size, self.n_heads, self.key_dim, self.value_dim, device=device, dtype=torch.float32)
        return RetentionState(s, 0)

    def state_size(self, seq_len: int) -> int:
        return self.n_heads * self.key_dim * self.value_dim

    def _qkvg(self, x: Tensor, offset: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        b, t, _ = x.shape
        h = self.n_heads
        q = self.q_proj(x).view(b, t, h, self.key_dim).transpose(1, 2)  # (B, H, T, K)
        k = self.k_proj(x).view(b, t, h, self.key_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, h, self.value_dim).transpose(1, 2)  # (B, H, T, V)
        pos = torch.arange(offset, offset + t, device=x.device)
        q = apply_rotary(q, pos, self.inv_freq)
        k = apply_rotary(k, pos, self.inv_freq) * self.key_dim**-0.5
        return q, k, v, self.g_proj(x)

    def _output(self, o: Tensor, g: Tensor) -> Tensor:
        """o: (B, H, T, V) retention output, g: (B, T, H*V) gate pre-activation -> (B, T, D)."""
        b, h, t, dv = o.shape
        o = o.transpose(1, 2).float()  # (B, T, H, V)
        # group norm: one group per head, statistics per token
        o = (o - o.mean(-1, keepdim=True)) * torch.rsqrt(o.var(-1, unbiased=False, keepdim=True) + self.norm_eps)
        o = o.reshape(b, t, h * dv).to(g.dtype) * self.norm_weight + self.norm_bias
        return self.out_proj(F.silu(g) * o)

    def _forward(self, x: Tensor, state: RetentionState | None, mask: Tensor | None) -> tuple[Tensor, RetentionState]:
        # causal: right padding cannot reach earlier outputs, so the mask needs no handling
        offset = state.position if state is not None else 0
        q, k, v, g = self._qkvg(x, offset)
        backend = self.resolve_backend(x.device)
        o, s = retention(
            q,
            k,
            v,
            self.gamma(x.device),
            None if state is None else state.s,
            # under auto the op picks the kernels itself and says why when it cannot take them
            backend="auto" if self.backend == "auto" and backend != "parallel" else backend,
            chunk_size=self.chunk_size,
        )
        return self._output(o, g), RetentionState(s, offset + x.shape[1])

    def _step(self, x_t: Tensor, state: RetentionState) -> tuple[Tensor, RetentionState]:
        q, k, v, g = self._qkvg(x_t[:, None], state.position)
        o, s = retention_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], self.gamma(x_t.device), state.s)
        return self._output(o[:, :, None], g)[:, 0], RetentionState(s, state.position + 1)
