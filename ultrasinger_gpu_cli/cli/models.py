"""``ugpu models list|verify|pull``: the weights each component's backend needs."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ultrasinger_gpu_cli.cli.common import (
    JsonParam,
    ModeChoice,
    ModelsDirParam,
    ModeParam,
    emit_json,
    err_console,
    handles_errors,
    open_store,
)
from ultrasinger_gpu_cli.errors import UgpuError

models_app = typer.Typer(help="The weights each component needs: where they are, fetch them, check them.",
                         no_args_is_help=True)  # fmt: skip

ComponentsArg = Annotated[Optional[list[str]], typer.Argument(help="Components (default: all of them).", show_default=False)]
ModelParam = Annotated[Optional[str], typer.Option("--model", help="A model other than the plan's (one component only).", show_default=False)]
BackendParam = Annotated[Optional[str], typer.Option("--backend", help="A backend other than the plan's (one component only).", show_default=False)]


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")


def _statuses(ctx: typer.Context, components, model, backend, mode: str, models_dir):
    from ultrasinger_gpu_cli.usecases.models import model_statuses

    return model_statuses(open_store(ctx), components, model=model, backend=backend, mode=mode, models_dir=models_dir)


@models_app.command("list")
@handles_errors
def models_list(
    ctx: typer.Context,
    components: ComponentsArg = None,
    model: ModelParam = None,
    backend: BackendParam = None,
    mode: ModeParam = ModeChoice.balanced,  # type: ignore[attr-defined]
    models_dir: ModelsDirParam = None,
    json_out: JsonParam = False,
) -> None:
    """Which weights the plan needs, per component and backend, where they live, and whether they are here."""
    statuses = _statuses(ctx, components, model, backend, mode.value, models_dir)
    if json_out:
        from ultrasinger_gpu_cli.usecases.models import backends_listing

        emit_json({"models": [s.to_dict() for s in statuses], "backends": backends_listing()})
        return
    from ultrasinger_gpu_cli.render import backends_table, models_table
    from ultrasinger_gpu_cli.usecases.models import backends_listing

    err_console().print(models_table(statuses))
    err_console().print(backends_table(backends_listing()))


@models_app.command("verify")
@handles_errors
def models_verify(
    ctx: typer.Context,
    components: ComponentsArg = None,
    model: ModelParam = None,
    backend: BackendParam = None,
    mode: ModeParam = ModeChoice.balanced,  # type: ignore[attr-defined]
    models_dir: ModelsDirParam = None,
    json_out: JsonParam = False,
) -> None:
    """Checksum the weights (SHA-256) against the published digests; exit 1 when one is missing or wrong."""
    from ultrasinger_gpu_cli.usecases.models import verify_models

    verified = verify_models(_statuses(ctx, components, model, backend, mode.value, models_dir))
    all_ok = all(v.ok for v in verified)
    if json_out:
        emit_json({"models": [{**v.status.to_dict(v.checksums), "ok": v.ok} for v in verified], "ok": all_ok})
    else:
        from ultrasinger_gpu_cli.render import models_table

        sums = {path: digest for v in verified for path, digest in v.checksums.items()}
        err_console().print(models_table([v.status for v in verified], sums))
    if not all_ok:
        raise UgpuError("some model files are missing or do not match their checksum", hint="ugpu models pull")


@models_app.command("pull")
@handles_errors
def models_pull(
    ctx: typer.Context,
    components: ComponentsArg = None,
    model: ModelParam = None,
    backend: BackendParam = None,
    mode: ModeParam = ModeChoice.balanced,  # type: ignore[attr-defined]
    models_dir: ModelsDirParam = None,
) -> None:
    """Download the missing weights (needs internet): into the libraries' caches, or with --models-dir
    into that folder's layout, to copy to an offline machine."""
    from ultrasinger_gpu_cli.usecases.models import pull_models

    console = err_console()
    for status in _statuses(ctx, components, model, backend, mode.value, models_dir):
        if not status.present:
            console.print(f"{status.engine} {status.model} ({status.backend}): fetching ...", highlight=False)
        (pulled,) = pull_models([status], models_dir)
        style = "green" if pulled.action == "downloaded" else None
        console.print(f"{status.engine} {status.model} ({status.backend}): {pulled.action}", style=style, highlight=False)
