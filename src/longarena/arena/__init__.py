"""The controlled comparison: a suite is a list of cells (task x mixers x budget) and studies;
every mixer in a cell gets the same model shape, data, steps and seed; results are cached
per cell in a run folder and written as a report folder (see ``runner`` and ``report``).
"""

from longarena.arena.runner import ArenaRun, CellResult, run_suite
from longarena.arena.suites import SUITES, Cell, StudySpec, Suite, get_suite, load_suite, register_suite

__all__ = ["SUITES", "ArenaRun", "Cell", "CellResult", "StudySpec", "Suite", "get_suite", "load_suite", "register_suite", "run_suite"]
