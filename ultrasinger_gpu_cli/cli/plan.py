"""``ugpu detect`` and ``ugpu optimize``: the machine and the plan."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ultrasinger_gpu_cli.cli.common import GpuParam, JsonParam, LimitParam, ModeChoice, ModeParam, emit_json
from ultrasinger_gpu_cli.cli.common import err_console, handles_errors, open_store
from ultrasinger_gpu_cli.errors import NoGpuError



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
    gpu: GpuParam = "0",
) -> None:
    """Detect the GPUs, their drivers, and whether the installed PyTorch can run them (/gpu/detect)."""
    from ultrasinger_gpu_cli.usecases.reports import initialize_response
    from ultrasinger_gpu_cli.usecases.plan import detect_machine

    found = detect_machine(open_store(ctx), gpu=gpu, mode=mode.value, vram_limit_gb=vram_limit, force=force)
    if json_out:
        emit_json(initialize_response(found.detection, found.plan, force_detection=force))
    else:
        from ultrasinger_gpu_cli.cli.render import detection_view

        err_console().print(detection_view(found.detection, found.plan))
    if require_gpu and not found.uses_gpu:
        reason = "no NVIDIA GPU was detected" if not found.detection.gpu_detected else "the GPU cannot be used"
        raise NoGpuError(f"--require-gpu: {reason}; ugpu would run on the CPU")


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
    gpu: GpuParam = "0",
    tiers: Annotated[bool, typer.Option("--tiers", help="Print the whole tier table and exit.")] = False,
) -> None:
    """Show the settings ugpu uses for Whisper, Demucs and CREPE on this card, with reasons (/gpu/optimize)."""
    if tiers:
        from ultrasinger_gpu_cli.cli.render import tier_table

        err_console().print(tier_table())
        return
    from ultrasinger_gpu_cli.usecases.reports import optimize_response
    from ultrasinger_gpu_cli.usecases.plan import Assumed
    from ultrasinger_gpu_cli.usecases.plan import optimize as run_optimize

    store = open_store(ctx)
    result = run_optimize(store, gpu=gpu, mode=mode.value, vram_limit_gb=vram_limit,
                          assumed=Assumed(assume_vram, assume_gpu, assume_cc), save=save)  # fmt: skip
    if json_out:
        emit_json(optimize_response(result.plan, cuda_version=result.cuda_version, saved=result.saved, lanes=result.lanes))
        return
    from ultrasinger_gpu_cli.cli.render import plan_view

    err_console().print(plan_view(result.plan, result.lanes))
    if result.saved:
        err_console().print(f"saved the plan to {store.path}", style="green")

#: This group's commands, in the order ``ugpu --help`` lists them.
COMMANDS = (detect, optimize)
