"""On-disk cache of generated splits: content-addressed, versioned, checksummed, atomic.

A split is stored as one file named by the SHA-256 of everything that determines its
content (task name, task version, the cache format version, the config and the split).
The file starts with a magic string and the SHA-256 of its payload, so a truncated or
corrupt file is detected on load and regenerated instead of being trusted. Writes go to a
temporary file in the same folder and are moved into place with ``os.replace``, so a
reader never sees a half-written file, even with several processes generating at once.

The folder is ``$LONGARENA_CACHE`` when set, else ``~/.cache/longarena``. Setting
``LONGARENA_CACHE=off`` disables caching everywhere.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1
MAGIC = b"LONGARENA-SPLIT\x00"
_DIGEST = 32
_OFF = {"off", "0", "false", "no", "none"}
_UMASK = os.umask(0o022)  # read once at import (os.umask can only be read by setting it)
os.umask(_UMASK)


class CacheCorruptError(RuntimeError):
    """A cache file exists but its content does not match its checksum or its key."""


def cache_dir() -> Path | None:
    """The cache folder, or None when caching is disabled with ``LONGARENA_CACHE=off``."""
    value = os.environ.get("LONGARENA_CACHE")
    if value is not None and value.strip().lower() in _OFF:
        return None
    if value:
        return Path(value).expanduser()
    return Path.home() / ".cache" / "longarena"


def cache_key(fields: dict[str, Any]) -> str:
    """A stable hex key for a JSON-serialisable description of a split."""
    text = json.dumps({"format": FORMAT_VERSION, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def save(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (tensors, strings, numbers) to ``path`` atomically with a checksum."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC)
            f.write(hashlib.sha256(data).digest())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates owner-only files; a cache is as readable as anything else written
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path: Path) -> dict[str, Any]:
    """Read a file written by ``save``; raises CacheCorruptError when it does not verify."""
    raw = path.read_bytes()
    head = len(MAGIC) + _DIGEST
    if len(raw) < head or not raw.startswith(MAGIC):
        raise CacheCorruptError(f"{path} is not a LongArena split file (bad header or truncated)")
    digest, data = raw[len(MAGIC) : head], raw[head:]
    if hashlib.sha256(data).digest() != digest:
        raise CacheCorruptError(f"{path} is truncated or corrupt (checksum mismatch)")
    try:
        return torch.load(io.BytesIO(data), weights_only=True)
    except Exception as e:  # a payload that verifies but does not parse means a format change
        raise CacheCorruptError(f"{path} could not be parsed: {e}") from e
