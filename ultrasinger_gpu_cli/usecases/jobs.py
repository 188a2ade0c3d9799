"""The server's jobs (``ugpu serve``): a song submitted (uploaded, or a path under the music
folder the server was started with), queued in the store, converted by a worker that keeps its
models loaded, downloaded as a zip of its UltraStar folder.

Core code: no web framework here. The HTTP server only parses requests, calls these and turns
the errors into status codes.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ultrasinger_gpu_cli.errors import InvalidSettingError, SongCancelled, UgpuError
from ultrasinger_gpu_cli.store.jobs import JobQueue, JobRow
from ultrasinger_gpu_cli.store.db import Store

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
FINISHED = ("done", "failed", "cancelled")
MAX_PAGE = 500


class JobNotFound(UgpuError):
    """No job with this id (or not one this server may show)."""


class QueueFull(UgpuError):
    """The queue holds as many songs as it may."""


class UploadTooLarge(UgpuError):
    """An upload over the server's size limit."""


class PathRefused(UgpuError):
    """A path outside the music folder, or no music folder at all."""


class JobCancelled(SongCancelled):
    """Raised inside a running job's progress callback when the job was cancelled: that song
    stops, the worker goes on."""


@dataclass(frozen=True)
class ServerFolders:
    """Where the server keeps uploads (``inbox/<job>/``) and results (``out/<job>/``), and the one
    folder of songs it may read by path (``music_root``; None: uploads only)."""

    root: Path
    music_root: Path | None = None

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def out(self) -> Path:
        return self.root / "out"

    def make(self) -> ServerFolders:
        for folder in (self.inbox, self.out):
            folder.mkdir(parents=True, exist_ok=True)
        return self


@dataclass(frozen=True)
class JobOptions:
    """What a job may choose: the optimisation mode and the lyrics' language."""

    mode: str = "balanced"
    language: str | None = None

    @classmethod
    def parse(cls, mode: str | None = None, language: str | None = None) -> JobOptions:
        from ultrasinger_gpu_cli.plan.tiers import MODE_TABLE

        mode = mode or "balanced"
        if mode not in MODE_TABLE:
            raise InvalidSettingError(f"invalid mode {mode!r}; valid choices: {', '.join(MODE_TABLE)}")
        from ultrasinger_gpu_cli.components.whisper import check_language

        return cls(mode, check_language(language) if language else None)

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "language": self.language}


def job_view(job: JobRow) -> dict[str, Any]:
    """A job as the API returns it."""
    return {
        "id": job.job_id, "status": job.status, "name": job.name, "options": job.options,
        "created_at": job.created_at, "started_at": job.started_at, "finished_at": job.finished_at,
        "stage": job.stage, "progress": job.progress, "speed_x": job.speed_x, "device": job.device,
        "stages": job.stages, "fallbacks": job.fallbacks, "error": job.error, "attempts": job.attempts,
        "download": f"/api/jobs/{job.job_id}/download" if job.status == "done" else None,
    }  # fmt: skip


def _safe_file_name(name: str) -> str:
    """An uploaded file's name, as a name only: no folders, no separators, no control characters."""
    from ultrasinger_gpu_cli.song.ultrastar import safe_name

    base = re.split(r"[\\/]", name or "")[-1]
    base = "".join(c for c in base if c.isprintable()).strip(" .")
    stem, dot, suffix = base.rpartition(".")
    if not dot:
        stem, suffix = base, ""
    suffix = re.sub(r"[^A-Za-z0-9]", "", suffix)[:8]
    stem = safe_name(stem) or "song"
    return f"{stem}.{suffix}" if suffix else stem


class Jobs:
    """The job use cases over one store."""

    def __init__(self, store: Store, folders: ServerFolders, *, queue_limit: int = 100,
                 max_upload_bytes: int = 500 * 2**20, max_minutes: float | None = None) -> None:  # fmt: skip
        from ultrasinger_gpu_cli.song.audio import max_seconds

        self.max_seconds = max_seconds(max_minutes)
        self.queue = JobQueue(store)
        self.folders = folders
        self.queue_limit = queue_limit
        self.max_upload_bytes = max_upload_bytes

    # -- submitting ---------------------------------------------------------------------------------
    def _room(self) -> None:
        """A quick refusal before an upload is read; :meth:`_add` decides, atomically."""
        if self.queue.active_count() >= self.queue_limit:
            raise self._full()

    def _full(self) -> QueueFull:
        return QueueFull(f"the queue is full ({self.queue_limit} songs waiting or running)",
                         hint="try again when some have finished")  # fmt: skip

    def _add(self, job_id: str, **fields: Any) -> dict[str, Any]:
        job = self.queue.add(job_id, limit=self.queue_limit, **fields)
        if job is None:
            raise self._full()
        return job_view(job)

    def submit_upload(self, filename: str, chunks: Iterable[bytes], options: JobOptions) -> dict[str, Any]:
        """An uploaded song: stored under the server's inbox with a name of its own, size-limited,
        checked by ffmpeg, then queued. Nothing is kept of a refused upload."""
        from ultrasinger_gpu_cli.song.audio import probe

        self._room()
        job_id = uuid.uuid4().hex
        folder = self.folders.inbox / job_id
        folder.mkdir(parents=True)
        target = folder / _safe_file_name(filename)
        try:
            size = 0
            with open(target, "wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_upload_bytes:
                        raise UploadTooLarge(f"the upload is larger than the server's limit of "
                                             f"{self.max_upload_bytes // 2**20} MB", hint="ugpu serve --max-upload-mb N")  # fmt: skip
                    out.write(chunk)
            probe(target, self.max_seconds)
            return self._add(job_id, name=target.name, input_path=target, uploaded=True, options=options.to_dict())
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def submit_path(self, relative: str, options: JobOptions) -> dict[str, Any]:
        """A song under the music folder, by its path relative to it (never anything outside)."""
        from ultrasinger_gpu_cli.song.audio import probe

        root = self.folders.music_root
        if root is None:
            raise PathRefused("this server takes uploads only (it was started without --music-root)",
                              hint="ugpu serve --music-root FOLDER")  # fmt: skip
        root = root.resolve()
        candidate = (root / relative).resolve()
        if not candidate.is_relative_to(root) or "\0" in relative:
            raise PathRefused(f"{relative!r} is outside the music folder")
        if not candidate.is_file():
            raise JobNotFound(f"{relative!r}: no such file in the music folder")
        probe(candidate, self.max_seconds)
        return self._add(uuid.uuid4().hex, name=candidate.name, input_path=candidate, uploaded=False,
                         options=options.to_dict())  # fmt: skip

    # -- reading and cancelling -----------------------------------------------------------------------
    def get(self, job_id: str) -> JobRow:
        job = self.queue.get(job_id) if JOB_ID.match(job_id or "") else None
        if job is None:
            raise JobNotFound(f"no job {job_id!r}")
        return job

    def list(self, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        return [job_view(j) for j in self.queue.list(limit, offset)]

    def page(self, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        """One page of jobs, newest first, with the total and where the next page starts."""
        if not 1 <= limit <= MAX_PAGE or not 0 <= offset <= 2**62:
            raise InvalidSettingError(f"limit must be 1 to {MAX_PAGE} and offset 0 or more")
        total = self.queue.count()
        jobs = self.list(limit, offset)
        following = offset + len(jobs)
        return {"jobs": jobs, "total": total, "limit": limit, "offset": offset,
                "next_offset": following if following < total else None}  # fmt: skip

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Queued or running -> cancelled. A queued upload's file goes at once (a running job's
        worker removes it when it stops)."""
        before = self.get(job_id)
        job = self.queue.cancel(job_id)
        assert job is not None
        if before.status == "queued" and job.status == "cancelled" and job.uploaded:
            self.remove_upload(job)
        return job_view(job)

    def sweep_inbox(self) -> list[str]:
        """At the server's start (no upload in flight): inbox folders whose job finished, or that
        no job owns (an upload cut off by a crash), are removed."""
        removed = []
        for folder in sorted(self.folders.inbox.iterdir()):
            job = self.queue.get(folder.name) if JOB_ID.match(folder.name) else None
            if job is None or job.status in FINISHED:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder.name)
        return removed

    def remove_upload(self, job: JobRow) -> None:
        """An uploaded song's inbox folder (only ever under the inbox)."""
        folder = Path(job.input_path).parent.resolve()
        inbox = self.folders.inbox.resolve()
        if folder.parent == inbox:
            shutil.rmtree(folder, ignore_errors=True)

    def result_folder(self, job_id: str) -> Path:
        """A finished job's UltraStar folder, only ever under the server's output folder."""
        job = self.get(job_id)
        if job.status != "done" or not job.folder:
            raise JobNotFound(f"job {job_id} has no result (it is {job.status})")
        out = self.folders.out.resolve()
        folder = Path(job.folder).resolve()
        if not folder.is_relative_to(out) or not folder.is_dir():
            raise JobNotFound(f"job {job_id}'s result is no longer there")
        return folder

    def result_file(self, job_id: str, kind: str) -> Path:
        """One file of a finished job's folder, by the name its report gives it (``audio``,
        ``preview``, ``preview-2``...): a plain file inside the folder, never a link out of it."""
        folder = self.result_folder(job_id)
        files = _report_files(folder)
        path = files.get(kind)
        if path is None or path.is_symlink() or not path.is_file() or path.resolve().parent != folder:
            raise JobNotFound(f"job {job_id} has no {kind} file")
        return path

    def view(self, job_id: str) -> dict[str, Any]:
        """What the page's job view shows: the preview's pages (each with the layout a cursor
        needs, :func:`..preview.read_layout`) and the song's audio."""
        from ultrasinger_gpu_cli.song.preview import read_layout

        folder = self.result_folder(job_id)
        files = _report_files(folder)
        pages = []
        for kind in sorted((k for k in files if k == "preview" or k.startswith("preview-")),
                           key=lambda k: int(k.split("-")[1]) if "-" in k else 1):  # fmt: skip
            layout = read_layout(self.result_file(job_id, kind))
            if layout is not None:
                pages.append({"url": f"/api/jobs/{job_id}/files/{kind}", **layout})
        audio = f"/api/jobs/{job_id}/files/audio" if "audio" in files else None
        return {"id": job_id, "pages": pages, "audio": audio}

    def result_zip(self, job_id: str, target: Path) -> tuple[Path, str]:
        """The job's UltraStar folder as a zip at ``target``, and the zip's download name; only
        from the server's output folder."""
        folder = self.result_folder(job_id)
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(folder.rglob("*")):
                if path.is_file() and not path.is_symlink() and path.resolve().is_relative_to(folder):
                    archive.write(path, f"{folder.name}/{path.relative_to(folder).as_posix()}")
        return target, f"{folder.name}.zip"


def _report_files(folder: Path) -> dict[str, Path]:
    """The files a song folder's report lists, by kind, taken as names inside the folder."""
    from ultrasinger_gpu_cli.run.songfolders import listed_files

    reports = sorted(folder.glob("*.report.json"))
    listed = listed_files(reports[0]) if reports else {}
    return {kind: folder / path.name for kind, path in listed.items()}


# -- workers -----------------------------------------------------------------------------------------
class WorkerPool:
    """Which of a server's workers are waiting for a job. A worker takes the next job ahead of
    time (to open it while its engines run the current one) only when no other worker waits:
    a free worker starts a job at once, a busy one only after its current song's engines."""

    def __init__(self) -> None:
        self._waiting: set[str] = set()
        self._lock = threading.Lock()

    def waiting(self, name: str, waiting: bool) -> None:
        with self._lock:
            if waiting:
                self._waiting.add(name)
            else:
                self._waiting.discard(name)

    def others_waiting(self, name: str) -> bool:
        with self._lock:
            return bool(self._waiting - {name})


@dataclass
class WorkerConfig:
    """What a worker needs to convert songs: the store's path, the folders, where the weights
    are, and the plan of its device (given the worker's store and the job's mode)."""

    name: str
    db_path: Path
    folders: ServerFolders
    plan: Callable[[Store, str], Any]
    models_dir: Path | None = None
    poll_s: float = 0.5
    progress_every_s: float = 0.5
    extra: dict[str, Any] = field(default_factory=dict)  # RunOptions fields for every job (tests: rehearsals)
    ray: bool = False  # convert on a Ray actor (``ugpu serve --ray``) instead of in this process
    pool: WorkerPool | None = None  # the server's workers (None: this one alone)


@dataclass
class _Claimed:
    """A job this worker claimed and has not ended yet, with what its engines reported."""

    job: JobRow
    stages: list[dict[str, Any]] = field(default_factory=list)
    fallbacks: list[dict[str, Any]] = field(default_factory=list)
    ended: bool = False


class JobWorker(threading.Thread):
    """Converts queued songs one after another, each mode's engines loaded once and kept. As
    ``ugpu run`` does in a batch (``RunOptions.overlap``), the next queued job of the same mode
    is opened (decoded, scanned) and the last one's files written on the pipeline's host thread
    while the engines run the current one; a job is done as soon as its folder is written."""

    def __init__(self, config: WorkerConfig, stop: threading.Event) -> None:
        super().__init__(name=f"ugpu-{config.name}", daemon=True)
        self.config = config
        self.stop = stop
        self._fleets: dict[str, Any] = {}
        self._claimed: dict[str, _Claimed] = {}  # by job id, in the order claimed (the fleet's outcomes' order)
        # The job each engine thread works on now (this thread's, and the pipeline's ahead worker's
        # while it separates the next job beside this one): a thread's stage events are its job's.
        self._running: dict[int, _Claimed] = {}
        self._queues: dict[int, JobQueue] = {}  # other engine threads' own connections (:meth:`_queue_here`)
        self._last_write = 0.0

    def run(self) -> None:
        # Two connections: the fleets' run records (written from the engines' thread and the host
        # thread, one event at a time) and this thread's own for the queue (claims, progress).
        self.store = Store.open(self.config.db_path)
        self.queue = JobQueue(Store.open(self.config.db_path))
        pool = self.config.pool
        try:
            while not self.stop.is_set():
                job = self.queue.claim(self.config.name)
                if pool is not None:
                    pool.waiting(self.config.name, job is None)
                if job is None:
                    self.stop.wait(self.config.poll_s)
                    continue
                self.convert(job)
        finally:
            if pool is not None:
                pool.waiting(self.config.name, False)
            for fleet in self._fleets.values():
                fleet.close("stopped")
            self.store.close()
            self.queue.store.close()

    def _options(self) -> Any:
        """Every job's run options: weights fetched on first use unless ugpu is offline, as ``ugpu run``."""
        from ultrasinger_gpu_cli.weights.downloads import offline
        from ultrasinger_gpu_cli.run.options import RunOptions

        extra = {"fetch_missing": not offline(), **self.config.extra}
        return RunOptions(out_dir=self.config.folders.out, models_dir=self.config.models_dir, **extra)

    def _fleet(self, mode: str) -> Any:
        """This worker's fleet for ``mode``, started on first use and kept (its engines, or its
        Ray actor, stay loaded from job to job): one pipeline here, or one Ray actor."""
        if mode not in self._fleets:
            from ultrasinger_gpu_cli.usecases.fleet import LocalFleet

            if self.config.ray:
                from ultrasinger_gpu_cli.usecases.cluster import RayFleet

                fleet = RayFleet(self._options(), self.store, self._on_event, mode=mode, actors=1, names=None)
            else:
                fleet = LocalFleet(self.config.plan(self.store, mode), self._options(), self.store, self._on_event,
                                   kind="serve")  # fmt: skip
            fleet.start()  # weights fetched on first use, or the job fails with the fix
            self._fleets[mode] = fleet
        return self._fleets[mode]

    def _out(self, job: JobRow) -> Path:
        return self.config.folders.out / job.job_id

    def _song(self, job: JobRow, fleet: Any) -> Any:
        """The song ``fleet`` is given for ``job``, into the job's own output folder."""
        from ultrasinger_gpu_cli.usecases.fleet import Song

        self.queue.update(job.job_id, device="ray" if self.config.ray else fleet.plan.target.name, stage="starting",
                          progress=0.0)  # fmt: skip
        return Song(Path(job.input_path), out_dir=self._out(job), language=job.options.get("language"))

    def _ahead(self, fleet: Any) -> Any:
        """The next queued job, taken while ``fleet`` works on this one (its mode's, and only
        when no other worker waits to take it); None: the fleet finishes what it has."""
        pool = self.config.pool
        if self.stop.is_set() or (pool is not None and pool.others_waiting(self.config.name)):
            return None
        job = self.queue.claim(self.config.name, mode=fleet.mode)
        if job is None:
            return None
        self._claimed[job.job_id] = _Claimed(job)
        return self._song(job, fleet)

    def convert(self, job: JobRow) -> None:
        """``job``, and the jobs taken ahead while it runs, through this worker's fleet for its
        mode, under the one per-song failure policy: each done, failed or cancelled, never lost."""
        from ultrasinger_gpu_cli.crashlog import describe, write_crash_log
        from ultrasinger_gpu_cli.errors import SongCancelled

        self._claimed[job.job_id] = self._running[threading.get_ident()] = _Claimed(job)
        try:
            fleet = self._fleet(job.mode)
            fleet.submit(self._song(job, fleet))
            with closing(fleet.outcomes(lambda: self._ahead(fleet))) as outcomes:  # its workers stopped on the way out
                for outcome in outcomes:
                    self._settle(outcome)
        except SongCancelled:  # a fleet that relays its events (Ray): the cancel stopped its job
            self._abandon("cancelled")
        except UgpuError as exc:
            self._abandon(exc.message + (f" ({exc.hint})" if exc.hint else ""))
        except Exception as exc:  # noqa: BLE001 - a song that fails never stops the worker
            log = write_crash_log(exc)
            self._abandon(f"{describe(exc)} (details: {log})")
        finally:
            self._running.clear()
            self._claimed.clear()
            for queue in self._queues.values():  # the ahead worker is gone with the fleet's batch
                queue.store.close()
            self._queues.clear()
            for each in self._fleets.values():  # `ugpu monitor` and the page: nothing runs on this worker now
                each.idle()

    def _settle(self, outcome: Any) -> None:
        """The fleet's outcome of the oldest job claimed (its outcomes come in the order given):
        done (unless its folder's event ended it already), failed, or cancelled."""
        claimed = self._claimed.pop(next(iter(self._claimed)))
        if claimed.ended:
            return
        if outcome.cancelled:
            self._end(claimed, None)
        elif outcome.report is not None:
            self._end(claimed, outcome.report.folder)
        elif outcome.already_done is not None:  # converted before a crash could mark it done
            self._end(claimed, next(p for p in self._out(claimed.job).iterdir() if p.is_dir()))
        else:
            failure = outcome.failure
            self._end(claimed, None, error=failure.error if failure is not None else "the song gave no result")

    def _abandon(self, error: str) -> None:
        """The fleet stopped (weights gone, a cancel relayed by Ray, a bug): every job claimed and
        not ended fails with ``error``, or, cancelled, leaves nothing."""
        for claimed in list(self._claimed.values()):
            if not claimed.ended:
                self._end(claimed, None, error=error)

    def _end(self, claimed: _Claimed, folder: Path | None, *, error: str | None = None) -> None:
        """A job's end in the queue: done in ``folder``, else failed with ``error``, else (or when
        it was cancelled meanwhile) its output removed. On a short-lived connection of its own:
        the host thread ends jobs too (:meth:`_on_event`)."""
        job = claimed.job
        with Store.open(self.config.db_path) as store:
            queue = JobQueue(store)
            if folder is not None:
                ended = queue.finish(job.job_id, "done", folder=str(folder), stage=None, progress=1.0,
                                     stages_json=_json(claimed.stages), fallbacks_json=_json(claimed.fallbacks))  # fmt: skip
            elif error is not None:
                ended = queue.finish(job.job_id, "failed", error=error, fallbacks_json=_json(claimed.fallbacks))
            else:
                ended = False
            if not ended or folder is None:  # cancelled (at any point), or failed: no output
                shutil.rmtree(self._out(job), ignore_errors=True)
            current = queue.get(job.job_id)
            if job.uploaded and current is not None and current.status in FINISHED:
                Jobs(store, self.config.folders).remove_upload(current)
        claimed.ended = True

    def _on_event(self, event: Any) -> None:
        from ultrasinger_gpu_cli.failures import FallbackEvent
        from ultrasinger_gpu_cli.run import events as ev

        if isinstance(event, ev.SongFinished):  # its folder is written (the host thread, overlapped)
            claimed = self._claimed_for(event.report.folder)
            if claimed is not None and not claimed.ended:
                self._end(claimed, event.report.folder)
            return
        thread = threading.get_ident()
        if isinstance(event, (ev.SongStarted, ev.SongAhead)) and event.folder is not None:  # an engine thread's next job
            found = self._claimed_for(event.folder)
            if found is not None:
                self._running[thread] = found
            return
        claimed = self._running.get(thread)  # the host thread's events (notices, files) are no job's progress
        if claimed is None:
            return
        job = claimed.job
        if isinstance(event, ev.StageStarted):
            self._write(job, force=True, stage=event.stage, progress=0.0, speed_x=None)
        elif isinstance(event, ev.StageProgress):
            self._write(job, stage=event.stage, progress=round(event.fraction, 4), speed_x=event.speed_x)
        elif isinstance(event, ev.StageFinished):
            claimed.stages.append(event.run.to_dict())
            self._write(job, force=True, stages_json=_json(claimed.stages), device=event.run.cuda_device or event.run.device)
        elif isinstance(event, FallbackEvent):
            claimed.fallbacks.append(event.to_dict())
            self._write(job, force=True, fallbacks_json=_json(claimed.fallbacks))

    def _claimed_for(self, folder: Path) -> _Claimed | None:
        """The claimed job whose output folder holds ``folder`` (a song's folder in this process)."""
        claimed = self._claimed.get(Path(folder).parent.name)
        if claimed is None or Path(folder).parent.resolve() != self._out(claimed.job).resolve():
            return None
        return claimed

    def _write(self, job: JobRow, *, force: bool = False, **values: Any) -> None:
        """Progress into the store, at most every ``progress_every_s``; a cancelled job stops here."""
        now = time.monotonic()
        if not force and now - self._last_write < self.config.progress_every_s:
            return
        self._last_write = now
        queue = self._queue_here()
        current = queue.get(job.job_id)
        if current is None or current.status == "cancelled":
            raise JobCancelled(job.job_id)
        queue.update(job.job_id, **values)

    def _queue_here(self) -> JobQueue:
        """The queue on this thread's own connection: the worker's, or one opened for another
        engine thread (the pipeline's ahead worker, separating the next job) and kept for the
        batch. Two threads' write transactions on one connection would nest."""
        if threading.current_thread() is self:
            return self.queue
        ident = threading.get_ident()
        if ident not in self._queues:
            self._queues[ident] = JobQueue(Store.open(self.config.db_path))
        return self._queues[ident]


def _json(data: object) -> str:
    import json

    return json.dumps(data)
