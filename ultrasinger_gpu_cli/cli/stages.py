"""``ugpu whisper|demucs|crepe [AUDIO]``: a component's settings, or one stage on one file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ultrasinger_gpu_cli.components.whisper import check_language

from ultrasinger_gpu_cli.cli.common import GpuParam, JsonParam, LimitParam, ModeChoice, ModelsDirParam, ModeParam
from ultrasinger_gpu_cli.cli.common import OfflineParam, RehearseParam, choice, emit_json, err_console, open_store
from ultrasinger_gpu_cli.cli.common import rehearsal, value, with_shared_options
from ultrasinger_gpu_cli.components import CREPE, DEMUCS, WHISPER, StageOptions
from ultrasinger_gpu_cli.components.base import COMPUTE_TYPES, DEVICES

DeviceChoice = choice("DeviceChoice", DEVICES)
ComputeChoice = choice("ComputeChoice", COMPUTE_TYPES)
WhisperModelChoice = choice("WhisperModelChoice", WHISPER.parameter("model").choices)
DemucsModelChoice = choice("DemucsModelChoice", DEMUCS.parameter("model").choices)
CrepeModelChoice = choice("CrepeModelChoice", CREPE.parameter("model").choices)
AudioFormat = choice("AudioFormat", ("wav", "flac"))

ShowParam = Annotated[bool, typer.Option("--show", help="Print the resolved settings with reasons (the default without AUDIO).")]
SaveParam = Annotated[bool, typer.Option("--save", help="Store the given settings as an override the resolver honours from now on.")]
ResetParam = Annotated[bool, typer.Option("--reset", help="Remove this component's stored override.")]
BatchParam = Annotated[Optional[int], typer.Option("--batch-size", help="Items per forward pass.", show_default=False)]
DeviceParam = Annotated[Optional[DeviceChoice], typer.Option("--device", help="Run on the GPU (cuda) or the CPU.", show_default=False)]  # type: ignore[valid-type]
BackendParam = Annotated[Optional[str], typer.Option("--backend", help="Which backend runs it (see `ugpu models list`).", show_default=False)]
AudioArg = Annotated[Optional[Path], typer.Argument(help="Audio or video file to process; without it the command shows the settings.", show_default=False)]
OutputParam = Annotated[Optional[Path], typer.Option("--output", "-o", help="Folder for the outputs (default: beside AUDIO).", show_default=False)]
NoFallbackParam = Annotated[bool, typer.Option("--no-fallback", help="Stop instead of falling back on out-of-memory.")]



def _component(ctx: typer.Context, component: str, *, audio: Optional[Path], flags: dict[str, Any], show: bool,
               save: bool, reset: bool, json_out: bool, mode: str, vram_limit: Optional[float], gpu: str,
               output: Optional[Path], models_dir: Optional[Path], options: StageOptions, no_fallback: bool,
               faults: Optional[list[str]], offline: bool = False) -> None:  # fmt: skip
    from ultrasinger_gpu_cli.usecases.plan import configure_component, run_target, validated_flags

    running = audio is not None and not show
    given = validated_flags(component, flags, save=save, reset=reset, audio=audio is not None)
    rehearsed = rehearsal(faults)
    store = open_store(ctx)
    target = run_target(store, gpu) if running else None
    configured = configure_component(store, component, given, save=save, reset=reset, gpu=gpu, mode=mode,
                                     vram_limit_gb=vram_limit, target=target)  # fmt: skip
    if running:
        assert audio is not None
        _run(component, audio, configured.plan, store, output=output, models_dir=models_dir, json_out=json_out,
             options=options, no_fallback=no_fallback, rehearsed=rehearsed, fetch=not offline)  # fmt: skip
        return
    if json_out:
        from ultrasinger_gpu_cli.usecases.reports import configure_component_response

        emit_json(configure_component_response(configured.plan, component, override=configured.override,
                                               action=configured.action))  # fmt: skip
        return
    from ultrasinger_gpu_cli.cli.render import component_view

    console = err_console()
    if configured.action:
        console.print(f"{component}: {configured.action} ({store.path})", style="green")
    console.print(component_view(configured.plan, component, configured.override))


def _run(component: str, audio: Path, plan: Any, store: Any, *, output: Optional[Path], models_dir: Optional[Path],
         json_out: bool, options: StageOptions, no_fallback: bool, rehearsed: Any, fetch: bool = True) -> None:  # fmt: skip
    from ultrasinger_gpu_cli.weights.models import models_dir as resolve_models_dir
    from ultrasinger_gpu_cli.cli.render import configured_notes
    from ultrasinger_gpu_cli.cli.run_view import stage_display, stage_summary
    from ultrasinger_gpu_cli.run.runner import RunnerOptions
    from ultrasinger_gpu_cli.usecases.stages import run_stage

    console = err_console()
    for note in configured_notes(plan, component):
        console.print(f"[yellow]•[/] {note}", highlight=False)
    runner_options = RunnerOptions(not no_fallback, resolve_models_dir(models_dir), rehearsed, fetch_missing=fetch)
    with stage_display(console) as display:
        outcome = run_stage(component, audio, plan, store, out_dir=output, options=options,
                            runner_options=runner_options, on_event=display)  # fmt: skip
    if outcome.no_vocals_found:
        console.print(f"[yellow]no vocals found[/] in {audio} (silent or too quiet): the outputs are empty", highlight=False)
    if json_out:
        emit_json(outcome.to_dict())
    else:
        console.print(stage_summary(outcome), highlight=False)


#: The options every component command has, declared once: (name, type with its option, default).
COMMON_OPTIONS = (
    ("batch_size", BatchParam, None), ("device", DeviceParam, None), ("backend", BackendParam, None),
    ("show", ShowParam, False), ("save", SaveParam, False), ("reset", ResetParam, False), ("json_out", JsonParam, False),
    ("mode", ModeParam, ModeChoice.balanced), ("vram_limit", LimitParam, None), ("gpu", GpuParam, "0"),  # type: ignore[attr-defined]
    ("output", OutputParam, None), ("models_dir", ModelsDirParam, None), ("no_fallback", NoFallbackParam, False),
    ("rehearse_fault", RehearseParam, None), ("offline", OfflineParam, False),
)  # fmt: skip
ComponentFlags = tuple[dict[str, Any], StageOptions]


def component_command(component: str) -> Callable[[Callable[..., ComponentFlags]], Callable[..., None]]:
    """A component's command from a function that declares only its own options (after ``ctx`` and
    ``audio``) and returns (its flags, its stage options); :data:`COMMON_OPTIONS` are added."""

    def decorate(own: Callable[..., ComponentFlags]) -> Callable[..., None]:
        def run(values: dict[str, Any], shared: dict[str, Any]) -> None:
            flags, options = own(**values)
            flags.update(batch_size=shared["batch_size"], device=value(shared["device"]), backend=shared["backend"])
            _component(values["ctx"], component, audio=values["audio"], flags=flags, show=shared["show"],
                       save=shared["save"], reset=shared["reset"], json_out=shared["json_out"], mode=shared["mode"].value,
                       vram_limit=shared["vram_limit"], gpu=shared["gpu"], output=shared["output"],
                       models_dir=shared["models_dir"], options=options, no_fallback=shared["no_fallback"],
                       faults=shared["rehearse_fault"], offline=shared["offline"])  # fmt: skip

        return with_shared_options(COMMON_OPTIONS, run)(own)

    return decorate


@component_command("whisper")
def whisper(
    ctx: typer.Context,
    audio: AudioArg = None,
    model: Annotated[Optional[WhisperModelChoice], typer.Option("--model", help="Whisper model.", show_default=False)] = None,  # type: ignore[valid-type]
    compute_type: Annotated[Optional[ComputeChoice], typer.Option("--compute-type", show_default=False)] = None,  # type: ignore[valid-type]
    language: Annotated[Optional[str], typer.Option("--language", help="Language code (e.g. en, de); detected when omitted.", show_default=False)] = None,
    beam_size: Annotated[Optional[int], typer.Option("--beam-size", help="Hypotheses of the beam search (1: greedy).", show_default=False)] = None,
) -> ComponentFlags:
    """Whisper lyrics with word timings on AUDIO (JSON, SRT, LRC), or its settings (/gpu/whisper)."""
    return {"model": value(model), "compute_type": value(compute_type), "beam_size": beam_size}, StageOptions(language=check_language(language))


@component_command("demucs")
def demucs(
    ctx: typer.Context,
    audio: AudioArg = None,
    model: Annotated[Optional[DemucsModelChoice], typer.Option("--model", help="Demucs model.", show_default=False)] = None,  # type: ignore[valid-type]
    chunk_size: Annotated[Optional[int], typer.Option("--chunk-size", help="Samples per chunk (44.1 kHz).", show_default=False)] = None,
    overlap: Annotated[Optional[float], typer.Option("--overlap", help="Overlap between chunks (0-0.9).", show_default=False)] = None,
    audio_format: Annotated[AudioFormat, typer.Option("--format", help="Output audio format.")] = AudioFormat.wav,  # type: ignore[attr-defined]
) -> ComponentFlags:
    """Demucs: vocals and instrumental of AUDIO, or its settings (/gpu/demucs)."""
    return {"model": value(model), "chunk_size": chunk_size, "overlap": overlap}, StageOptions(audio_format=audio_format.value)


@component_command("crepe")
def crepe(
    ctx: typer.Context,
    audio: AudioArg = None,
    model: Annotated[Optional[CrepeModelChoice], typer.Option("--model", "--capacity", help="CREPE model capacity.", show_default=False)] = None,  # type: ignore[valid-type]
    step_size: Annotated[Optional[int], typer.Option("--step-size", help="Milliseconds between pitch frames.", show_default=False)] = None,
    gate: Annotated[bool, typer.Option("--gate/--no-gate", help="Compute pitch only where there is voice.")] = True,
) -> ComponentFlags:
    """CREPE pitch of AUDIO as time,frequency,confidence CSV, or its settings (/gpu/crepe)."""
    return {"model": value(model), "step_size": step_size}, StageOptions(gate=gate)

#: This group's commands, in the order ``ugpu --help`` lists them.
COMMANDS = (whisper, demucs, crepe)
