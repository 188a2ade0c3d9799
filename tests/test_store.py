"""The SQLite store: the design's schema, migrations, concurrency, corrupt files."""

from __future__ import annotations

import multiprocessing
import sqlite3

import pytest

from ultrasinger_gpu_cli.errors import StoreError
from ultrasinger_gpu_cli.gpu.facts import GpuIdentity, GpuInfo
from ultrasinger_gpu_cli.plan.resolver import PlanTarget, resolve
from ultrasinger_gpu_cli.store.schema import MIGRATIONS, SCHEMA_VERSION, statements, resolve_db_path
from ultrasinger_gpu_cli.store.db import Store

DESIGN_COLUMNS = {
    "gpu_config": ["gpu_id", "gpu_name", "vram_total_gb", "cuda_version", "driver_version", "detected_at", "is_active"],
    "component_config": ["config_id", "gpu_id", "component_name", "model_name", "batch_size", "compute_type",
                         "device", "created_at"],
    "optimization_setting": ["setting_id", "config_id", "parameter_name", "parameter_value", "optimization_reason"],
    "performance_log": ["log_id", "gpu_id", "vram_used_mb", "gpu_utilization_percent", "temperature_celsius",
                        "processing_speed_multiplier", "logged_at"],
}  # fmt: skip
DESIGN_INDEXES = {
    "idx_gpu_config_active", "idx_gpu_config_detected", "idx_component_config_gpu", "idx_component_config_component",
    "idx_performance_log_gpu", "idx_performance_log_time", "idx_performance_log_vram",
}  # fmt: skip


@pytest.fixture
def store(tmp_path):
    with Store.open(tmp_path / "state.db") as s:
        yield s


def test_schema_has_the_designs_tables_columns_and_indexes(store):
    for table, columns in DESIGN_COLUMNS.items():
        found = [row["name"] for row in store.query(f"PRAGMA table_info({table})")]
        assert found[: len(columns)] == columns, table
    indexes = {row["name"] for row in store.query("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert DESIGN_INDEXES <= indexes
    assert store.schema_version() == SCHEMA_VERSION
    assert store.query("PRAGMA journal_mode")[0][0] == "wal"
    names = [r["name"] for r in store.query("SELECT name FROM schema_migrations ORDER BY name")]
    assert names == [name for name, _ in MIGRATIONS]


def test_gpu_config_primary_key_and_not_null_as_designed(store):
    info = {row["name"]: row for row in store.query("PRAGMA table_info(gpu_config)")}
    assert info["gpu_id"]["pk"] == 1 and info["gpu_name"]["notnull"] == 1 and info["vram_total_gb"]["notnull"] == 1


def test_migrates_a_version_1_database_and_keeps_its_rows(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    for statement in statements(MIGRATIONS[0][1]):
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO gpu_config (gpu_id, gpu_name, vram_total_gb) VALUES ('GPU-old', 'Old card', 8)")
    conn.execute(
        "INSERT INTO performance_log (log_id, gpu_id, processing_speed_multiplier) VALUES ('l1', 'GPU-old', 2.5)"
    )
    conn.commit()
    conn.close()
    with Store.open(path) as store:
        assert store.schema_version() == SCHEMA_VERSION
        assert store.query("SELECT gpu_name FROM gpu_config")[0][0] == "Old card"
        row = store.query("SELECT processing_speed_multiplier, component FROM performance_log")[0]
        assert row[0] == 2.5 and row[1] is None
        store.log_performance(component="whisper", device="cuda", processing_speed_multiplier=3.0)


def _writer(path: str, n: int, tag: str) -> None:
    with Store.open(path) as store:
        for i in range(n):
            store.log_performance(component="crepe", device="cpu", processing_speed_multiplier=float(i), song=tag)


def test_two_processes_write_at_once_without_locking_errors(tmp_path):
    path = str(tmp_path / "shared.db")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, 150, tag)) for tag in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    with Store.open(path) as store:
        counts = dict(store.query("SELECT song, COUNT(*) FROM performance_log GROUP BY song"))
    assert counts == {"a": 150, "b": 150}


def test_corrupt_file_is_reported_by_name_and_left_untouched(tmp_path):
    path = tmp_path / "broken.db"
    junk = b"this is not a database" * 100
    path.write_bytes(junk)
    with pytest.raises(StoreError) as info:
        Store.open(path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == junk


def test_directory_and_newer_schema_are_refused(tmp_path):
    with pytest.raises(StoreError, match="directory"):
        Store.open(tmp_path)
    path = tmp_path / "future.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        Store.open(path)


def test_db_path_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("UGPU_DB", str(tmp_path / "env.db"))
    assert resolve_db_path() == tmp_path / "env.db"
    assert resolve_db_path(tmp_path / "flag.db") == tmp_path / "flag.db"
    monkeypatch.delenv("UGPU_DB")
    assert resolve_db_path().name == "ugpu.db"
    assert str(resolve_db_path()).startswith(str(tmp_path))  # the test's HOME, never the real one


def test_record_gpus_upserts_and_deactivates_missing_ones(store):
    a = GpuInfo(index=0, name="A", uuid="GPU-a", vram_total_mb=16311)
    b = GpuInfo(index=1, name="B", uuid="GPU-b", vram_total_mb=8192)
    store.record_gpus([a, b], "12.9", "575.51")
    store.record_gpus([a], "12.9", "575.51")
    rows = {r["gpu_id"]: (r["vram_total_gb"], r["is_active"]) for r in store.query("SELECT * FROM gpu_config")}
    assert rows == {"GPU-a": (16, 1), "GPU-b": (8, 0)}


def test_save_plan_writes_component_config_and_one_setting_row_per_parameter(store):
    store.record_gpus([GpuInfo(index=0, name="RTX", uuid="GPU-x", vram_total_mb=16311)], "12.9", "575")
    plan = resolve(PlanTarget("RTX", 16311, "12.0", GpuIdentity(0, "GPU-x"), torch_can_run=True))
    ids = store.save_plan(plan)
    assert set(ids) == {"whisper", "demucs", "crepe"}
    row = store.query("SELECT * FROM component_config WHERE config_id = ?", (ids["whisper"],))[0]
    assert (row["gpu_id"], row["model_name"], row["batch_size"], row["compute_type"], row["device"]) == (
        "GPU-x", "large-v3-turbo", 32, "float16", "cuda",
    )  # fmt: skip
    settings = store.query(
        "SELECT parameter_name, parameter_value, optimization_reason, source FROM optimization_setting "
        "WHERE config_id = ?",
        (ids["demucs"],),
    )
    by_name = {r["parameter_name"]: r for r in settings}
    assert set(by_name) == {"model", "chunk_size", "overlap", "batch_size", "compute_type", "device", "backend"}
    assert by_name["chunk_size"]["parameter_value"] == "262144" and by_name["chunk_size"]["optimization_reason"]


def test_overrides_merge_and_reset(store):
    assert store.overrides("cpu") == {}
    store.save_override("cpu", "whisper", {"model": "medium"})
    store.save_override("cpu", "whisper", {"batch_size": 8})
    assert store.overrides("cpu") == {"whisper": {"model": "medium", "batch_size": 8}}
    store.record_gpus([GpuInfo(index=0, name="Other", uuid="GPU-other", vram_total_mb=8192)], None, None)
    assert store.overrides("GPU-other") == {}  # overrides belong to one GPU ("cpu": a machine without one)
    store.save_override("GPU-other", "crepe", {"step_size": 20}, gpu_id="GPU-other")
    assert store.overrides("GPU-other") == {"crepe": {"step_size": 20}}
    assert store.reset_override("cpu", "whisper") is True
    assert store.overrides("cpu") == {}
    assert store.reset_override("cpu", "whisper") is False
    assert store.overrides(None) == {}  # a hypothetical card has none


def test_a_gpu_not_recorded_yet_does_not_get_the_cpus_overrides(store):
    """Regression: a NULL gpu_id meant both "the CPU" and "a GPU not recorded yet"."""
    store.save_override("cpu", "whisper", {"model": "tiny"})
    assert store.overrides("GPU-never-recorded") == {}
    store.save_override("GPU-never-recorded", "whisper", {"model": "medium"}, gpu_id="GPU-never-recorded")
    assert store.overrides("GPU-never-recorded") == {"whisper": {"model": "medium"}}
    assert store.overrides("cpu") == {"whisper": {"model": "tiny"}}


def test_migration_keeps_old_cpu_overrides_and_crepe_model(tmp_path):
    """A database written before the registry: NULL-gpu overrides are the CPU's; crepe's
    model_capacity becomes model; old fallback events get their device from the rung."""
    path = tmp_path / "old.db"
    store = Store.open(path)
    conn = store._conn
    conn.execute("PRAGMA user_version = 3")
    conn.execute("DROP INDEX idx_component_config_target")
    conn.execute("DROP TABLE jobs")
    for table, column in (("component_config", "target"), ("fallback_events", "device"), ("fallback_events", "gpu_id"),
                          ("fallback_events", "gpu_index"), ("runs", "kind"), ("performance_log", "backend"),
                          ("performance_log", "skipped"), ("runs", "pid_started")):
        conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    conn.execute("INSERT INTO component_config (config_id, gpu_id, component_name, kind, is_active) "
                 "VALUES ('c1', NULL, 'crepe', 'override', 1)")
    conn.execute("INSERT INTO optimization_setting (setting_id, config_id, parameter_name, parameter_value, source) "
                 "VALUES ('s1', 'c1', 'model_capacity', '\"tiny\"', 'override')")
    conn.execute("INSERT INTO fallback_events (event_id, stage, from_setting, to_setting) "
                 "VALUES ('e1', 'crepe', 'cuda batch 8', 'cpu batch 4')")
    store.close()
    with Store.open(path) as migrated:
        assert migrated.schema_version() == len(MIGRATIONS)
        assert migrated.overrides("cpu") == {"crepe": {"model": "tiny"}}
        assert [tuple(r) for r in migrated.query("SELECT device FROM fallback_events")] == [("cuda",)]


def test_component_stats(store):
    for speed, vram, temp in ((2.0, 3000, 60), (4.0, 5000, 70), (3.0, None, None)):
        store.log_performance(component="whisper", device="cuda", processing_speed_multiplier=speed,
                              vram_used_mb=vram, temperature_celsius=temp)  # fmt: skip
    store.log_performance(component="crepe", device="cpu", processing_speed_multiplier=0.5)
    stats = {s.component: s for s in store.component_stats()}
    w = stats["whisper"]
    assert (w.runs, w.median_speed_x, w.best_speed_x, w.peak_vram_mb, w.max_temperature_c) == (3, 3.0, 4.0, 5000, 70)
    assert w.p95_speed_x == pytest.approx(3.9)
    assert stats["crepe"].devices == ("cpu",)
    assert [s.component for s in store.component_stats(component="crepe")] == ["crepe"]
    assert store.component_stats(since="2999-01-01") == []


def test_fallbacks_are_counted_on_the_gpu_they_happened_on(store):
    """Regression: one event on GPU 1 was counted under GPU 0, GPU 1 and cpu."""
    from ultrasinger_gpu_cli.failures import FallbackEvent

    for index in (0, 1):
        store.log_performance(component="whisper", device="cuda", gpu=GpuIdentity(index, f"GPU-{index}"),
                              processing_speed_multiplier=5.0)  # fmt: skip
    store.log_performance(component="whisper", device="cpu", processing_speed_multiplier=0.5)
    store.record_fallback(FallbackEvent("whisper", "cuda batch 32", "cuda batch 16", "out of memory", "s", "cuda",
                                        GpuIdentity(1, "GPU-1")), run_id=None)  # fmt: skip
    by_where = {s.gpu: s.fallbacks for s in store.component_stats()}
    assert by_where == {"GPU 0": 0, "GPU 1": 1, "cpu": 0}


def test_the_live_state_stays_on_the_song_whose_turn_it_is_while_the_next_is_separated_ahead(store):
    """``ugpu monitor`` shows a run's song and stage: a batch's next song, separated ahead beside
    this one, must not take it over (its stage is still logged when it ends)."""
    import os

    from ultrasinger_gpu_cli.run import events as ev
    from ultrasinger_gpu_cli.run.recorder import Recorder

    record = Recorder(store, live_every_s=0.0)
    run = ev.StageRun("demucs", "demucs", "htdemucs_ft", "cuda", 2.0, 60.0, shared_card=True)
    for event in (ev.RunStarted("r1", "balanced", None, os.getpid(), 0.0), ev.SongStarted("A.mp3"),
                  ev.StageStarted("A.mp3", "whisper", "r1"), ev.StageProgress("A.mp3", "whisper", 0.5, 3.0, "r1"),
                  ev.SongAhead("B.mp3"), ev.StageStarted("B.mp3", "demucs", "r1"),
                  ev.StageProgress("B.mp3", "demucs", 0.7, 30.0, "r1"), ev.StageFinished("B.mp3", run, "r1")):  # fmt: skip
        record(event)
    (row,) = store.query("SELECT song, stage, progress FROM runs WHERE run_id = 'r1'")
    assert (row["song"], row["stage"], row["progress"]) == ("A.mp3", "whisper", 0.5)
    (logged,) = store.query("SELECT song, component FROM performance_log WHERE run_id = 'r1'")
    assert (logged["song"], logged["component"]) == ("B.mp3", "demucs")
    for event in (ev.SongStarted("B.mp3"), ev.StageStarted("B.mp3", "whisper", "r1")):  # B's turn
        record(event)
    (row,) = store.query("SELECT song, stage FROM runs WHERE run_id = 'r1'")
    assert (row["song"], row["stage"]) == ("B.mp3", "whisper")
