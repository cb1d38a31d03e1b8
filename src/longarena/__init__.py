"""LongArena: long-context sequence models under one interface, with references,
fast paths, benchmarks and evaluations.

Subpackages, each importing only the ones listed before it: ``ops``, ``positions``,
``mixers``, ``models`` (the backbone and heads), ``memory`` (segment-memory models, built
from the backbone's pieces and registered as models), ``tasks``, ``evals``, ``train``,
``arena``; plus ``testing`` (the conformance suite) and ``cli``. ``tasks.base`` (the
example and label conventions) depends on nothing but torch, so every layer may use it.
"""

__version__ = "0.1.0"
