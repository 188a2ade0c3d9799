"""One side of one stage, in a fresh process: ``python -m benchmarks.worker STAGE SIDE DEVICE OUT``.

Prints nothing; writes a JSON result (and the arrays the equality checks need) to OUT.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.build import RATE, models_dir, song, song_seconds

#: Random weights decode to the token limit: both sides are capped at the same length (32 by
#: default; ``run.py --whisper-tokens N`` sets it, e.g. 128 for a chunk of densely sung lyrics).
SAMPLE_LEN = int(os.environ.get("UGPU_BENCH_WHISPER_TOKENS", "32"))


def _plan(device: str) -> dict:
    from ultrasinger_gpu_cli.plan.detection import quick_target
    from ultrasinger_gpu_cli.plan.resolver import PlanTarget, resolve

    target = PlanTarget("CPU") if device == "cpu" else quick_target(None)
    return {c: p.values() for c, p in resolve(target).components.items()}


def _engine(component: str, values: dict, root: Path | None = None):
    """An engine of the planned backend with these settings (typed and validated by the spec)."""
    from ultrasinger_gpu_cli.components import spec
    from ultrasinger_gpu_cli.engines import create

    return create(component, spec(component).settings(values), root)


def _peak_vram(device: str) -> int | None:
    import torch

    return int(torch.cuda.max_memory_allocated() // 2**20) if device == "cuda" else None


def demucs(side: str, device: str, out: Path) -> dict:
    import torch

    settings = _plan(device)["demucs"]
    mix, _ = song(song_seconds())
    root = models_dir()
    if side == "ugpu":
        engine = _engine("demucs", settings, root)
        t0 = time.perf_counter()
        engine.load()
        load = time.perf_counter() - t0
        t0 = time.perf_counter()
        vocals = engine.run(mix).vocals
    else:
        from demucs.apply import apply_model
        from demucs.pretrained import get_model

        t0 = time.perf_counter()
        bag = get_model("htdemucs_ft", repo=root / "demucs")
        load = time.perf_counter() - t0
        t0 = time.perf_counter()
        wav = torch.from_numpy(mix)
        ref = wav.mean(0)
        stems = apply_model(bag, ((wav - ref.mean()) / ref.std())[None], shifts=0, split=True, overlap=settings["overlap"],
                            segment=settings["chunk_size"] / RATE, device=device)[0]  # fmt: skip
        vocals = (stems[bag.sources.index("vocals")] * ref.std() + ref.mean()).numpy()
        _ = mix - vocals  # the second of the two stems
    wall = time.perf_counter() - t0
    np.save(out.with_suffix(".npy"), vocals)
    return {"wall_s": wall, "load_s": load, "audio_s": mix.shape[-1] / RATE, "settings": settings,
            "peak_vram_mb": _peak_vram(device)}  # fmt: skip


def _vocals16k() -> np.ndarray:
    from ultrasinger_gpu_cli.song.audio import resample

    return resample(song(song_seconds())[1], RATE, 16_000)


def whisper(side: str, device: str, out: Path, backend: str = "openai-whisper") -> dict:
    """``whisper`` (ugpu's openai-whisper backend) or ``whisper-faster`` (its faster-whisper
    backend, int8 on the CPU / float16 on CUDA, converted from the same random turbo weights)
    against ``whisper.transcribe()``."""
    settings = {**_plan(device)["whisper"], "model": "large-v3-turbo", "backend": backend}
    if backend == "faster-whisper":
        settings["compute_type"] = "int8" if device == "cpu" else "float16"
        from ultrasinger_gpu_cli.engines.whisper_ct2 import convert

        target = models_dir() / "faster-whisper" / "large-v3-turbo"
        if not (target / "model.bin").exists():
            convert(models_dir() / "whisper" / "large-v3-turbo.pt", target)
    audio = _vocals16k()
    root = models_dir()
    fp16 = device == "cuda"
    if side == "ugpu":
        engine = _engine("whisper", settings, root)
        engine.sample_len, engine.temperatures = SAMPLE_LEN, (0.0,)
        engine.compression_ratio_threshold = engine.logprob_threshold = engine.no_speech_threshold = None
        t0 = time.perf_counter()
        engine.load()
        load = time.perf_counter() - t0
        t0 = time.perf_counter()
        transcript = engine.run(audio, language="en")
        words = len(transcript.words)
    else:
        import whisper as openai_whisper

        t0 = time.perf_counter()
        model = openai_whisper.load_model(str(root / "whisper" / "large-v3-turbo.pt"), device=device)
        load = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = openai_whisper.transcribe(
            model, audio, language="en", temperature=0.0, compression_ratio_threshold=None, logprob_threshold=None,
            no_speech_threshold=None, word_timestamps=True, sample_len=SAMPLE_LEN, fp16=fp16, verbose=None,
        )  # fmt: skip
        words = sum(len(s.get("words", [])) for s in result["segments"])
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "load_s": load, "audio_s": len(audio) / 16_000, "settings": settings, "words": words,
            "peak_vram_mb": _peak_vram(device)}  # fmt: skip


def crepe(side: str, device: str, out: Path, capacity: str) -> dict:
    """A pitch stage: ``crepe-tiny``/``crepe-full`` (ugpu's torchcrepe backend),
    ``crepe-tf-tiny``/``crepe-tf-full`` (its tensorflow backend) or ``pitch-swiftf0`` (its swiftf0
    backend); the reference is ``torchcrepe.predict`` over the whole vocals (for SwiftF0: CREPE
    tiny, the no-GPU tier's pitch before SwiftF0)."""
    import torch

    from ultrasinger_gpu_cli.engines.crepe_engine import import_torchcrepe

    swift = capacity == "swiftf0"
    on_tf = capacity.startswith("tf-")
    capacity = capacity.removeprefix("tf-")
    settings = {**_plan(device)["crepe"], "backend": "torchcrepe", "model": "tiny" if swift else capacity, "step_size": 10}
    if swift:
        settings.update(backend="swiftf0", model="swiftf0", step_size=16, device="cpu")
    if on_tf:
        settings.update(backend="tensorflow", compute_type="float32")
    audio = _vocals16k()
    hop = 160
    torchcrepe = import_torchcrepe()
    # torchcrepe's weighted argmax dithers its bin-to-cents table once per process with
    # numpy's global RNG; the same seed on both sides makes their tables, and so the
    # frequencies, comparable frame by frame.
    np.random.seed(0)
    if side == "ugpu":
        engine = _engine("crepe", settings)
        t0 = time.perf_counter()
        engine.load()
        load = time.perf_counter() - t0
        t0 = time.perf_counter()
        track = engine.run(audio)
        freq, conf, computed = track.frequency, track.confidence, track.computed
        step_s = track.step_ms / 1000
    else:
        model = "tiny" if swift else capacity
        t0 = time.perf_counter()
        torchcrepe.load.model(device, model)
        load = time.perf_counter() - t0
        t0 = time.perf_counter()
        pitch, periodicity = torchcrepe.predict(
            torch.from_numpy(audio)[None], 16_000, hop, model=model, batch_size=settings["batch_size"],
            decoder=torchcrepe.decode.weighted_argmax, device=device, return_periodicity=True,
        )  # fmt: skip
        freq, conf = pitch[0].cpu().numpy(), periodicity[0].cpu().numpy()
        computed = np.ones(pitch.shape[1], dtype=bool)
        step_s = hop / 16_000
    wall = time.perf_counter() - t0
    np.save(out.with_suffix(".npy"), np.stack([freq, conf, computed.astype(np.float32)]))
    vram = _peak_vram(device)
    if on_tf and side == "ugpu" and device == "cuda":  # TensorFlow's allocator, not PyTorch's
        import tensorflow as tf

        vram = int(tf.config.experimental.get_memory_info("GPU:0")["peak"] // 2**20)
    return {"wall_s": wall, "load_s": load, "audio_s": len(audio) / 16_000, "settings": settings, "step_s": step_s,
            "frames_computed": int(computed.sum()), "peak_vram_mb": vram}  # fmt: skip


def peak_rss_mb() -> int:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss it does not carry over exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def e2e(side: str, device: str, out: Path) -> dict:
    """The whole song, model loading included, on both sides."""
    import tempfile

    import torch

    from ultrasinger_gpu_cli.song.audio import resample, write_audio

    mix, _ = song(song_seconds())
    root = models_dir()
    folder = Path(tempfile.mkdtemp(prefix="ugpu-e2e-"))
    source = write_audio(folder / "Bench - Song.wav", mix, RATE)
    plan_settings = _plan(device)
    t0 = time.perf_counter()
    if side == "ugpu":
        from ultrasinger_gpu_cli.plan.detection import quick_target
        from ultrasinger_gpu_cli.engines.whisper_engine import WhisperEngine
        from ultrasinger_gpu_cli.run.pipeline import Pipeline
        from ultrasinger_gpu_cli.run.options import RunOptions
        from ultrasinger_gpu_cli.plan.resolver import PlanTarget, resolve

        WhisperEngine.sample_len, WhisperEngine.temperatures = SAMPLE_LEN, (0.0,)
        WhisperEngine.compression_ratio_threshold = WhisperEngine.logprob_threshold = None
        WhisperEngine.no_speech_threshold = None
        target = PlanTarget("CPU") if device == "cpu" else quick_target(None)
        plan = resolve(target, flags={"whisper": {"model": "large-v3-turbo"}})
        pipeline = Pipeline(plan, RunOptions(out_dir=folder / "out", language="en", models_dir=root,
                                             cache_dir=folder / "cache"))  # fmt: skip
        report = pipeline.run_song(source)
        pipeline.finish("done")
        detail = {"notes": report.notes, "stages": [s.to_dict() for s in report.stages]}
    else:
        import whisper as openai_whisper
        from demucs.apply import apply_model
        from demucs.pretrained import get_model

        from ultrasinger_gpu_cli.song.audio import decode
        from ultrasinger_gpu_cli.engines.crepe_engine import import_torchcrepe

        d, c = plan_settings["demucs"], plan_settings["crepe"]
        wav = torch.from_numpy(decode(source, RATE, 2).samples)
        bag = get_model("htdemucs_ft", repo=root / "demucs")
        ref = wav.mean(0)
        stems = apply_model(bag, ((wav - ref.mean()) / ref.std())[None], shifts=0, split=True, overlap=d["overlap"],
                            segment=d["chunk_size"] / RATE, device=device)[0]  # fmt: skip
        vocals = (stems[bag.sources.index("vocals")] * ref.std() + ref.mean()).numpy()
        write_audio(folder / "vocals.wav", vocals, RATE)
        write_audio(folder / "instrumental.wav", wav.numpy() - vocals, RATE)
        vocals16 = resample(vocals.mean(axis=0), RATE, 16_000)
        model = openai_whisper.load_model(str(root / "whisper" / "large-v3-turbo.pt"), device=device)
        result = openai_whisper.transcribe(
            model, vocals16, language="en", temperature=0.0, compression_ratio_threshold=None, logprob_threshold=None,
            no_speech_threshold=None, word_timestamps=True, sample_len=SAMPLE_LEN, fp16=device == "cuda", verbose=None,
        )  # fmt: skip
        torchcrepe = import_torchcrepe()
        if c["backend"] != "torchcrepe":  # the reference pitch is CREPE: tiny at 10 ms, as the CPU tier had it
            c = {"model": "tiny", "step_size": 10, "batch_size": 512}
        torchcrepe.predict(torch.from_numpy(vocals16)[None], 16_000, 16_000 * c["step_size"] // 1000,
                           model=c["model"], batch_size=c["batch_size"], device=device)  # fmt: skip
        detail = {"segments": len(result["segments"])}
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "load_s": 0.0, "audio_s": mix.shape[-1] / RATE, "settings": plan_settings,
            "peak_vram_mb": _peak_vram(device), **detail}  # fmt: skip


def memory(side: str, device: str, out: Path) -> dict:
    """Peak RSS of ``ugpu run`` on a long song (``memory-<minutes>``; the song is written by the
    parent, so it is not counted): Demucs, CREPE and the files, from given word timings."""
    from ultrasinger_gpu_cli.engines.whisper_engine import WhisperEngine  # noqa: F401 - not used: timings given
    from ultrasinger_gpu_cli.run.pipeline import Pipeline
    from ultrasinger_gpu_cli.run.options import RunOptions
    from ultrasinger_gpu_cli.plan.resolver import PlanTarget, resolve

    source = Path(sys.argv[5])
    folder = out.parent / f"{out.stem}-work"
    plan = resolve(PlanTarget("CPU"))
    options = RunOptions(out_dir=folder / "out", timings=source.with_suffix(".json"), models_dir=models_dir(),
                         cache_dir=folder / "cache")  # fmt: skip
    t0 = time.perf_counter()
    pipeline = Pipeline(plan, options)
    report = pipeline.run_song(source)
    pipeline.finish("done")
    import soundfile

    seconds = soundfile.info(str(source)).duration
    return {"wall_s": time.perf_counter() - t0, "load_s": 0.0, "audio_s": seconds, "notes": report.notes,
            "stems_mb": round(sum(Path(report.files[k]).stat().st_size for k in ("vocals", "instrumental")) / 2**20),
            "settings": {}, "peak_vram_mb": None}  # fmt: skip


def main() -> None:
    stage, side, device, out = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
    if stage.startswith("memory"):
        result = memory(side, device, out)
    elif stage == "e2e":
        result = e2e(side, device, out)
    elif stage == "demucs":
        result = demucs(side, device, out)
    elif stage == "whisper":
        result = whisper(side, device, out)
    elif stage == "whisper-faster":
        result = whisper(side, device, out, "faster-whisper")
    else:
        result = crepe(side, device, out, stage.split("-", 1)[1])
    result["peak_rss_mb"] = peak_rss_mb()
    out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
