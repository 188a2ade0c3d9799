"""``ugpu eval``: generated charts against hand-made ones."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ultrasinger_gpu_cli.cli.common import JsonParam, emit_json, err_console, handles_errors


@handles_errors
def eval_charts(
    generated: Annotated[Path, typer.Argument(help="A generated chart (.txt), or a folder of them.", show_default=False)],
    reference: Annotated[Path, typer.Argument(help="The hand-made chart, or a folder of them (matched by file name).", show_default=False)],
    json_out: JsonParam = False,
) -> None:
    """Score generated charts against reference ones: note matches, onset error, pitch, coverage, lyrics."""
    from ultrasinger_gpu_cli.evaluation import evaluate

    result = evaluate(generated, reference)
    if json_out:
        emit_json(result.to_dict())
        return
    from ultrasinger_gpu_cli.render import evaluation_table

    err_console().print(evaluation_table(result), highlight=False)


#: This group's commands: (name, function).
COMMANDS = (("eval", eval_charts),)
