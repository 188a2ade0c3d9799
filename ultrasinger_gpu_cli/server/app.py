"""``ugpu serve``: the design's HTTP API, the job queue and the web page, on FastAPI.

An edge, like the CLI: every route parses its request, calls a use case
(:mod:`ultrasinger_gpu_cli.usecases`) and returns the same documents ``--json`` prints
(:mod:`ultrasinger_gpu_cli.usecases.reports`). Errors of the core's hierarchy become status codes with
the message and its fix; no traceback ever reaches a client.
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
import secrets
import tempfile
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask

from ultrasinger_gpu_cli import __version__
from ultrasinger_gpu_cli.song.audio import AudioTooLongError
from ultrasinger_gpu_cli.errors import AudioError, InvalidSettingError, StoreError, UgpuError
from ultrasinger_gpu_cli.store.jobs import QueueOwner
from ultrasinger_gpu_cli.store.db import Store
from ultrasinger_gpu_cli.usecases.jobs import (
    FINISHED, JobNotFound, JobOptions, Jobs, JobWorker, PathRefused, QueueFull, ServerFolders, UploadTooLarge,
    WorkerConfig, job_view,
)  # fmt: skip

LOOPBACK = ("127.0.0.1", "::1", "localhost")
#: Every request body but an upload: JSON of a few fields.
JSON_LIMIT_BYTES = 64 * 1024
STATIC = "ultrasinger_gpu_cli.server"
_STATUS = ((AudioTooLongError, 413), (InvalidSettingError, 422), (JobNotFound, 404), (QueueFull, 429), (UploadTooLarge, 413), (AudioError, 415),
           (PathRefused, 403), (StoreError, 503))  # fmt: skip


@dataclass
class ServeConfig:
    """How the server runs; built by ``ugpu serve`` (or a test) and never changed after."""

    db_path: Path
    data_root: Path
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    workers: int | None = None  # None: one per GPU, else one
    max_upload_mb: int = 500
    queue_limit: int = 100
    music_root: Path | None = None
    cors_origin: list[str] = field(default_factory=list)
    models_dir: Path | None = None
    run_extra: dict[str, Any] = field(default_factory=dict)  # RunOptions for every job (tests: rehearsals)
    ray: bool = False  # jobs run on Ray actors
    ray_address: str | None = None
    max_minutes: float | None = None  # the longest song a job may be (None: UGPU_MAX_MINUTES, else 120)
    owner: QueueOwner | None = None  # the queue's lock, when the caller took it before the server starts

    def __post_init__(self) -> None:
        if self.token is not None and not self.token.strip():
            raise InvalidSettingError("the token is empty: an empty token would let anyone in",
                                      hint="give --token a secret (or leave it out to have one generated)")  # fmt: skip
        if self.token is None and needs_token(self.host):
            raise InvalidSettingError(f"serving on {self.host} (beyond loopback) needs a token", hint="--token SECRET")

    @property
    def folders(self) -> ServerFolders:
        return ServerFolders(self.data_root, self.music_root)


def needs_token(host: str) -> bool:
    return host not in LOOPBACK


class ConfigureRequest(BaseModel):
    """The design's ``POST /api/gpu/configure_component``."""

    component: Literal["whisper", "demucs", "crepe"]
    model: Optional[str] = None
    batch_size: Optional[int] = None
    device_override: Optional[Literal["cuda", "cpu"]] = None


class InitializeRequest(BaseModel):
    """The design's ``POST /api/gpu/initialize``."""

    force_detection: bool = False
    optimization_mode: Literal["conservative", "balanced", "aggressive"] = "balanced"
    vram_limit: Optional[float] = Field(default=None, gt=0, le=1024, allow_inf_nan=False)


class PathJobRequest(BaseModel):
    path: str
    mode: Optional[str] = None
    language: Optional[str] = None


def _store(config: ServeConfig) -> Store:
    return Store.open(config.db_path)


def _worker_plans(config: ServeConfig) -> list[tuple[str, Any]]:
    """One worker per GPU PyTorch can run (or ``--workers`` on the first one / the CPU): (name, plan(store, mode))."""
    from ultrasinger_gpu_cli.plan.detection import plan_for
    from ultrasinger_gpu_cli.usecases.plan import run_target

    with _store(config) as store:
        first = run_target(store, 0)
        on_gpus = bool(first.is_gpu and first.torch_can_run)
        count = 1
        if on_gpus and config.workers is None:  # one per card PyTorch runs
            from ultrasinger_gpu_cli.gpu.nvml import get_nvml

            count = max(1, get_nvml().device_count())
    selectors = list(range(count)) if config.workers is None else [0] * config.workers

    def planner(selector: int):
        def plan(store: Store, mode: str):
            return plan_for(store, run_target(store, selector), mode)

        return plan

    names = [f"gpu{s}" if on_gpus else "cpu" for s in selectors]
    return [(f"{n}-{i}" if len(selectors) > 1 else n, planner(s)) for i, (n, s) in enumerate(zip(names, selectors))]


def create_app(config: ServeConfig, *, start_workers: bool = True) -> FastAPI:
    folders = config.folders.make()
    stop = threading.Event()
    workers: list[JobWorker] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owner = config.owner or await run_in_threadpool(QueueOwner.acquire, config.db_path)
        app.state.owner = owner
        with _store(config) as store:  # this server owns the queue: what a dead one left running resumes here
            jobs = Jobs(store, folders)
            jobs.queue.requeue_running()
            jobs.sweep_inbox()
        ray, started = await run_in_threadpool(_start_ray, config) if config.ray else (None, False)
        if start_workers:
            plans = await run_in_threadpool(_worker_plans, config)
            if ray is not None:  # one server worker per actor: per cluster GPU, or --workers
                count = config.workers or max(1, int(ray.cluster_resources().get("GPU", 0)))
                plans = [(f"ray-{i}", plans[0][1]) for i in range(count)]
            for name, plan in plans:
                extra = {"max_minutes": config.max_minutes, **config.run_extra}
                worker = JobWorker(WorkerConfig(name, config.db_path, folders, plan, config.models_dir,
                                                extra=extra, ray=ray is not None), stop)  # fmt: skip
                worker.start()
                workers.append(worker)
        yield
        stop.set()
        for worker in workers:
            await run_in_threadpool(worker.join, 30)
        if started:  # a cluster the server started goes with it; one it joined stays
            ray.shutdown()
        if config.owner is None:
            owner.release()

    app = FastAPI(title="ugpu", version=__version__, lifespan=lifespan,
                  description="UltraStar karaoke from songs on your NVIDIA GPU: the design's GPU API and a job queue.")  # fmt: skip
    app.state.config = config
    app.state.workers = workers
    if config.cors_origin:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origin, allow_methods=["*"],
                           allow_headers=["Authorization", "Content-Type"])  # fmt: skip

    limit_bytes = config.max_upload_mb * 2**20
    app.add_middleware(Guard, config=config, upload_limit_bytes=limit_bytes + 2**20)

    @app.exception_handler(UgpuError)
    async def ugpu_error(request: Request, exc: UgpuError) -> JSONResponse:
        status = next((code for kind, code in _STATUS if isinstance(exc, kind)), 400)
        return JSONResponse({"detail": exc.message, "hint": exc.hint}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """What is wrong, by field, without echoing the client's values (NaN and Infinity are not JSON)."""
        problems = [f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg', 'invalid')}"
                    for e in exc.errors()]  # fmt: skip
        return JSONResponse({"detail": "; ".join(problems)[:2000] or "invalid request", "hint": "see /docs"},
                            status_code=422)  # fmt: skip

    def authorised(request: Request) -> None:
        if config.token is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else None
        if given is None and request.url.path.endswith(("/events", "/stream")):
            given = request.query_params.get("token")  # EventSource cannot send headers
        if not given or not secrets.compare_digest(given.encode(), config.token.encode()):
            raise HTTPException(401, "a valid token is needed: Authorization: Bearer TOKEN",
                                headers={"WWW-Authenticate": "Bearer"})  # fmt: skip

    api = Depends(authorised)

    def jobs_of(store: Store) -> Jobs:
        return Jobs(store, folders, queue_limit=config.queue_limit, max_upload_bytes=limit_bytes,
                    max_minutes=config.max_minutes)  # fmt: skip

    # -- the page --------------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(_asset("index.html"), headers={"Cache-Control": "no-store"})

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        types = {"app.js": "text/javascript", "style.css": "text/css"}
        if name not in types:
            raise HTTPException(404, "no such file")
        return Response(_asset(name), media_type=types[name])

    # -- the design's GPU API ----------------------------------------------------------------------------
    @app.post("/api/gpu/initialize", dependencies=[api])
    def initialize(body: InitializeRequest = InitializeRequest()) -> dict[str, Any]:
        from ultrasinger_gpu_cli.usecases.reports import initialize_response
        from ultrasinger_gpu_cli.usecases.plan import detect_machine

        with _store(config) as store:
            found = detect_machine(store, mode=body.optimization_mode, vram_limit_gb=body.vram_limit,
                                   force=body.force_detection)  # fmt: skip
            return initialize_response(found.detection, found.plan, force_detection=body.force_detection)

    @app.get("/api/gpu/monitor", dependencies=[api])
    def monitor() -> dict[str, Any]:
        return _monitor(config)

    @app.post("/api/gpu/configure_component", dependencies=[api])
    def configure(body: ConfigureRequest) -> dict[str, Any]:
        from ultrasinger_gpu_cli.plan.detection import plan_for, quick_target
        from ultrasinger_gpu_cli.usecases.reports import configure_component_response
        from ultrasinger_gpu_cli.usecases.plan import configure_component, validated_flags

        flags = {"model": body.model, "batch_size": body.batch_size, "device": body.device_override}
        given = validated_flags(body.component, flags, save=True, reset=False, audio=False)
        with _store(config) as store:
            plan_for(store, quick_target(store), flags={body.component: given})  # refused here: nothing stored
            done = configure_component(store, body.component, given, save=True)
            return configure_component_response(done.plan, body.component, override=done.override, action=done.action)

    @app.get("/api/gpu/optimize", dependencies=[api])
    def optimize(mode: Literal["conservative", "balanced", "aggressive"] = "balanced",
                 vram_limit: Optional[float] = None) -> dict[str, Any]:  # fmt: skip
        from ultrasinger_gpu_cli.usecases.reports import optimize_response
        from ultrasinger_gpu_cli.usecases.plan import optimize as plan_optimize

        with _store(config) as store:
            result = plan_optimize(store, mode=mode, vram_limit_gb=vram_limit)
            return optimize_response(result.plan, cuda_version=result.cuda_version, saved=None)

    @app.get("/api/gpu/fallback", dependencies=[api])
    def fallback(mode: Literal["conservative", "balanced", "aggressive"] = "balanced") -> dict[str, Any]:
        from ultrasinger_gpu_cli.usecases.plan import fallback_ladders

        with _store(config) as store:
            return fallback_ladders(store, mode=mode).to_dict()

    @app.get("/api/gpu/stats", dependencies=[api])
    def stats(component: Optional[str] = None, since: Optional[str] = None) -> dict[str, Any]:
        from ultrasinger_gpu_cli.usecases.reports import stats_response
        from ultrasinger_gpu_cli.usecases.history import component_stats

        with _store(config) as store:
            return stats_response(component_stats(store, component=component, since=since))

    @app.get("/api/models", dependencies=[api])
    def models() -> dict[str, Any]:
        from ultrasinger_gpu_cli.usecases.models import listing_response, model_statuses

        with _store(config) as store:
            statuses = model_statuses(store, models_dir=config.models_dir)
        return listing_response(statuses)

    # -- jobs -----------------------------------------------------------------------------------------
    @app.post("/api/jobs", status_code=201, dependencies=[api])
    async def submit(request: Request) -> dict[str, Any]:
        """A song to convert: a multipart upload (``file``, optional ``mode`` and ``language``), or
        JSON ``{"path": ...}`` naming a file under the server's ``--music-root``."""
        kind = request.headers.get("content-type", "")
        if kind.startswith("application/json"):
            try:
                body = PathJobRequest.model_validate(await request.json())
            except ValueError as exc:
                raise InvalidSettingError(f"a path job takes JSON {{\"path\": ...}} ({str(exc).splitlines()[0]})") from None
            options = JobOptions.parse(body.mode, body.language)
            return await run_in_threadpool(_with_jobs, config, lambda j: j.submit_path(body.path, options), jobs_of)
        if not kind.startswith("multipart/form-data"):
            raise InvalidSettingError("send the song as multipart/form-data (field 'file'), or JSON {\"path\": ...}")
        form = await request.form(max_files=1, max_fields=10)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise InvalidSettingError("the form has no file: send the song in the field 'file'")
        options = JobOptions.parse(_text(form.get("mode")), _text(form.get("language")))

        def chunks():
            while True:
                chunk = upload.file.read(2**20)
                if not chunk:
                    return
                yield chunk

        try:
            return await run_in_threadpool(_with_jobs, config, lambda j: j.submit_upload(upload.filename or "", chunks(),
                                                                                          options), jobs_of)  # fmt: skip
        finally:
            await upload.close()

    @app.get("/api/jobs", dependencies=[api])
    def list_jobs(limit: int = 50, offset: int = 0) -> dict[str, Any]:
        """One page of jobs, newest first: ``jobs``, ``total``, ``next_offset`` (None on the last page)."""
        with _store(config) as store:
            return jobs_of(store).page(limit, offset)

    @app.get("/api/jobs/{job_id}", dependencies=[api])
    def get_job(job_id: str) -> dict[str, Any]:
        with _store(config) as store:
            return job_view(jobs_of(store).get(job_id))

    @app.delete("/api/jobs/{job_id}", dependencies=[api])
    def cancel_job(job_id: str) -> dict[str, Any]:
        with _store(config) as store:
            return jobs_of(store).cancel(job_id)

    @app.get("/api/jobs/{job_id}/download", dependencies=[api])
    def download(job_id: str) -> FileResponse:
        handle = tempfile.NamedTemporaryFile(prefix="ugpu-", suffix=".zip", delete=False)
        handle.close()
        target = Path(handle.name)
        try:
            with _store(config) as store:
                path, name = jobs_of(store).result_zip(job_id, target)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return FileResponse(path, media_type="application/zip", filename=name,
                            background=BackgroundTask(target.unlink, missing_ok=True))  # fmt: skip

    @app.get("/api/jobs/{job_id}/view", dependencies=[api])
    def job_preview(job_id: str) -> dict[str, Any]:
        """A finished job's chart as the page shows it: the preview's pages with their layouts, and the audio."""
        with _store(config) as store:
            return jobs_of(store).view(job_id)

    @app.get("/api/jobs/{job_id}/files/{kind}", dependencies=[api])
    def job_file(job_id: str, kind: Annotated[str, PathParam(pattern=r"^(audio|preview(-[0-9]{1,3})?)$")]) -> FileResponse:
        """One file of a finished job: its audio or a page of its preview."""
        with _store(config) as store:
            path = jobs_of(store).result_file(job_id, kind)
        media = "image/png" if kind.startswith("preview") else mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media)

    @app.get("/api/jobs/{job_id}/events", dependencies=[api])
    async def job_events(job_id: str, request: Request) -> StreamingResponse:
        """Server-sent events: the job each time it changes, until it has finished."""
        await run_in_threadpool(_read_job, config, job_id, jobs_of)  # 404 before the stream starts

        async def stream() -> AsyncIterator[str]:
            last = None
            idle = 0.0
            while not await request.is_disconnected():
                view = await run_in_threadpool(_read_job, config, job_id, jobs_of)
                text = json.dumps(view)
                if text != last:
                    last, idle = text, 0.0
                    yield f"event: job\ndata: {text}\n\n"
                    if view["status"] in FINISHED:
                        return
                elif idle >= 15:
                    idle = 0.0
                    yield ": still running\n\n"
                await asyncio.sleep(0.4)
                idle += 0.4

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    @app.get("/api/stream", dependencies=[api])
    async def live(request: Request) -> StreamingResponse:
        """Server-sent events for the page: the GPUs, the queue and the plan, every second."""

        async def stream() -> AsyncIterator[str]:
            while not await request.is_disconnected():
                state = await run_in_threadpool(_live_state, config, jobs_of)
                yield f"event: state\ndata: {json.dumps(state)}\n\n"
                await asyncio.sleep(1.0)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    @app.get("/api/plan", dependencies=[api])
    def plan_view() -> dict[str, Any]:
        return _plans(config)

    return app


class BodyTooLarge(HTTPException):
    """A request body past its limit, found while it streams in (an HTTPException, so FastAPI's
    body parsing passes it on as it is)."""


class Guard:
    """The server's outer wall, before any route (a pure ASGI middleware):

    * **Host** (loopback binds): only 127.0.0.1, localhost and [::1] are answered, so a page
      whose DNS name is rebound to 127.0.0.1 gets 403, not the API.
    * **Origin**: a browser request from another web origin (one not given with ``--cors-origin``)
      gets 403, whatever its method or content type (forms post cross-site without a preflight).
    * **Body size**, counted as it streams (chunked bodies included): an upload over
      ``--max-upload-mb`` and any other body over 64 KB stop with 413 at the limit.
    * **A server error** is a 500 with one line on the server's stderr naming the crash log; no
      traceback is printed, none reaches the client."""

    def __init__(self, app: Any, config: ServeConfig, upload_limit_bytes: int) -> None:
        self.app = app
        self.config = config
        self.upload_limit = upload_limit_bytes
        self.loopback = not needs_token(config.host)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refused = self._refusal(scope, headers)
        if refused is not None:
            await _send_json(send, refused[0], {"detail": refused[1]})
            return
        upload = (scope["method"] == "POST" and scope["path"] == "/api/jobs"
                  and headers.get("content-type", "").startswith("multipart/"))  # fmt: skip
        limit = self.upload_limit if upload else JSON_LIMIT_BYTES
        declared = headers.get("content-length", "")
        too_large = ({"detail": f"the upload is larger than the server's limit of {self.config.max_upload_mb} MB",
                      "hint": "ugpu serve --max-upload-mb N"} if upload else
                     {"detail": f"the request body is larger than the server takes ({_size(limit)})",
                      "hint": "send the JSON the API documents at /docs"})  # fmt: skip
        if declared.isdigit() and int(declared) > limit:
            await _send_json(send, 413, too_large)
            return
        received = 0
        overflow = False

        async def counted() -> dict[str, Any]:
            nonlocal received, overflow
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    overflow = True
                    raise BodyTooLarge(413, too_large["detail"])
            return message

        started = False

        async def tracked(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if overflow:  # the rest of the body is never read: the connection closes after the 413
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except BodyTooLarge:
            if not started:
                await _send_json(send, 413, too_large)
        except Exception as exc:  # noqa: BLE001 - one line and a crash log, never a traceback
            import sys

            from ultrasinger_gpu_cli.crashlog import describe, write_crash_log

            log = write_crash_log(exc)
            print(f"ugpu serve: internal error on {scope['method']} {scope['path']}: {describe(exc)} (details: {log})",
                  file=sys.stderr, flush=True)  # fmt: skip
            if not started:
                await _send_json(send, 500, {"detail": "the server hit an unexpected error", "log": str(log)})

    def _refusal(self, scope: dict[str, Any], headers: dict[str, str]) -> tuple[int, str] | None:
        host = headers.get("host", "")
        name = _host_name(host)
        if self.loopback and name not in LOOPBACK:
            return 403, f"this server answers to 127.0.0.1, localhost and [::1] only, not {host[:100]!r}"
        origin = headers.get("origin")
        if origin is not None and origin in self.config.cors_origin:
            return None
        if origin is not None and origin != "null":
            from urllib.parse import urlsplit

            try:
                parts = urlsplit(origin)
                same = parts.netloc.lower() == host.lower() and parts.scheme in ("http", "https")
            except ValueError:
                same = False
            if not same:
                return 403, f"requests from the web origin {origin[:100]!r} are refused (ugpu serve --cors-origin allows one)"
        elif origin == "null" or headers.get("sec-fetch-site") == "cross-site":
            return 403, "cross-site requests are refused (ugpu serve --cors-origin allows an origin)"
        return None


def _host_name(host: str) -> str:
    """The name in a Host header, without its port; brackets of an IPv6 address removed."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _size(limit: int) -> str:
    return f"{limit / 2**20:.0f} MB" if limit >= 2**20 else f"{limit // 1024} KB"


async def _send_json(send: Any, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            (b"connection", b"close")]})  # fmt: skip
    await send({"type": "http.response.body", "body": data})


# -- helpers (run in the thread pool) ------------------------------------------------------------------
def _start_ray(config: ServeConfig) -> tuple[Any, bool]:
    """The Ray cluster the jobs run on (``--ray-address``, else ``RAY_ADDRESS``, else a local
    one), and whether the server started it."""
    from ultrasinger_gpu_cli.usecases.cluster import join_ray

    return join_ray(config.ray_address)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _with_jobs(config: ServeConfig, call: Any, jobs_of: Any) -> Any:
    with _store(config) as store:
        return call(jobs_of(store))


def _read_job(config: ServeConfig, job_id: str, jobs_of: Any) -> dict[str, Any]:
    with _store(config) as store:
        return job_view(jobs_of(store).get(job_id))


def _plans(config: ServeConfig) -> dict[str, Any]:
    """Each worker's plan, with every setting's reason (what the page shows)."""
    from ultrasinger_gpu_cli.usecases.reports import component_report

    out = []
    with _store(config) as store:
        for name, plan in _worker_plans(config):
            p = plan(store, "balanced")
            out.append({"worker": name, "target": p.target.to_dict(), "tier": p.tier.label, "mode": p.mode,
                        "vram_budget_mb": p.vram_budget_mb, "notes": list(p.notes),
                        "components": {c: component_report(cp) for c, cp in p.components.items()}})  # fmt: skip
    return {"workers": out}


def _monitor(config: ServeConfig) -> dict[str, Any]:
    """The design's monitor fields (of the first GPU, or the host), every GPU under ``gpus``, each
    with the plan's VRAM budget for its card."""
    from ultrasinger_gpu_cli.gpu.monitoring import Monitor

    with _store(config) as store:
        snapshot = Monitor(store=store).snapshot(processes=False)
    # The plans give each card's budget: only worth resolving where there is a card to show.
    budgets = {w["target"].get("gpu_index"): w["vram_budget_mb"] for w in _plans(config)["workers"]} if snapshot.gpus else {}
    records = [{**r, "vram_budget_mb": budgets.get(r.get("gpu_index"))} for r in snapshot.ndjson_records()]
    first = records[0]
    return {"vram_used": first["vram_used"], "vram_free": first["vram_free"], "gpu_utilization": first["gpu_utilization"],
            "temperature": first["temperature"], "processing_speed": snapshot.processing_speed,
            "gpu_detected": bool(snapshot.gpus), "note": first.get("note"), "gpus": records}  # fmt: skip


def _live_state(config: ServeConfig, jobs_of: Any) -> dict[str, Any]:
    with _store(config) as store:
        jobs = jobs_of(store).list()
    return {"monitor": _monitor(config), "jobs": jobs}


def _asset(name: str) -> bytes:
    return resources.files(STATIC).joinpath("static", name).read_bytes()


def new_token() -> str:
    return secrets.token_urlsafe(24)
