"""``ugpu serve`` through FastAPI's test client (issue 13): the design's API shapes, validation,
the job queue with real workers on the small local models, and the security defaults."""

from __future__ import annotations

import io
import os
import json
import time
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the [server] extra (make test installs it)")

from fastapi.testclient import TestClient  # noqa: E402

from tests.audio_factory import song, write_wav  # noqa: E402
from tests.conftest import CU128_ARCHS  # noqa: E402
from tests.fake_nvml import h100, rtx_5060_ti  # noqa: E402
from ultrasinger_gpu_cli.server.app import create_app  # noqa: E402
from ultrasinger_gpu_cli.server.config import ServeConfig, needs_token  # noqa: E402
from ultrasinger_gpu_cli.store.jobs import JobQueue  # noqa: E402
from ultrasinger_gpu_cli.store.db import Store

TOKEN = "s3cret-token"


def _config(tmp_path: Path, models: Path | None = None, **kwargs) -> ServeConfig:
    """A server's config; one worker unless the test says (``workers=None``: the default, a CPU
    batch's lanes on this machine)."""
    kwargs.setdefault("workers", 1)
    return ServeConfig(db_path=tmp_path / "ugpu.db", data_root=tmp_path / "serve", models_dir=models, **kwargs)


def _client(config: ServeConfig, *, workers: bool = False) -> TestClient:
    return TestClient(create_app(config, start_workers=workers), base_url="http://127.0.0.1:8765")


def _wav(tmp_path: Path, name: str = "Band - Song.wav", seconds: float = 4.0) -> Path:
    return write_wav(tmp_path / name, song(seconds), 44_100)


def _upload(client: TestClient, path: Path, name: str | None = None, **form: str):
    return client.post("/api/jobs", files={"file": (name or path.name, path.read_bytes(), "audio/wav")}, data=form)


def _wait(client: TestClient, job_id: str, states=("done", "failed", "cancelled"), timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in states:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s")


def check_ultrastar_zip(data: bytes) -> str:
    """The zip holds one UltraStar folder whose chart is valid: headers, notes, the end mark."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
        charts = [n for n in names if n.endswith(".txt")]
        assert len(charts) == 1 and len({n.split("/")[0] for n in names}) == 1, names
        text = archive.read(charts[0]).decode("utf-8")
    lines = text.splitlines()
    headers = {line[1:].split(":", 1)[0] for line in lines if line.startswith("#")}
    assert {"TITLE", "ARTIST", "BPM", "GAP"} <= headers, headers
    notes = [line for line in lines if line[:1] in ":*FR"]
    assert notes and all(len(line.split(" ", 4)) == 5 for line in notes)
    assert lines[-1] == "E"
    return text


# -- the design's API ----------------------------------------------------------------------------------
def test_the_design_api_gives_the_design_shapes(tmp_path, fake_gpus, fake_torch):
    fake_gpus(rtx_5060_ti(), h100())
    fake_torch(CU128_ARCHS, "12.8", "2.8.0+cu128")
    with _client(_config(tmp_path)) as client:
        init = client.post("/api/gpu/initialize", json={"force_detection": True, "optimization_mode": "balanced"})
        assert init.status_code == 200, init.text
        body = init.json()
        assert list(body)[:4] == ["gpu_detected", "vram_total", "cuda_version", "optimization_applied"]
        assert body["gpu_detected"] is True and body["vram_total"] == 16 and body["cuda_version"] == "12.9"
        assert set(body["optimization_applied"]) == {"whisper", "demucs", "crepe"}
        monitor = client.get("/api/gpu/monitor").json()
        for key in ("vram_used", "vram_free", "gpu_utilization", "temperature", "processing_speed"):
            assert key in monitor
        assert isinstance(monitor["vram_used"], int) and len(monitor["gpus"]) == 2
        assert monitor["gpus"][0]["vram_budget_mb"] > 0  # the plan's budget for the card, for the gauge
        configured = client.post("/api/gpu/configure_component",
                                 json={"component": "whisper", "model": "medium", "batch_size": 8, "device_override": "cuda"})
        assert configured.status_code == 200, configured.text
        c = configured.json()
        assert (c["component"], c["model"], c["batch_size"], c["device_override"]) == ("whisper", "medium", 8, "cuda")
        for route in ("/api/gpu/optimize", "/api/gpu/fallback", "/api/gpu/stats", "/api/models", "/api/plan", "/docs",
                      "/openapi.json"):  # fmt: skip
            assert client.get(route).status_code == 200, route
    # configure_component stored the same override `ugpu whisper --save` does.
    from typer.testing import CliRunner

    from ultrasinger_gpu_cli.cli import app

    shown = CliRunner().invoke(app, ["whisper", "--json"])
    assert json.loads(shown.stdout)["stored_override"] == {"model": "medium", "batch_size": 8, "device": "cuda"}


@pytest.mark.parametrize(
    "body, needle",
    [
        ({"component": "whisperx"}, "'whisper', 'demucs' or 'crepe'"),
        ({"component": "whisper", "batch_size": 0}, "from 1 to 256"),
        ({"component": "crepe", "device_override": "gpu"}, "'cuda' or 'cpu'"),
        ({"component": "demucs", "model": "nope"}, "valid choices"),
        ({"component": "crepe", "batch_size": "many"}, "valid integer"),
    ],
)
def test_bad_configure_requests_get_422_with_the_choices_and_store_nothing(tmp_path, body, needle):
    with _client(_config(tmp_path)) as client:
        response = client.post("/api/gpu/configure_component", json=body)
        assert response.status_code == 422 and needle in response.text, response.text
    with Store.open(tmp_path / "ugpu.db") as store:
        assert store.overrides("cpu") == {}


def test_a_token_guards_every_api_call(tmp_path):
    assert needs_token("0.0.0.0") and needs_token("192.168.1.5") and not needs_token("127.0.0.1")
    with _client(_config(tmp_path, token=TOKEN)) as client:
        assert client.get("/api/jobs").status_code == 401
        assert client.get("/api/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.post("/api/gpu/initialize", json={}).status_code == 401
        assert client.get("/api/jobs", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert client.get(f"/api/jobs?token={TOKEN}").status_code == 401  # a query token only for event streams
        assert client.get("/").status_code == 200  # the page itself holds no data


def test_cors_is_off_unless_an_origin_is_given(tmp_path):
    origin = {"Origin": "http://example.org"}
    with _client(_config(tmp_path)) as client:
        assert "access-control-allow-origin" not in client.get("/api/jobs", headers=origin).headers
    with _client(_config(tmp_path, cors_origin=["http://example.org"])) as client:
        assert client.get("/api/jobs", headers=origin).headers["access-control-allow-origin"] == "http://example.org"


# -- uploads and paths -------------------------------------------------------------------------------------
def test_uploads_are_limited_probed_and_never_used_as_paths(tmp_path):
    config = _config(tmp_path, max_upload_mb=1)
    with _client(config) as client:
        big = client.post("/api/jobs", files={"file": ("big.wav", b"\0" * (3 * 2**20), "audio/wav")})
        assert big.status_code == 413 and "1 MB" in big.json()["detail"]
        text = client.post("/api/jobs", files={"file": ("notes.wav", b"not audio at all", "audio/wav")})
        assert text.status_code == 415 and "not an audio" in text.json()["detail"]
        wav = _wav(tmp_path, seconds=2.0)
        for hostile in ("../../../../tmp/evil.wav", "..\\..\\evil.wav", "/etc/passwd", "a/../../b.wav", "\x00.wav"):
            accepted = _upload(client, wav, hostile)
            assert accepted.status_code == 201, (hostile, accepted.text)
            job = client.get(f"/api/jobs/{accepted.json()['id']}").json()
            assert "/" not in job["name"] and "\\" not in job["name"] and ".." not in job["name"].strip(".")
        stored = [p for p in (tmp_path / "serve").rglob("*") if p.is_file()]
        assert stored and all(p.resolve().is_relative_to((tmp_path / "serve" / "inbox").resolve()) for p in stored)
        assert not (tmp_path / "evil.wav").exists() and not Path("/tmp/evil.wav").exists()
        assert len(list((tmp_path / "serve" / "inbox").iterdir())) == 5  # refused uploads left nothing
        for bad in ("../../etc/passwd", "nothex", "0" * 31 + "g"):
            assert client.get(f"/api/jobs/{bad}/download").status_code == 404
            assert client.delete(f"/api/jobs/{bad}").status_code == 404


def test_the_queue_has_a_length_limit(tmp_path):
    wav = _wav(tmp_path, seconds=2.0)
    with _client(_config(tmp_path, queue_limit=2)) as client:
        assert [_upload(client, wav).status_code for _ in range(3)] == [201, 201, 429]
        first = client.get("/api/jobs").json()["jobs"][-1]
        assert client.delete(f"/api/jobs/{first['id']}").json()["status"] == "cancelled"
        assert _upload(client, wav).status_code == 201  # a cancelled job frees its place


def test_path_jobs_only_from_the_music_root(tmp_path):
    music = tmp_path / "music"
    (music / "Album").mkdir(parents=True)
    _wav(music / "Album", "Band - Song.wav", 2.0)
    outside = _wav(tmp_path, "Secret - Song.wav", 2.0)
    (music / "link.wav").symlink_to(outside)
    with _client(_config(tmp_path)) as client:
        assert client.post("/api/jobs", json={"path": "Album/Band - Song.wav"}).status_code == 403
    with _client(_config(tmp_path, music_root=music)) as client:
        ok = client.post("/api/jobs", json={"path": "Album/Band - Song.wav", "mode": "conservative"})
        assert ok.status_code == 201 and ok.json()["options"]["mode"] == "conservative"
        for escape in ("../Secret - Song.wav", str(outside), "link.wav", "Album/../../Secret - Song.wav"):
            assert client.post("/api/jobs", json={"path": escape}).status_code == 403, escape
        assert client.post("/api/jobs", json={"path": "Album/missing.wav"}).status_code == 404
        assert client.post("/api/jobs", json={"path": "Album/Band - Song.wav", "mode": "reckless"}).status_code == 422


# -- jobs, with workers ------------------------------------------------------------------------------------
def test_a_job_runs_streams_its_events_and_downloads_a_valid_chart(env, fast_whisper, tmp_path):
    wav = _wav(tmp_path)
    with _client(_config(tmp_path, env), workers=True) as client:
        submitted = _upload(client, wav, language="en")
        assert submitted.status_code == 201, submitted.text
        job_id = submitted.json()["id"]
        events = []
        with client.stream("GET", f"/api/jobs/{job_id}/events") as stream:
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
        assert events[-1]["status"] == "done", events[-1]
        # The stream samples the job each 0.4 s: it sees it run (a 0.1 s stage may fall between samples).
        assert len(events) >= 3 and {"running", "done"} <= {e["status"] for e in events}
        assert {e["stage"] for e in events if e["stage"]} & {"demucs", "whisper", "crepe"}
        job = client.get(f"/api/jobs/{job_id}").json()
        assert [s["stage"] for s in job["stages"]] == ["demucs", "whisper", "crepe"] and job["device"] == "cpu"
        assert all(s["speed_x"] for s in job["stages"]) and job["download"] == f"/api/jobs/{job_id}/download"
        download = client.get(job["download"])
        assert download.status_code == 200 and download.headers["content-type"] == "application/zip"
        assert "Band%20-%20Song.zip" in download.headers["content-disposition"]
        check_ultrastar_zip(download.content)
        assert not (tmp_path / "serve" / "inbox" / job_id).exists()  # the upload is gone once it is done
        listed = client.get("/api/jobs").json()["jobs"]
        assert [j["id"] for j in listed] == [job_id]


def test_cancelling_a_queued_and_a_running_job(env, fast_whisper, tmp_path):
    wav = _wav(tmp_path, seconds=8.0)
    config = _config(tmp_path, env)
    with _client(config, workers=True) as client:
        running = _upload(client, wav).json()["id"]
        queued = _upload(client, wav, "Other - Song.wav").json()["id"]
        assert client.delete(f"/api/jobs/{queued}").json()["status"] == "cancelled"
        _wait(client, running, states=("running",))
        while client.get(f"/api/jobs/{running}").json()["stage"] in (None, "starting"):
            time.sleep(0.1)
        assert client.delete(f"/api/jobs/{running}").json()["status"] == "cancelled"
        time.sleep(2.0)
        assert client.get(f"/api/jobs/{running}").json()["status"] == "cancelled"
        assert client.get(f"/api/jobs/{running}/download").status_code == 404
        assert not (tmp_path / "serve" / "out" / running).exists()
        assert client.get(f"/api/jobs/{queued}").json()["started_at"] is None  # never ran


def _files(data: bytes) -> dict[str, bytes]:
    """A download's files by name, but the report (it holds the run's timings)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {n.split("/", 1)[1]: archive.read(n) for n in archive.namelist() if not n.endswith(".report.json")}


def _queued(config: ServeConfig, songs: list[Path]) -> list[str]:
    """``songs`` uploaded to a server without workers: queued, for the next server's workers."""
    with _client(config) as client:
        return [_upload(client, path).json()["id"] for path in songs]


def test_a_worker_opens_the_next_job_while_the_engines_run_and_each_job_is_done_at_once(env, fast_whisper, tmp_path,
                                                                                          monkeypatch):  # fmt: skip
    """Issue 22: while a job's engines run, the worker opens the next queued job on the host
    thread, and a job is done as soon as its folder is written (not when the next job's engines
    end); every file is the one a worker that does one job at a time writes."""
    import threading

    from ultrasinger_gpu_cli.run.pipeline import Pipeline

    songs = [_wav(tmp_path, f"Band - Song {i}.wav", seconds=2.0 + i) for i in range(3)]  # three songs, three charts
    opened_on: dict[str, str] = {}
    second_may_run = threading.Event()
    open_song, run_engines = Pipeline.open_song, Pipeline.run_engines

    def spied_open(self, source, **kwargs):
        opened_on[Path(source).stem] = threading.current_thread().name
        return open_song(self, source, **kwargs)

    def held_engines(self, work, **kwargs):  # the second job's engines wait until the first job is done
        if work.source.stem == "Band - Song 1" and not second_may_run.wait(120):
            raise AssertionError("the first job was not done while the second one's engines ran")
        return run_engines(self, work, **kwargs)

    monkeypatch.setattr(Pipeline, "open_song", spied_open)
    monkeypatch.setattr(Pipeline, "run_engines", held_engines)
    overlapped = _config(tmp_path / "overlapped", env)
    ids = _queued(overlapped, songs)
    with _client(overlapped, workers=True) as client:
        first = _wait(client, ids[0])
        second = client.get(f"/api/jobs/{ids[1]}").json()
        second_may_run.set()
        assert first["status"] == "done", first
        assert second["status"] == "running" and second["stage"] in ("starting", "demucs"), second
        jobs = [_wait(client, job_id) for job_id in ids]
        assert [j["status"] for j in jobs] == ["done"] * 3, [j["error"] for j in jobs]
        assert all([s["stage"] for s in j["stages"]] == ["demucs", "whisper", "crepe"] for j in jobs)
        made = [_files(client.get(j["download"]).content) for j in jobs]
    # The second and third songs were opened while the engines ran another (on the host thread).
    assert {opened_on["Band - Song 1"], opened_on["Band - Song 2"]} == {"ugpu-host_0"}, opened_on
    assert not any((tmp_path / "overlapped" / "serve" / "inbox").iterdir())  # every upload removed

    second_may_run.set()
    serial = _config(tmp_path / "serial", env, overlap=False)
    ids = _queued(serial, songs)
    with _client(serial, workers=True) as client:
        jobs = [_wait(client, job_id) for job_id in ids]
        expected = [_files(client.get(j["download"]).content) for j in jobs]
    assert opened_on["Band - Song 1"] != "ugpu-host_0"  # one job at a time: opened on the worker's thread
    for got, want in zip(made, expected):
        assert sorted(got) == sorted(want) and any(name.endswith(".txt") for name in got)
        for name in want:
            assert got[name] == want[name], name


def test_a_job_is_taken_ahead_only_in_its_turn_for_the_engines_loaded_and_when_no_worker_waits(tmp_path):
    from ultrasinger_gpu_cli.usecases.jobs import WorkerPool

    config = _config(tmp_path)
    with _client(config) as client:
        wav = _wav(tmp_path, seconds=1.0)
        fast = client.post("/api/jobs", files={"file": ("a.wav", wav.read_bytes())}, data={"mode": "aggressive"}).json()["id"]
        balanced = _upload(client, wav).json()["id"]
    with Store.open(config.db_path) as store:
        queue = JobQueue(store)
        assert queue.claim("w", mode="balanced") is None  # the oldest job asks for another mode: not out of turn
        assert queue.claim("w", mode="aggressive").job_id == fast
        assert queue.claim("w", mode="balanced").job_id == balanced and queue.claim("w") is None
    pool = WorkerPool()
    pool.waiting("gpu0", True)
    assert pool.others_waiting("gpu1") and not pool.others_waiting("gpu0")
    pool.waiting("gpu0", False)
    assert not pool.others_waiting("gpu1")


def test_jobs_left_running_by_a_crash_are_queued_again_on_start(tmp_path):
    config = _config(tmp_path)
    with _client(config) as client:
        job_id = _upload(client, _wav(tmp_path, seconds=2.0)).json()["id"]
    with Store.open(config.db_path) as store:
        assert JobQueue(store).claim("gone-worker").status == "running"  # then the process was killed
    with _client(config) as client:  # a new server: its startup requeues it
        job = client.get(f"/api/jobs/{job_id}").json()
        assert job["status"] == "queued" and job["attempts"] == 1


def test_serve_with_ray_runs_each_job_on_a_ray_actor(env, ray_cluster, tmp_path):
    config = _config(tmp_path, env, ray=True, workers=1)
    with _client(config, workers=True) as client:
        submitted = _upload(client, _wav(tmp_path), language="en")
        assert submitted.status_code == 201, submitted.text
        job = _wait(client, submitted.json()["id"])
        assert job["status"] == "done", job
        assert [s["stage"] for s in job["stages"]] == ["demucs", "whisper", "crepe"]  # the actor's events came back
        check_ultrastar_zip(client.get(job["download"]).content)
        assert Path(job["download"]).name == "download"
    assert ray_cluster.is_initialized()  # a cluster the server did not start is left running


def test_a_job_whose_weights_are_missing_fails_with_the_fix_and_the_worker_goes_on(tmp_path):
    empty = tmp_path / "no-models"
    empty.mkdir()
    with _client(_config(tmp_path, empty), workers=True) as client:  # UGPU_OFFLINE=1: nothing is fetched
        first = _wait(client, _upload(client, _wav(tmp_path, seconds=2.0)).json()["id"])
        assert first["status"] == "failed" and "is not on this machine" in first["error"]
        assert "ugpu models pull" in first["error"]
        second = _wait(client, _upload(client, _wav(tmp_path, "Other - Song.wav", 2.0)).json()["id"])
        assert second["status"] == "failed"  # the worker is still there, taking jobs


def test_one_worker_per_gpu_pytorch_can_run_each_planned_for_its_card(tmp_path, fake_gpus, fake_torch):
    from ultrasinger_gpu_cli.server.config import worker_plans

    fake_gpus(rtx_5060_ti(), h100())
    config = _config(tmp_path, workers=None)
    fake_torch(CU128_ARCHS, "12.8", "2.8.0+cu128")
    with Store.open(config.db_path) as store:
        plans = [(name, plan(store, "balanced")) for name, plan in worker_plans(config).plans]
    assert [name for name, _ in plans] == ["gpu0-0", "gpu1-1"]
    assert [p.target.name for _, p in plans] == ["NVIDIA GeForce RTX 5060 Ti", "NVIDIA H100 80GB HBM3"]
    assert plans[0][1].tier.key != plans[1][1].tier.key  # each card its own tier
    fake_torch()  # a cu126 build: it cannot run the RTX 5060 Ti, so CPU workers
    assert worker_plans(_config(tmp_path / "other", workers=1)).plans[0][0] == "cpu"
    workers = worker_plans(_config(tmp_path / "other", workers=None))
    assert not workers.on_gpus and all(name.startswith("cpu") for name, _ in workers.plans)


def test_a_worker_without_the_database_plans_like_one_with_it(tmp_path, fake_gpus, fake_torch):
    """The one per-worker planner: a Ray actor, given the driver's stored overrides, plans its
    card exactly as a worker reading the database does; another card's overrides do not leak."""
    from ultrasinger_gpu_cli.usecases.plan import worker_plan

    fake_gpus(rtx_5060_ti(), h100())
    fake_torch(CU128_ARCHS, "12.8", "2.8.0+cu128")
    with Store.open(tmp_path / "ugpu.db") as store:
        h100_uuid = worker_plan(store, 1).target.gpu.uuid
        store.save_override(h100_uuid, "whisper", {"batch_size": 3})
        from_store = worker_plan(store, h100_uuid, "balanced")
        handed = store.all_overrides()
        other = worker_plan(store, 0, "balanced")
    without = worker_plan(None, h100_uuid, "balanced", overrides=handed)
    assert from_store.components["whisper"].value("batch_size") == 3
    assert without.components == from_store.components and without.target == from_store.target
    assert set(handed) == {h100_uuid} and worker_plan(None, 0, "balanced", overrides=handed).components == other.components
    assert worker_plan(None, None, overrides=handed).target.name == "CPU"


def test_a_worker_that_separates_the_next_job_ahead_keeps_each_jobs_stages_and_a_cancel_stops_it(env, fast_whisper,
                                                                                                 tmp_path, monkeypatch):  # fmt: skip
    """Where the card holds both, a worker separates the next job while this one's Whisper and
    pitch run (issue 22): each job's stages are its own, and a job cancelled while it is separated
    ahead ends cancelled, with nothing written, while the others finish."""
    import threading

    from ultrasinger_gpu_cli.plan.resolver import Ahead, Plan
    from ultrasinger_gpu_cli.run.pipeline import Pipeline

    monkeypatch.setattr(Plan, "ahead", property(lambda plan: Ahead(True, 0, "this test")))
    songs = [_wav(tmp_path, f"Band - Song {i}.wav", seconds=2.0 + i) for i in range(4)]
    started, go, ahead_of = threading.Event(), threading.Event(), []
    separate_ahead = Pipeline.separate_ahead

    def held(self, work, stop):
        ahead_of.append(work.source.stem)
        if work.source.stem == "Band - Song 1":
            started.set()
            assert go.wait(60)
        return separate_ahead(self, work, stop)

    monkeypatch.setattr(Pipeline, "separate_ahead", held)
    config = _config(tmp_path / "ahead", env)
    ids = _queued(config, songs)
    with _client(config, workers=True) as client:
        assert started.wait(120)  # the second job is about to be separated ahead of its turn
        assert client.delete(f"/api/jobs/{ids[1]}").json()["status"] == "cancelled"
        go.set()
        jobs = [_wait(client, job_id) for job_id in ids]
        assert [j["status"] for j in jobs] == ["done", "cancelled", "done", "done"], [j["error"] for j in jobs]
        for done in (jobs[0], jobs[2], jobs[3]):  # the fourth job's separation ran ahead, beside the third's
            assert [s["stage"] for s in done["stages"]] == ["demucs", "whisper", "crepe"], done["stages"]
        assert client.get(f"/api/jobs/{ids[1]}/download").status_code == 404
    # the third job in its own turn (the job before it ended, cancelled, before an engine of its own ran)
    assert ahead_of == ["Band - Song 1", "Band - Song 3"]
    assert not (tmp_path / "ahead" / "serve" / "out" / ids[1]).exists()


def test_a_worker_records_the_ahead_threads_progress_on_a_connection_of_that_threads_own(tmp_path):
    """The ahead worker's events write a job's progress while the worker's own thread may be in a
    write transaction on its connection (claiming the next job): on one shared connection the
    second ``BEGIN`` fails ("cannot start a transaction within a transaction") and the job with it."""
    import threading

    from ultrasinger_gpu_cli.store.db import Store
    from ultrasinger_gpu_cli.store.jobs import JobQueue
    from ultrasinger_gpu_cli.usecases.jobs import JobOptions, Jobs, JobWorker, WorkerConfig

    music = tmp_path / "music"
    music.mkdir()
    _wav(music, "Band - Song.wav", seconds=1.0)
    config = ServeConfig(db_path=tmp_path / "ugpu.db", data_root=tmp_path / "serve", music_root=music)
    folders = config.folders.make()
    with Store.open(config.db_path) as store:
        job_id = Jobs(store, folders).submit_path("Band - Song.wav", JobOptions())["id"]
    worker = JobWorker(WorkerConfig("w", config.db_path, folders, lambda store, mode: None), threading.Event())
    worker.queue = JobQueue(Store.open(config.db_path))
    job = worker.queue.claim("w")
    assert job is not None and job.job_id == job_id
    written, errors = threading.Event(), []

    def ahead() -> None:  # an engine thread other than the worker's
        try:
            worker._write(job, force=True, stage="demucs", progress=0.5)
        except Exception as exc:  # noqa: BLE001 - what the test looks for
            errors.append(exc)
        written.set()

    with worker.queue.store._write():  # the worker's thread mid-transaction, as in a claim
        thread = threading.Thread(target=ahead)
        thread.start()
        time.sleep(0.3)
        assert not errors  # it waits for the transaction, on its own connection
    thread.join(30)
    assert written.is_set() and not errors
    row = worker.queue.get(job_id)
    assert (row.stage, row.progress) == ("demucs", 0.5)
    for queue in worker._queues.values():
        queue.store.close()
    worker.queue.store.close()


def test_several_cpu_workers_share_the_cores_out_among_their_engines(env, tmp_path, monkeypatch):
    import psutil
    import torch

    from ultrasinger_gpu_cli.server.config import worker_plans

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)  # (both put back after the test)
    try:
        one = worker_plans(_config(tmp_path, env, workers=1))
        one.share_cores()
        assert [name for name, _ in one.plans] == ["cpu"]
        assert "OMP_NUM_THREADS" not in os.environ  # one worker: the libraries' own count
        cores = psutil.cpu_count(logical=False) or psutil.cpu_count()
        two = worker_plans(_config(tmp_path, env, workers=2))
        assert "OMP_NUM_THREADS" not in os.environ  # planning them changes nothing; starting them does
        two.share_cores()
        assert [name for name, _ in two.plans] == ["cpu-0", "cpu-1"]
        assert os.environ["OMP_NUM_THREADS"] == str(max(1, cores // 2)) and torch.get_num_threads() == max(1, cores // 2)
        monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's own limit stays
        worker_plans(_config(tmp_path, env, workers=2)).share_cores()
        assert os.environ["OMP_NUM_THREADS"] == "3"
    finally:
        torch.set_num_threads(before)


def test_a_cpu_server_runs_as_many_workers_as_a_batch_has_lanes_resolved_once(env, tmp_path, monkeypatch):
    """Without ``--workers`` on the CPU: a batch's lanes (the cores, the memory free) as the server
    starts, its cores shared out; the page's plans are the running workers' afterwards, whatever
    the memory free has become."""
    import collections

    import psutil

    from ultrasinger_gpu_cli.gpu import devices

    memory = collections.namedtuple("memory", "available")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(devices, "cpu_threads", lambda: 3)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: memory(64 * 2**30))
    monkeypatch.setattr(devices, "use_cpu_threads", lambda n: shared.append(n))
    shared: list[int] = []
    config = _config(tmp_path, env, workers=None)
    with _client(config, workers=True) as client:
        assert [w.name for w in client.app.state.workers] == ["ugpu-cpu-0", "ugpu-cpu-1", "ugpu-cpu-2"]
        assert shared == [1]  # 3 cores, 3 workers: a thread each
        monkeypatch.setattr(psutil, "virtual_memory", lambda: memory(512 * 2**20))  # the models took it
        assert [w["worker"] for w in client.get("/api/plan").json()["workers"]] == ["cpu-0", "cpu-1", "cpu-2"]
    assert "3 songs at once" in config.workers_resolved.why
    scarce = _config(tmp_path / "scarce", env, workers=None)
    assert [name for name, _ in scarce.workers_resolved.plans] == ["cpu"]  # memory for one lane only
    assert "MB are free" in scarce.workers_resolved.why
