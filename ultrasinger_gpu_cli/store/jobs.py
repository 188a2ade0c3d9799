"""The server's job queue in the database: a job's row, claiming and finishing jobs across
processes, and the one server that works a database's queue (:class:`QueueOwner`)."""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ultrasinger_gpu_cli.errors import StoreError
from ultrasinger_gpu_cli.store.db import Store
from ultrasinger_gpu_cli.store.schema import READ_ONLY_HINT, integer, number, stored_json

_JOB_COLUMNS = ("status", "stage", "progress", "speed_x", "device", "stages_json", "fallbacks_json", "error", "folder",
                "worker")  # fmt: skip


def _mode(options: dict[str, Any]) -> str:
    """The optimisation mode a job's options ask for (``balanced`` where they name none)."""
    return str(options.get("mode") or "balanced")


@dataclass(frozen=True)
class JobRow:
    """One job of the server's queue, as stored."""

    job_id: str
    status: str
    name: str
    input_path: str
    uploaded: bool
    options: dict[str, Any]
    created_at: str
    started_at: str | None
    finished_at: str | None
    updated_at: str
    worker: str | None
    stage: str | None
    progress: float | None
    speed_x: float | None
    device: str | None
    stages: list[dict[str, Any]]
    fallbacks: list[dict[str, Any]]
    error: str | None
    folder: str | None
    attempts: int

    @property
    def mode(self) -> str:
        return _mode(self.options)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> JobRow:
        def text(name: str) -> str | None:
            value = row[name]
            return None if value is None else str(value)

        return cls(str(row["job_id"]), str(row["status"]), str(row["name"]), str(row["input_path"]),
                   bool(row["uploaded"]), stored_json(row["options_json"], {}), str(row["created_at"]),
                   text("started_at"), text("finished_at"), str(row["updated_at"]), text("worker"), text("stage"),
                   number(row["progress"]), number(row["speed_x"]), text("device"), stored_json(row["stages_json"], []),
                   stored_json(row["fallbacks_json"], []), text("error"), text("folder"),
                   integer(row["attempts"]) or 0)  # fmt: skip


class JobQueue:
    """The server's queue in the same SQLite file: every transition is one write transaction,
    so workers in threads or processes never claim the same job twice."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def add(self, job_id: str, *, name: str, input_path: Path, uploaded: bool, options: dict[str, Any],
            limit: int | None = None) -> JobRow | None:  # fmt: skip
        """Queue a job; None when ``limit`` jobs are already waiting or running (counted and inserted
        in one write transaction, so concurrent submissions never pass the limit together)."""
        with self.store._write() as conn:
            if limit is not None:
                active = conn.execute("SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')").fetchone()[0]
                if int(active) >= limit:
                    return None
            conn.execute(
                "INSERT INTO jobs (job_id, name, input_path, uploaded, options_json, seq) "
                "VALUES (?, ?, ?, ?, ?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs))",
                (job_id, name, str(input_path), uploaded, json.dumps(options)),
            )
        return self.get(job_id)

    def get(self, job_id: str) -> JobRow | None:
        rows = self.store.query("SELECT * FROM jobs WHERE job_id = ?", (job_id,))
        return JobRow.from_row(rows[0]) if rows else None

    def list(self, limit: int = 200, offset: int = 0) -> list[JobRow]:
        """Newest first, one page."""
        rows = self.store.query("SELECT * FROM jobs ORDER BY seq DESC LIMIT ? OFFSET ?", (limit, offset))
        return [JobRow.from_row(r) for r in rows]

    def count(self) -> int:
        return int(self.store.query("SELECT COUNT(*) FROM jobs")[0][0])

    def active_count(self) -> int:
        return int(self.store.query("SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')")[0][0])

    def claim(self, worker: str, *, mode: str | None = None) -> JobRow | None:
        """The oldest queued job, now running on ``worker``; None when the queue is empty, or
        when ``mode`` is given and the oldest job asks for another (a worker taking a job ahead
        takes only what its loaded engines can run, and never one out of turn)."""
        with self.store._write() as conn:
            row = conn.execute("SELECT job_id, options_json FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1").fetchone()
            if row is None or (mode is not None and _mode(stored_json(row["options_json"], {})) != mode):
                return None
            conn.execute(
                "UPDATE jobs SET status = 'running', worker = ?, attempts = attempts + 1, error = NULL, "
                "started_at = COALESCE(started_at, CURRENT_TIMESTAMP), updated_at = CURRENT_TIMESTAMP WHERE job_id = ?",
                (worker, row["job_id"]),
            )
        return self.get(row["job_id"])

    def update(self, job_id: str, **values: Any) -> None:
        """Progress of a running job (only while it is running: a cancel is never overwritten)."""
        unknown = set(values) - set(_JOB_COLUMNS)
        if unknown:
            raise ValueError(f"not job columns: {sorted(unknown)}")
        columns = ", ".join(f"{c} = ?" for c in values)
        with self.store._write() as conn:
            conn.execute(f"UPDATE jobs SET {columns}, updated_at = CURRENT_TIMESTAMP WHERE job_id = ? "
                         "AND status = 'running'", (*values.values(), job_id))  # fmt: skip

    def finish(self, job_id: str, status: str, **values: Any) -> bool:
        """A running job ends (done, failed); False when it was cancelled meanwhile."""
        columns = "".join(f", {c} = ?" for c in values)
        with self.store._write() as conn:
            cursor = conn.execute(
                f"UPDATE jobs SET status = ?, finished_at = CURRENT_TIMESTAMP, updated_at = CURRENT_TIMESTAMP{columns} "
                "WHERE job_id = ? AND status = 'running'", (status, *values.values(), job_id))  # fmt: skip
        return cursor.rowcount == 1

    def cancel(self, job_id: str) -> JobRow | None:
        """Queued or running -> cancelled (a running job's worker sees it at its next progress
        step); a finished job stays as it is. None when there is no such job."""
        with self.store._write() as conn:
            conn.execute("UPDATE jobs SET status = 'cancelled', finished_at = CURRENT_TIMESTAMP, "
                         "updated_at = CURRENT_TIMESTAMP WHERE job_id = ? AND status IN ('queued', 'running')", (job_id,))  # fmt: skip
        return self.get(job_id)

    def requeue_running(self) -> list[str]:
        """After a crash or ``kill -9``: jobs left running go back to the queue, first in line
        (the stage cache makes them resume, not restart)."""
        rows = self.store.query("SELECT job_id FROM jobs WHERE status = 'running'")
        if rows:
            with self.store._write() as conn:
                conn.execute("UPDATE jobs SET status = 'queued', worker = NULL, updated_at = CURRENT_TIMESTAMP "
                             "WHERE status = 'running'")  # fmt: skip
        return [r["job_id"] for r in rows]


class QueueOwner:
    """The one server that works a database's job queue: an exclusive ``flock`` on a lock file
    beside the database (``<db>.serve-lock``, never the database file itself: closing a
    descriptor of the database would drop SQLite's own locks), held while the server runs. A
    second server on the same database is refused, naming the first's PID; the lock goes with
    the process however it ends (``kill -9`` included), so the next server takes over the jobs
    the last one left running."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def acquire(cls, db_path: Path) -> QueueOwner:
        lock = db_path.with_name(db_path.name + ".serve-lock")
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: one server per database is the user's to keep
            return cls(lock, None)
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        except OSError as exc:
            raise StoreError(f"cannot create {lock} beside the ugpu database: {exc.strerror}",
                             hint=READ_ONLY_HINT.format(path=db_path.parent))  # fmt: skip
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise StoreError(f"another ugpu serve (PID {other}) is already serving the job queue of {db_path}",
                             hint="stop that server first, or give this one its own database with --db") from None  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(lock, fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
