"""``ugpu eval``: generated charts against hand-made ones; ``ugpu preview``: a chart as a picture."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ultrasinger_gpu_cli.cli.common import JsonParam, emit_json, err_console, handles_errors


@handles_errors
def eval_charts(
    generated: Annotated[Path, typer.Argument(help="A generated chart (.txt), or a folder of them.", show_default=False)],
    reference: Annotated[Path, typer.Argument(help="The hand-made chart, or a folder of them (matched by file name).", show_default=False)],
    overlay: Annotated[Optional[Path], typer.Option("--overlay", help="Also draw each generated chart with its reference over it, one PNG per song, into this folder.", show_default=False)] = None,
    json_out: JsonParam = False,
) -> None:
    """Score generated charts against reference ones: note matches, onset error, pitch, coverage, lyrics."""
    from ultrasinger_gpu_cli.song.evaluation import evaluate

    result = evaluate(generated, reference)
    images = []
    if overlay is not None:
        from ultrasinger_gpu_cli.usecases.preview import write_overlays

        images = write_overlays(result, overlay)
    if json_out:
        emit_json({**result.to_dict(), "overlays": [str(p) for p in images]} if overlay is not None else result.to_dict())
        return
    from ultrasinger_gpu_cli.cli.render import evaluation_table

    err_console().print(evaluation_table(result), highlight=False)
    for image in images:
        err_console().print(f"overlay: {image}", highlight=False)


@handles_errors
def preview(
    target: Annotated[Path, typer.Argument(help="A song folder ugpu run wrote, or an UltraStar chart (.txt).", show_default=False)],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="The image: .png or .svg [default: preview.png beside the chart].", show_default=False)] = None,
    reference: Annotated[Optional[Path], typer.Option("--reference", help="Another chart (a hand chart, the previous run) drawn over it in another colour.", show_default=False)] = None,
    row_seconds: Annotated[float, typer.Option("--row-seconds", help="Seconds of song per row.", min=5, max=120)] = 20.0,
    json_out: JsonParam = False,
) -> None:
    """Draw a chart as a piano roll: notes with their syllables, the pitch the run heard, another chart over it."""
    from ultrasinger_gpu_cli.usecases.preview import preview_chart

    pages = preview_chart(target, output, reference=reference, row_s=row_seconds)
    if json_out:
        emit_json({"pages": [{"path": str(p.path), **p.to_dict()} for p in pages]})
        return
    for page in pages:
        err_console().print(f"wrote {page.path} ({page.width_px}x{page.height_px})", highlight=False)


#: This group's commands: (name, function).
COMMANDS = (("eval", eval_charts), ("preview", preview))
