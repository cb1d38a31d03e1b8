"""The built-in study kinds; importing this package registers them
(``longarena.arena.study_base.register``); ``longarena.arena.studies`` runs them.

- ``bench``: time and peak memory vs length of a few mixers and the installed peers.
- ``state_recall``: MQAR accuracy vs recurrent state size (Zoology's figure).
- ``train_short_test_long``: perplexity at 1-8x the training length per position scheme.
- ``niah``: a needle-in-a-haystack heatmap of SmolLM2-135M (or a named tiny fallback).

Each module's docstring lists its config keys; the defaults are the small CPU settings of
the ``quick`` suite.
"""

from longarena.arena.study_kinds import bench, niah, state_recall, train_short_test_long

__all__ = ["bench", "niah", "state_recall", "train_short_test_long"]
