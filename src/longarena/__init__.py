"""LongArena: long-context sequence models under one interface, with references,
fast paths, benchmarks and evaluations.

Subpackages (each imports only the ones listed before it): ``ops``, ``positions``,
``mixers``, ``memory``, ``models``, ``tasks``, ``evals``, ``train``, ``arena``; plus
``testing`` (the conformance suite) and ``cli``.
"""

__version__ = "0.1.0"
