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
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Optional

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask

from ultrasinger_gpu_cli import __version__
from ultrasinger_gpu_cli.song.audio import AudioTooLongError
from ultrasinger_gpu_cli.errors import AudioError, InvalidSettingError, StoreError, UgpuError
from ultrasinger_gpu_cli.store.jobs import QueueOwner
from ultrasinger_gpu_cli.store.db import Store
from ultrasinger_gpu_cli.usecases.jobs import (
    FINISHED, JobNotFound, JobOptions, Jobs, JobWorker, PathRefused, QueueFull, UploadTooLarge,
    WorkerConfig, WorkerPool, job_view,
)  # fmt: skip
from ultrasinger_gpu_cli.server.config import ServeConfig, open_store
from ultrasinger_gpu_cli.server.gpu_api import gpu_routes, monitor_document
from ultrasinger_gpu_cli.server.guard import Guard

STATIC = "ultrasinger_gpu_cli.server"
_STATUS = ((AudioTooLongError, 413), (InvalidSettingError, 422), (JobNotFound, 404), (QueueFull, 429), (UploadTooLarge, 413), (AudioError, 415),
           (PathRefused, 403), (StoreError, 503))  # fmt: skip


class PathJobRequest(BaseModel):
    path: str
    mode: Optional[str] = None
    language: Optional[str] = None


def create_app(config: ServeConfig, *, start_workers: bool = True) -> FastAPI:
    folders = config.folders.make()
    stop = threading.Event()
    workers: list[JobWorker] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owner = config.owner or await run_in_threadpool(QueueOwner.acquire, config.db_path)
        app.state.owner = owner
        with open_store(config) as store:  # this server owns the queue: what a dead one left running resumes here
            jobs = Jobs(store, folders)
            jobs.queue.requeue_running()
            jobs.sweep_inbox()
        ray, started = await run_in_threadpool(_start_ray, config) if config.ray else (None, False)
        if start_workers:
            resolved = await run_in_threadpool(lambda: config.workers_resolved)
            plans = resolved.plans
            if ray is None:
                resolved.share_cores()
            else:  # one server worker per actor: per cluster GPU, or --workers
                count = config.workers or max(1, int(ray.cluster_resources().get("GPU", 0)))
                plans = [(f"ray-{i}", plans[0][1]) for i in range(count)]
            pool = WorkerPool()
            for name, plan in plans:
                extra = {"max_minutes": config.max_minutes, "overlap": config.overlap, **config.run_extra}
                worker = JobWorker(WorkerConfig(name, config.db_path, folders, plan, config.models_dir,
                                                extra=extra, ray=ray is not None, pool=pool), stop)  # fmt: skip
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

    app.include_router(gpu_routes(config), dependencies=[api])

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
        with open_store(config) as store:
            return jobs_of(store).page(limit, offset)

    @app.get("/api/jobs/{job_id}", dependencies=[api])
    def get_job(job_id: str) -> dict[str, Any]:
        with open_store(config) as store:
            return job_view(jobs_of(store).get(job_id))

    @app.delete("/api/jobs/{job_id}", dependencies=[api])
    def cancel_job(job_id: str) -> dict[str, Any]:
        with open_store(config) as store:
            return jobs_of(store).cancel(job_id)

    @app.get("/api/jobs/{job_id}/download", dependencies=[api])
    def download(job_id: str) -> FileResponse:
        handle = tempfile.NamedTemporaryFile(prefix="ugpu-", suffix=".zip", delete=False)
        handle.close()
        target = Path(handle.name)
        try:
            with open_store(config) as store:
                path, name = jobs_of(store).result_zip(job_id, target)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return FileResponse(path, media_type="application/zip", filename=name,
                            background=BackgroundTask(target.unlink, missing_ok=True))  # fmt: skip

    @app.get("/api/jobs/{job_id}/view", dependencies=[api])
    def job_preview(job_id: str) -> dict[str, Any]:
        """A finished job's chart as the page shows it: the preview's pages with their layouts, and the audio."""
        with open_store(config) as store:
            return jobs_of(store).view(job_id)

    @app.get("/api/jobs/{job_id}/files/{kind}", dependencies=[api])
    def job_file(job_id: str, kind: Annotated[str, PathParam(pattern=r"^(audio|preview(-[0-9]{1,3})?)$")]) -> FileResponse:
        """One file of a finished job: its audio or a page of its preview."""
        with open_store(config) as store:
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

    return app


# -- helpers (run in the thread pool) ------------------------------------------------------------------
def _start_ray(config: ServeConfig) -> tuple[Any, bool]:
    """The Ray cluster the jobs run on (``--ray-address``, else ``RAY_ADDRESS``, else a local
    one), and whether the server started it."""
    from ultrasinger_gpu_cli.usecases.cluster import join_ray

    return join_ray(config.ray_address)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _with_jobs(config: ServeConfig, call: Any, jobs_of: Any) -> Any:
    with open_store(config) as store:
        return call(jobs_of(store))


def _read_job(config: ServeConfig, job_id: str, jobs_of: Any) -> dict[str, Any]:
    with open_store(config) as store:
        return job_view(jobs_of(store).get(job_id))


def _live_state(config: ServeConfig, jobs_of: Any) -> dict[str, Any]:
    with open_store(config) as store:
        jobs = jobs_of(store).list()
    return {"monitor": monitor_document(config), "jobs": jobs}


def _asset(name: str) -> bytes:
    return resources.files(STATIC).joinpath("static", name).read_bytes()


