"""Mega: moving-average equipped gated attention (Ma et al. 2023), and Mega-chunk.

A multi-dimensional damped EMA gives every channel d an N-dimensional state::

    h_t = alpha * beta * x_t + (1 - alpha * delta) * h_{t-1}     alpha, delta in (0, 1): (D, N)
    ema_t = sum_n eta_n h_{t, n}

computed as a long convolution with kernel ``k[d, s] = sum_n eta alpha beta (1 - alpha delta)^s``
(and as the recurrence in ``step``; ops/linear_attn/diagonal_ssm.py). Then, with
``x' = silu(ema + omega * x)``, a single-head gated attention whose queries and keys
are two scaled copies of one shared projection ``z`` of the EMA output::

    v = silu(x W_v)                     (B, T, V)
    u, z, r, hx = sigmoid/silu splits of x' W
    q, k = z * kappa_q + mu_q, z * kappa_k + mu_k      (B, T, Z)
    o = softmax(q k^T / sqrt(Z), causal) v
    y = u * silu(hx + (r * o) W_h) + (1 - u) * x

``chunk_size=None`` attends over the whole prefix (quadratic; the state keeps every key
and value). ``chunk_size=C`` is Mega-chunk: tokens attend only within their own block of
C positions (blocks are fixed in absolute position), so the cost is linear in T and the
state holds the EMA state plus the keys and values of the current, incomplete block.
No extra position scheme: the EMA is causal and already tells tokens apart by position.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longarena.config import ConfigError
from longarena.mixers import register
from longarena.mixers.base import Mixer, MixerConfig, MixerInputError
from longarena.ops.attention import attention
from longarena.ops.linear_attn.diagonal_ssm import diagonal_ssm, diagonal_ssm_step


#: mixer path -> long_conv backend ("auto": direct up to 64 taps, else FFT)
CONV_BACKEND = {"reference": "reference", "fft": "fft", "conv": "auto"}

@dataclasses.dataclass
class MegaConfig(MixerConfig):
    #: EMA dimensions per channel (N)
    ndim: int = 16
    #: width of the shared query/key representation (Z)
    z_dim: int = 32
    #: width of values and of the attention output (V); None = 2 * d_model
    v_dim: int | None = None
    #: None = full causal attention (quadratic); C = Mega-chunk, attention within blocks of C
    chunk_size: int | None = None

    def validate(self) -> None:
        super().validate()
        for name in ("ndim", "z_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        if self.v_dim is not None and (not isinstance(self.v_dim, int) or self.v_dim <= 0):
            raise ConfigError(f"v_dim must be a positive int or None (= 2 * d_model), got {self.v_dim!r}")
        if self.chunk_size is not None and (not isinstance(self.chunk_size, int) or self.chunk_size <= 0):
            raise ConfigError(
                f"chunk_size must be a positive int (Mega-chunk) or None (full attention), got {self.chunk_size!r}"
            )


@dataclasses.dataclass
class MegaState:
    """EMA state ``ema: (B, D, N)`` (float32), cached keys ``k: (B, n, Z)`` and values
    ``v: (B, n, V)``, and the number of tokens seen. With Mega-chunk, ``n = position mod C``:
    only the current, incomplete block is kept."""

    ema: Tensor
    k: Tensor
    v: Tensor
    position: int


@register("mega")
class Mega(Mixer):
    """Mega: damped multi-dimensional EMA + single-head gated attention (chunk_size=C: Mega-chunk)."""

    config_class = MegaConfig
    #: reference: EMA as a recurrence, attention written out; fft: EMA as an FFT convolution,
    #: SDPA; conv: as fft, but long_conv picks direct convolution up to 64 taps
    backends = ("reference", "fft", "conv")

    def __init__(self, config: MegaConfig) -> None:
        super().__init__(config)
        d, n, z = config.d_model, config.ndim, config.z_dim
        v = config.v_dim or 2 * d
        self.ndim, self.z_dim, self.v_dim = n, z, v
        self.chunk_size = config.chunk_size
        # EMA parameters: alpha, delta = sigmoid(.) start near 1/2; beta alternates sign
        # over the N dimensions so that the dimensions start out different
        self.alpha_logit = nn.Parameter(torch.randn(d, n) * 0.2)
        self.delta_logit = nn.Parameter(torch.randn(d, n) * 0.2)
        signs = torch.ones(n)
        signs[1::2] = -1.0
        self.beta = nn.Parameter(signs + torch.randn(d, n) * 0.02)
        self.eta = nn.Parameter(torch.randn(d, n) / n**0.5)
        self.omega = nn.Parameter(torch.randn(d))
        self.v_proj = nn.Linear(d, v)
        self.mx_proj = nn.Linear(d, d + z + v + d)
        self.qk_scale = nn.Parameter(torch.randn(2, z) * 0.1 + 1.0)
        self.qk_shift = nn.Parameter(torch.zeros(2, z))
        self.h_proj = nn.Linear(v, d)

    def ema_params(self) -> tuple[Tensor, Tensor, Tensor]:
        """``log a, b, c: (D, N)`` of the EMA as a diagonal SSM (float32)."""
        alpha, delta = torch.sigmoid(self.alpha_logit.float()), torch.sigmoid(self.delta_logit.float())
        return torch.log1p(-alpha * delta), alpha * self.beta.float(), self.eta.float()

    def init_state(self, batch_size: int, device=None, dtype=None) -> MegaState:
        dtype = dtype or self.v_proj.weight.dtype
        ema = torch.zeros(batch_size, self.d_model, self.ndim, device=device, dtype=torch.float32)
        k = torch.zeros(batch_size, 0, self.z_dim, device=device, dtype=dtype)
        v = torch.zeros(batch_size, 0, self.v_dim, device=device, dtype=dtype)
        return MegaState(ema, k, v, 0)

    def state_size(self, seq_len: int) -> int:
        """EMA state plus cached keys/values: all ``seq_len`` of them, or at most C - 1 with Mega-chunk."""
        cached = seq_len if self.chunk_size is None else min(seq_len, self.chunk_size - 1)
        return self.d_model * self.ndim + cached * (self.z_dim + self.v_dim)

    def check_state(self, state: MegaState, batch_size: int) -> None:
        super().check_state(state, batch_size)
        if not isinstance(state, MegaState):
            raise MixerInputError(f"Mega expects a MegaState (from init_state or a forward), got {type(state).__name__}")
        expected = state.position if self.chunk_size is None else state.position % self.chunk_size
        if state.k.shape[1] != expected or state.ema.shape[1:] != (self.d_model, self.ndim):
            kind = "full attention" if self.chunk_size is None else f"Mega-chunk with chunk_size={self.chunk_size}"
            raise MixerInputError(
                f"this Mega ({kind}, D={self.d_model}, ndim={self.ndim}) expects a state holding {expected} "
                f"cached keys after {state.position} tokens and an EMA state (B, {self.d_model}, {self.ndim}); got "
                f"{state.k.shape[1]} keys and {tuple(state.ema.shape)}: was it made by a Mega of another config?"
            )

    def _gates(self, x: Tensor, ema: Tensor) -> tuple[Tensor, ...]:
        """x, ema: (B, T, D) -> update gate u, queries, keys, values, reset gate r, hx."""
        d, z = self.d_model, self.z_dim
        mx = F.silu(ema + self.omega * x)
        u, zr, hx = self.mx_proj(mx).split([d, z + self.v_dim, d], dim=-1)
        shared, r = F.silu(zr).split([z, self.v_dim], dim=-1)
        q = shared * self.qk_scale[0] + self.qk_shift[0]  # (B, T, Z)
        k = shared * self.qk_scale[1] + self.qk_shift[1]
        v = F.silu(self.v_proj(x))  # (B, T, V)
        return torch.sigmoid(u), q, k, v, r, hx

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, n_cached: int, backend: str) -> Tensor:
        """q: (B, T, Z) new queries; k: (B, n+T, Z), v: (B, n+T, V) cached then new -> (B, T, V)."""
        b, t, _ = q.shape
        scale = self.z_dim**-0.5
        if self.chunk_size is None:
            y = attention(q[:, None], k[:, None], v[:, None], causal=True, backend=backend, scale=scale)
            return y[:, 0]
        # the cached keys start a block, so cached + new tokens split into whole blocks
        c = self.chunk_size
        total = n_cached + t
        blocks = -(-total // c)
        pad = blocks * c - total
        # queries of the cached tokens are placeholders whose outputs are dropped; padded
        # keys come after every real query, so the causal mask hides them
        q = F.pad(q, (0, 0, n_cached, pad))
        k, v = F.pad(k, (0, 0, 0, pad)), F.pad(v, (0, 0, 0, pad))
        q, k, v = (x.view(b, blocks, c, x.shape[-1]) for x in (q, k, v))  # (B, blocks, C, .)
        y = attention(q, k, v, causal=True, backend=backend, scale=scale)  # (B, blocks, C, V)
        return y.reshape(b, blocks * c, self.v_dim)[:, n_cached : n_cached + t]

    def _kept(self, k: Tensor, v: Tensor, position: int) -> tuple[Tensor, Tensor]:
        """The keys/values the state carries after ``position`` tokens: all, or the open block."""
        if self.chunk_size is None:
            return k, v
        n_open = position % self.chunk_size
        return k[:, k.shape[1] - n_open :], v[:, v.shape[1] - n_open :]

    def _forward(self, x: Tensor, state: MegaState | None, mask: Tensor | None) -> tuple[Tensor, MegaState]:
        # causal: right padding cannot reach earlier outputs, so the mask needs no handling
        backend = self.resolve_backend(x.device)
        state = state if state is not None else self.init_state(x.shape[0], x.device, x.dtype)
        log_a, b, c = self.ema_params()
        if backend == "reference":
            ema, h = diagonal_ssm(x, log_a, b, c, state.ema, mode="scan", backend="reference")
        else:
            ema, h = diagonal_ssm(x, log_a, b, c, state.ema, mode="conv", backend=CONV_BACKEND[backend])
        u, q, k, v, r, hx = self._gates(x, ema)
        k_all = torch.cat((state.k.to(k.dtype), k), dim=1)
        v_all = torch.cat((state.v.to(v.dtype), v), dim=1)
        o = self._attend(q, k_all, v_all, state.k.shape[1], "reference" if backend == "reference" else "sdpa")
        y = u * F.silu(hx + self.h_proj(r * o)) + (1 - u) * x
        position = state.position + x.shape[1]
        return y, MegaState(h, *self._kept(k_all, v_all, position), position)

    def _step(self, x_t: Tensor, state: MegaState) -> tuple[Tensor, MegaState]:
        log_a, b, c = self.ema_params()
        ema, h = diagonal_ssm_step(x_t, log_a, b, c, state.ema)
        u, q, k, v, r, hx = self._gates(x_t[:, None], ema[:, None])
        k_all = torch.cat((state.k.to(k.dtype), k), dim=1)  # (B, n+1, Z)
        v_all = torch.cat((state.v.to(v.dtype), v), dim=1)
        # the new token attends to its block (or prefix): every cached key plus itself
        backend = "reference" if self.resolve_backend(x_t.device) == "reference" else "sdpa"
        o = attention(q[:, None], k_all[:, None], v_all[:, None], causal=True, backend=backend, scale=self.z_dim**-0.5)
        y = u * F.silu(hx + self.h_proj(r * o[:, 0])) + (1 - u) * x_t[:, None]
        position = state.position + 1
        return y[:, 0], MegaState(h, *self._kept(k_all, v_all, position), position)
