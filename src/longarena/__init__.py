"""LongArena: long-context sequence models under one interface, with references,
fast paths, benchmarks and evaluations.

Layers, bottom to top, each importing only the ones below it (``tests/test_layers.py``
checks it): the ground floor (``constants``, ``config``, ``registry`` and small helpers),
``ops``, ``positions``, ``tasks``, ``mixers``, ``testing`` (the conformance suite),
``models`` (the backbone and heads), ``memory`` (segment-memory models, built from the
backbone's pieces and registered as models), ``train`` and ``evals``, ``arena``, ``cli``.
"""

from longarena.registry import contribute as _contribute

__version__ = "0.1.0"

# memory/ registers its models into the models registry, but models/ sits below it and must
# not import it; this root runs before any submodule, so the declaration is always in place
# when ``models.names()`` first discovers. Importing nothing here keeps ``import longarena`` light.
_contribute("longarena.models", "longarena.memory")
