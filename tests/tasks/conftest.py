"""Task tests never touch the user's cache: each test gets its own cache folder."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGARENA_CACHE", str(tmp_path / "longarena-cache"))
