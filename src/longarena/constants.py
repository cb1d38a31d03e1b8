"""Constants every layer shares; this module imports nothing, so any package may use it.

``IGNORE`` marks a label position that is not scored. It equals PyTorch's default
``ignore_index`` of ``F.cross_entropy`` (and Hugging Face's label convention), so a loss
computed with either skips exactly the positions a task left unscored.
"""

IGNORE = -100
