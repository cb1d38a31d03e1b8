"""``python -m longarena.cli``: the way ``accelerate launch`` and ``torchrun`` start the command."""

from longarena.cli.main import main

main()
