"""Nyströmformer: softmax attention through m landmarks (Xiong et al., 2021).

The T x T attention matrix is approximated by the Nyström method with landmark queries
``Q̃`` and keys ``K̃`` (means of m contiguous segments)::

    softmax(QKᵀ/√K) V  ≈  softmax(QK̃ᵀ/√K) · pinv(softmax(Q̃K̃ᵀ/√K)) · softmax(Q̃Kᵀ/√K) V
                            (T, m)            (m, m)                    (m, V)

costing O(T·m). The pseudo-inverse is the iterative Moore–Penrose scheme of the paper
(Razavi et al., 2014), a few matrix products of the small m x m matrix, and a depthwise
convolution of V along time (one kernel per head) is added as a skip path. With m = T the
segments are single tokens, ``Q̃ = Q``, ``K̃ = K``, and the product is exactly ``A A⁺ A V = A V``.

Segments of a sequence of ``n`` real tokens: when ``n`` is not a multiple of ``m`` the
sequence is treated as padded to ``m·ceil(n/m)`` with the pad slots spread one per
segment (so segments hold ``floor`` or ``ceil`` of ``n/m`` tokens and none is empty), and
each landmark is the mean over the real tokens of its segment. Padding marked by ``mask``
is skipped the same way, so a padded sequence gets exactly the landmarks it would get
alone; it is also kept out of the keys, the values and the convolution. Non-causal.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longarena.config import ConfigError
from longarena.mixers import register
from longarena.mixers.base import Mixer, MixerConfig, MixerInputError, check_heads
from longarena.ops.attention import attention


@dataclasses.dataclass
class NystromConfig(MixerConfig):
    n_heads: int = 4
    #: landmarks m (the approximation budget); sequences need at least m real tokens
    n_landmarks: int = 64
    #: iterations of the Moore–Penrose scheme (the paper uses 6)
    pinv_iterations: int = 6
    #: length of the depthwise convolution skip on V (odd); 0 turns it off
    conv_kernel: int = 33
    bias: bool = False

    def validate(self) -> None:
        super().validate()
        check_heads(self.d_model, self.n_heads)
        if self.n_landmarks <= 0:
            raise ConfigError(f"n_landmarks must be positive, got {self.n_landmarks}")
        if self.pinv_iterations <= 0:
            raise ConfigError(f"pinv_iterations must be positive, got {self.pinv_iterations}")
        if self.conv_kernel < 0 or (self.conv_kernel and self.conv_kernel % 2 == 0):
            raise ConfigError(f"conv_kernel must be 0 (off) or an odd positive length, got {self.conv_kernel}")


def _at_least_fp32(a: Tensor) -> Tensor:
    return a if a.dtype == torch.float64 else a.float()


def iterative_pinv(a: Tensor, iterations: int) -> Tensor:
    """Moore–Penrose pseudo-inverse of ``a: (..., m, m)`` by the iteration of the paper.

    ``Z_0 = aᵀ / (‖a‖_1 ‖a‖_∞)`` (max column sum times max row sum) and
    ``Z ← ¼ Z (13 I − aZ (15 I − aZ (7 I − aZ)))``, which converges to ``a⁺``
    (third order once close). Computed in float32 at least (float64 stays float64).
    """
    a = _at_least_fp32(a)
    eye = torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)
    col = a.abs().sum(-2).amax(-1)  # (...)
    row = a.abs().sum(-1).amax(-1)
    z = a.transpose(-1, -2) / (col * row)[..., None, None]
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def segment_means_matrix(mask: Tensor, n_landmarks: int) -> Tensor:
    """``P: (B, m, T)`` with ``P x`` the landmark means of ``x: (B, T, ·)``.

    mask: (B, T) bool, True = real token. The r-th real token of a sequence with n real
    tokens belongs to segment ``floor(r·m/n)``; each row of P averages its segment.
    """
    n = mask.sum(1, keepdim=True)  # (B, 1)
    rank = mask.cumsum(1) - 1  # (B, T) index among real tokens
    seg = torch.div(rank.clamp_min(0) * n_landmarks, n.clamp_min(1), rounding_mode="floor")  # (B, T)
    onehot = F.one_hot(seg, n_landmarks).float() * mask[..., None]  # (B, T, m)
    return (onehot / onehot.sum(1, keepdim=True).clamp_min(1.0)).transpose(1, 2)


def nystrom_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    n_landmarks: int,
    pinv_iterations: int | None = 6,
    key_mask: Tensor | None = None,
    backend: str = "sdpa",
) -> Tensor:
    """Nyström approximation of ``softmax(QKᵀ/√K) V`` with m = ``n_landmarks`` segment means.

    q, k: (B, H, T, K); v: (B, H, T, V); key_mask: (B, T) bool, True = real token (padded
    rows of q, k, v should be zero). ``pinv_iterations=None`` uses the exact
    ``torch.linalg.pinv`` instead of the iterative scheme. Every sequence needs at least m
    real tokens. Returns (B, H, T, V).
    """
    b, _, t, dk = q.shape
    real = key_mask if key_mask is not None else torch.ones(b, t, dtype=torch.bool, device=q.device)
    p = segment_means_matrix(real, n_landmarks).to(q.dtype)[:, None]  # (B, 1, m, T)
    q_land, k_land = p @ q, p @ k  # (B, H, m, K)
    scores = _at_least_fp32(q_land) @ _at_least_fp32(k_land).transpose(-1, -2)
    kernel = torch.softmax(scores * dk**-0.5, dim=-1)  # (B, H, m, m)
    if pinv_iterations is None:
        kernel_pinv = torch.linalg.pinv(kernel)
    else:
        kernel_pinv = iterative_pinv(kernel, pinv_iterations)
    # (F̃ Ã⁺)(B̃ V) as two attention calls: m landmark queries over all keys, then every query over m landmarks
    land_v = attention(q_land, k, v, causal=False, backend=backend, key_mask=key_mask)  # (B, H, m, V)
    mixed = (kernel_pinv @ _at_least_fp32(land_v)).to(v.dtype)  # (B, H, m, V)
    return attention(q, k_land, mixed, causal=False, backend=backend)  # (B, H, T, V)


@register("nystromformer")
class Nystromformer(Mixer):
    """Nyströmformer: landmark (Nyström) approximation of softmax attention, O(T·m) (non-causal)."""

    config_class = NystromConfig
    backends = ("reference", "sdpa")
    causal = False

    def __init__(self, config: NystromConfig) -> None:
        super().__init__(config)
        self.n_heads = config.n_heads
        self.head_dim = config.d_model // config.n_heads
        self.n_landmarks = config.n_landmarks
        d = config.d_model
        self.q_proj = nn.Linear(d, d, bias=config.bias)
        self.kv_proj = nn.Linear(d, 2 * d, bias=config.bias)
        self.out_proj = nn.Linear(d, d, bias=config.bias)
        self.conv = None
        if config.conv_kernel:
            # one kernel per head, shared by that head's channels, as in the paper's code
            self.conv = nn.Parameter(torch.randn(config.n_heads, config.conv_kernel) / config.conv_kernel)

    def _forward(self, x: Tensor, state: None, mask: Tensor | None) -> tuple[Tensor, None]:
        b, t, d = x.shape
        m = self.n_landmarks
        real = mask if mask is not None else torch.ones(b, t, dtype=torch.bool, device=x.device)
        shortest = int(real.sum(1).min())
        if shortest < m:
            raise MixerInputError(
                f"Nyströmformer with n_landmarks = {m} needs at least {m} real tokens per sequence, "
                f"got {shortest} (T = {t}); use fewer landmarks or longer sequences"
            )
        h, k = self.n_heads, self.head_dim
        q = self.q_proj(x).view(b, t, h, k).transpose(1, 2)  # (B, H, T, K)
        kk, v = self.kv_proj(x).view(b, t, 2, h, k).unbind(dim=2)
        kk, v = kk.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, K)
        keep = real[:, None, :, None]
        q, kk, v = (torch.where(keep, a, 0.0) for a in (q, kk, v))

        y = nystrom_attention(
            q, kk, v, n_landmarks=m, pinv_iterations=self.config.pinv_iterations, key_mask=mask,
            backend=self.resolve_backend(x.device),
        )  # (B, H, T, K)
        if self.conv is not None:
            y = y + self._conv_skip(v)
        y = torch.where(keep, y, 0.0)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, d)), None

    def _conv_skip(self, v: Tensor) -> Tensor:
        """Depthwise convolution along T of v: (B, H, T, K), zero beyond the sequence."""
        b, h, t, k = v.shape
        weight = self.conv.to(v.dtype).repeat_interleave(k, dim=0)[:, None, :]  # (H*K, 1, W)
        flat = v.permute(0, 1, 3, 2).reshape(b, h * k, t)  # (B, H*K, T)
        out = F.conv1d(flat, weight, padding=weight.shape[-1] // 2, groups=h * k)
        return out.view(b, h, k, t).permute(0, 1, 3, 2)

    def state_size(self, seq_len: int) -> int:
        return 0  # nothing is carried: the whole sequence is mixed at once

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, n_heads={self.n_heads}, n_landmarks={self.n_landmarks}"
