"""What every command shares: consoles, JSON output, error handling, the shared options.

Data (``--json``) goes to stdout; everything for people goes to stderr. Expected errors
(:class:`~ultrasinger_gpu_cli.errors.UgpuError`) become one message and their exit code.
"""

from __future__ import annotations

import functools
import inspect
import json
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Optional, TypeVar

import click
import typer

from ultrasinger_gpu_cli.errors import EXIT_FAILURE, EXIT_INTERRUPTED, UgpuError
from ultrasinger_gpu_cli.plan.tiers import MODES

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

    from ultrasinger_gpu_cli.store.db import Store


def choice(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A Typer choice type from a tuple of strings (help and completion list them)."""
    return Enum(name, {v: v for v in values}, type=str)  # type: ignore[return-value]


ModeChoice = choice("ModeChoice", MODES)

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
        _terminate_like_interrupt()
        try:
            return fn(*args, **kwargs)
        except UgpuError as exc:
            report(exc)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console().print("interrupted", style="yellow")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except BrokenPipeError:  # `ugpu ... --json | head`: the reader has gone, and so does ugpu, quietly
            _quiet_stdout()
            raise typer.Exit(0) from None
        except Exception as exc:  # noqa: BLE001 - the last line of defence: no traceback reaches a user
            from ultrasinger_gpu_cli.errors import from_os_error

            known = from_os_error(exc)
            if known is None:
                unexpected(exc)
            report(known)
            raise typer.Exit(known.exit_code) from None

    return wrapper  # type: ignore[return-value]


def report(exc: UgpuError) -> None:
    """The error and its hint on stderr (the text is the user's: file names, commands; never markup)."""
    from rich.markup import escape

    console = err_console()
    console.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False, markup=True, soft_wrap=True)
    if exc.hint:
        console.print(f"[dim]hint:[/] {escape(exc.hint)}", highlight=False, soft_wrap=True)


def _quiet_stdout() -> None:
    """stdout points at nothing from now on, so the interpreter's last flush cannot fail again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _terminate_like_interrupt() -> None:
    """SIGTERM (``kill``, a service manager stopping ugpu) takes the Ctrl-C path: the run is marked
    interrupted, half-written files are removed, exit code 130."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def unexpected(exc: BaseException) -> None:
    """An error ugpu did not expect: one short message, the traceback in a log file, exit code 1."""
    from ultrasinger_gpu_cli.crashlog import describe, write_crash_log

    path = write_crash_log(exc)
    console = err_console()
    console.print(f"[bold red]error:[/] ugpu hit an unexpected error ({describe(exc)})", highlight=False, soft_wrap=True)
    console.print(f"[dim]details:[/] {path} — please include this file if you report it", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_FAILURE) from None


def open_store(ctx: typer.Context) -> Store:
    """The database: ``--db``, else ``UGPU_DB``, else the user data dir (resolved by the store)."""
    from ultrasinger_gpu_cli.store.db import Store

    store = Store.open(ctx.obj.get("db") if ctx.obj else None)
    ctx.call_on_close(store.close)
    return store


def value(option: Optional[Enum]) -> Optional[str]:
    return None if option is None else option.value


# The options most commands share, declared once.
ModeParam = Annotated[ModeChoice, typer.Option("--mode", "-m", help="How hard to push the card.")]  # type: ignore[valid-type]
LimitParam = Annotated[
    Optional[float], typer.Option("--vram-limit", help="Plan and run as if the card had only this many GB.", show_default=False)
]
JsonParam = Annotated[bool, typer.Option("--json", help="Print the design's API response as JSON on stdout.")]
GpuParam = Annotated[
    str, typer.Option("--gpu", help="Which GPU: its NVML index (0, 1, ...) or its UUID (GPU-...; a unique prefix will do).")
]
ModelsDirParam = Annotated[
    Optional[Path],
    typer.Option("--models-dir", help="Local model folder for offline machines (default: UGPU_MODELS).", show_default=False),
]
OfflineParam = Annotated[
    bool, typer.Option("--offline", help="Never download: missing weights stop with the command that fetches them "
                                         "(also UGPU_OFFLINE=1 or HF_HUB_OFFLINE=1).")]  # fmt: skip
RehearseParam = Annotated[
    Optional[list[str]],
    typer.Option("--rehearse-fault", metavar="STAGE:ATTEMPT[:oom|kernel]", show_default=False,
                 help="Diagnostic: raise a GPU out-of-memory (or missing-kernel) error before that attempt of the stage, "
                      "to watch the fallback ladder work on any machine."),
]  # fmt: skip


def rehearsal(faults: Optional[list[str]]):
    from ultrasinger_gpu_cli.run.diagnostics import Fault, Rehearsal

    return Rehearsal(tuple(Fault.parse(f) for f in faults)) if faults else None


#: Options several commands share: (parameter name, type with its Typer option, default).
SharedOptions = tuple[tuple[str, Any, Any], ...]


def with_shared_options(shared: SharedOptions, run: Callable[[dict[str, Any], dict[str, Any]], Any]):
    """Declare ``shared`` once for several commands. The decorated function declares only its own
    options; the command Typer sees has both, and calls ``run(own_values, shared_values)``."""

    def decorate(own: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(own, eval_str=True)
        extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind)
                 for name, kind, default in shared]  # fmt: skip

        @functools.wraps(own)
        def command(**kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name, _, _ in shared}
            return run(kwargs, values)

        full = signature.replace(parameters=[*signature.parameters.values(), *extra])
        command.__signature__ = full  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in full.parameters.values()}
        return handles_errors(command)

    return decorate
