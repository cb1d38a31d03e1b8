"""H3, Hungry Hungry Hippos (Fu et al. 2023): two SSMs and multiplicative interactions.

Per head (H heads of width K = d_model / H)::

    q, k, v = x W_Q, x W_K, x W_V                       (B, T, D)
    kbar_t = sum_{i < m} w_i * k_{t-i}                   shift SSM: a learned FIR filter of m taps
    S_t = A S_{t-1} + B (kbar_t v_t^T),  Y_t = Re C S_t + D kbar_t v_t^T
                                                         diagonal SSM on every entry of the
                                                         (K, K) outer product, per-head A, B, C, D
    o_t = q_t Y_t                                        (1, K) x (K, K) -> (1, K)
    y = o W_O

The shift SSM's state is its last ``m - 1`` inputs; with ``A = 0`` and ``B = e_1`` shifting
it along, its kernel is just the m output weights, so it is run as a short convolution.
The diagonal SSM uses S4D-Lin (``A_n = -1/2 + i pi n``, zero-order hold); training runs it
as a long FFT convolution, ``step`` as its recurrence. ``head_dim=1`` is the original H3
(``kbar * v`` elementwise); a larger head dim is the multi-head variant with a (K, K)
state per head and per SSM mode.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn

from longarena.config import ConfigError
from longarena.mixers import register
from longarena.mixers.base import Mixer, MixerConfig
from longarena.ops.conv import long_conv
from longarena.ops.linear_attn.diagonal_ssm import diagonal_ssm, diagonal_ssm_step


#: mixer path -> long_conv backend ("auto": direct up to 64 taps, else FFT)
CONV_BACKEND = {"reference": "reference", "fft": "fft", "conv": "auto"}

@dataclasses.dataclass
class H3Config(MixerConfig):
    #: width per head; 1 = the original H3, larger = the multi-head variant
    head_dim: int = 1
    #: state size of the diagonal SSM (N real numbers = N / 2 complex modes)
    d_state: int = 64
    #: taps of the shift SSM (its state keeps shift_size - 1 past keys)
    shift_size: int = 4
    #: range of the diagonal SSM's step sizes, sampled log-uniformly per head
    dt_min: float = 1e-3
    dt_max: float = 1e-1

    def validate(self) -> None:
        super().validate()
        if self.head_dim <= 0 or self.d_model % self.head_dim:
            raise ConfigError(f"d_model ({self.d_model}) must be a positive multiple of head_dim ({self.head_dim})")
        if self.d_state <= 0 or self.d_state % 2:
            raise ConfigError(
                f"d_state must be a positive even int (N/2 complex modes in conjugate pairs), got {self.d_state}"
            )
        if self.shift_size < 1:
            raise ConfigError(f"shift_size must be >= 1, got {self.shift_size}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ConfigError(f"need 0 < dt_min <= dt_max, got dt_min={self.dt_min}, dt_max={self.dt_max}")


@dataclasses.dataclass
class H3State:
    """Last ``m - 1`` keys ``keys: (B, m-1, D)`` (the shift SSM) and the complex diagonal
    SSM state ``ssm: (B, H*K*K, N/2)``, one per entry of each head's outer product."""

    keys: Tensor
    ssm: Tensor


@register("h3")
class H3(Mixer):
    """H3: shift SSM on keys, diagonal SSM on key-value products, gated by queries."""

    config_class = H3Config
    #: reference: the diagonal SSM as a recurrence; fft: as an FFT convolution; conv: as a
    #: convolution through long_conv's own choice (direct up to 64 taps, else FFT)
    backends = ("reference", "fft", "conv")

    def __init__(self, config: H3Config) -> None:
        super().__init__(config)
        d = config.d_model
        self.head_dim = config.head_dim
        self.n_heads = d // config.head_dim
        self.shift_size = config.shift_size
        h, half = self.n_heads, config.d_state // 2
        self.half_state = half
        self.qkv_proj = nn.Linear(d, 3 * d)
        self.out_proj = nn.Linear(d, d)
        # shift SSM kernel (its C): random, so that every lag starts with a gradient; a kernel
        # started near "the current key" must first unlearn that to relate a value to the key
        # before it, and learns associative recall several times more slowly
        self.shift_kernel = nn.Parameter(torch.randn(d, config.shift_size) / math.sqrt(config.shift_size))
        # S4D-Lin initialisation of the diagonal SSM, one set per head
        log_dt = torch.rand(h) * (math.log(config.dt_max) - math.log(config.dt_min)) + math.log(config.dt_min)
        self.log_dt = nn.Parameter(log_dt)
        self.log_neg_a_real = nn.Parameter(torch.full((h, half), math.log(0.5)))
        self.a_imag = nn.Parameter(math.pi * torch.arange(half).float().repeat(h, 1))
        self.c = nn.Parameter(torch.randn(h, half, 2) * 0.5**0.5)
        self.skip = nn.Parameter(torch.randn(h))

    def ssm_params(self) -> tuple[Tensor, Tensor, Tensor]:
        """Discretised (zero-order hold) per-head ``log a, b, c: (H, N/2)`` complex64."""
        dt = self.log_dt.float().exp()[:, None]  # (H, 1)
        a = torch.complex(-self.log_neg_a_real.float().exp(), self.a_imag.float())  # (H, N/2)
        log_a = dt * a
        b = (torch.exp(log_a) - 1) / a  # ZOH with B = 1
        # conjugate pairs: Re of twice the sum over half the modes
        c = 2 * torch.view_as_complex(self.c.float().contiguous())
        return log_a, b, c

    def init_state(self, batch_size: int, device=None, dtype=None) -> H3State:
        dtype = dtype or self.qkv_proj.weight.dtype
        keys = torch.zeros(batch_size, self.shift_size - 1, self.d_model, device=device, dtype=dtype)
        channels = self.n_heads * self.head_dim**2
        ssm = torch.zeros(batch_size, channels, self.half_state, device=device, dtype=torch.complex64)
        return H3State(keys, ssm)

    def state_size(self, seq_len: int) -> int:
        # complex modes count two real numbers each
        return (self.shift_size - 1) * self.d_model + self.n_heads * self.head_dim**2 * self.half_state * 2

    def _outer(self, kbar: Tensor, v: Tensor) -> Tensor:
        """kbar, v: (B, T, D) -> per-head outer products flattened to (B, T, H*K*K)."""
        b, t, _ = v.shape
        h, kd = self.n_heads, self.head_dim
        kv = kbar.view(b, t, h, kd, 1) * v.view(b, t, h, 1, kd)  # (B, T, H, K, K)
        return kv.reshape(b, t, h * kd * kd)

    def _readout(self, q: Tensor, y: Tensor, kv: Tensor) -> Tensor:
        """q: (B, T, D), y / kv: (B, T, H*K*K) -> o W_O: (B, T, D), o_t = q_t (Y_t + D kv_t) per head."""
        b, t, _ = q.shape
        h, kd = self.n_heads, self.head_dim
        y = y.view(b, t, h, kd, kd) + self.skip.view(h, 1, 1) * kv.view(b, t, h, kd, kd)
        o = torch.einsum("bthi,bthij->bthj", q.view(b, t, h, kd), y)  # (B, T, H, K)
        return self.out_proj(o.reshape(b, t, self.d_model))

    def _forward(self, x: Tensor, state: H3State | None, mask: Tensor | None) -> tuple[Tensor, H3State]:
        # causal: right padding cannot reach earlier outputs, so the mask needs no handling
        backend = self.resolve_backend(x.device)
        state = state if state is not None else self.init_state(x.shape[0], x.device, x.dtype)
        q, k, v = self.qkv_proj(x).chunk(3, dim=-1)  # (B, T, D) each
        m = self.shift_size - 1
        keys = torch.cat((state.keys.to(k.dtype), k), dim=1)  # (B, m + T, D)
        # the shift SSM reads m cached keys before the chunk; their outputs are dropped
        kbar = long_conv(keys, self.shift_kernel, causal=True, backend="auto")[:, m:]
        kv = self._outer(kbar, v)
        log_a, b, c = self.ssm_params()  # per head, shared by its K*K channels
        if backend == "reference":
            y, ssm = diagonal_ssm(kv, log_a, b, c, state.ssm, mode="scan", backend="reference")
        else:
            y, ssm = diagonal_ssm(kv, log_a, b, c, state.ssm, mode="conv", backend=CONV_BACKEND[backend])
        return self._readout(q, y, kv), H3State(keys[:, keys.shape[1] - m :], ssm)

    def _step(self, x_t: Tensor, state: H3State) -> tuple[Tensor, H3State]:
        q, k, v = self.qkv_proj(x_t).chunk(3, dim=-1)  # (B, D) each
        keys = torch.cat((state.keys.to(k.dtype), k[:, None]), dim=1)  # (B, m, D), oldest first
        kbar = torch.einsum("bmd,dm->bd", keys, self.shift_kernel.flip(-1))
        kv = self._outer(kbar[:, None], v[:, None])[:, 0]  # (B, H*K*K)
        log_a, b, c = self.ssm_params()  # per head, shared by its K*K channels
        y, ssm = diagonal_ssm_step(kv, log_a, b, c, state.ssm)
        return self._readout(q[:, None], y[:, None], kv[:, None])[:, 0], H3State(keys[:, 1:], ssm)
