"""Usage rows that could not reach PostgreSQL in time, kept on local disk until they can.

When a flush fails because the database is away, its rows are appended at once to
`<spill_dir>/usage-spill-<pid>.jsonl` (one JSON array per line, flushed and fsynced once per flush). When a
flush succeeds again, every spill file in the directory is claimed (renamed, so two workers never replay one file),
replayed in batches and removed. Rows carry their own ids and the insert skips ids already stored, so a
replay interrupted halfway and done again writes nothing twice.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson

from gateway.db import USAGE_COLUMNS
from gateway.processes import is_running

Row = tuple[Any, ...]
_UUIDS = {USAGE_COLUMNS.index("id"), USAGE_COLUMNS.index("user_id")}
_TIME = USAGE_COLUMNS.index("created_at")
_COST = USAGE_COLUMNS.index("cost_usd")


def _default(value: Any) -> Any:
    if isinstance(value, Decimal | UUID) or type(value).__name__ == "UUID":  # asyncpg has a UUID type of its own
        return str(value)
    raise TypeError(f"cannot spill {type(value).__name__}")


def encode(row: Row) -> bytes:
    return orjson.dumps(row, default=_default) + b"\n"


# Columns added after a row may have been spilled, with the value a row without them means (sql/005_billing.sql).
_ADDED_DEFAULTS = {
    "cache_write_5m_tokens": 0,
    "cache_write_1h_tokens": 0,
    "web_search_requests": 0,
    "usage_estimated": False,
    "team_id": None,  # sql/011_teams_and_roles.sql
}


def decode(line: bytes) -> Row:
    values = orjson.loads(line)
    values += [_ADDED_DEFAULTS[c] for c in USAGE_COLUMNS[len(values) :]]  # a row spilled by an older version
    for i in _UUIDS:
        values[i] = UUID(values[i]) if values[i] is not None else None
    values[_TIME] = datetime.fromisoformat(values[_TIME])
    values[_COST] = Decimal(values[_COST]) if values[_COST] is not None else None
    return tuple(values)


class SpillDir:
    def __init__(self, directory: Path, *, pid: int | None = None) -> None:
        self.directory, self.pid = directory, pid or os.getpid()
        self.own = directory / f"usage-spill-{self.pid}.jsonl"

    def append(self, rows: Sequence[Row], *, name: str | None = None) -> Path:
        """Append rows durably (flushed and fsynced before returning)."""
        return self.append_raw([encode(r) for r in rows], name=name or self.own.name)

    def append_raw(self, lines: Sequence[bytes], *, name: str) -> Path:
        """Append lines as they are (each ending in a newline), durably."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / name
        with open(path, "ab", opener=lambda name, flags: os.open(name, flags, 0o600)) as f:  # usage is private
            f.write(b"".join(lines))
            f.flush()
            os.fsync(f.fileno())
        return path

    def has_work(self) -> bool:
        return self.directory.is_dir() and any(self.directory.glob("usage-spill-*"))

    def pending_files(self) -> list[Path]:
        return sorted(self.directory.glob("usage-spill-*.jsonl")) if self.directory.is_dir() else []

    def claim(self) -> list[tuple[Path, bool]]:
        """Spill files renamed to names only this process uses, as (claimed path, written by this process).

        Also takes over files a replaying process left behind when it died (its pid no longer runs).
        """
        if not self.directory.is_dir():
            return []
        replaying = list(self.directory.glob("usage-spill-*.jsonl.replaying-*"))
        mine_or_orphaned = [
            p for p in replaying if p.name.endswith(f"-{self.pid}") or not is_running(p.name.split("-")[-1])
        ]
        candidates = self.pending_files() + mine_or_orphaned
        claimed = []
        for path in candidates:
            original = path.name.split(".replaying-")[0]
            target = path.with_name(f"{original}.replaying-{self.pid}")
            try:
                path.rename(target)
            except FileNotFoundError:  # another worker claimed it first
                continue
            claimed.append((target, original == self.own.name))  # ours, even when claimed before
        return claimed

    @staticmethod
    def read(path: Path) -> list[Row]:
        return SpillDir.split(path)[0]

    @staticmethod
    def split(path: Path) -> tuple[list[Row], list[bytes]]:
        """(the rows of a spill file, its lines that decode to no row): a line torn by a crash mid-append, or
        edited by hand, must not keep the rest of the file (and every file after it) from the database."""
        rows, unreadable = [], []
        with path.open("rb") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    rows.append(decode(line))
                except (ValueError, TypeError, KeyError, IndexError, ArithmeticError):
                    unreadable.append(line.rstrip(b"\n") + b"\n")
        return rows, unreadable
