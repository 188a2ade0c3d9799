"""One stage on one file: decode, run the engine, write the outputs, log the performance.

The commands ``ugpu demucs|whisper|crepe AUDIO`` call these; ``ugpu run`` reuses the same
engines on arrays it already holds. Core code: no Typer, no rich.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ultrasinger_gpu_cli import audio as audio_io
from ultrasinger_gpu_cli.engines import Engine, EngineRun, Progress, create
from ultrasinger_gpu_cli.engines.base import _no_progress
from ultrasinger_gpu_cli.errors import UgpuError
from ultrasinger_gpu_cli.resolver import Plan, PlanTarget
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


def record_run(
    store: Store | None, component: str, run: EngineRun, gpu: SampleSummary, target: PlanTarget, *,
    song: str, run_id: str | None = None,
) -> str | None:  # fmt: skip
    """One ``performance_log`` row for one stage run (``ugpu run`` and the stage commands alike):
    peak VRAM from torch on CUDA, else from the NVML sampler; mean utilisation; max temperature."""
    if store is None:
        return None
    on_gpu = run.device == "cuda"
    util = gpu.mean_utilization_percent
    return store.log_performance(
        component=component,
        device=run.device,
        processing_speed_multiplier=run.speed_x,
        gpu_id=target.gpu_id if on_gpu else None,
        gpu_index=target.gpu_index if on_gpu else None,
        vram_used_mb=run.peak_vram_mb if run.peak_vram_mb is not None else gpu.peak_vram_used_mb,
        gpu_utilization_percent=None if util is None else int(round(util)),
        temperature_celsius=gpu.max_temperature_c,
        run_id=run_id,
        song=song,
        model_name=run.model,
        wall_seconds=run.wall_seconds,
        audio_seconds=run.audio_seconds,
    )


def _one_stage(
    component: str, source: Path, out_dir: Path | None, plan: Plan, *, rate: int, channels: int,
    models_dir: Path | None, engine: Engine | None, store: Store | None,
    call: Callable[[Engine, np.ndarray], Any], write: Callable[[Any, Path, str], tuple[dict[str, Path], dict[str, Any]]],
) -> StageReport:  # fmt: skip
    """Check the input and load the model (both fail fast), decode once, run under the NVML
    sampler, write the outputs (only then is the output folder created), log the run."""
    audio_io.check_input(source)
    engine = engine or create(component, plan.components[component].values(), models_dir)
    engine.ensure_loaded()
    decoded = audio_io.decode(source, rate, channels)
    target = _out_dir(source, out_dir)
    on_gpu = plan.components[component].device == "cuda"
    with NvmlSampler(plan.target.gpu_index if on_gpu else None) as sampler:
        result = call(engine, decoded.samples if channels > 1 else decoded.samples[0])
    outputs, details = write(result, target, output_stem(source))
    report = StageReport(component, source, outputs, result.run, sampler.summary, details)
    report.log_id = record_run(store, component, result.run, sampler.summary, plan.target, song=source.name)
    return report


def run_demucs(
    source: Path, out_dir: Path | None, plan: Plan, *, models_dir: Path | None = None, fmt: str = "wav",
    progress: Progress = _no_progress, engine: Engine | None = None, store: Store | None = None,
) -> StageReport:  # fmt: skip
    def write(sep: Any, target: Path, stem: str):
        outputs = {
            "vocals": audio_io.write_audio(target / f"{stem} [Vocals].{fmt}", sep.vocals, sep.sample_rate),
            "instrumental": audio_io.write_audio(target / f"{stem} [Instrumental].{fmt}", sep.instrumental,
                                                 sep.sample_rate),
        }  # fmt: skip
        return outputs, {"no_vocals_found": sep.silent}

    return _one_stage("demucs", source, out_dir, plan, rate=audio_io.DEMUCS_RATE, channels=2, models_dir=models_dir,
                      engine=engine, store=store, call=lambda e, x: e.run(x, progress), write=write)  # fmt: skip


def run_whisper(
    source: Path, out_dir: Path | None, plan: Plan, *, models_dir: Path | None = None, language: str | None = None,
    progress: Progress = _no_progress, engine: Engine | None = None, store: Store | None = None,
) -> StageReport:  # fmt: skip
    from ultrasinger_gpu_cli.formats import to_lrc, to_srt

    def write(transcript: Any, target: Path, stem: str):
        text = json.dumps(transcript.to_dict(), indent=2, ensure_ascii=False)
        outputs = {
            "json": audio_io.write_text(target / f"{stem}.words.json", text),
            "srt": audio_io.write_text(target / f"{stem}.srt", to_srt(transcript.segments)),
            "lrc": audio_io.write_text(target / f"{stem}.lrc", to_lrc(transcript.segments)),
        }
        return outputs, {"language": transcript.language, "segments": len(transcript.segments),
                         "words": len(transcript.words), "no_vocals_found": transcript.no_vocals}  # fmt: skip

    return _one_stage("whisper", source, out_dir, plan, rate=audio_io.WHISPER_RATE, channels=1, models_dir=models_dir,
                      engine=engine, store=store, call=lambda e, x: e.run(x, progress, language=language),
                      write=write)  # fmt: skip


def run_crepe(
    source: Path, out_dir: Path | None, plan: Plan, *, models_dir: Path | None = None, gate: bool = True,
    progress: Progress = _no_progress, engine: Engine | None = None, store: Store | None = None,
) -> StageReport:  # fmt: skip
    def write(track: Any, target: Path, stem: str):
        computed = int(track.computed.sum())
        outputs = {"csv": audio_io.write_text(target / f"{stem}.f0.csv", track.to_csv())}
        return outputs, {"frames": len(track.times), "frames_computed": computed, "no_vocals_found": computed == 0}

    return _one_stage("crepe", source, out_dir, plan, rate=audio_io.WHISPER_RATE, channels=1, models_dir=models_dir,
                      engine=engine, store=store, call=lambda e, x: e.run(x, progress, gate=gate),
                      write=write)  # fmt: skip
