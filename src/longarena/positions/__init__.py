"""Position schemes: absolute, rotary and its context-extension scalings, score biases.

Each scheme is an ``nn.Module`` with a dataclass config (see :mod:`.base`): it may rotate
queries/keys (RoPE family) or add a bias to attention scores (ALiBi, T5). Attention-like
mixers take a scheme by name (``position="rope"``) plus its parameters. Schemes register
with ``@register(name)``; ``names()`` lists them and ``get(name, head_dim=, n_heads=, ...)``
builds one.

``extend(model, method, factor, **params)`` patches a trained RoPE model (Hugging Face or
LongArena) to a longer context; ``extend_checkpoint`` does it folder to folder.
"""

from __future__ import annotations

from longarena.positions.base import REGISTRY, PositionConfig, PositionScheme, get, names, register, summaries

# The function ``extend`` deliberately shadows the submodule of the same name as a package
# attribute; import the module's other names with ``from longarena.positions.extend import ...``.
from longarena.positions.extend import extend, extend_checkpoint

__all__ = [
    "REGISTRY",
    "PositionConfig",
    "PositionScheme",
    "extend",
    "extend_checkpoint",
    "get",
    "names",
    "register",
    "summaries",
]
