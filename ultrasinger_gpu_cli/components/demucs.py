"""Demucs: vocals and instrumental. Everything ugpu knows about the component."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ultrasinger_gpu_cli.components.base import ComponentSpec, Parameter, Precision, StageIO, StageOptions, StageOutputs
from ultrasinger_gpu_cli.components.base import common_parameters, model_parameter
from ultrasinger_gpu_cli.components.settings import SettingValue, StageSettings
from ultrasinger_gpu_cli.plan.tiers import CUDA_CONTEXT_MB, DEMUCS_MAX_CHUNK, DEMUCS_MIN_CHUNK, DEMUCS_SAMPLE_RATE, Tier

MODELS = ("htdemucs_ft", "htdemucs", "htdemucs_6s", "hdemucs_mmi", "mdx", "mdx_extra", "mdx_q", "mdx_extra_q")
_MODEL_MB = 170  # one HTDemucs model, fp32 (42 M parameters); bags run one model at a time
_ITEM_MB = 1000  # one 7.8 s stereo chunk through HTDemucs, fp32, no grad


@dataclass(frozen=True)
class DemucsSettings(StageSettings):
    chunk_size: int  # samples at 44.1 kHz
    overlap: float  # share of a chunk


def estimate_weights_mb(s: DemucsSettings) -> int:
    return _MODEL_MB


def estimate_vram_mb(s: DemucsSettings) -> int:
    return int(CUDA_CONTEXT_MB + estimate_weights_mb(s) + _ITEM_MB * max(1, s.batch_size))


def tier_reason(parameter: str, value: SettingValue, tier: Tier) -> str | None:
    if parameter == "batch_size":
        return f"{value} chunks per forward pass"
    if parameter == "model":
        return "best vocals; of its four one-hot models only the vocals one runs"
    if parameter == "chunk_size":
        if value == DEMUCS_MAX_CHUNK:
            return "7.8 s chunks: HTDemucs computes 7.8 s per chunk anyway, so the longest means fewest passes"
        return f"{float(value) / DEMUCS_SAMPLE_RATE:.1f} s chunks (HTDemucs takes at most 7.8 s)"
    if parameter == "overlap":
        return "demucs's default overlap between chunks"
    return None


def precision(on_gpu: bool, compute_capability: str | None) -> Precision:
    return Precision("float32", "demucs runs in float32 (its reference precision)", "tier")


def hardware_limit(s: DemucsSettings) -> tuple[str, SettingValue, str] | None:
    if s.model.startswith("htdemucs") and s.chunk_size > DEMUCS_MAX_CHUNK:
        return "chunk_size", DEMUCS_MAX_CHUNK, "HTDemucs cannot take chunks longer than 7.8 s"
    return None


def _call(engine: Any, samples: Any, progress: Any, options: StageOptions) -> Any:
    return engine.run(samples, progress)


def _outputs(stem: str, options: StageOptions) -> tuple[str, ...]:
    return f"{stem} [Vocals].{options.audio_format}", f"{stem} [Instrumental].{options.audio_format}"


def _write(sep: Any, folder: Path, stem: str, options: StageOptions) -> StageOutputs:
    from ultrasinger_gpu_cli.song.audio import write_audio

    vocals, instrumental = _outputs(stem, options)
    files = {
        "vocals": write_audio(folder / vocals, sep.vocals, sep.sample_rate),
        "instrumental": write_audio(folder / instrumental, sep.instrumental, sep.sample_rate),
    }
    return StageOutputs(files, sep.silent)


DEMUCS: ComponentSpec[DemucsSettings] = ComponentSpec(
    name="demucs",
    title="Demucs",
    settings_type=DemucsSettings,
    parameters=(
        model_parameter("demucs", "demucs model", MODELS),
        Parameter("chunk_size", "chunk size", "int", low=DEMUCS_MIN_CHUNK, high=DEMUCS_MAX_CHUNK, unit="samples"),
        Parameter("overlap", "overlap", "float", low=0.0, high=0.9),
        *common_parameters("demucs", max_batch=256),
    ),  # fmt: skip
    api_keys=(("model", "model"), ("chunk_size", "chunk_size"), ("overlap", "overlap")),
    batch_unit="chunks",
    fallback_floor=1,
    tier_defaults={
        "cpu": {"model": "htdemucs_ft", "chunk_size": DEMUCS_MAX_CHUNK, "overlap": 0.25, "batch_size": 1},
        **{key: {"model": "htdemucs_ft", "chunk_size": 262_144, "overlap": 0.25, "batch_size": batch}
           for key, batch in (("lt4", 1), ("4-6", 1), ("6-8", 1), ("8-12", 2), ("12-16", 3), ("16-24", 4), ("24+", 8))},
    },  # fmt: skip
    estimate_vram_mb=estimate_vram_mb,
    estimate_weights_mb=estimate_weights_mb,
    tier_reason=tier_reason,
    precision=precision,
    io=StageIO(DEMUCS_SAMPLE_RATE, 2, _call, _write, lambda separation: separation.silent, _outputs),
    mode_chunk_parameter="chunk_size",
    hardware_limit=hardware_limit,
    table_columns=(("Demucs model", "model", "{}"), ("chunk (samples)", "chunk_size", "{}"), ("overlap", "overlap", "{}"),
                   ("Demucs batch", "batch_size", "{}")),  # fmt: skip
)

# Backends: one line each. The first is the default.
DEMUCS.register("demucs", "ultrasinger_gpu_cli.engines.demucs_engine",
                requires=("torch", "demucs"), install="pip install demucs", deterministic=True)
