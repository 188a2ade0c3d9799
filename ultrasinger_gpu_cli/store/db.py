"""ugpu's state in SQLite (standard library only).

* The design's four tables (``gpu_config``, ``component_config``, ``optimization_setting``,
  ``performance_log``) with their columns and indexes, plus what the pipeline needs: runs,
  fallback events, the cached framework probe. Columns are only ever added.
* Schema versioned with ``PRAGMA user_version`` and migrated on open by named migrations,
  inside ``BEGIN IMMEDIATE`` so two processes opening a new file migrate it once.
* WAL journal and a busy timeout: two ugpu processes can write at the same time.
* Default file in the user data dir (platformdirs); ``--db PATH`` or ``UGPU_DB`` override it.
  A file that is not a ugpu database is reported by name, never replaced.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ultrasinger_gpu_cli.failures import FallbackEvent
    from ultrasinger_gpu_cli.plan.resolver import Plan

from ultrasinger_gpu_cli.errors import StoreError
from ultrasinger_gpu_cli.gpu.facts import FrameworkInfo, GpuIdentity, GpuInfo
from ultrasinger_gpu_cli.store.schema import (BUSY_TIMEOUT_S, MIGRATIONS, READ_ONLY_HINT, SCHEMA_VERSION, failure, new_id,
                                              resolve_db_path, statements, writable)
from ultrasinger_gpu_cli.store.stats import PerformanceQueries


class Store(PerformanceQueries):
    """An open ugpu database. Use :meth:`open`; close it (or use ``with``)."""

    def __init__(self, path: Path, conn: sqlite3.Connection, *, read_only: bool = False) -> None:
        self.path = path
        self._conn = conn
        self.read_only = read_only  # a file ugpu may read but not write: writers get a clear StoreError

    # -- opening and migrating --------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None) -> Store:
        db_path = resolve_db_path(path)
        if db_path.is_dir():
            raise StoreError(f"cannot open the ugpu database {db_path}: it is a directory")
        try:
            db_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the folder for the ugpu database {db_path}: {exc.strerror}") from exc
        read_only = db_path.exists() and not writable(db_path)
        try:
            if read_only:
                uri = f"{db_path.absolute().as_uri()}?mode=ro"
                conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
            else:
                conn = sqlite3.connect(db_path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the ugpu database {db_path}: {exc}") from exc
        store = cls(db_path, conn, read_only=read_only)
        if read_only:
            try:
                conn.row_factory = sqlite3.Row
                try:
                    store.schema_version()
                except sqlite3.OperationalError:  # a WAL database whose journal can't be made: read it as is
                    conn.close()
                    uri = f"{db_path.absolute().as_uri()}?mode=ro&immutable=1"
                    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
                    conn.row_factory = sqlite3.Row
                    store = cls(db_path, conn, read_only=True)
                if store.schema_version() != SCHEMA_VERSION:
                    raise StoreError(f"the ugpu database {db_path} is read-only and needs upgrading first",
                                     hint=READ_ONLY_HINT.format(path=db_path))  # fmt: skip
            except sqlite3.DatabaseError as exc:
                conn.close()
                raise failure(exc, db_path, "read") from exc
            except StoreError:
                conn.close()
                raise
            return store
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            mode = _journal_wal(conn)
            if str(mode).lower() != "wal":  # pragma: no cover - e.g. a read-only medium
                conn.execute("PRAGMA journal_mode = DELETE")
            conn.execute("PRAGMA synchronous = NORMAL")
            store._migrate()
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise failure(exc, db_path, "open") from exc
        except StoreError:
            conn.close()
            raise
        return store

    def _migrate(self) -> None:
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this ugpu understands ({SCHEMA_VERSION})",
                hint="upgrade ugpu, or use another database with --db",
            )
        if version == SCHEMA_VERSION:
            return
        with self._write() as conn:
            version = self.schema_version()  # another process may have migrated meanwhile
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, "
                "applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)"
            )
            for name, sql in MIGRATIONS[version:]:
                for statement in statements(sql):
                    conn.execute(statement)
                conn.execute("INSERT OR REPLACE INTO schema_migrations(name) VALUES (?)", (name,))
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front so concurrent writers queue instead of failing."""
        conn = self._conn
        if self.read_only:
            raise StoreError(f"the ugpu database {self.path} is read-only: ugpu cannot save to it",
                             hint=READ_ONLY_HINT.format(path=self.path))  # fmt: skip
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "readonly" in str(exc).lower() or "read-only" in str(exc).lower():
                self.read_only = True
                raise StoreError(f"the ugpu database {self.path} is read-only: ugpu cannot save to it",
                                 hint=READ_ONLY_HINT.format(path=self.path)) from exc  # fmt: skip
            raise failure(exc, self.path, "write") from exc
        try:
            yield conn
        except BaseException as exc:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:  # SQLite may have rolled back already (a full disk, an I/O error)
                pass
            if isinstance(exc, sqlite3.Error):
                raise failure(exc, self.path, "write") from exc
            raise
        else:
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                raise failure(exc, self.path, "write") from exc

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """Read-only access for reports and tests; a damaged page or a lock is a :class:`StoreError`."""
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise failure(exc, self.path, "read") from exc

    # -- GPUs and the framework probe -----------------------------------------------------------
    def record_gpus(self, gpus: list[GpuInfo] | tuple[GpuInfo, ...], cuda_version: str | None, driver: str | None) -> None:
        """Upsert the detected GPUs into ``gpu_config``; GPUs no longer present become inactive.
        A read-only database keeps what it has (this is a record of facts, not the user's data)."""
        if self.read_only:
            return
        with self._write() as conn:
            conn.execute("UPDATE gpu_config SET is_active = FALSE")
            for gpu in gpus:
                if gpu.lost or not gpu.uuid:
                    continue
                conn.execute(
                    "INSERT INTO gpu_config (gpu_id, gpu_name, vram_total_gb, cuda_version, driver_version, "
                    "detected_at, is_active) VALUES (?, ?, ?, ?, ?, CURRENT_TIMESTAMP, TRUE) "
                    "ON CONFLICT(gpu_id) DO UPDATE SET gpu_name = excluded.gpu_name, "
                    "vram_total_gb = excluded.vram_total_gb, cuda_version = excluded.cuda_version, "
                    "driver_version = excluded.driver_version, detected_at = CURRENT_TIMESTAMP, is_active = TRUE",
                    (gpu.uuid, gpu.name or "unknown NVIDIA GPU", gpu.vram_total_gb, cuda_version, driver),
                )

    def cached_frameworks(self, fingerprint: str) -> FrameworkInfo | None:
        rows = self.query("SELECT report_json FROM framework_probe WHERE fingerprint = ?", (fingerprint,))
        if not rows:
            return None
        try:
            return FrameworkInfo.from_dict(json.loads(rows[0]["report_json"]), from_cache=True)
        except (ValueError, KeyError, TypeError):
            return None  # an unreadable cache entry is simply probed again

    def save_frameworks(self, fingerprint: str, info: FrameworkInfo) -> None:
        if self.read_only:  # a cache: probed again next time
            return
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO framework_probe (fingerprint, report_json, probed_at) "
                "VALUES (?, ?, CURRENT_TIMESTAMP)",
                (fingerprint, json.dumps(info.to_dict())),
            )

    # -- plans and overrides ---------------------------------------------------------------------
    # ``target`` says whose a row is: "cpu" (a machine without a usable GPU), a GPU's UUID, or
    # "hypothetical" (``ugpu optimize --assume-vram``). ``gpu_id`` is the design's foreign key:
    # set only when gpu_config has that GPU.
    def _insert_component(
        self,
        conn: sqlite3.Connection,
        *,
        target: str,
        gpu_id: str | None,
        component: str,
        kind: str,
        mode: str | None,
        values: dict[str, Any],
        settings: list[tuple[str, Any, str | None, str | None]],
    ) -> str:
        config_id = new_id()
        conn.execute(
            "INSERT INTO component_config (config_id, gpu_id, component_name, model_name, batch_size, "
            "compute_type, device, kind, mode, is_active, target) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, TRUE, ?)",
            (
                config_id, self._known_gpu(conn, gpu_id), component, values.get("model"), values.get("batch_size"),
                values.get("compute_type"), values.get("device"), kind, mode, target,
            ),
        )  # fmt: skip
        conn.executemany(
            "INSERT INTO optimization_setting (setting_id, config_id, parameter_name, parameter_value, "
            "optimization_reason, source) VALUES (?, ?, ?, ?, ?, ?)",
            [(new_id(), config_id, name, json.dumps(value), reason, source) for name, value, reason, source in settings],
        )
        return config_id

    @staticmethod
    def _known_gpu(conn: sqlite3.Connection, gpu_id: str | None) -> str | None:
        """``gpu_id`` when ``gpu_config`` has it (the foreign key), else NULL."""
        if gpu_id is None:
            return None
        found = conn.execute("SELECT 1 FROM gpu_config WHERE gpu_id = ?", (gpu_id,)).fetchone()
        return gpu_id if found else None

    def save_plan(self, plan: Plan) -> dict[str, str]:
        """Store a plan; returns ``{component: config_id}``."""
        target = plan.target.settings_key or "hypothetical"
        gpu_id = None if plan.target.gpu is None or plan.target.hypothetical else plan.target.gpu.uuid
        out = {}
        with self._write() as conn:
            conn.execute("UPDATE component_config SET is_active = FALSE WHERE kind = 'plan' AND target = ?", (target,))
            for component, cplan in plan.components.items():
                settings = [(name, s.value, s.reason, s.source) for name, s in cplan.settings.items()]
                out[component] = self._insert_component(
                    conn, target=target, gpu_id=gpu_id, component=component, kind="plan", mode=plan.mode,
                    values=cplan.values(), settings=settings,
                )  # fmt: skip
        return out

    def overrides(self, target: str | None) -> dict[str, dict[str, Any]]:
        """The user's stored overrides for ``target`` ("cpu" or a GPU's UUID; None: none apply)."""
        if target is None:
            return {}
        return self.all_overrides(target).get(target, {})

    def all_overrides(self, target: str | None = None) -> dict[str, dict[str, dict[str, Any]]]:
        """Every target's stored overrides (or one target's): what a process that keeps no
        database (a Ray actor) is given to plan with."""
        rows = self.query(
            "SELECT c.target, c.component_name, s.parameter_name, s.parameter_value FROM component_config c "
            "JOIN optimization_setting s ON s.config_id = c.config_id "
            "WHERE c.kind = 'override' AND c.is_active" + (" AND c.target = ?" if target is not None else "")
            + " ORDER BY c.created_at",
            (target,) if target is not None else (),
        )  # fmt: skip
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for row in rows:
            try:
                value = json.loads(row["parameter_value"])
            except (TypeError, ValueError, RecursionError):
                continue  # a value another program wrote: not the user's override
            out.setdefault(str(row["target"]), {}).setdefault(str(row["component_name"]), {})[str(row["parameter_name"])] = value
        return out

    def save_override(self, target: str, component: str, values: dict[str, Any], *, gpu_id: str | None = None) -> dict[str, Any]:
        """Merge ``values`` into the component's stored override for ``target``; returns the whole override."""
        with self._write() as conn:
            merged = {**self.overrides(target).get(component, {}), **values}
            conn.execute(
                "UPDATE component_config SET is_active = FALSE WHERE kind = 'override' AND component_name = ? "
                "AND target = ?",
                (component, target),
            )
            settings = [(name, value, "user override", "override") for name, value in merged.items()]
            self._insert_component(conn, target=target, gpu_id=gpu_id, component=component, kind="override", mode=None,
                                   values=merged, settings=settings)  # fmt: skip
        return merged

    def reset_override(self, target: str, component: str) -> bool:
        """Drop the component's override for ``target``; True when there was one."""
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE component_config SET is_active = FALSE "
                "WHERE kind = 'override' AND is_active AND component_name = ? AND target = ?",
                (component, target),
            )
            return cursor.rowcount > 0

    # -- performance log -------------------------------------------------------------------------
    def log_performance(
        self,
        *,
        component: str,
        device: str,
        processing_speed_multiplier: float | None,
        gpu: GpuIdentity | None = None,
        vram_used_mb: int | None = None,
        gpu_utilization_percent: int | None = None,
        temperature_celsius: int | None = None,
        run_id: str | None = None,
        song: str | None = None,
        model_name: str | None = None,
        wall_seconds: float | None = None,
        audio_seconds: float | None = None,
        backend: str | None = None,
        skipped: bool = False,
    ) -> str:
        log_id = new_id()
        gpu_id, gpu_index = (None, None) if gpu is None else (gpu.uuid, gpu.index)
        with self._write() as conn:
            conn.execute(
                "INSERT INTO performance_log (log_id, gpu_id, vram_used_mb, gpu_utilization_percent, "
                "temperature_celsius, processing_speed_multiplier, logged_at, run_id, song, component, device, "
                "model_name, wall_seconds, audio_seconds, gpu_index, backend, skipped) "
                "VALUES (?, ?, ?, ?, ?, ?, strftime('%Y-%m-%d %H:%M:%f', 'now'), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    log_id, self._known_gpu(conn, gpu_id), vram_used_mb, gpu_utilization_percent,
                    temperature_celsius, processing_speed_multiplier, run_id, song, component, device,
                    model_name, wall_seconds, audio_seconds, gpu_index, backend, skipped,
                ),
            )  # fmt: skip
        return log_id

    # -- runs, live state and fallback events ------------------------------------------------------
    def start_run(self, run_id: str, *, mode: str, gpu: GpuIdentity | None, pid: int, kind: str = "run",
                  pid_started: float | None = None) -> None:  # fmt: skip
        """A run in progress (``kind``: "run" for ``ugpu run``, else the stage command's name);
        ``pid_started`` (the process's start time) tells it from a later process with the same PID."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO runs (run_id, mode, gpu_id, pid, status, started_at, updated_at, kind, pid_started) "
                "VALUES (?, ?, ?, ?, 'running', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, ?, ?)",
                (run_id, mode, self._known_gpu(conn, None if gpu is None else gpu.uuid), pid, kind, pid_started),
            )

    def reap_dead_runs(self) -> list[str]:
        """Runs still marked running whose process is gone (killed, lost power) become 'interrupted'."""
        from ultrasinger_gpu_cli.gpu.processes import alive

        dead = [r["run_id"] for r in self.active_runs() if not alive(r["pid"], r["pid_started"])]
        if dead and not self.read_only:
            with self._write() as conn:
                conn.executemany("UPDATE runs SET status = 'interrupted', finished_at = CURRENT_TIMESTAMP, "
                                 "updated_at = CURRENT_TIMESTAMP WHERE run_id = ? AND status = 'running'",
                                 [(run_id,) for run_id in dead])  # fmt: skip
        return dead

    def update_run(self, run_id: str, *, song: str | None, stage: str | None, progress: float | None,
                   speed: float | None, audio_seconds: float | None = None,
                   stage_started_at: float | None = None) -> None:  # fmt: skip
        """The live state a ``ugpu monitor`` in another terminal reads."""
        with self._write() as conn:
            conn.execute(
                "UPDATE runs SET song = ?, stage = ?, progress = ?, processing_speed_multiplier = ?, "
                "audio_seconds = COALESCE(?, audio_seconds), stage_started_at = COALESCE(?, stage_started_at), "
                "updated_at = CURRENT_TIMESTAMP WHERE run_id = ?",
                (song, stage, progress, speed, audio_seconds, stage_started_at, run_id),
            )

    def record_alert(self, *, kind: str, message: str, value: float | None, threshold: float | None,
                     gpu: GpuIdentity | None = None, run_id: str | None = None) -> None:  # fmt: skip
        gpu_id, gpu_index = (None, None) if gpu is None else (gpu.uuid, gpu.index)
        with self._write() as conn:
            conn.execute(
                "INSERT INTO alerts (alert_id, gpu_id, gpu_index, kind, message, value, threshold, run_id, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, strftime('%Y-%m-%d %H:%M:%f', 'now'))",
                (new_id(), gpu_id, gpu_index, kind, message, value, threshold, run_id),
            )

    def finish_run(self, run_id: str, status: str, report: dict[str, Any] | None = None) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE runs SET status = ?, finished_at = CURRENT_TIMESTAMP, updated_at = CURRENT_TIMESTAMP, "
                "report_json = ? WHERE run_id = ?",
                (status, json.dumps(report) if report is not None else None, run_id),
            )

    def active_runs(self) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM runs WHERE status = 'running' ORDER BY started_at")

    def record_fallback(self, event: FallbackEvent, *, run_id: str | None) -> None:
        """One step down a ladder, with the device and GPU it happened on."""
        gpu = event.gpu
        with self._write() as conn:
            conn.execute(
                "INSERT INTO fallback_events (event_id, run_id, song, stage, from_setting, to_setting, reason, "
                "created_at, device, gpu_id, gpu_index) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, strftime('%Y-%m-%d %H:%M:%f', 'now'), ?, ?, ?)",
                (new_id(), run_id, event.song, event.stage, event.from_setting, event.to_setting, event.reason,
                 event.device, None if gpu is None else gpu.uuid, None if gpu is None else gpu.index),
            )  # fmt: skip


def _journal_wal(conn: sqlite3.Connection) -> str:
    """Switch to WAL and return the journal mode now in force. SQLite does not wait on its busy
    handler for this switch: two processes opening a new database at once can see "database is
    locked" at once, so the switch is tried again until the busy timeout has passed."""
    import time

    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc).lower() or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)
