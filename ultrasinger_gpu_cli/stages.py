"""One stage on one file: decode, run the engine, write the outputs, log the performance.

The commands ``ugpu demucs|whisper|crepe AUDIO`` call these; ``ugpu run`` reuses the same
engines on arrays it already holds. Core code: no Typer, no rich.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ultrasinger_gpu_cli import audio as audio_io
from ultrasinger_gpu_cli.engines import Engine, EngineRun, Progress, create
from ultrasinger_gpu_cli.engines.base import _no_progress
from ultrasinger_gpu_cli.errors import UgpuError
from ultrasinger_gpu_cli.resolver import Plan
from ultrasinger_gpu_cli.sampler import NvmlSampler, SampleSummary
from ultrasinger_gpu_cli.store import Store


@dataclass
class StageReport:
    component: str
    input: Path
    outputs: dict[str, Path]
    run: EngineRun
    gpu: SampleSummary = field(default_factory=SampleSummary)
    details: dict[str, Any] = field(default_factory=dict)
    log_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "component": self.component,
            "input": str(self.input),
            "outputs": {k: str(v) for k, v in self.outputs.items()},
            **self.run.to_dict(),
            "gpu_peak_vram_used_mb": self.gpu.peak_vram_used_mb,
            "gpu_mean_utilization_percent": self.gpu.mean_utilization_percent,
            "gpu_max_temperature_c": self.gpu.max_temperature_c,
            **self.details,
            "log_id": self.log_id,
        }


def output_stem(path: Path) -> str:
    """The input's name without extension, safe as a file name on every OS."""
    stem = re.sub(r'[<>:"/\\|?*\x00-\x1f]', "_", path.stem).strip(" .")
    return stem or "audio"


def _out_dir(source: Path, out_dir: Path | None) -> Path:
    target = out_dir if out_dir is not None else source.parent
    if target.exists() and not target.is_dir():
        raise UgpuError(f"{target}: the output path exists and is not a directory")
    target.mkdir(parents=True, exist_ok=True)
    return target


def log_stage(store: Store | None, report: StageReport, plan: Plan, song: str | None = None) -> None:
    if store is None:
        return
    run = report.run
    vram = run.peak_vram_mb if run.peak_vram_mb is not None else report.gpu.peak_vram_used_mb
    util = report.gpu.mean_utilization_percent
    report.log_id = store.log_performance(
        component=report.component,
        device=run.device,
        processing_speed_multiplier=run.speed_x,
        gpu_id=plan.target.gpu_id if run.device == "cuda" else None,
        gpu_index=plan.target.gpu_index if run.device == "cuda" else None,
        vram_used_mb=vram,
        gpu_utilization_percent=None if util is None else int(round(util)),
        temperature_celsius=report.gpu.max_temperature_c,
        song=song or report.input.name,
        model_name=run.model,
        wall_seconds=run.wall_seconds,
        audio_seconds=run.audio_seconds,
    )


def _sampler(plan: Plan, component: str) -> NvmlSampler:
    on_gpu = plan.components[component].device == "cuda"
    return NvmlSampler(plan.target.gpu_index if on_gpu else None)


def engine_for(plan: Plan, component: str, models_dir: Path | None) -> Engine:
    return create(component, plan.components[component].values(), models_dir)


def _loaded(engine: Engine | None, plan: Plan, component: str, models_dir: Path | None, source: Path) -> Engine:
    """Check the input, then load the model: both fail fast, before any decoding."""
    audio_io.check_input(source)
    engine = engine or engine_for(plan, component, models_dir)
    engine.ensure_loaded()
    return engine


def run_demucs(
    source: Path, out_dir: Path | None, plan: Plan, *, models_dir: Path | None = None, fmt: str = "wav",
    progress: Progress = _no_progress, engine: Engine | None = None, store: Store | None = None,
) -> StageReport:  # fmt: skip
    engine = _loaded(engine, plan, "demucs", models_dir, source)
    mix = audio_io.decode(source, audio_io.DEMUCS_RATE, 2)
    target = _out_dir(source, out_dir)
    with _sampler(plan, "demucs") as sampler:
        sep = engine.run(mix.samples, progress)
    stem = output_stem(source)
    outputs = {
        "vocals": audio_io.write_audio(target / f"{stem} [Vocals].{fmt}", sep.vocals, sep.sample_rate),
        "instrumental": audio_io.write_audio(target / f"{stem} [Instrumental].{fmt}", sep.instrumental, sep.sample_rate),
    }
    report = StageReport("demucs", source, outputs, sep.run, sampler.summary, {"no_vocals_found": sep.silent})
    log_stage(store, report, plan)
    return report


def run_whisper(
    source: Path, out_dir: Path | None, plan: Plan, *, models_dir: Path | None = None, language: str | None = None,
    progress: Progress = _no_progress, engine: Engine | None = None, store: Store | None = None,
) -> StageReport:  # fmt: skip
    from ultrasinger_gpu_cli.formats import to_lrc, to_srt

    engine = _loaded(engine, plan, "whisper", models_dir, source)
    audio = audio_io.decode(source, audio_io.WHISPER_RATE, 1)
    target = _out_dir(source, out_dir)
    with _sampler(plan, "whisper") as sampler:
        transcript = engine.run(audio.samples[0], progress, language=language)
    stem = output_stem(source)
    outputs = {
        "json": audio_io.write_text(target / f"{stem}.words.json", json.dumps(transcript.to_dict(), indent=2, ensure_ascii=False)),
        "srt": audio_io.write_text(target / f"{stem}.srt", to_srt(transcript.segments)),
        "lrc": audio_io.write_text(target / f"{stem}.lrc", to_lrc(transcript.segments)),
    }
    details = {"language": transcript.language, "segments": len(transcript.segments), "words": len(transcript.words),
               "no_vocals_found": transcript.no_vocals}  # fmt: skip
    report = StageReport("whisper", source, outputs, transcript.run, sampler.summary, details)
    log_stage(store, report, plan)
    return report


def run_crepe(
    source: Path, out_dir: Path | None, plan: Plan, *, models_dir: Path | None = None, gate: bool = True,
    progress: Progress = _no_progress, engine: Engine | None = None, store: Store | None = None,
) -> StageReport:  # fmt: skip
    engine = _loaded(engine, plan, "crepe", models_dir, source)
    audio = audio_io.decode(source, audio_io.WHISPER_RATE, 1)
    target = _out_dir(source, out_dir)
    with _sampler(plan, "crepe") as sampler:
        track = engine.run(audio.samples[0], progress, gate=gate)
    outputs = {"csv": audio_io.write_text(target / f"{output_stem(source)}.f0.csv", track.to_csv())}
    computed = int(track.computed.sum())
    details = {"frames": len(track.times), "frames_computed": computed, "no_vocals_found": computed == 0}
    report = StageReport("crepe", source, outputs, track.run, sampler.summary, details)
    log_stage(store, report, plan)
    return report
