"""``ugpu run``: the whole pipeline over one or many songs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ultrasinger_gpu_cli.cli.common import GpuParam, LimitParam, ModeChoice, ModelsDirParam, ModeParam, OfflineParam
from ultrasinger_gpu_cli.cli.common import RehearseParam
from ultrasinger_gpu_cli.cli.common import choice, emit_json, err_console, handles_errors, open_store, rehearsal
from ultrasinger_gpu_cli.errors import InvalidSettingError

FormatVersion = choice("FormatVersion", ("1.1.0", "1.0.0", "0.3.0"))



def _read_songs(songs: list[str]) -> list[Path]:
    out: list[Path] = []
    for item in songs:
        if item == "-":
            out += [Path(line.strip()) for line in sys.stdin if line.strip()]
        else:
            out.append(Path(item))
    return out


def _singers(text: str) -> tuple[str, str]:
    names = [name.strip() for name in text.split(",")]
    if len(names) != 2 or not all(names):
        raise InvalidSettingError(f"--singers {text!r}: give the two singers' names, comma-separated: 'Name A,Name B'")
    return names[0], names[1]


@handles_errors
def run(
    ctx: typer.Context,
    songs: Annotated[list[str], typer.Argument(help="Songs (any audio or video file), or folders of them (a library: the songs under it; song folders holding a chart left out); '-' reads paths from stdin.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the song folders.")] = Path("."),
    mode: ModeParam = ModeChoice.balanced,  # type: ignore[attr-defined]
    vram_limit: LimitParam = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the final report as JSON on stdout.")] = False,
    no_fallback: Annotated[bool, typer.Option("--no-fallback", help="Stop instead of falling back on out-of-memory.")] = False,
    language: Annotated[Optional[str], typer.Option("--language", help="Language code; detected when omitted.", show_default=False)] = None,
    no_separation: Annotated[bool, typer.Option("--no-separation", help="The input is already vocals: skip Demucs.")] = False,
    timings: Annotated[Optional[Path], typer.Option("--timings", help="Word timings from an UltraStar .txt or a words JSON instead of Whisper.", show_default=False)] = None,
    format_version: Annotated[Optional[FormatVersion], typer.Option("--format-version", help="UltraStar format version [default: 1.1.0; a --timings chart keeps its own].", show_default=False)] = None,  # type: ignore[valid-type]
    models_dir: ModelsDirParam = None,
    gpu: GpuParam = "0",
    rehearse_fault: RehearseParam = None,
    offline: OfflineParam = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Convert again a song whose folder already holds it (the same audio).")] = False,
    lyrics: Annotated[Optional[Path], typer.Option("--lyrics", help="The song's words (plain text, one sung line per line, .lrc, or subtitles .srt/.vtt) instead of speech recognition; Whisper times them.", show_default=False)] = None,
    whisper_backend: Annotated[Optional[str], typer.Option("--whisper-backend", help="Whisper backend for this run (ugpu models list shows them).", show_default=False)] = None,
    pitch_backend: Annotated[Optional[str], typer.Option("--pitch-backend", help="Pitch backend for this run: swiftf0 or torchcrepe (ugpu models list shows them).", show_default=False)] = None,
    rap: Annotated[bool, typer.Option("--rap", help="Words with no stable pitch become rap notes (R); unvoiced syllables stay freestyle (F).")] = False,
    gpus: Annotated[Optional[str], typer.Option("--gpus", help="Convert on several GPUs at once: all, or indices / UUIDs (0,2); one worker process per card.", show_default=False)] = None,
    per_gpu: Annotated[str, typer.Option("--per-gpu", help="Workers per GPU with --gpus: auto (as many pipelines as the card's VRAM holds) or a number.")] = "auto",
    use_ray: Annotated[bool, typer.Option("--ray", help="Convert on a Ray cluster (RAY_ADDRESS, else a local one started for the run).")] = False,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="The Ray cluster to use (ray start --head prints it).", show_default=False)] = None,
    shared_input: Annotated[bool, typer.Option("--shared-input", help="With --ray: every node sees the songs at the same path (else their bytes travel).")] = False,
    singers: Annotated[Optional[str], typer.Option("--singers", help="A duet's singers' names, 'Name A,Name B' (the lyrics tag their lines P1:, P2:, P1&P2:) [default: Singer 1, Singer 2].", show_default=False)] = None,
    no_preview: Annotated[bool, typer.Option("--no-preview", help="Do not draw preview.png (the chart as a piano roll) into each song folder.")] = False,
    no_video: Annotated[bool, typer.Option("--no-video", help="A music video as the song: keep only its audio (by default the video goes into the song folder too, named by #VIDEO, and UltraStar plays it behind the lyrics).")] = False,
    no_overlap: Annotated[bool, typer.Option("--no-overlap", help="Several songs: finish each song before the next one's audio is read (by default the next song is decoded and the last one's files written while the engines run; on the CPU, several songs run at once).")] = False,
    lanes: Annotated[Optional[int], typer.Option("--lanes", help="Several songs on the CPU: how many to convert at once, each in a worker process with its share of the cores (1: one after another in this process) [default: as the cores and memory allow].", min=1, max=64, show_default=False)] = None,
    max_minutes: Annotated[Optional[float], typer.Option("--max-minutes", help="The longest song converted, in minutes (longer ones stop with exit 2) [default: UGPU_MAX_MINUTES, else 120].", min=0.01, max=1440, show_default=False)] = None,
) -> None:
    """Turn songs into UltraStar karaoke folders: Demucs -> Whisper -> CREPE -> notes, with fallback and resume."""
    from ultrasinger_gpu_cli.weights.models import models_dir as resolve_models_dir
    from ultrasinger_gpu_cli.run.options import RunOptions
    from ultrasinger_gpu_cli.cli.run_view import RunDisplay, summary_table
    from ultrasinger_gpu_cli.usecases.batch import songs_in
    from ultrasinger_gpu_cli.usecases.scale import convert_batch
    from ultrasinger_gpu_cli.usecases.plan import worker_plan

    from ultrasinger_gpu_cli.components.whisper import check_language, check_model_language

    language = check_language(language)
    paths = songs_in(_read_songs(songs))
    if not paths:
        raise InvalidSettingError("no songs given (stdin was empty)")
    names = _singers(singers) if singers is not None else None
    rehearsed = rehearsal(rehearse_fault)
    store = open_store(ctx)
    flags = {component: {"backend": name} for component, name in (("whisper", whisper_backend), ("crepe", pitch_backend)) if name}
    plan = worker_plan(store, gpu, mode.value, vram_limit, flags or None)
    check_model_language(plan.components["whisper"].model, language)  # once, before any song
    songs_given = len({p.resolve() for p in paths})
    for flag, given in (("--lyrics", lyrics), ("--timings", timings)):
        if given is not None and songs_given > 1:  # the same performance in several files, or a slip
            err_console().print(f"note: {flag} {given} gives the same words to all {songs_given} songs")
    options = RunOptions(out_dir=output, language=language, separate=not no_separation, timings=timings,
                         format_version=format_version.value if format_version else None, fallback=not no_fallback,
                         models_dir=resolve_models_dir(models_dir), rehearsal=rehearsed,
                         fetch_missing=not offline, overwrite=overwrite, rap=rap, lyrics=lyrics,
                         max_minutes=max_minutes, singers=names, preview=not no_preview, overlap=not no_overlap,
                         video=not no_video)  # fmt: skip
    if gpus is not None and (use_ray or ray_address):
        raise InvalidSettingError("--gpus runs workers on this machine and --ray on a cluster: choose one")
    if lanes is not None and (gpus is not None or use_ray or ray_address):
        raise InvalidSettingError("--lanes is for a batch on this machine's CPU; --gpus and --ray place the songs themselves")
    with RunDisplay(err_console()) as display:
        if use_ray or ray_address:
            from ultrasinger_gpu_cli.usecases.cluster import run_on_ray

            result = run_on_ray(paths, options, store, mode=mode.value, vram_limit_gb=vram_limit, flags=flags or None,
                                address=ray_address, shared_input=shared_input, on_event=display)  # fmt: skip
        elif gpus is not None:
            from ultrasinger_gpu_cli.usecases.scale import plan_slots, run_parallel

            slots = plan_slots(store, gpus, per_gpu, mode=mode.value, vram_limit_gb=vram_limit, flags=flags or None)
            result = run_parallel(paths, slots, options, store, on_event=display)
        else:
            result = convert_batch(paths, plan, options, store, on_event=display, lanes=lanes)
    if json_out:
        emit_json(result.to_dict())
    elif result.reports:
        err_console().print(summary_table(result.reports))
    result.raise_for_failures()

#: This group's commands, in the order ``ugpu --help`` lists them.
COMMANDS = (run,)
