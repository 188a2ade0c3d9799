"""Many GPUs and many machines (issue 14): ``ugpu run --gpus`` with one worker process per card
(a fake NVML of two cards, CPU plans), packing on a large card, and a real local Ray cluster;
the same files as a serial run, and a worker or actor killed mid-song loses nothing."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.audio_factory import song, write_wav
from tests.conftest import CU128_ARCHS
from tests.fake_nvml import h100, rtx_5060_ti
from ultrasinger_gpu_cli.cli import app
from ultrasinger_gpu_cli.errors import InvalidSettingError
from ultrasinger_gpu_cli.run.events import StageStarted
from ultrasinger_gpu_cli.run.options import RunOptions
from ultrasinger_gpu_cli.plan.resolver import CPU_TARGET, resolve
from ultrasinger_gpu_cli.store.db import Store
from ultrasinger_gpu_cli.usecases.fleet import convert_songs
from ultrasinger_gpu_cli.usecases.scale import plan_slots, run_parallel


def _songs(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [write_wav(folder / f"Band{i} - Song{i}.wav", song(seconds), 44_100) for i, seconds in enumerate((4.0, 5.0))]


def _charts(out: Path) -> dict[str, str]:
    """Every song folder's files, and each chart's text."""
    found = {}
    for folder in sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")):
        names = sorted(p.name for p in folder.iterdir())
        found[folder.name] = (names, (folder / f"{folder.name}.txt").read_text(encoding="utf-8"))
    return found


@pytest.fixture(scope="module")
def serial(models_dir, tmp_path_factory):
    """The songs converted one after another, in a store (and stage cache) of their own (no
    test shortcuts such as ``fast_whisper``: the workers are other processes and have none)."""
    root = tmp_path_factory.mktemp("serial")
    songs = _songs(root / "songs")
    with Store.open(root / "db" / "ugpu.db") as store:
        result = convert_songs(songs, resolve(CPU_TARGET), RunOptions(root / "out", "en", models_dir=models_dir, fetch_missing=True), store)
    assert not result.failures
    return songs, _charts(root / "out"), models_dir


def test_two_gpu_workers_write_what_a_serial_run_writes_and_a_killed_worker_loses_nothing(
    serial, fake_gpus, tmp_path
):  # fmt: skip
    songs, expected, models = serial
    fake_gpus(rtx_5060_ti(), h100())  # two cards; this machine's PyTorch cannot run them: CPU plans
    killed: list[int] = []
    with Store.open(tmp_path / "db" / "ugpu.db") as store:
        slots = plan_slots(store, "all", "auto")
        assert [s.name for s in slots.slots] == ["GPU 0", "GPU 1"]
        assert all(not s.plan.uses_gpu for s in slots.slots) and len(slots.notes) == 2

        def on_event(event):  # kill the worker that runs a song's Whisper stage, once
            if isinstance(event, StageStarted) and event.stage == "whisper" and not killed:
                rows = store.query("SELECT pid FROM runs WHERE status = 'running' AND song = ?", (event.song,))
                if rows:
                    killed.append(rows[0]["pid"])
                    os.kill(rows[0]["pid"], signal.SIGKILL)

        options = RunOptions(out_dir=tmp_path / "out", language="en", models_dir=models, fetch_missing=True)
        result = run_parallel(songs, slots, options, store, on_event=on_event)
        events = store.recent_fallbacks()
        runs = {r["pid"]: r["status"] for r in store.query("SELECT pid, status FROM runs")}
        logged = store.query("SELECT COUNT(*) AS n FROM performance_log WHERE run_id IN (SELECT run_id FROM runs)")[0]["n"]
    assert killed, "no worker was killed"
    # The workers never opened the database: the parent recorded each one's run from its events,
    # to its end (the killed worker's run is the one left running, its process gone).
    assert len(runs) >= 2 and {status for pid, status in runs.items() if pid not in killed} == {"done"}
    assert logged >= 2 * len(songs)
    assert not result.failures and sorted(r.source.name for r in result.reports) == sorted(s.name for s in songs)
    assert _charts(tmp_path / "out") == expected
    (lost,) = [e for e in events if e.stage == "worker"]
    assert "exit code -9" in lost.reason and lost.song is not None


def test_a_cpu_batch_runs_in_lanes_and_writes_what_a_serial_run_writes(serial, tmp_path, monkeypatch):
    """Without a GPU, ``ugpu run`` on several songs converts them at once, each in a worker process
    with its share of the cores (here two: ``OMP_NUM_THREADS``), and writes the serial run's files;
    the report lists the songs in the order given."""
    songs, expected, models = serial
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    given = list(reversed(songs))
    result = CliRunner().invoke(app, ["run", *map(str, given), "-o", str(tmp_path / "out"), "--models-dir", str(models),
                                      "--language", "en", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "converts 2 songs at once, each in a worker process with 1 thread" in " ".join(result.stderr.split())
    assert [Path(s["source"]).name for s in json.loads(result.stdout)["songs"]] == [p.name for p in given]
    assert _charts(tmp_path / "out") == expected
    with Store.open(os.environ["UGPU_DB"]) as store:
        runs = [r["status"] for r in store.query("SELECT status FROM runs")]
    assert runs == ["done", "done"]  # one run per lane, recorded by this process


def test_lanes_are_asked_for_and_refused_where_they_cannot_apply(env, tmp_path):
    (song_file,) = _songs(tmp_path / "songs")[:1]
    out = str(tmp_path / "o")
    with_gpus = CliRunner().invoke(app, ["run", str(song_file), "--gpus", "all", "--lanes", "2", "-o", out])
    assert with_gpus.exit_code == 2 and "--lanes is for a batch on this machine's CPU" in with_gpus.stderr
    serial = CliRunner().invoke(app, ["run", str(song_file), str(song_file), "--no-overlap", "--lanes", "2", "-o", out])
    assert serial.exit_code == 2 and "choose one" in serial.stderr


def test_a_folder_of_songs_is_the_songs_under_it(env, tmp_path):
    """``ugpu run LIBRARY``: the audio and video files under the folder, folder by folder in name
    order; hidden files, other files and song folders (a chart inside: ugpu's own output among
    them) left out. A folder with no song, or a song folder given as a library, is a clear usage
    error before any model loads."""
    from ultrasinger_gpu_cli.usecases.batch import songs_in

    (first, second) = _songs(tmp_path / "src")
    lib = tmp_path / "lib"
    (lib / "sub").mkdir(parents=True)
    (lib / "b.wav").write_bytes(first.read_bytes())
    (lib / "sub" / "a.mkv").write_bytes(second.read_bytes())
    (lib / "A.MP3").write_bytes(second.read_bytes())
    (lib / ".hidden.wav").write_bytes(first.read_bytes())
    (lib / "notes.txt").write_text("to sing\n", encoding="utf-8")
    (lib / "cover.jpg").write_bytes(b"\xff\xd8")
    done = lib / "Band - Done"
    done.mkdir()
    (done / "Band - Done.txt").write_text("#TITLE:Done\n#ARTIST:Band\n#BPM:300\n#GAP:0\n: 0 4 0 la\nE\n", encoding="utf-8")
    (done / "Band - Done.wav").write_bytes(first.read_bytes())
    assert songs_in([lib, first]) == [lib / "A.MP3", lib / "b.wav", lib / "sub" / "a.mkv", first]

    out = str(tmp_path / "o")
    empty = tmp_path / "empty"
    (empty / "only-a-chart-folder").mkdir(parents=True)
    (empty / "only-a-chart-folder" / "x.txt").write_text("#BPM:300\n: 0 4 0 la\nE\n", encoding="utf-8")
    nothing = CliRunner().invoke(app, ["run", str(empty), "-o", out])
    assert nothing.exit_code == 2 and f"{empty}: no songs in this folder" in " ".join(nothing.stderr.split())
    charted = CliRunner().invoke(app, ["run", str(done), "-o", out])
    assert charted.exit_code == 2 and "a song folder (it holds an UltraStar chart)" in " ".join(charted.stderr.split())
    assert not Path(out).exists()  # refused before anything was written


def test_packing_several_pipelines_on_a_large_card(fake_gpus, fake_torch, tmp_path):
    fake_gpus(h100(), rtx_5060_ti())
    fake_torch(CU128_ARCHS, "12.8", "2.8.0+cu128")
    with Store.open(tmp_path / "ugpu.db") as store:
        packed = plan_slots(store, "0", "auto")  # 80 GB: several pipelines at the plan's estimate
        assert len(packed.slots) > 1 and all(s.plan.uses_gpu for s in packed.slots)
        assert "workers, each planned for" in packed.notes[0]
        whole = plan_slots(store, "0", "1").slots[0].plan
        assert packed.slots[0].plan.vram_budget_mb < whole.vram_budget_mb  # each capped to its share
        two = plan_slots(store, "GPU-5060ti-0000", "2")
        assert [s.name for s in two.slots] == ["GPU 1 #1", "GPU 1 #2"]
        with pytest.raises(InvalidSettingError, match="valid choices: all, 0, 1"):
            plan_slots(store, "0,7")
        with pytest.raises(InvalidSettingError, match="--per-gpu"):
            plan_slots(store, "all", "0")


def test_the_cli_refuses_gpus_with_ray_and_ray_without_ray_installed(env, tmp_path, monkeypatch):
    (song_file,) = _songs(tmp_path / "songs")[:1]
    both = CliRunner().invoke(app, ["run", str(song_file), "--gpus", "all", "--ray", "-o", str(tmp_path / "o")])
    assert both.exit_code == 2 and "choose one" in both.stderr
    import builtins

    real = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    missing = CliRunner().invoke(app, ["run", str(song_file), "--ray", "-o", str(tmp_path / "o")])
    assert missing.exit_code == 2 and "pip install 'ultrasinger-gpu-cli[cluster]'" in missing.stderr


def test_a_local_ray_cluster_writes_what_a_serial_run_writes_and_survives_a_killed_actor(serial, ray_cluster, tmp_path):
    from ultrasinger_gpu_cli.usecases.cluster import NAMESPACE, run_on_ray

    ray = ray_cluster  # ray.init(num_cpus=2, num_gpus=2): CPU plans, as this machine has no GPU
    songs, expected, models = serial
    killed: list[str] = []

    seen = []

    def on_event(event):  # an actor killed in the middle of a song, once
        seen.append(event)
        if isinstance(event, StageStarted) and event.stage == "whisper" and not killed:
            killed.append(event.song)
            ray.kill(ray.get_actor("ugpu-song-0", namespace=NAMESPACE), no_restart=False)

    with Store.open(tmp_path / "db" / "ugpu.db") as store:
        options = RunOptions(out_dir=tmp_path / "out", language="en", models_dir=models, fetch_missing=True)
        result = run_on_ray(songs, options, store, on_event=on_event)
        statuses = [r["status"] for r in store.query("SELECT status FROM runs")]
    assert ray.is_initialized()  # a cluster ugpu did not start is left running
    assert "done" in statuses, statuses  # the actors' runs, recorded by the driver from their events, to their end
    assert killed, seen
    assert not result.failures and sorted(r.source.name for r in result.reports) == sorted(s.name for s in songs)
    assert _charts(tmp_path / "out") == expected
