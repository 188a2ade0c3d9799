"""Scale-out costs (issue 14): the per-song scheduling overhead of ``ugpu run --gpus`` and of
``ugpu run --ray`` against a plain ``ugpu run`` (one song, median of 3, each run in a fresh
process with a fresh stage cache), and the throughput of 2 CPU workers against 1, one thread
each, on this machine. The models are the test suite's small ones of the real architectures
(the overhead does not depend on their size; the throughput ratio is what counts).

    python -m benchmarks.scale [--songs 4] [--seconds 20] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _ugpu(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    code = "import sys; from ultrasinger_gpu_cli.cli import main; sys.argv = ['ugpu', *sys.argv[1:]]; main()"
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"ugpu {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--songs", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.audio_factory import song, write_wav
    from tests.model_factory import build_models_dir

    work = Path(tempfile.mkdtemp(prefix="ugpu-scale-"))
    models = build_models_dir(work / "models")
    # Each song its own audio (a different level), so that none is taken from another's stage cache.
    songs = [write_wav(work / f"Band{i} - Song{i}.wav", song(args.seconds) * (1 - 0.02 * i), 44_100) for i in range(args.songs)]
    base = {**os.environ, "UGPU_MODELS": str(models), "UGPU_OFFLINE": "0", "PYTHONPATH": str(ROOT)}

    def fresh(name: str, **extra: str) -> dict[str, str]:  # a database (and stage cache) of its own
        folder = work / f"{name}-{time.monotonic_ns()}"
        folder.mkdir()
        return {**base, "UGPU_DB": str(folder / "ugpu.db"), **extra}

    one = [str(songs[0]), "--language", "en"]
    _ugpu(["run", *one, "-o", str(work / "warm")], fresh("warm"))  # converts faster-whisper's model once
    times: dict[str, list[float]] = {"plain": [], "gpus": [], "ray": []}
    for r in range(args.repeat):
        for name, extra in (("plain", []), ("gpus", ["--gpus", "all"]), ("ray", ["--ray"])):
            elapsed = _ugpu(["run", *one, "-o", str(work / f"o-{name}-{r}"), *extra], fresh(name))
            times[name].append(elapsed)
            print(f"{name:6s} run {r + 1}: {elapsed:.1f} s", file=sys.stderr)
    median = {k: statistics.median(v) for k, v in times.items()}
    every = [str(s) for s in songs] + ["--language", "en"]
    single = _ugpu(["run", *every, "-o", str(work / "t1"), "--gpus", "all", "--per-gpu", "1"], fresh("t1", OMP_NUM_THREADS="1"))
    double = _ugpu(["run", *every, "-o", str(work / "t2"), "--gpus", "all", "--per-gpu", "2"], fresh("t2", OMP_NUM_THREADS="2"))
    audio = args.songs * args.seconds
    lines = [
        f"| path | one {args.seconds:g} s song, median of {args.repeat} | overhead per song |",
        "|---|---|---|",
        f"| `ugpu run` | {median['plain']:.1f} s | |",
        f"| `ugpu run --gpus all` (one worker process) | {median['gpus']:.1f} s | {median['gpus'] - median['plain']:+.1f} s |",
        f"| `ugpu run --ray` (a local cluster started for the run) | {median['ray']:.1f} s | {median['ray'] - median['plain']:+.1f} s |",
        "",
        f"| {args.songs} songs of {args.seconds:g} s | wall | songs per minute | x real time |",
        "|---|---|---|---|",
        f"| 1 worker, 1 thread | {single:.1f} s | {args.songs / single * 60:.2f} | {audio / single:.2f} |",
        f"| 2 workers, 1 thread each | {double:.1f} s | {args.songs / double * 60:.2f} | {audio / double:.2f} |",
        "",
        f"2 workers: **{single / double:.2f}x** the throughput of 1.",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
