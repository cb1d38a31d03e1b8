"""The conformance suite any mixer can be checked with, shipped in the package.

``check_mixer(factory)`` builds the mixer and verifies every invariant of the Mixer
protocol (see :mod:`.conformance`); a test of a new mixer is usually one call::

    from longarena import mixers
    from longarena.testing import check_mixer

    def test_my_mixer():
        check_mixer(lambda: mixers.get("my_mixer", d_model=32))
"""

from longarena.testing.conformance import CHECKS, TOLERANCE, ConformanceError, Report, check_mixer, rel_error

__all__ = ["CHECKS", "TOLERANCE", "ConformanceError", "Report", "check_mixer", "rel_error"]
