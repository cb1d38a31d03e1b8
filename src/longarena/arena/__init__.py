"""The controlled comparison: a suite is a list of cells (task x mixers x budget); every
mixer in a cell gets the same model shape, data, steps and seed; results go to a table and
a report folder.
"""

from longarena.arena.runner import CellResult, run_suite
from longarena.arena.suites import SUITES, Cell, Suite, get_suite

__all__ = ["SUITES", "Cell", "CellResult", "Suite", "get_suite", "run_suite"]
