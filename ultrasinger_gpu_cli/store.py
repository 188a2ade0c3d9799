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
import statistics
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ultrasinger_gpu_cli.events import FallbackEvent
    from ultrasinger_gpu_cli.resolver import Plan

from ultrasinger_gpu_cli.errors import StoreError
from ultrasinger_gpu_cli.facts import FrameworkInfo, GpuIdentity, GpuInfo

ENV_DB = "UGPU_DB"
BUSY_TIMEOUT_S = 30.0

_DESIGN_TABLES = """
CREATE TABLE gpu_config (
  gpu_id VARCHAR(50) PRIMARY KEY, gpu_name VARCHAR(100) NOT NULL, vram_total_gb INTEGER NOT NULL,
  cuda_version VARCHAR(20), driver_version VARCHAR(50),
  detected_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, is_active BOOLEAN DEFAULT TRUE);
CREATE INDEX idx_gpu_config_active ON gpu_config(is_active);
CREATE INDEX idx_gpu_config_detected ON gpu_config(detected_at DESC);

CREATE TABLE component_config (
  config_id VARCHAR(50) PRIMARY KEY, gpu_id VARCHAR(50) REFERENCES gpu_config(gpu_id),
  component_name VARCHAR(50) NOT NULL, model_name VARCHAR(100), batch_size INTEGER,
  compute_type VARCHAR(20), device VARCHAR(10), created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
CREATE INDEX idx_component_config_gpu ON component_config(gpu_id);
CREATE INDEX idx_component_config_component ON component_config(component_name);

CREATE TABLE optimization_setting (
  setting_id VARCHAR(50) PRIMARY KEY, config_id VARCHAR(50) REFERENCES component_config(config_id),
  parameter_name VARCHAR(100), parameter_value VARCHAR(100), optimization_reason TEXT);

CREATE TABLE performance_log (
  log_id VARCHAR(50) PRIMARY KEY, gpu_id VARCHAR(50) REFERENCES gpu_config(gpu_id),
  vram_used_mb INTEGER, gpu_utilization_percent INTEGER, temperature_celsius INTEGER,
  processing_speed_multiplier FLOAT, logged_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
CREATE INDEX idx_performance_log_gpu ON performance_log(gpu_id);
CREATE INDEX idx_performance_log_time ON performance_log(logged_at DESC);
CREATE INDEX idx_performance_log_vram ON performance_log(vram_used_mb DESC);
"""

_PIPELINE_TABLES = """
ALTER TABLE component_config ADD COLUMN kind VARCHAR(20) NOT NULL DEFAULT 'plan';
ALTER TABLE component_config ADD COLUMN mode VARCHAR(20);
ALTER TABLE component_config ADD COLUMN is_active BOOLEAN NOT NULL DEFAULT TRUE;
CREATE INDEX idx_component_config_kind ON component_config(kind, component_name, is_active);
ALTER TABLE optimization_setting ADD COLUMN source VARCHAR(20);
CREATE INDEX idx_optimization_setting_config ON optimization_setting(config_id);

ALTER TABLE performance_log ADD COLUMN run_id VARCHAR(50);
ALTER TABLE performance_log ADD COLUMN song TEXT;
ALTER TABLE performance_log ADD COLUMN component VARCHAR(50);
ALTER TABLE performance_log ADD COLUMN device VARCHAR(10);
ALTER TABLE performance_log ADD COLUMN model_name VARCHAR(100);
ALTER TABLE performance_log ADD COLUMN wall_seconds FLOAT;
ALTER TABLE performance_log ADD COLUMN audio_seconds FLOAT;
ALTER TABLE performance_log ADD COLUMN gpu_index INTEGER;
CREATE INDEX idx_performance_log_component ON performance_log(component, logged_at DESC);

CREATE TABLE runs (
  run_id VARCHAR(50) PRIMARY KEY, started_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, finished_at TIMESTAMP,
  status VARCHAR(20) NOT NULL DEFAULT 'running', mode VARCHAR(20), gpu_id VARCHAR(50), pid INTEGER,
  song TEXT, stage VARCHAR(50), progress FLOAT, processing_speed_multiplier FLOAT,
  updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, report_json TEXT);
CREATE INDEX idx_runs_status ON runs(status, updated_at DESC);

CREATE TABLE fallback_events (
  event_id VARCHAR(50) PRIMARY KEY, run_id VARCHAR(50), song TEXT, stage VARCHAR(50) NOT NULL,
  from_setting TEXT NOT NULL, to_setting TEXT NOT NULL, reason TEXT,
  created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
CREATE INDEX idx_fallback_events_time ON fallback_events(created_at DESC);

CREATE TABLE framework_probe (
  fingerprint TEXT PRIMARY KEY, report_json TEXT NOT NULL, probed_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
"""

_MONITORING_TABLES = """
ALTER TABLE runs ADD COLUMN audio_seconds FLOAT;
ALTER TABLE runs ADD COLUMN stage_started_at FLOAT;
CREATE TABLE alerts (
  alert_id VARCHAR(50) PRIMARY KEY, gpu_id VARCHAR(50), gpu_index INTEGER, kind VARCHAR(30) NOT NULL,
  message TEXT NOT NULL, value FLOAT, threshold FLOAT, run_id VARCHAR(50),
  created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
CREATE INDEX idx_alerts_time ON alerts(created_at DESC);
"""

# Overrides are keyed by whose they are ("cpu", a GPU's UUID, "hypothetical"), not by a NULL
# gpu_id that meant both "the CPU" and "a GPU not recorded yet". Fallback events record the
# device and GPU they happened on. Every component's model is "model" (CREPE's was
# "model_capacity"). Runs say what started them; the log says which backend ran.
_REGISTRY_TABLES = """
ALTER TABLE component_config ADD COLUMN target VARCHAR(60);
UPDATE component_config SET target = COALESCE(gpu_id, 'cpu');
CREATE INDEX idx_component_config_target ON component_config(kind, component_name, target, is_active);
UPDATE optimization_setting SET parameter_name = 'model' WHERE parameter_name = 'model_capacity';
ALTER TABLE fallback_events ADD COLUMN device VARCHAR(10);
ALTER TABLE fallback_events ADD COLUMN gpu_id VARCHAR(50);
ALTER TABLE fallback_events ADD COLUMN gpu_index INTEGER;
UPDATE fallback_events SET device = substr(from_setting, 1, instr(from_setting, ' ') - 1) WHERE instr(from_setting, ' ') > 0;
ALTER TABLE runs ADD COLUMN kind VARCHAR(20);
ALTER TABLE performance_log ADD COLUMN backend VARCHAR(50);
"""

# The server's job queue (``ugpu serve``): a job is one song, queued until a worker claims it.
_JOB_TABLES = """
CREATE TABLE jobs (
  job_id VARCHAR(32) PRIMARY KEY, status VARCHAR(20) NOT NULL DEFAULT 'queued', name TEXT NOT NULL,
  input_path TEXT NOT NULL, uploaded BOOLEAN NOT NULL DEFAULT FALSE, options_json TEXT,
  created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, started_at TIMESTAMP, finished_at TIMESTAMP,
  updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, worker VARCHAR(50), stage VARCHAR(50), progress FLOAT,
  speed_x FLOAT, device VARCHAR(20), stages_json TEXT, fallbacks_json TEXT, error TEXT, folder TEXT,
  attempts INTEGER NOT NULL DEFAULT 0, seq INTEGER);
CREATE INDEX idx_jobs_status ON jobs(status, seq);
"""

#: Named migrations, applied in order; the schema version is how many have run.
MIGRATIONS: tuple[tuple[str, str], ...] = (
    ("0001_design_tables", _DESIGN_TABLES),
    ("0002_pipeline_state", _PIPELINE_TABLES),
    ("0003_monitoring", _MONITORING_TABLES),
    ("0004_registry_and_devices", _REGISTRY_TABLES),
    ("0005_skipped_stages_and_process_start", "ALTER TABLE performance_log ADD COLUMN skipped BOOLEAN NOT NULL "
     "DEFAULT FALSE; ALTER TABLE runs ADD COLUMN pid_started FLOAT;"),
    ("0006_job_queue", _JOB_TABLES),
)
SCHEMA_VERSION = len(MIGRATIONS)


def default_db_path() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir("ugpu", appauthor=False)) / "ugpu.db"


def resolve_db_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``--db`` first, then ``UGPU_DB``, then the user data dir."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(ENV_DB)
    if env:
        return Path(env).expanduser()
    return default_db_path()


READ_ONLY_HINT = "make it writable (chmod u+w {path}, and its folder), or point ugpu at another file with --db or UGPU_DB"


def _writable(path: Path) -> bool:
    """Can this process write the database file and create its journal beside it? Asked of the
    kernel with ``access(2)`` (permissions, read-only mounts, immutable files and dropped
    capabilities all answer there) and tried for real in the folder (a probe file beside it).

    The database file itself is never opened here: closing any descriptor of a file drops every
    POSIX lock this process holds on it, SQLite's included (sqlite.org/howtocorrupt.html, 2.2), and
    another process would then checkpoint and delete the WAL under this process's connections."""
    import tempfile

    effective = os.access in os.supports_effective_ids
    if not os.access(path, os.R_OK | os.W_OK, effective_ids=effective):
        return False
    try:
        fd, probe = tempfile.mkstemp(prefix=".ugpu-db-check-", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError:
        return False
    return True


DAMAGED_HINT = ("move the file aside (ugpu starts a new one), or recover it with: sqlite3 {path} .recover | sqlite3 "
                "recovered.db; or point ugpu at another file with --db or UGPU_DB")


def failure(exc: sqlite3.Error, path: Path, doing: str = "use") -> StoreError:
    """What went wrong with the database, as the user can act on it: locked by another process,
    a full disk (naming the folder), read-only, damaged, or an I/O error."""
    text = str(exc)
    low = text.lower()
    if "locked" in low or "busy" in low:
        return StoreError(f"the ugpu database {path} stayed locked by another process for {BUSY_TIMEOUT_S:.0f} s",
                          hint="wait for the other ugpu to finish (ugpu monitor shows runs), or use another file "
                               "with --db or UGPU_DB")  # fmt: skip
    if "full" in low:
        return StoreError(f"the disk holding the ugpu database is full ({path.parent})",
                          hint=f"free space in {path.parent}, or point ugpu at another disk with --db or UGPU_DB")  # fmt: skip
    if "readonly" in low or "read-only" in low:
        return StoreError(f"the ugpu database {path} is read-only: ugpu cannot save to it",
                          hint=READ_ONLY_HINT.format(path=path))  # fmt: skip
    if "i/o error" in low:
        return StoreError(f"the disk failed while ugpu tried to {doing} the database {path} ({text})",
                          hint="check the disk (dmesg), or point ugpu at another file with --db or UGPU_DB")  # fmt: skip
    return StoreError(f"{path} is not a usable ugpu database ({text}); it was left untouched",
                      hint=DAMAGED_HINT.format(path=path))


def number(value: Any) -> float | None:
    """A stored number as a float; None for NULL and for what another program wrote there that is
    not a finite number (SQLite keeps any value in any column)."""
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        out = float(value)
    except ValueError:
        return None
    return out if math.isfinite(out) else None


def integer(value: Any) -> int | None:
    out = number(value)
    return None if out is None or abs(out) > 2**62 else int(out)


def stored_json(text: Any, default: Any) -> Any:
    """A JSON column; ``default`` when it is missing, not JSON, or not of the default's type."""
    if not isinstance(text, (str, bytes)):
        return default
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return default
    return value if isinstance(value, type(default)) else default


def _new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class ComponentStats:
    component: str
    gpu: str | None  # "GPU <index>" or "cpu"
    runs: int
    median_speed_x: float | None
    best_speed_x: float | None
    p95_speed_x: float | None
    peak_vram_mb: int | None
    max_temperature_c: int | None
    devices: tuple[str, ...]
    fallbacks: int = 0
    speed_trend: tuple[float, ...] = ()  # x real time per run, oldest first
    vram_trend: tuple[int | None, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "component": self.component,
            "gpu": self.gpu,
            "runs": self.runs,
            "median_speed_x": self.median_speed_x,
            "best_speed_x": self.best_speed_x,
            "p95_speed_x": self.p95_speed_x,
            "peak_vram_mb": self.peak_vram_mb,
            "max_temperature_c": self.max_temperature_c,
            "devices": list(self.devices),
            "fallbacks": self.fallbacks,
            "speed_trend": list(self.speed_trend),
            "vram_trend": list(self.vram_trend),
        }


@dataclass(frozen=True)
class RecordedFallback:
    """A fallback event as the store keeps it."""

    event_id: str
    created_at: str
    run_id: str | None
    song: str | None
    stage: str
    from_setting: str
    to_setting: str
    reason: str | None
    device: str | None
    gpu_id: str | None
    gpu_index: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


class Store:
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
        read_only = db_path.exists() and not _writable(db_path)
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
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
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
                for statement in _statements(sql):
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
        config_id = _new_id()
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
            [(_new_id(), config_id, name, json.dumps(value), reason, source) for name, value, reason, source in settings],
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
        rows = self.query(
            "SELECT c.component_name, s.parameter_name, s.parameter_value FROM component_config c "
            "JOIN optimization_setting s ON s.config_id = c.config_id "
            "WHERE c.kind = 'override' AND c.is_active AND c.target = ? ORDER BY c.created_at",
            (target,),
        )
        out: dict[str, dict[str, Any]] = {}
        for row in rows:
            try:
                value = json.loads(row["parameter_value"])
            except (TypeError, ValueError, RecursionError):
                continue  # a value another program wrote: not the user's override
            out.setdefault(str(row["component_name"]), {})[str(row["parameter_name"])] = value
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
        log_id = _new_id()
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
        from ultrasinger_gpu_cli.processes import alive

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
                (_new_id(), gpu_id, gpu_index, kind, message, value, threshold, run_id),
            )

    def median_speed(self, component: str) -> float | None:
        """The median x real time this component has reached before (for the slow-run alert)."""
        rows = self.query(
            "SELECT processing_speed_multiplier FROM performance_log WHERE component = ? AND NOT skipped "
            "AND processing_speed_multiplier IS NOT NULL ORDER BY logged_at DESC LIMIT 200",
            (component,),
        )
        speeds = [x for x in (number(r[0]) for r in rows) if x is not None]
        return statistics.median(speeds) if speeds else None

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
                (_new_id(), run_id, event.song, event.stage, event.from_setting, event.to_setting, event.reason,
                 event.device, None if gpu is None else gpu.uuid, None if gpu is None else gpu.index),
            )  # fmt: skip

    def recent_fallbacks(self, limit: int = 20) -> list[RecordedFallback]:
        rows = self.query("SELECT * FROM fallback_events ORDER BY created_at DESC LIMIT ?", (limit,))
        return [RecordedFallback(**{f: row[f] for f in RecordedFallback.__dataclass_fields__}) for row in rows]

    def _log_filter(self, component: str | None, since: str | None, gpu: int | None) -> tuple[str, list[Any]]:
        sql = " WHERE component IS NOT NULL AND component != 'monitor'"
        params: list[Any] = []
        if component:
            sql += " AND component = ?"
            params.append(component)
        if since:
            sql += " AND logged_at >= ?"
            params.append(since)
        if gpu is not None:
            sql += " AND gpu_index = ?"
            params.append(gpu)
        return sql, params

    def performance_rows(self, component: str | None = None, since: str | None = None,
                         gpu: int | None = None) -> list[sqlite3.Row]:  # fmt: skip
        where, params = self._log_filter(component, since, gpu)
        return self.query(f"SELECT * FROM performance_log{where} ORDER BY logged_at, rowid", tuple(params))

    def component_stats(self, component: str | None = None, since: str | None = None,
                        gpu: int | None = None) -> list[ComponentStats]:  # fmt: skip
        """Per component and GPU: runs, median / best / p95 x real time, peak VRAM, max temperature,
        fallbacks, and the trend of x real time and peak VRAM over the runs."""
        grouped: dict[tuple[str, str], list[sqlite3.Row]] = {}
        for row in self.performance_rows(component, since, gpu):
            grouped.setdefault((str(row["component"]), _where(row["device"], row["gpu_index"])), []).append(row)
        fallback_sql = "SELECT stage, device, gpu_index, COUNT(*) FROM fallback_events" + (
            " WHERE created_at >= ?" if since else "")  # fmt: skip
        fallbacks: dict[tuple[str, str], int] = {}
        for stage, device, index, count in self.query(fallback_sql + " GROUP BY stage, device, gpu_index",
                                                      (since,) if since else ()):  # fmt: skip
            key = (str(stage), _where(device, index))
            fallbacks[key] = fallbacks.get(key, 0) + int(count)
        out = []
        for (name, where), rows in sorted(grouped.items()):
            speeds = [x for x in (number(r["processing_speed_multiplier"]) for r in rows if not r["skipped"])
                      if x is not None]  # fmt: skip
            vram = [x for x in (integer(r["vram_used_mb"]) for r in rows) if x is not None]
            temps = [x for x in (integer(r["temperature_celsius"]) for r in rows) if x is not None]
            out.append(
                ComponentStats(
                    component=name,
                    gpu=where,
                    runs=len(rows),
                    median_speed_x=statistics.median(speeds) if speeds else None,
                    best_speed_x=max(speeds) if speeds else None,
                    p95_speed_x=_percentile(speeds, 0.95) if speeds else None,
                    peak_vram_mb=max(vram) if vram else None,
                    max_temperature_c=max(temps) if temps else None,
                    devices=tuple(sorted({str(r["device"]) for r in rows if r["device"]})),
                    fallbacks=fallbacks.get((name, where), 0),
                    speed_trend=tuple(round(x, 3) for x in speeds),
                    vram_trend=tuple(integer(r["vram_used_mb"]) for r in rows),
                )
            )
        return out


#: Job states: queued -> running -> done | failed | cancelled.
JOB_ACTIVE = ("queued", "running")
_JOB_COLUMNS = ("status", "stage", "progress", "speed_x", "device", "stages_json", "fallbacks_json", "error", "folder",
                "worker")  # fmt: skip


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

    def claim(self, worker: str) -> JobRow | None:
        """The oldest queued job, now running on ``worker``; None when the queue is empty."""
        with self.store._write() as conn:
            row = conn.execute("SELECT job_id FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1").fetchone()
            if row is None:
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


def _where(device: Any, gpu_index: Any) -> str:
    """Where a stage ran, as stats group it: "GPU <index>", "cuda" (index unknown), or "cpu"."""
    index = integer(gpu_index)
    if device == "cuda" and index is not None:
        return f"GPU {index}"
    return str(device) if device else "cpu"


def _statements(sql: str) -> list[str]:
    return [part.strip() for part in sql.split(";") if part.strip()]

