"""Files written whole or not at all: a temporary file beside the target, then a rename."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` (parents created) so a reader never sees half a file.

    Writers of one path may run at once (two arenas into one folder, threads): each writes
    its own temporary file, and the last rename wins whole.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        # "x", not tempfile.mkstemp (which makes the file 0600): the umask sets the mode
        with tmp.open("x") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())  # else a power loss after the rename can leave an empty file
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def temporary_name(path: Path) -> Path:
    """A hidden name beside ``path`` (same file system, so the rename is atomic) that no other
    writer, process or thread, uses: a fixed name made two arenas in one folder collide."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
