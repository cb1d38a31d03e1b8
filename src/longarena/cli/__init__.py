"""The ``longarena`` command (:mod:`.main`) and what its commands run, one module per command
group: :mod:`.train`, :mod:`.data`, :mod:`.evals`. The top layer: it may import every package,
and no package imports it.
"""

# the function ``main`` shadows the submodule of the same name as a package attribute, so the
# console script ``longarena.cli:main`` finds the function; import the module's other names
# with ``from longarena.cli.main import ...``
from longarena.cli.main import app, main

__all__ = ["app", "main"]
