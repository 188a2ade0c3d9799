"""``ugpu models list|verify|pull``: the weights each component's backend needs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ultrasinger_gpu_cli.cli.common import JsonParam, ModeChoice, ModelsDirParam, ModeParam, emit_json, err_console
from ultrasinger_gpu_cli.cli.common import open_store, with_shared_options
from ultrasinger_gpu_cli.errors import UgpuError

models_app = typer.Typer(help="The weights each component needs: where they are, fetch them, check them.",
                         no_args_is_help=True)  # fmt: skip

ComponentsArg = Annotated[Optional[list[str]], typer.Argument(help="Components (default: all of them).", show_default=False)]
ModelParam = Annotated[Optional[str], typer.Option("--model", help="A model other than the plan's (one component only).", show_default=False)]
BackendParam = Annotated[Optional[str], typer.Option("--backend", help="A backend other than the plan's (one component only).", show_default=False)]
#: Which weights: the same options for list, verify and pull.
QUERY = (("components", ComponentsArg, None), ("model", ModelParam, None), ("backend", BackendParam, None),
         ("mode", ModeParam, ModeChoice.balanced), ("models_dir", ModelsDirParam, None))  # type: ignore[attr-defined]


def _query(handler):
    """Run ``handler(statuses, own_values, models_dir)`` with the statuses the query options name."""

    def run(values: dict[str, Any], query: dict[str, Any]) -> None:
        from ultrasinger_gpu_cli.usecases.models import model_statuses

        if values.get("source") is not None:  # `pull --from PATH`: the weights say what they are
            handler([], {**values, "model": query["model"]}, query["models_dir"])
            return
        statuses = model_statuses(open_store(values["ctx"]), query["components"], model=query["model"],
                                  backend=query["backend"], mode=query["mode"].value, models_dir=query["models_dir"])  # fmt: skip
        handler(statuses, values, query["models_dir"])

    return with_shared_options(QUERY, run)


def _list(statuses: list, values: dict[str, Any], models_dir: Any) -> None:
    from ultrasinger_gpu_cli.usecases.models import backends_listing, listing_response

    if values["json_out"]:
        emit_json(listing_response(statuses))
        return
    from ultrasinger_gpu_cli.cli.render import backends_table, models_table

    err_console().print(models_table(statuses))
    err_console().print(backends_table(backends_listing()))


def _verify(statuses: list, values: dict[str, Any], models_dir: Any) -> None:
    from ultrasinger_gpu_cli.usecases.models import verify_models

    verified = verify_models(statuses)
    all_ok = all(v.ok for v in verified)
    if values["json_out"]:
        emit_json({"models": [{**v.status.to_dict(v.checksums), "ok": v.ok,
                               "notes": {str(p): why for p, why in v.notes.items()}} for v in verified],
                   "ok": all_ok})  # fmt: skip
    else:
        from ultrasinger_gpu_cli.cli.render import models_table

        sums = {path: digest for v in verified for path, digest in v.checksums.items()}
        err_console().print(models_table([v.status for v in verified], sums))
        for v in verified:
            for path, note in v.notes.items():
                err_console().print(f"{path}: {note}", style=None if v.ok else "red", highlight=False)
    if not all_ok:
        listing = "; ".join(f"{path}: {why}" for v in verified if not v.ok for path, why in v.notes.items())
        raise UgpuError(f"model files failed the check: {listing}", hint="ugpu models pull --force (for the damaged ones)")


def _pull(statuses: list, values: dict[str, Any], models_dir: Any) -> None:
    from ultrasinger_gpu_cli.usecases.models import import_model, pull_models

    console = err_console()
    if values.get("source") is not None:
        imported = import_model(values["source"], models_dir, model=values.get("model"), force=values["force"])
        if values.get("json_out"):
            emit_json({"imported": [{"component": i.component, "backend": i.backend, "model": i.model,
                                     "files": [str(f) for f in i.files], "checked": i.checked} for i in imported]})  # fmt: skip
        for i in imported:
            console.print(f"{i.component} {i.model} ({i.backend}): imported to {i.files[0].parent} ({i.checked})",
                          style="green", highlight=False)  # fmt: skip
        return
    for status in statuses:
        if not status.present or values["force"]:
            console.print(f"{status.engine} {status.model} ({status.backend}): fetching ...", highlight=False)
        (pulled,) = pull_models([status], models_dir, force=values["force"])
        style = "green" if pulled.action == "downloaded" else None
        console.print(f"{status.engine} {status.model} ({status.backend}): {pulled.action}", style=style, highlight=False)


# The functions below declare each command (its help and its own options); _query runs it.
@models_app.command("list")
@_query(_list)
def models_list(ctx: typer.Context, json_out: JsonParam = False) -> None:
    """Which weights the plan needs, per component and backend, where they live, and whether they are here."""


@models_app.command("verify")
@_query(_verify)
def models_verify(ctx: typer.Context, json_out: JsonParam = False) -> None:
    """Checksum the weights (SHA-256) against the published digests; exit 1 when one is missing or wrong."""


@models_app.command("pull")
@_query(_pull)
def models_pull(
    ctx: typer.Context,
    force: Annotated[bool, typer.Option("--force", help="Fetch again even when present (a damaged file).")] = False,
    source: Annotated[Optional[Path], typer.Option("--from", help="Import weights you already have instead: a "
                      "faster-whisper folder, an openai-whisper .pt, Demucs .th files (checked, copied, no network).",
                      show_default=False)] = None,
    json_out: JsonParam = False,
) -> None:
    """Download the missing weights (needs internet): into the libraries' caches, or with --models-dir
    into that folder's layout, to copy to an offline machine. --from PATH imports weights already on
    the disk instead."""
