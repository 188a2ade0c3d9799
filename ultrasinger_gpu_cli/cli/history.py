"""``ugpu stats`` and ``ugpu fallback``: what happened, from the performance log and the events."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from ultrasinger_gpu_cli.cli.common import GpuParam, JsonParam, LimitParam, ModeChoice, ModeParam, choice, emit_json
from ultrasinger_gpu_cli.cli.common import err_console, handles_errors, open_store

ExportFormat = choice("ExportFormat", ("csv",))



@handles_errors
def fallback(
    ctx: typer.Context,
    mode: ModeParam = ModeChoice.balanced,  # type: ignore[attr-defined]
    vram_limit: LimitParam = None,
    json_out: JsonParam = False,
    limit: Annotated[int, typer.Option("--limit", help="How many recent events to show.", min=1)] = 20,
    gpu: GpuParam = "0",
) -> None:
    """The fallback ladder each stage would follow on this machine, and the recent fallback events (/gpu/fallback)."""
    from ultrasinger_gpu_cli.usecases.plan import fallback_ladders

    ladders = fallback_ladders(open_store(ctx), gpu=gpu, mode=mode.value, vram_limit_gb=vram_limit, limit=limit)
    if json_out:
        emit_json(ladders.to_dict())
        return
    from ultrasinger_gpu_cli.cli.render import fallback_view

    err_console().print(fallback_view(ladders))


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
    from ultrasinger_gpu_cli.usecases.history import component_stats, write_csv

    store = open_store(ctx)
    if export is not None:
        write_csv(store, sys.stdout, component=component, since=since, gpu=gpu)
        return
    rows = component_stats(store, component=component, since=since, gpu=gpu)
    if json_out:
        from ultrasinger_gpu_cli.usecases.reports import stats_response

        emit_json(stats_response(rows))
        return
    from ultrasinger_gpu_cli.cli.render import no_stats_yet, stats_view

    console = err_console()
    console.print(stats_view(rows, width=console.size.width) if rows else no_stats_yet(store.path), highlight=False)

#: This group's commands, in the order ``ugpu --help`` lists them.
COMMANDS = (fallback, stats)
