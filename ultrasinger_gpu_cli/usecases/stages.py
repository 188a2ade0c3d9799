"""One stage on one file (``ugpu whisper|demucs|crepe AUDIO``), through the one stage runner.

It gets what ``ugpu run`` gets: the fallback ladder, the VRAM cap, the GPU the user named, the
NVML sampler, a ``runs`` row (``ugpu monitor`` shows it while it runs) and a
``performance_log`` row. The component's spec says what to decode, how to call the engine and
what to write.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ultrasinger_gpu_cli.song import audio as audio_io
from ultrasinger_gpu_cli.components import SettingValue, StageOptions, spec
from ultrasinger_gpu_cli.errors import OutputError, from_os_error
from ultrasinger_gpu_cli.song.paths import check_output_dir, fit_name, refuse_overwriting_inputs, sweep_partials
from ultrasinger_gpu_cli.run.events import Notice, OnEvent, StageRun, ignore
from ultrasinger_gpu_cli.failures import FallbackEvent
from ultrasinger_gpu_cli.plan.resolver import Plan
from ultrasinger_gpu_cli.files import sha256_of
from ultrasinger_gpu_cli.run.recorder import Recorder
from ultrasinger_gpu_cli.run.runner import RunnerOptions, StageRunner, stage_seed
from ultrasinger_gpu_cli.store.db import Store


@dataclass(frozen=True)
class StageOutcome:
    """What a stage command did: its run, the files it wrote, and what it found."""

    component: str
    input: Path
    files: dict[str, Path]
    run: StageRun
    no_vocals_found: bool
    details: dict[str, SettingValue]
    fallbacks: tuple[FallbackEvent, ...]
    run_id: str
    log_id: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "component": self.component, "input": str(self.input), "outputs": {k: str(v) for k, v in self.files.items()},
            **self.run.to_dict(), **self.details, "no_vocals_found": self.no_vocals_found,
            "fallbacks": [f.to_dict() for f in self.fallbacks], "run_id": self.run_id, "log_id": self.log_id,
        }  # fmt: skip


def output_stem(path: Path) -> str:
    """The input's name without extension, safe as a file name on every OS and short enough."""
    return fit_name(path.stem, fallback="audio")


def _make_dir(target: Path) -> Path:
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{target}: cannot create the output folder ({exc.strerror})",
                          hint="give -o a folder you can write to") from exc  # fmt: skip
    return target


def run_stage(component: str, source: Path, plan: Plan, store: Store | None, *, out_dir: Path | None = None,
              options: StageOptions = StageOptions(), runner_options: RunnerOptions = RunnerOptions(),
              on_event: OnEvent = ignore) -> StageOutcome:  # fmt: skip
    """Check the input and the weights (both fail fast), decode once (the model loading
    meanwhile), run the stage under the runner, write the outputs (only then is the output
    folder created)."""
    component_spec = spec(component)
    audio_io.check_input(source)
    target = check_output_dir(out_dir if out_dir is not None else source.parent)
    refuse_overwriting_inputs([target / name for name in component_spec.io.outputs(output_stem(source), options)],
                              [source], hint="give -o another folder, or rename the input")  # fmt: skip
    if target.is_dir():
        sweep_partials(target, depth=0)
    recorder = Recorder(store, on_event)
    runner = StageRunner(plan, runner_options, recorder)
    runner.check_models(component)
    io = component_spec.io
    runner.load_ahead(component)  # the model loads while the file is decoded
    try:
        decoded = audio_io.decode(source, io.sample_rate, io.channels)
    except BaseException:
        runner.settle()
        raise
    if decoded.notice:
        on_event(Notice(source.name, decoded.notice))
    samples = decoded.samples if io.channels > 1 else decoded.samples[0]
    runner.start(kind=component)
    try:
        seed = stage_seed(sha256_of(source), component, plan.components[component].values())
        result, run, events = runner.run(component, source.name, decoded.duration_s,
                                         lambda engine, progress: io.call(engine, samples, progress, options),
                                         seed=seed)  # fmt: skip
        try:
            written = io.write(result, _make_dir(target), output_stem(source), options)
        except OSError as exc:
            known = from_os_error(exc)
            if known is not None:
                raise known from exc
            raise OutputError(f"{exc.filename or target}: cannot write the output ({exc.strerror})",
                              hint="check the free space and permissions of the output folder") from exc  # fmt: skip
    except KeyboardInterrupt:
        runner.finish("interrupted")
        raise
    except BaseException:
        runner.finish("failed")
        raise
    outcome = StageOutcome(component, source, written.files, run, written.no_vocals_found, dict(written.details),
                           tuple(events), runner.run_id, recorder.last_log_id(runner.run_id))  # fmt: skip
    runner.finish("done", outcome.to_dict())
    return outcome
