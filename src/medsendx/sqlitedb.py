"""The one way this project opens a SQLite database (outbox, gateway state, feature
journal, hub cache): WAL, autocommit (each caller opens its own transactions), a 30 s busy
timeout, usable from any thread (callers guard shared connections themselves)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Literal


def open_sqlite(path: Path, synchronous: Literal["FULL", "NORMAL"] = "FULL") -> sqlite3.Connection:
    """Open (creating its folder) the database at ``path``. ``synchronous``: FULL where a
    committed row must survive a power cut, NORMAL where losing the last commits is harmless."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn
