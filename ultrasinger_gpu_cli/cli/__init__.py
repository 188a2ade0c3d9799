"""The ``ugpu`` command line: a thin skin. Each command group parses its options, calls a use
case (:mod:`ultrasinger_gpu_cli.usecases`) and renders the result (:mod:`..render`).

* ``plan``: detect, optimize         * ``stages``: whisper, demucs, crepe
* ``run``: the whole pipeline        * ``monitor``: live GPU state
* ``models``: list, verify, pull     * ``history``: stats, fallback
* ``evaluate``: eval (charts against hand-made ones), preview (a chart as a picture)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ultrasinger_gpu_cli import __version__
from ultrasinger_gpu_cli.cli import evaluate, history, models, monitor, plan, run, serve, stages

app = typer.Typer(
    name="ugpu",
    help="Turn songs into UltraStar karaoke files on your NVIDIA GPU, and see what the GPU is doing.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ugpu {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    db: Annotated[
        Optional[Path],
        typer.Option("--db", help="SQLite file for ugpu's state (default: UGPU_DB, else the user data dir).",
                     show_default=False),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    ctx.obj = {"db": db}


for group in (plan, stages, run, history, monitor, serve):
    for command in group.COMMANDS:
        app.command()(command)
for name, command in evaluate.COMMANDS:
    app.command(name=name)(command)
app.add_typer(models.models_app, name="models")


def main() -> None:
    """Console-script entry point. Errors outside a command (the root options, completion) get
    the same last line of defence as the commands: a short message and a log file."""
    from ultrasinger_gpu_cli.cli.common import unexpected

    try:
        app()
    except (SystemExit, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001
        try:
            unexpected(exc)
        except typer.Exit as done:
            raise SystemExit(done.exit_code) from None


__all__ = ["app", "main"]
