"""Segment-level recurrence: language models that read a long input segment by segment and
carry a memory across segments, and the runner that feeds them.

Models (registered in ``longarena.models`` when this package is imported):

- ``transformer_xl``: per-layer cache of the previous segments' hidden states (detached),
  relative positions (:mod:`.transformer_xl`);
- ``compressive``: XL's FIFO memory plus a compressed memory of older states
  (:mod:`.compressive`);
- ``rmt``: Recurrent Memory Transformer, memory tokens read at the start and written at the
  end of each segment (:mod:`.rmt`);
- ``memformer``: an external bank of memory slots, read by cross-attention and written by
  slot attention with forgetting (:mod:`.memformer`).

:mod:`.runner` runs any of them (and the generic ``lm``) over sequences of any length:
training with truncated back-propagation through segments or memory replay
back-propagation, perplexity of long documents, and generation. The seeded "remember a
fact across N segments" probe that checks memory works is :mod:`longarena.tasks.segment_probes`.
"""

from longarena.memory import runner
from longarena.memory.compressive import CompressiveConfig, CompressiveMemory, CompressiveTransformer
from longarena.memory.memformer import Memformer, MemformerConfig, MemformerMemory
from longarena.memory.rmt import RecurrentMemoryTransformer, RMTConfig, RMTMemory
from longarena.memory.transformer_xl import TransformerXL, TransformerXLConfig, XLMemory

__all__ = [
    "CompressiveConfig", "CompressiveMemory", "CompressiveTransformer", "Memformer", "MemformerConfig",
    "MemformerMemory", "RMTConfig", "RMTMemory", "RecurrentMemoryTransformer", "TransformerXL",
    "TransformerXLConfig", "XLMemory", "runner",
]
