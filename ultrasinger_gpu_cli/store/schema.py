"""The database's tables and their migrations, where its file lives, what a damaged or
read-only file is told, and the values read back from its rows."""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from pathlib import Path
from typing import Any

from ultrasinger_gpu_cli.errors import StoreError

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


def writable(path: Path) -> bool:
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


def new_id() -> str:
    return uuid.uuid4().hex


def statements(sql: str) -> list[str]:
    return [part.strip() for part in sql.split(";") if part.strip()]
