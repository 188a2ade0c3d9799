"""The ``ugpu`` command line: parse, call the core, render. Nothing else lives here.

Data (``--json``) goes to stdout; everything for people (panels, tables, warnings,
errors) goes to stderr. Expected errors (:class:`~ultrasinger_gpu_cli.errors.UgpuError`)
become one message and their exit code, never a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Optional, TypeVar

import typer

from ultrasinger_gpu_cli import __version__
from ultrasinger_gpu_cli.errors import EXIT_INTERRUPTED, NoGpuError, UgpuError
from ultrasinger_gpu_cli.tiers import COMPUTE_TYPES, CREPE_CAPACITIES, DEMUCS_MODELS, DEVICES, MODES, WHISPER_MODELS

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

    from ultrasinger_gpu_cli.store import Store


def _choice(name: str, values: tuple[str, ...]) -> type[Enum]:
    return Enum(name, {v: v for v in values}, type=str)  # type: ignore[return-value]


ModeChoice = _choice("ModeChoice", MODES)
DeviceChoice = _choice("DeviceChoice", DEVICES)
ComputeChoice = _choice("ComputeChoice", COMPUTE_TYPES)
WhisperModelChoice = _choice("WhisperModelChoice", WHISPER_MODELS)
DemucsModelChoice = _choice("DemucsModelChoice", DEMUCS_MODELS)
CrepeCapacityChoice = _choice("CrepeCapacityChoice", CREPE_CAPACITIES)
AudioFormat = _choice("AudioFormat", ("wav", "flac"))
ExportFormat = _choice("ExportFormat", ("csv",))
FormatVersion = _choice("FormatVersion", ("1.1.0", "1.0.0", "0.3.0"))

app = typer.Typer(
    name="ugpu",
    help="Turn songs into UltraStar karaoke files on your NVIDIA GPU, and see what the GPU is doing.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_consoles: dict[str, Console] = {}


def err_console() -> Console:
    """The console for people: stderr. Created on first use (rich is not imported before)."""
    if "err" not in _consoles:
        from rich.console import Console

        _consoles["err"] = Console(stderr=True)
    return _consoles["err"]


def emit_json(data: Any) -> None:
    """Data for programs: one JSON document on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


F = TypeVar("F", bound=Callable[..., Any])


def handles_errors(fn: F) -> F:
    """Turn the core's expected errors into a message on stderr and their exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UgpuError as exc:
            console = err_console()
            console.print(f"[bold red]error:[/] {exc.message}", highlight=False, markup=True, soft_wrap=True)
            if exc.hint:
                console.print(f"[dim]hint:[/] {exc.hint}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console().print("interrupted", style="yellow")
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ugpu {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    db: Annotated[
        Optional[Path],
        typer.Option("--db", envvar="UGPU_DB", help="SQLite file for ugpu's state (default: the user data dir)."),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    ctx.obj = {"db": db}


def _run_target(store: Store, gpu: int) -> Any:
    """The plan target for commands that run engines: they import torch anyway, so when the
    framework check is not cached yet, run it (``ugpu detect``'s) instead of guessing."""
    from ultrasinger_gpu_cli.detection import detect, quick_target, target_from_detection

    target = quick_target(store, gpu)
    if target.is_gpu and target.torch_can_run is None:
        target = target_from_detection(detect(store), gpu)
    return target


def _store(ctx: typer.Context) -> Store:
    from ultrasinger_gpu_cli.store import Store

    store = Store.open(ctx.obj.get("db") if ctx.obj else None)
    ctx.call_on_close(store.close)
    return store


MODE_OPT = typer.Option("--mode", "-m", help="How hard to push the card.")
LIMIT_OPT = typer.Option("--vram-limit", help="Plan and run as if the card had only this many GB.", show_default=False)
JSON_OPT = typer.Option("--json", help="Print the design's API response as JSON on stdout.")
GPU_OPT = typer.Option("--gpu", help="Which GPU (NVML index) to plan for.", min=0)
# The options most commands share, declared once.
ModeParam = Annotated[ModeChoice, MODE_OPT]  # type: ignore[valid-type]
LimitParam = Annotated[Optional[float], LIMIT_OPT]
JsonParam = Annotated[bool, JSON_OPT]
GpuParam = Annotated[int, GPU_OPT]


# -- detect -----------------------------------------------------------------------------------
@app.command()
@handles_errors
def detect(
    ctx: typer.Context,
    json_out: JsonParam = False,
    mode: ModeParam = ModeChoice.balanced,  # type: ignore[attr-defined]
    vram_limit: LimitParam = None,
    force: Annotated[bool, typer.Option("--force", help="Re-detect instead of using the cached framework check.")] = False,
    require_gpu: Annotated[
        bool, typer.Option("--require-gpu", help="Exit with code 3 when ugpu will not use a GPU.")
    ] = False,
    gpu: GpuParam = 0,
) -> None:
    """Detect the GPUs, their drivers, and whether the installed PyTorch can run them (/gpu/detect)."""
    from ultrasinger_gpu_cli.detection import detect as run_detect
    from ultrasinger_gpu_cli.detection import plan_for, target_from_detection
    from ultrasinger_gpu_cli.reports import initialize_response

    store = _store(ctx)
    detection = run_detect(store, force=force)
    target = target_from_detection(detection, gpu)
    plan = plan_for(store, target, mode.value, vram_limit)
    if json_out:
        emit_json(initialize_response(detection, plan, force_detection=force))
    else:
        from ultrasinger_gpu_cli.render import detection_view

        err_console().print(detection_view(detection, plan))
    if require_gpu and not any(c.device == "cuda" for c in plan.components.values()):
        reason = "no NVIDIA GPU was detected" if not detection.gpu_detected else "the GPU cannot be used"
        raise NoGpuError(f"--require-gpu: {reason}; ugpu would run on the CPU")


# -- optimize ---------------------------------------------------------------------------------
@app.command()
@handles_errors
def optimize(
    ctx: typer.Context,
    mode: ModeParam = ModeChoice.balanced,  # type: ignore[attr-defined]
    vram_limit: LimitParam = None,
    json_out: JsonParam = False,
    save: Annotated[bool, typer.Option("--save", help="Store the plan (component_config + optimization_setting).")] = False,
    assume_vram: Annotated[
        Optional[float], typer.Option("--assume-vram", help="Plan for a hypothetical card with this many GB.")
    ] = None,
    assume_gpu: Annotated[Optional[str], typer.Option("--assume-gpu", help="Name of the hypothetical card.")] = None,
    assume_cc: Annotated[
        Optional[str], typer.Option("--assume-cc", help="Compute capability of the hypothetical card, e.g. 12.0.")
    ] = None,
    gpu: GpuParam = 0,
    tiers: Annotated[bool, typer.Option("--tiers", help="Print the whole tier table and exit.")] = False,
) -> None:
    """Show the settings ugpu uses for Whisper, Demucs and CREPE on this card, with reasons (/gpu/optimize)."""
    from ultrasinger_gpu_cli.reports import optimize_response

    if tiers:
        from ultrasinger_gpu_cli.render import tier_table

        err_console().print(tier_table())
        return
    if (assume_gpu or assume_cc) and assume_vram is None:
        from ultrasinger_gpu_cli.errors import InvalidSettingError

        raise InvalidSettingError("--assume-gpu and --assume-cc describe a hypothetical card: give --assume-vram too")
    store = _store(ctx)
    from ultrasinger_gpu_cli.nvml import get_nvml

    from ultrasinger_gpu_cli.detection import hypothetical_target, plan_for, quick_target

    if assume_vram is not None:
        target = hypothetical_target(assume_vram, assume_gpu, assume_cc)
    else:
        target = quick_target(store, gpu)
    plan = plan_for(store, target, mode.value, vram_limit)
    saved = store.save_plan(plan) if save else None
    if json_out:
        cuda = None if target.hypothetical else get_nvml().cuda_driver_version()
        emit_json(optimize_response(plan, cuda_version=cuda, saved=saved))
    else:
        from ultrasinger_gpu_cli.render import plan_view

        err_console().print(plan_view(plan))
        if saved:
            err_console().print(f"saved the plan to {store.path}", style="green")


# -- per-component configuration (whisper / demucs / crepe) ---------------------------------------
def _component(
    ctx: typer.Context,
    component: str,
    *,
    audio: Optional[Path],
    flags: dict[str, Any],
    show: bool,
    save: bool,
    reset: bool,
    json_out: bool,
    mode: str,
    vram_limit: Optional[float],
    gpu: int,
    output: Optional[Path] = None,
    models_dir: Optional[Path] = None,
    run_options: Optional[dict[str, Any]] = None,
) -> None:
    from ultrasinger_gpu_cli.detection import plan_for, quick_target
    from ultrasinger_gpu_cli.errors import InvalidSettingError
    from ultrasinger_gpu_cli.reports import configure_component_response
    from ultrasinger_gpu_cli.resolver import validate_settings

    if save and reset:
        raise InvalidSettingError("--save and --reset cannot be combined")
    given = validate_settings({component: flags}).get(component, {})  # refuse bad values before storing
    if save and not given:
        raise InvalidSettingError(f"--save needs at least one setting to store (e.g. ugpu {component} --batch-size 8 --save)")
    if reset and audio is not None:
        raise InvalidSettingError("--reset removes a stored override; run it without AUDIO")
    store = _store(ctx)
    target = _run_target(store, gpu) if audio is not None and not show else quick_target(store, gpu)
    action = None
    if reset:
        action = "reset" if store.reset_override(target.gpu_id, component) else "reset (nothing stored)"
    elif save:
        store.save_override(target.gpu_id, component, given)
        action = "saved"
    override = store.overrides(target.gpu_id).get(component, {})
    # Flags apply to this invocation; after --save they are the stored override itself.
    plan = plan_for(store, target, mode, vram_limit, flags={} if save else {component: given})
    if audio is not None and not show:
        _run_stage(component, audio, plan, store, output=output, models_dir=models_dir, json_out=json_out,
                   options=run_options or {})  # fmt: skip
        return
    if json_out:
        emit_json(configure_component_response(plan, component, override=override, action=action))
        return
    from ultrasinger_gpu_cli.render import component_view

    console = err_console()
    if action:
        console.print(f"{component}: {action} ({store.path})", style="green")
    console.print(component_view(plan, component, override))


def _progress(console: Console):
    """The progress bar of every engine run: stage, bar, percent, x real time, elapsed."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
                    TextColumn("{task.fields[speed]}"), TimeElapsedColumn(), console=console)  # fmt: skip


def _stage_progress(component: str, name: str):
    """A rich progress bar on stderr when it is a terminal; otherwise nothing until the summary."""
    import contextlib
    import time

    console = err_console()
    if not console.is_terminal:
        return contextlib.nullcontext(lambda fraction, seconds: None)

    @contextlib.contextmanager
    def bar():
        started = time.perf_counter()
        with _progress(console) as progress:
            task = progress.add_task(f"{component} {name}", total=1.0, speed="")

            def update(fraction: float, seconds: float) -> None:
                elapsed = time.perf_counter() - started
                speed = f"{seconds / elapsed:.2f}x real time" if elapsed > 0 and seconds > 0 else ""
                progress.update(task, completed=min(1.0, fraction), speed=speed)

            yield update

    return bar()


def _run_stage(
    component: str, audio: Path, plan: Any, store: Store, *, output: Optional[Path], models_dir: Optional[Path],
    json_out: bool, options: dict[str, Any],
) -> None:  # fmt: skip
    from ultrasinger_gpu_cli import stages
    from ultrasinger_gpu_cli.models import models_dir as resolve_models_dir

    runner = {"demucs": stages.run_demucs, "whisper": stages.run_whisper, "crepe": stages.run_crepe}[component]
    with _stage_progress(component, audio.name) as progress:
        report = runner(audio, output, plan, models_dir=resolve_models_dir(models_dir), progress=progress,
                        store=store, **options)  # fmt: skip
    console = err_console()
    if report.details.get("no_vocals_found"):
        console.print(f"[yellow]no vocals found[/] in {audio} (silent or too quiet): the outputs are empty", highlight=False)
    if json_out:
        emit_json(report.to_dict())
        return
    run = report.run
    vram = f", peak VRAM {run.peak_vram_mb} MB" if run.peak_vram_mb is not None else ""
    speed = f"{run.speed_x:.2f}x real time" if run.speed_x else "n/a"
    console.print(f"{component} {run.model} on {run.device}: {run.audio_seconds:.1f} s of audio in "
                  f"{run.wall_seconds:.1f} s ({speed}{vram})", highlight=False)  # fmt: skip
    for kind, path in report.outputs.items():
        console.print(f"  {kind}: {path}", highlight=False)


SHOW_OPT = typer.Option("--show", help="Print the resolved settings with reasons (the default without AUDIO).")
SAVE_OPT = typer.Option("--save", help="Store the given settings as an override the resolver honours from now on.")
RESET_OPT = typer.Option("--reset", help="Remove this component's stored override.")
BATCH_OPT = typer.Option("--batch-size", help="Items per forward pass.", min=1, show_default=False)
DEVICE_OPT = typer.Option("--device", help="Run on the GPU (cuda) or the CPU.", show_default=False)
AUDIO_ARG = typer.Argument(help="Audio or video file to process; without it the command shows the settings.", show_default=False)
OUTPUT_OPT = typer.Option("--output", "-o", help="Folder for the outputs (default: beside AUDIO).", show_default=False)
MODELS_OPT = typer.Option("--models-dir", envvar="UGPU_MODELS", help="Local model folder for offline machines.", show_default=False)


def _value(choice: Optional[Enum]) -> Optional[str]:
    return None if choice is None else choice.value


@app.command()
@handles_errors
def whisper(
    ctx: typer.Context,
    audio: Annotated[Optional[Path], AUDIO_ARG] = None,
    model: Annotated[Optional[WhisperModelChoice], typer.Option("--model", help="Whisper model.", show_default=False)] = None,  # type: ignore[valid-type]
    batch_size: Annotated[Optional[int], BATCH_OPT] = None,
    compute_type: Annotated[Optional[ComputeChoice], typer.Option("--compute-type", show_default=False)] = None,  # type: ignore[valid-type]
    device: Annotated[Optional[DeviceChoice], DEVICE_OPT] = None,  # type: ignore[valid-type]
    show: Annotated[bool, SHOW_OPT] = False,
    save: Annotated[bool, SAVE_OPT] = False,
    reset: Annotated[bool, RESET_OPT] = False,
    json_out: JsonParam = False,
    mode: ModeParam = ModeChoice.balanced,  # type: ignore[attr-defined]
    vram_limit: LimitParam = None,
    gpu: GpuParam = 0,
    output: Annotated[Optional[Path], OUTPUT_OPT] = None,
    models_dir: Annotated[Optional[Path], MODELS_OPT] = None,
    language: Annotated[Optional[str], typer.Option("--language", help="Language code (e.g. en, de); detected when omitted.", show_default=False)] = None,
) -> None:
    """Whisper lyrics with word timings on AUDIO (JSON, SRT, LRC), or its settings (/gpu/whisper)."""
    flags = {"model": _value(model), "batch_size": batch_size, "compute_type": _value(compute_type), "device": _value(device)}
    _component(ctx, "whisper", audio=audio, flags=flags, show=show, save=save, reset=reset, json_out=json_out,
               mode=mode.value, vram_limit=vram_limit, gpu=gpu, output=output, models_dir=models_dir,
               run_options={"language": language})  # fmt: skip


@app.command()
@handles_errors
def demucs(
    ctx: typer.Context,
    audio: Annotated[Optional[Path], AUDIO_ARG] = None,
    model: Annotated[Optional[DemucsModelChoice], typer.Option("--model", help="Demucs model.", show_default=False)] = None,  # type: ignore[valid-type]
    chunk_size: Annotated[Optional[int], typer.Option("--chunk-size", help="Samples per chunk (44.1 kHz).", show_default=False)] = None,
    overlap: Annotated[Optional[float], typer.Option("--overlap", help="Overlap between chunks (0-0.9).", show_default=False)] = None,
    batch_size: Annotated[Optional[int], BATCH_OPT] = None,
    device: Annotated[Optional[DeviceChoice], DEVICE_OPT] = None,  # type: ignore[valid-type]
    show: Annotated[bool, SHOW_OPT] = False,
    save: Annotated[bool, SAVE_OPT] = False,
    reset: Annotated[bool, RESET_OPT] = False,
    json_out: JsonParam = False,
    mode: ModeParam = ModeChoice.balanced,  # type: ignore[attr-defined]
    vram_limit: LimitParam = None,
    gpu: GpuParam = 0,
    output: Annotated[Optional[Path], OUTPUT_OPT] = None,
    models_dir: Annotated[Optional[Path], MODELS_OPT] = None,
    audio_format: Annotated[AudioFormat, typer.Option("--format", help="Output audio format.")] = AudioFormat.wav,  # type: ignore[attr-defined]
) -> None:
    """Demucs: vocals and instrumental of AUDIO, or its settings (/gpu/demucs)."""
    flags = {"model": _value(model), "chunk_size": chunk_size, "overlap": overlap, "batch_size": batch_size,
             "device": _value(device)}  # fmt: skip
    _component(ctx, "demucs", audio=audio, flags=flags, show=show, save=save, reset=reset, json_out=json_out,
               mode=mode.value, vram_limit=vram_limit, gpu=gpu, output=output, models_dir=models_dir,
               run_options={"fmt": audio_format.value})  # fmt: skip


@app.command()
@handles_errors
def crepe(
    ctx: typer.Context,
    audio: Annotated[Optional[Path], AUDIO_ARG] = None,
    model: Annotated[Optional[CrepeCapacityChoice], typer.Option("--model", "--capacity", help="CREPE model capacity.", show_default=False)] = None,  # type: ignore[valid-type]
    step_size: Annotated[Optional[int], typer.Option("--step-size", help="Milliseconds between pitch frames.", show_default=False)] = None,
    batch_size: Annotated[Optional[int], BATCH_OPT] = None,
    device: Annotated[Optional[DeviceChoice], DEVICE_OPT] = None,  # type: ignore[valid-type]
    show: Annotated[bool, SHOW_OPT] = False,
    save: Annotated[bool, SAVE_OPT] = False,
    reset: Annotated[bool, RESET_OPT] = False,
    json_out: JsonParam = False,
    mode: ModeParam = ModeChoice.balanced,  # type: ignore[attr-defined]
    vram_limit: LimitParam = None,
    gpu: GpuParam = 0,
    output: Annotated[Optional[Path], OUTPUT_OPT] = None,
    models_dir: Annotated[Optional[Path], MODELS_OPT] = None,
    gate: Annotated[bool, typer.Option("--gate/--no-gate", help="Compute pitch only where there is voice.")] = True,
) -> None:
    """CREPE pitch of AUDIO as time,frequency,confidence CSV, or its settings (/gpu/crepe)."""
    flags = {"model_capacity": _value(model), "step_size": step_size, "batch_size": batch_size, "device": _value(device)}
    _component(ctx, "crepe", audio=audio, flags=flags, show=show, save=save, reset=reset, json_out=json_out,
               mode=mode.value, vram_limit=vram_limit, gpu=gpu, output=output, models_dir=models_dir,
               run_options={"gate": gate})  # fmt: skip


# -- run: the whole pipeline -------------------------------------------------------------------
class _RunDisplay:
    """Renders pipeline events: a rich progress display on a terminal, plain lines otherwise."""

    def __init__(self) -> None:
        self.console = err_console()
        self.live = self.console.is_terminal
        self.progress = None
        self.task = None

    def __enter__(self) -> _RunDisplay:
        if self.live:
            self.progress = _progress(self.console)
            self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.__exit__(None, None, None)

    def print(self, text: str, style: str | None = None) -> None:
        (self.progress.console if self.progress else self.console).print(text, style=style, highlight=False)

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        song = event.get("song")
        if kind == "song_start":
            self.print(f"[bold]{song}[/] -> {event['folder']}")
        elif kind == "stage_start" and self.progress is not None:
            self.task = self.progress.add_task(f"  {event['stage']}", total=1.0, speed="")
        elif kind == "progress" and self.progress is not None and self.task is not None:
            speed = f"{event['speed_x']:.2f}x real time" if event.get("speed_x") else ""
            self.progress.update(self.task, completed=min(1.0, event["fraction"]), speed=speed)
        elif kind == "stage_end":
            if event.get("cached"):
                self.print(f"  {event['stage']}: done earlier (resumed from the cache)", style="dim")
                return
            if self.progress is not None and self.task is not None:
                self.progress.update(self.task, completed=1.0)
                self.task = None
            vram = f", peak VRAM {event['peak_vram_mb']} MB" if event.get("peak_vram_mb") is not None else ""
            speed = f"{event['speed_x']:.2f}x real time" if event.get("speed_x") else "n/a"
            self.print(f"  {event['stage']}: {event['device']}, {event['wall_seconds']:.1f} s, {speed}{vram}")
        elif kind == "warning":
            self.print(f"  [yellow]{event['message']}[/]")
        elif kind == "fallback":
            self.print(f"  fallback: {event['stage']} {event['from']} -> {event['to']} ({event['reason']})", style="yellow")


def _read_songs(songs: list[str]) -> list[Path]:
    out: list[Path] = []
    for item in songs:
        if item == "-":
            out += [Path(line.strip()) for line in sys.stdin if line.strip()]
        else:
            out.append(Path(item))
    return out


def _summary_table(reports: list[Any]):
    from rich.table import Table

    table = Table(title="Summary", title_justify="left")
    for col in ("song", "stage", "device", "seconds", "x real time", "peak VRAM", "notes"):
        table.add_column(col)
    for report in reports:
        first = True
        for stage in report.stages:
            table.add_row(
                report.source.name if first else "", stage.stage, stage.device, f"{stage.wall_seconds:.1f}",
                "cached" if stage.cached else (f"{stage.speed_x:.2f}x" if stage.speed_x else "n/a"),
                f"{stage.peak_vram_mb} MB" if stage.peak_vram_mb is not None else "n/a",
                str(report.notes) if first else "",
            )  # fmt: skip
            first = False
        for event in report.fallbacks:
            table.add_row("", f"[yellow]fallback[/] {event.stage}", f"{event.from_setting} -> {event.to_setting}", "", "",
                          "", event.reason)  # fmt: skip
    return table


@app.command()
@handles_errors
def run(
    ctx: typer.Context,
    songs: Annotated[list[str], typer.Argument(help="Songs (any audio or video file); '-' reads paths from stdin.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the song folders.")] = Path("."),
    mode: ModeParam = ModeChoice.balanced,  # type: ignore[attr-defined]
    vram_limit: LimitParam = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the final report as JSON on stdout.")] = False,
    no_fallback: Annotated[bool, typer.Option("--no-fallback", help="Stop instead of falling back on out-of-memory.")] = False,
    language: Annotated[Optional[str], typer.Option("--language", help="Language code; detected when omitted.", show_default=False)] = None,
    no_separation: Annotated[bool, typer.Option("--no-separation", help="The input is already vocals: skip Demucs.")] = False,
    timings: Annotated[Optional[Path], typer.Option("--timings", help="Word timings from an UltraStar .txt or a words JSON instead of Whisper.", show_default=False)] = None,
    format_version: Annotated[FormatVersion, typer.Option("--format-version", help="UltraStar format version.")] = FormatVersion["1.1.0"],  # type: ignore[valid-type]
    models_dir: Annotated[Optional[Path], MODELS_OPT] = None,
    gpu: GpuParam = 0,
) -> None:
    """Turn songs into UltraStar karaoke folders: Demucs -> Whisper -> CREPE -> notes, with fallback and resume."""
    from ultrasinger_gpu_cli.detection import plan_for
    from ultrasinger_gpu_cli.models import models_dir as resolve_models_dir
    from ultrasinger_gpu_cli.pipeline import Pipeline, RunOptions

    paths = _read_songs(songs)
    if not paths:
        from ultrasinger_gpu_cli.errors import InvalidSettingError

        raise InvalidSettingError("no songs given (stdin was empty)")
    if timings is not None and not timings.is_file():
        raise UgpuError(f"{timings}: no such timings file")
    store = _store(ctx)
    target = _run_target(store, gpu)
    plan = plan_for(store, target, mode.value, vram_limit)
    options = RunOptions(out_dir=output, language=language, separate=not no_separation, timings=timings,
                         format_version=format_version.value, fallback=not no_fallback,
                         models_dir=resolve_models_dir(models_dir))  # fmt: skip
    reports, failures = [], []
    with _RunDisplay() as display:
        pipeline = Pipeline(plan, options, store, on_event=display)
        pipeline.start()
        try:
            for path in paths:
                try:
                    reports.append(pipeline.run_song(path))
                except UgpuError as exc:
                    failures.append({"song": str(path), "error": exc.message})
                    display.print(f"[bold red]failed:[/] {exc.message}")
        except KeyboardInterrupt:
            pipeline.finish("interrupted")
            raise
        report = {"run_id": pipeline.run_id, "mode": plan.mode, "songs": [r.to_dict() for r in reports],
                  "failures": failures}  # fmt: skip
        pipeline.finish("failed" if failures else "done", report)
    if json_out:
        emit_json(report)
    elif reports:
        err_console().print(_summary_table(reports))
    if failures:
        listing = "; ".join(f"{f['song']}: {f['error']}" for f in failures)
        raise UgpuError(f"{len(failures)} of {len(paths)} song(s) failed: {listing}")


# -- fallback ---------------------------------------------------------------------------------
@app.command()
@handles_errors
def fallback(
    ctx: typer.Context,
    mode: ModeParam = ModeChoice.balanced,  # type: ignore[attr-defined]
    vram_limit: LimitParam = None,
    json_out: JsonParam = False,
    limit: Annotated[int, typer.Option("--limit", help="How many recent events to show.", min=1)] = 20,
    gpu: GpuParam = 0,
) -> None:
    """The fallback ladder each stage would follow on this machine, and the recent fallback events (/gpu/fallback)."""
    from ultrasinger_gpu_cli.detection import plan_for, quick_target
    from ultrasinger_gpu_cli.fallback import ladder
    from ultrasinger_gpu_cli.resolver import PlanTarget, resolve

    store = _store(ctx)
    target = quick_target(store, gpu)
    plan = plan_for(store, target, mode.value, vram_limit)
    cpu = resolve(PlanTarget("CPU"), mode.value)
    ladders = {c: [{"settings": r.settings, "label": r.label, "why": r.why}
                   for r in ladder(c, plan.components[c].values(), cpu.components[c].values())]
               for c in plan.components}  # fmt: skip
    events = [dict(r) for r in store.recent_fallbacks(limit)]
    if json_out:
        emit_json({"ladders": ladders, "events": events})
        return
    from rich.table import Table

    table = Table(title=f"Fallback ladders on {plan.target.name} ({plan.mode})", title_justify="left")
    for col in ("stage", "step", "device / batch", "when"):
        table.add_column(col)
    for stage, rungs in ladders.items():
        for i, rung in enumerate(rungs):
            table.add_row(stage if i == 0 else "", str(i + 1), rung["label"], "first" if i == 0 else f"then: {rung['why']}",
                          end_section=i == len(rungs) - 1)  # fmt: skip
    console = err_console()
    console.print(table)
    if not events:
        console.print("No fallback events yet: every stage has run on its planned settings.")
        return
    recent = Table(title="Recent fallback events", title_justify="left")
    for col in ("when", "song", "stage", "from", "to", "reason"):
        recent.add_column(col, overflow="fold")
    for e in events:
        recent.add_row(str(e["created_at"]), e["song"] or "", e["stage"], e["from_setting"], e["to_setting"], e["reason"] or "")
    console.print(recent)


# -- monitor ----------------------------------------------------------------------------------
class _Keys:
    """Reads single keys from a terminal stdin in the background (for ``q``); restores it on exit."""

    def __init__(self) -> None:
        self.pressed: list[str] = []
        self._saved = None
        self._stop = False

    def __enter__(self) -> _Keys:
        import threading

        if not sys.stdin.isatty():
            return self
        try:
            import termios
            import tty

            fd = sys.stdin.fileno()
            self._saved = termios.tcgetattr(fd)
            tty.setcbreak(fd)
        except (ImportError, OSError):  # pragma: no cover - Windows consoles: Ctrl-C still quits
            return self
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        import select

        while not self._stop:
            ready, _, _ = select.select([sys.stdin], [], [], 0.1)
            if ready:
                ch = sys.stdin.read(1)
                if ch:
                    self.pressed.append(ch)

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        if self._saved is not None:
            import termios

            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, self._saved)

    @property
    def quit(self) -> bool:
        return any(ch in ("q", "Q") for ch in self.pressed)


@app.command()
@handles_errors
def monitor(
    ctx: typer.Context,
    live: Annotated[bool, typer.Option("--live", help="Full-screen dashboard until q or Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between samples.", min=0.1)] = 1.0,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per sample and GPU (NDJSON) on stdout.")] = False,
    count: Annotated[Optional[int], typer.Option("--count", help="Stop after this many samples.", min=1, show_default=False)] = None,
    gpu: Annotated[Optional[int], typer.Option("--gpu", help="Only this GPU (NVML index).", min=0, show_default=False)] = None,
    log: Annotated[bool, typer.Option("--log", help="Also write the samples to performance_log.")] = False,
    alert: Annotated[Optional[list[str]], typer.Option("--alert", help="Alert threshold, e.g. temp=83, vram=90, speed=0.5, throttle=off.", show_default=False)] = None,
) -> None:
    """VRAM, temperature, utilisation, power, processes and the active ugpu runs, once or live (/gpu/monitor)."""
    import time

    from ultrasinger_gpu_cli.monitoring import Monitor, Thresholds
    from ultrasinger_gpu_cli.render import monitor_view

    thresholds = Thresholds.parse(alert)
    store = _store(ctx)
    mon = Monitor(store=store, gpu=gpu, thresholds=thresholds)
    console = err_console()
    seen_alerts: set[str] = set()

    def take():
        snap = mon.snapshot(processes=not json_out)
        fresh = [a for a in snap.alerts if a.message not in seen_alerts]
        seen_alerts.update(a.message for a in snap.alerts)
        mon.record(snap, fresh, log_samples=log)  # each alert is stored once, not at every refresh
        return snap, fresh

    if live:
        from rich.live import Live

        taken = 0
        with _Keys() as keys, Live(console=console, screen=True, auto_refresh=False, transient=True) as screen:
            try:
                while not keys.quit and (count is None or taken < count):
                    snap, _ = take()
                    taken += 1
                    width = console.size.width
                    from rich.console import Group
                    from rich.text import Text

                    footer = Text(f"ugpu monitor · every {interval:g} s · q quits", style="dim")
                    screen.update(Group(monitor_view(snap, mon.history, width=width), footer), refresh=True)
                    deadline = time.monotonic() + interval
                    while time.monotonic() < deadline and not keys.quit:
                        time.sleep(0.05)
            except KeyboardInterrupt:
                pass
        return
    taken = 0
    try:
        while True:
            snap, fresh = take()
            taken += 1
            for a in fresh:
                console.print(f"[bold red]alert[/] {a.kind}: {a.message}", highlight=False)
            if json_out:
                for record in snap.ndjson_records():
                    sys.stdout.write(json.dumps(record) + "\n")
                sys.stdout.flush()
            else:
                console.print(monitor_view(snap, mon.history, width=console.size.width))
            if not json_out or (count is not None and taken >= count):
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        return


# -- models -----------------------------------------------------------------------------------
models_app = typer.Typer(help="The weights each engine needs: where they are, fetch them, check them.", no_args_is_help=True)
app.add_typer(models_app, name="models")

ENGINE_ARG = typer.Argument(help="Engines (default: all three).", show_default=False)


def _model_statuses(ctx: typer.Context, engines: Optional[list[str]], model: Optional[str], mode: str, models_dir: Optional[Path]):
    from ultrasinger_gpu_cli import models
    from ultrasinger_gpu_cli.detection import plan_for, quick_target
    from ultrasinger_gpu_cli.errors import InvalidSettingError
    from ultrasinger_gpu_cli.resolver import validate_setting

    chosen = engines or ["demucs", "whisper", "crepe"]
    for engine in chosen:
        validate_setting(engine, "device", "cpu")  # refuses an unknown engine, listing the valid ones
    if model is not None and len(chosen) != 1:
        raise InvalidSettingError("--model names one model: give exactly one engine, e.g. `ugpu models pull whisper --model medium`")
    store = _store(ctx)
    target = quick_target(store)
    plan = plan_for(store, target, mode)
    wanted = {c: str(plan.components[c].values().get("model") or plan.components[c].value("model_capacity")) for c in chosen}
    if model is not None:
        key = "model_capacity" if chosen[0] == "crepe" else "model"
        wanted[chosen[0]] = validate_setting(chosen[0], key, model)
    return models.statuses(wanted, models.models_dir(models_dir))


def _models_table(rows: list[dict[str, Any]]):
    from rich.table import Table

    table = Table(title="Models", title_justify="left")
    for col in ("engine", "model", "present", "size", "where", "sha256"):
        table.add_column(col, overflow="fold")
    for row in rows:
        for f in row["files"]:
            size = f"{f['size_bytes'] / 1e6:.1f} MB" if f["size_bytes"] else "-"
            mark = "[green]yes[/]" if f["present"] else "[red]missing[/]"
            digest = f.get("sha256") or f["expected_sha256"] or "-"
            table.add_row(row["engine"], row["model"], mark, size, f"{f['path']}\n[dim]{row['location']}[/]", digest)
    return table


MODEL_OPT = typer.Option("--model", help="A model other than the plan's (one engine only).", show_default=False)


@models_app.command("list")
@handles_errors
def models_list(
    ctx: typer.Context,
    engines: Annotated[Optional[list[str]], ENGINE_ARG] = None,
    model: Annotated[Optional[str], MODEL_OPT] = None,
    mode: ModeParam = ModeChoice.balanced,  # type: ignore[attr-defined]
    models_dir: Annotated[Optional[Path], MODELS_OPT] = None,
    json_out: JsonParam = False,
) -> None:
    """Which weights the plan needs, where they live, and whether they are here."""
    statuses = _model_statuses(ctx, engines, model, mode.value, models_dir)
    rows = [s.to_dict() for s in statuses]
    if json_out:
        emit_json({"models": rows})
    else:
        err_console().print(_models_table(rows))


@models_app.command("verify")
@handles_errors
def models_verify(
    ctx: typer.Context,
    engines: Annotated[Optional[list[str]], ENGINE_ARG] = None,
    model: Annotated[Optional[str], MODEL_OPT] = None,
    mode: ModeParam = ModeChoice.balanced,  # type: ignore[attr-defined]
    models_dir: Annotated[Optional[Path], MODELS_OPT] = None,
    json_out: JsonParam = False,
) -> None:
    """Checksum the weights (SHA-256) against the published digests; exit 1 when one is missing or wrong."""
    from ultrasinger_gpu_cli import models

    rows, all_ok = [], True
    for status in _model_statuses(ctx, engines, model, mode.value, models_dir):
        ok, sums = models.verify(status)
        all_ok &= ok
        rows.append({**status.to_dict(sums), "ok": ok})
    if json_out:
        emit_json({"models": rows, "ok": all_ok})
    else:
        err_console().print(_models_table(rows))
    if not all_ok:
        raise UgpuError("some model files are missing or do not match their checksum", hint="ugpu models pull")


@models_app.command("pull")
@handles_errors
def models_pull(
    ctx: typer.Context,
    engines: Annotated[Optional[list[str]], ENGINE_ARG] = None,
    model: Annotated[Optional[str], MODEL_OPT] = None,
    mode: ModeParam = ModeChoice.balanced,  # type: ignore[attr-defined]
    models_dir: Annotated[Optional[Path], MODELS_OPT] = None,
) -> None:
    """Download the missing weights (needs internet): into the libraries' caches, or with --models-dir
    into that folder's layout, to copy to an offline machine."""
    from ultrasinger_gpu_cli import models

    console = err_console()
    for status in _model_statuses(ctx, engines, model, mode.value, models_dir):
        if status.present:
            console.print(f"{status.engine} {status.model}: present ({status.location})", highlight=False)
            continue
        if status.engine == "crepe":
            console.print(f"crepe {status.model}: ships with torchcrepe (pip install torchcrepe)", highlight=False)
            continue
        console.print(f"{status.engine} {status.model}: downloading ...", highlight=False)
        try:
            models.pull(status, models.models_dir(models_dir))
        except OSError as exc:
            raise UgpuError(f"downloading {status.engine} {status.model} failed: {exc}", hint="check the internet connection") from exc
        console.print(f"{status.engine} {status.model}: done", style="green", highlight=False)


# -- stats ------------------------------------------------------------------------------------
@app.command()
@handles_errors
def stats(
    ctx: typer.Context,
    json_out: JsonParam = False,
    component: Annotated[
        Optional[str], typer.Option("--component", help="Only this component (whisper, demucs, crepe).")
    ] = None,
    since: Annotated[
        Optional[str], typer.Option("--since", help="Only entries logged at or after this time (YYYY-MM-DD[ HH:MM]).")
    ] = None,
    gpu: Annotated[Optional[int], typer.Option("--gpu", help="Only runs on this GPU (NVML index).", min=0, show_default=False)] = None,
    export: Annotated[Optional[ExportFormat], typer.Option("--export", help="Print the log's rows in this format on stdout.", show_default=False)] = None,  # type: ignore[valid-type]
) -> None:
    """Performance report from the log: runs, x real time, peak VRAM, temperature, fallbacks, trends (/gpu/stats)."""
    from ultrasinger_gpu_cli.reports import stats_response
    from ultrasinger_gpu_cli.resolver import validate_setting

    if component is not None:
        validate_setting(component, "device", "cpu")  # refuses an unknown component
    store = _store(ctx)
    if export is not None:
        import csv

        rows = store.performance_rows(component, since, gpu)
        columns = [d[1] for d in store.query("PRAGMA table_info(performance_log)")]
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([row[c] for c in columns])
        return
    rows = store.component_stats(component=component, since=since, gpu=gpu)
    if json_out:
        emit_json(stats_response(rows))
        return
    console = err_console()
    if not rows:
        console.print(
            "No performance data yet. Every engine run (ugpu whisper/demucs/crepe AUDIO, ugpu run) logs its speed, "
            f"VRAM and temperature to {store.path}; come back after the first one.",
            highlight=False,
        )
        return
    from ultrasinger_gpu_cli.render import stats_view

    console.print(stats_view(rows, width=console.size.width))


def main() -> None:
    """Console-script entry point."""
    app()
