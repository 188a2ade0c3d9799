"""``ugpu serve``: the HTTP API, the job queue and the web page (FastAPI on uvicorn)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated, Optional

import typer

from ultrasinger_gpu_cli.cli.common import ModelsDirParam, err_console, handles_errors, open_store
from ultrasinger_gpu_cli.errors import InvalidSettingError


@handles_errors
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option("--host", help="Address to bind. Anything but loopback needs a token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on (0: a free one).", min=0, max=65535)] = 8765,
    token: Annotated[Optional[str], typer.Option("--token", help="Bearer token every API call must send (generated and printed once when binding beyond loopback).", show_default=False, envvar="UGPU_TOKEN")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Songs converted at once (default: one per GPU; on the CPU as many as a batch converts at once, see ugpu optimize's Batches row; on the CPU the cores are shared out among them).", min=1, max=64, show_default=False)] = None,
    max_upload_mb: Annotated[int, typer.Option("--max-upload-mb", help="Largest upload accepted (413 above).", min=1, max=100_000)] = 500,
    queue_limit: Annotated[int, typer.Option("--queue-limit", help="Songs waiting or running at most (429 above).", min=1, max=100_000)] = 100,
    music_root: Annotated[Optional[Path], typer.Option("--music-root", help="A folder whose songs jobs may name by path (never anything outside it).", show_default=False)] = None,
    data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="Uploads and results (default: 'serve' beside the database).", show_default=False)] = None,
    cors_origin: Annotated[Optional[list[str]], typer.Option("--cors-origin", help="Allow this web origin to call the API (CORS is off without it).", show_default=False)] = None,
    models_dir: ModelsDirParam = None,
    use_ray: Annotated[bool, typer.Option("--ray", help="Convert the jobs on a Ray cluster (RAY_ADDRESS, else a local one).")] = False,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="The Ray cluster for the jobs.", show_default=False)] = None,
    max_minutes: Annotated[Optional[float], typer.Option("--max-minutes", help="The longest song a job may be, in minutes (413 above) [default: UGPU_MAX_MINUTES, else 120].", min=0.01, max=1440, show_default=False)] = None,
    no_overlap: Annotated[bool, typer.Option("--no-overlap", help="Each worker finishes a job before it reads the next (by default it decodes the next queued job and writes the last one's files while the engines run).")] = False,
) -> None:
    """Serve the design's API, a job queue and a web page: drop songs, watch the GPU, download charts."""
    missing = [m for m in ("fastapi", "uvicorn", "multipart") if importlib.util.find_spec(m) is None]
    if missing:
        raise InvalidSettingError(f"ugpu serve needs {', '.join(missing)}, which is not installed",
                                  hint="pip install 'ultrasinger-gpu-cli[server]'")  # fmt: skip
    if (use_ray or ray_address) and importlib.util.find_spec("ray") is None:
        raise InvalidSettingError("--ray needs Ray, which is not installed", hint="pip install 'ultrasinger-gpu-cli[cluster]'")
    if music_root is not None and not music_root.is_dir():
        raise InvalidSettingError(f"--music-root {music_root}: no such folder")
    from ultrasinger_gpu_cli.weights.models import models_dir as resolve_models_dir
    from ultrasinger_gpu_cli.server.app import create_app
    from ultrasinger_gpu_cli.server.config import ServeConfig, needs_token, new_token

    from ultrasinger_gpu_cli.store.jobs import QueueOwner

    if token is not None and not token.strip():
        raise InvalidSettingError("--token is empty: an empty token would let anyone in",
                                  hint="give --token a secret, or leave it out to have one generated")  # fmt: skip
    _check_port(host, port)
    store = open_store(ctx)
    owner = QueueOwner.acquire(store.path)  # one server per queue: a second one stops here, saying why
    ctx.call_on_close(owner.release)
    generated = token is None and needs_token(host)
    if generated:
        token = new_token()
    config = ServeConfig(db_path=store.path, data_root=(data_dir or store.path.parent / "serve").resolve(), host=host,
                         port=port, token=token, workers=workers, max_upload_mb=max_upload_mb, queue_limit=queue_limit,
                         music_root=music_root.resolve() if music_root else None, cors_origin=list(cors_origin or []),
                         models_dir=resolve_models_dir(models_dir), ray=use_ray or ray_address is not None,
                         ray_address=ray_address, owner=owner, max_minutes=max_minutes, overlap=not no_overlap)  # fmt: skip
    store.close()
    import uvicorn

    console = err_console()
    server = uvicorn.Server(uvicorn.Config(create_app(config), host=host, port=port, log_level="warning",
                                           access_log=False, timeout_graceful_shutdown=5))  # fmt: skip
    shown_host = f"[{host}]" if ":" in host else host

    def announce() -> None:
        bound = server.servers[0].sockets[0].getsockname()[1] if server.servers else port
        url = f"http://{shown_host}:{bound}/"
        console.print(f"ugpu serve: {url}" + (f"#token={token}" if token else ""), highlight=False)
        if generated:
            console.print(f"token (shown once; send it as Authorization: Bearer): {token}", highlight=False)
        workers = config.workers_resolved  # (the server resolved them as it started)
        console.print(f"workers: {len(workers.plans)} ({workers.why})", style="dim", highlight=False)
        console.print(f"data: {config.data_root}; API docs: {url}docs; Ctrl-C stops", style="dim", highlight=False)

    original = server.startup

    async def startup(sockets=None) -> None:  # type: ignore[no-untyped-def]
        await original(sockets=sockets)
        announce()

    server.startup = startup  # type: ignore[method-assign]
    server.run()


def _check_port(host: str, port: int) -> None:
    """A clear error before anything starts when the address can't be bound."""
    import socket

    from ultrasinger_gpu_cli.errors import UgpuError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InvalidSettingError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise UgpuError(f"cannot listen on {host}:{port}: {exc.strerror}",
                            hint="another ugpu serve may be running there; choose another --port (0: any free one)") from None  # fmt: skip


#: This group's commands, in the order ``ugpu --help`` lists them.
COMMANDS = (serve,)
