"""Many machines (``ugpu run --ray``): songs become calls on Ray actors, one pipeline each.

* The cluster is ``--ray-address``, else ``RAY_ADDRESS``, else a local one started for the run
  (``ray start --head`` on one machine, ``ray start --address HEAD:6379`` on the others).
* Each actor asks Ray for ``num_gpus`` = the pipeline's VRAM estimate / the card's VRAM
  (fractional, so a large card takes several), then plans for the card Ray gave it, found by
  UUID; an actor without a GPU plans for the CPU. Models load once per actor.
* A song travels as bytes (or as a path, with ``--shared-input``); the actor converts it into
  a folder of its own and sends the files back; the driver writes them under ``-o`` (a partial
  folder renamed into place).
* An actor that dies is restarted by Ray and its call retried (``max_restarts``,
  ``max_task_retries``); the content-hash stage cache, on storage the nodes share (always, on a
  local cluster), makes the retried song resume instead of restart.
* An actor never opens a database: it plans with the stored overrides the driver gives it, and
  its events come back through a Ray queue (progress may be dropped when the queue is full, a
  stage's start and end, a fallback and the run's start and end never are), where the driver's
  recorder writes its ``runs`` row, stages and fallbacks (``ugpu monitor`` shows them) and the
  display shows them. Its resume cache is the driver's where its node sees that folder (a local
  cluster, shared storage), else its node's own.

Ray is the optional extra ``[cluster]``; without it ``--ray`` says how to install it.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from dataclasses import replace
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ultrasinger_gpu_cli.errors import InvalidSettingError, UgpuError
from ultrasinger_gpu_cli.files import partial_path
from ultrasinger_gpu_cli.run.events import Notice, OnEvent, SongStarted, StageProgress, ignore
from ultrasinger_gpu_cli.run.options import RunOptions, SongInputs, read_inputs
from ultrasinger_gpu_cli.run.recorder import Recorder
from ultrasinger_gpu_cli.run.stagecache import resume_cache_dir
from ultrasinger_gpu_cli.store.db import Store
from ultrasinger_gpu_cli.usecases.batch import BatchResult, SongFailure, SongOutcome, prepare, sweep
from ultrasinger_gpu_cli.usecases.fleet import Fleet, More, Song, convert, convert_here, for_workers, pipeline_for

NAMESPACE = "ugpu"
RETRIES = 3


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InvalidSettingError("--ray needs Ray, which is not installed",
                                  hint="pip install 'ultrasinger-gpu-cli[cluster]'") from None  # fmt: skip
    return ray


class SongActor:
    """One pipeline on one Ray worker (made a Ray actor by :class:`RayFleet`)."""

    def __init__(self, name: str, mode: str, vram_limit_gb: float | None, flags: dict | None, options: RunOptions,
                 events: Any, overrides: dict[str, Any] | None = None, inputs: SongInputs | None = None) -> None:  # fmt: skip
        from ultrasinger_gpu_cli.store.schema import default_db_path

        self.name = name
        self.events = events
        self.overrides = overrides or {}  # the driver's stored overrides, by target
        plan = self._plan(mode, vram_limit_gb, flags)
        self.work = Path(tempfile.mkdtemp(prefix="ugpu-ray-"))
        # The driver's resume cache where this node sees it (a local cluster, shared storage); else this node's own.
        shared = options.cache_dir is not None and Path(options.cache_dir).parent.is_dir()
        cache = options.cache_dir if shared else resume_cache_dir(None, default_db_path(), self.work)
        self.pipeline = pipeline_for(plan, replace(options, out_dir=self.work / "out", cache_dir=cache), None,
                                     self._emit, inputs)  # fmt: skip
        self.pipeline.start()

    def _plan(self, mode: str, vram_limit_gb: float | None, flags: dict | None) -> Any:
        """The plan for the card Ray gave this actor (by UUID), or the CPU's."""
        import ray

        from ultrasinger_gpu_cli.gpu.devices import torch_cuda_devices
        from ultrasinger_gpu_cli.usecases.plan import worker_plan

        visible = torch_cuda_devices() if ray.get_gpu_ids() else []
        uuid = visible[0].uuid if visible and visible[0].uuid else None
        gpu = None if uuid is None else uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
        return worker_plan(None, gpu, mode, vram_limit_gb, flags, overrides=self.overrides)

    def _emit(self, event: Any) -> None:
        try:
            if isinstance(event, StageProgress):
                self.events.put_nowait((self.name, event))  # a full queue drops progress, never a song
            else:
                self.events.put((self.name, event), timeout=60)  # what the driver records waits for room
        except Exception:  # noqa: BLE001 - the queue actor is gone with the cluster
            pass

    def finish(self, status: str) -> None:
        self.pipeline.finish(status)

    def describe(self) -> dict[str, Any]:
        plan = self.pipeline.plan
        return {"name": self.name, "pid": os.getpid(), "target": plan.target.name, "uses_gpu": plan.uses_gpu}

    def convert(self, name: str, data: bytes | None, shared_path: str | None,
                language: str | None = None) -> tuple[SongOutcome, dict[str, bytes]]:  # fmt: skip
        """One song: from its bytes (written under its own name) or a path every node sees; the
        outcome and the song folder's files (relative path -> bytes)."""
        inbox = self.work / "in"
        inbox.mkdir(parents=True, exist_ok=True)
        if shared_path is not None:
            source = Path(shared_path)
        else:
            source = inbox / name
            source.write_bytes(data or b"")
        shutil.rmtree(self.work / "out", ignore_errors=True)
        try:
            outcome = convert_here(self.pipeline, Song(source, language=language), self._emit)
            files: dict[str, bytes] = {}
            if outcome.report is not None:
                folder = outcome.report.folder
                files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
            return outcome, files
        finally:
            if shared_path is None:
                source.unlink(missing_ok=True)


def _deliver(outcome: SongOutcome, files: dict[str, bytes], source: Path, out_dir: Path) -> SongOutcome:
    """Write a song folder that came back from an actor under ``-o``: into a partial folder,
    renamed into place (a song folder of the same name is replaced only if it is this song's)."""
    from ultrasinger_gpu_cli.song.ultrastar import safe_name

    if outcome.report is None:  # named by the driver's path, not the actor's copy
        failure, done = outcome.failure, outcome.already_done
        return SongOutcome(source, failure=failure and replace(failure, song=source),
                           already_done=done and replace(done, song=source))  # fmt: skip
    report = outcome.report
    name = safe_name(report.folder.name)
    target = (out_dir / name).resolve()
    if target.parent != out_dir.resolve():
        raise UgpuError(f"{source}: the song name {name!r} would leave the output folder")
    partial = partial_path(out_dir / name)
    shutil.rmtree(partial, ignore_errors=True)
    for relative, data in files.items():
        path = (partial / relative).resolve()
        if not path.is_relative_to(partial.resolve()):
            continue  # never outside the song's folder
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    if target.exists():
        shutil.rmtree(target)
    partial.rename(target)
    moved = {kind: target / Path(p).relative_to(report.folder) for kind, p in report.files.items()}
    return SongOutcome(source, report=replace(report, source=source, folder=target, files=moved))


def join_ray(address: str | None) -> tuple[Any, bool]:
    """The Ray cluster songs run on (the one place ugpu calls ``ray.init``): ``address``, else
    ``RAY_ADDRESS``, else a local one; or the one this process already joined. Returns Ray and
    whether this call started it (the caller shuts down what it started)."""
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        where = address or os.environ.get("RAY_ADDRESS") or None
        try:
            ray.init(address=where, namespace=NAMESPACE, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - ConnectionError, RuntimeError, ...
            raise UgpuError(f"cannot reach the Ray cluster at {where}: {exc}",
                            hint="ray start --head on the head node, or leave the address out for a local cluster") from exc  # fmt: skip
    return ray, started


class RayFleet(Fleet):
    """Songs as calls on Ray actors (``--ray``, ``ugpu serve --ray``): each actor asks Ray for its
    share of a GPU (the plan's VRAM estimate over the card's), one pipeline each; songs travel as
    bytes (or paths, ``shared_input``), their folders come back and are written here."""

    def __init__(self, options: RunOptions, store: Store | None, on_event: OnEvent = ignore, *,
                 mode: str = "balanced", vram_limit_gb: float | None = None, flags: dict | None = None,
                 address: str | None = None, shared_input: bool = False, actors: int | None = None,
                 names: str | None = "ugpu-song", inputs: SongInputs | None = None) -> None:  # fmt: skip
        self.options, self.store = for_workers(options, store), store
        self.overrides = store.all_overrides() if store is not None else {}
        self.record = Recorder(store, on_event)  # the actors' runs, stages and fallbacks: written here only
        self.inputs = inputs if inputs is not None else read_inputs(options)
        self.mode, self.vram_limit_gb, self.flags, self.address = mode, vram_limit_gb, flags, address
        self.shared_input, self.count, self.names = shared_input, actors, names
        self.run_id = f"ray-{int(time.time())}"
        self.pending: list[Song] = []
        self.running: dict[Any, tuple[Any, Song]] = {}
        self.actors: list[Any] = []
        self.free: list[Any] = []
        self.ray: Any = None
        self.started = False

    def start(self) -> None:
        from ultrasinger_gpu_cli.usecases.plan import worker_plan

        import_ray()
        self.plan = worker_plan(self.store, 0, self.mode, self.vram_limit_gb, self.flags)
        # weights missing here are missing on a local cluster too
        pipeline_for(self.plan, self.options, self.store, inputs=self.inputs).check_models()
        self.ray, self.started = join_ray(self.address)
        from ray.util.queue import Queue

        self.events = Queue(maxsize=10_000)

    def submit(self, song: Song) -> None:
        self.pending.append(song)

    def _spawn(self) -> None:
        """The actors, once the songs are known: as many as the cluster holds (or ``actors``), no more than songs."""
        resources = self.ray.cluster_resources()
        gpus, cpus = float(resources.get("GPU", 0)), float(resources.get("CPU", 1))
        peak, total = self.plan.pipeline_peak_mb, self.plan.target.vram_total_mb
        fraction = 0.0
        if gpus > 0 and self.plan.uses_gpu and peak and total:
            fraction = min(1.0, math.ceil(peak / total * 20) / 20)  # in steps of 0.05 of a card
        capacity = int(gpus / fraction + 1e-9) if fraction else max(1, int(cpus))
        count = self.count or max(1, min(len(self.pending), capacity))
        self.record(Notice(None, f"Ray: {count} actor(s), each with {fraction:g} of a GPU" if fraction
                           else f"Ray: {count} actor(s) on CPUs ({self.plan.target.name} plans no GPU for this driver)"))  # fmt: skip
        actor_class = self.ray.remote(num_gpus=fraction, num_cpus=0 if fraction else 1, max_restarts=RETRIES,
                                      max_task_retries=RETRIES)(SongActor)  # fmt: skip
        for i in range(count):
            named = {"name": f"{self.names}-{i}"} if self.names else {}
            self.actors.append(actor_class.options(namespace=NAMESPACE, **named).remote(
                f"ray-{i}", self.mode, self.vram_limit_gb, self.flags, self.options, self.events, self.overrides,
                self.inputs))  # fmt: skip
        self.free = list(self.actors)

    def _relay(self, song: Song) -> OnEvent:
        out_dir = Path(song.out_dir or self.options.out_dir)

        def relay(event: Any) -> None:  # an actor's folder is shown as where the driver writes it
            if isinstance(event, SongStarted) and event.folder is not None:
                event = replace(event, folder=out_dir / event.folder.name)
            self.record(event)

        return relay

    def outcomes(self, more: More | None = None) -> Iterator[SongOutcome]:  # songs one per worker: never more
        ray = self.ray
        if not self.actors:
            self._spawn()
        try:
            while self.pending or self.running:
                while self.free and self.pending:
                    actor, song = self.free.pop(0), self.pending.pop(0)
                    data = None if self.shared_input else song.path.read_bytes()
                    shared = str(song.path.resolve()) if self.shared_input else None
                    self.running[actor.convert.remote(song.path.name, data, shared, song.language)] = (actor, song)
                ready, _ = ray.wait(list(self.running), num_returns=1, timeout=0.25)
                relay = self._relay(next(iter(self.running.values()))[1]) if self.running else self.record
                _drain(self.events, relay)
                for future in ready:
                    actor, song = self.running.pop(future)
                    self.free.append(actor)
                    try:
                        outcome, files = ray.get(future)
                        out_dir = Path(song.out_dir or self.options.out_dir)
                        out_dir.mkdir(parents=True, exist_ok=True)
                        yield _deliver(outcome, files, song.path, out_dir)
                    except (ray.exceptions.RayError, UgpuError, OSError) as exc:
                        message = f"the Ray worker failed on it after {RETRIES} retries ({str(exc).splitlines()[0][:200]})"
                        yield SongOutcome(song.path, failure=SongFailure(song.path, message))
            _drain(self.events, self.record)
        except BaseException:  # a cancelled job, Ctrl-C: the busy actors stop; new ones take the next songs
            for actor, _song in self.running.values():
                ray.kill(actor, no_restart=True)
                self.actors.remove(actor)
            self.running.clear()
            self.free = list(self.actors)
            raise

    def close(self, status: str, report: dict[str, Any] | None = None) -> None:
        if self.ray is None:
            return
        try:  # each actor's run ends (its engines unloaded), and says so before it goes
            self.ray.get([actor.finish.remote(status) for actor in self.actors], timeout=60)
        except Exception:  # noqa: BLE001 - an actor already gone: Ray has its state
            pass
        _drain(self.events, self.record)
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)
        self.actors, self.free = [], []
        if self.started:  # a cluster this fleet started goes with it; one it joined stays
            self.ray.shutdown()


def run_on_ray(paths: list[Path], options: RunOptions, store: Store | None, *, mode: str = "balanced",
               vram_limit_gb: float | None = None, flags: dict | None = None, address: str | None = None,
               shared_input: bool = False, on_event: OnEvent = ignore) -> BatchResult:  # fmt: skip
    """``ugpu run --ray``: ``paths`` on a Ray cluster; the result covers every song, written under ``-o``."""
    import_ray()
    inputs = prepare(options)
    sweep(options, store)
    return convert(paths, RayFleet(options, store, on_event, mode=mode, vram_limit_gb=vram_limit_gb, flags=flags,
                                   address=address, shared_input=shared_input, inputs=inputs))  # fmt: skip


def _drain(events: Any, on_event: OnEvent) -> None:
    while True:
        try:
            items = events.get_nowait_batch(min(events.qsize(), 500)) if events.qsize() else []
        except Exception:  # noqa: BLE001 - the queue actor is gone with the cluster
            return
        if not items:
            return
        for _name, event in items:
            on_event(event)


__all__ = ["RayFleet", "SongActor", "import_ray", "run_on_ray"]
