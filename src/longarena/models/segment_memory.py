"""Registers the segment-memory models (Transformer-XL, Compressive, RMT, Memformer).

They live in :mod:`longarena.memory`, which builds on this package's backbone pieces;
importing it here lets model discovery list them under ``longarena.models.names()``.
"""

import longarena.memory  # noqa: F401
