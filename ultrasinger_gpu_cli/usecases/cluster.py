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
from pathlib import Path
from typing import Any

from ultrasinger_gpu_cli.errors import InvalidSettingError, UgpuError
from ultrasinger_gpu_cli.run.events import Notice, OnEvent, SongStarted, StageProgress, ignore
from ultrasinger_gpu_cli.run.pipeline import Pipeline
from ultrasinger_gpu_cli.run.options import RunOptions
from ultrasinger_gpu_cli.run.recorder import Recorder
from ultrasinger_gpu_cli.run.stagecache import resume_cache_dir
from ultrasinger_gpu_cli.store.db import Store
from ultrasinger_gpu_cli.usecases.batch import BatchResult, SongFailure, SongOutcome, convert_one, prepare, sweep
from ultrasinger_gpu_cli.usecases.scale import pipeline_peak_mb

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
    """One pipeline on one Ray worker (made a Ray actor by :func:`run_on_ray`)."""

    def __init__(self, name: str, mode: str, vram_limit_gb: float | None, flags: dict | None, options: RunOptions,
                 events: Any, overrides: dict[str, Any] | None = None) -> None:  # fmt: skip
        from ultrasinger_gpu_cli.store.schema import default_db_path

        self.name = name
        self.events = events
        self.overrides = overrides or {}  # the driver's stored overrides, by target
        plan = self._plan(mode, vram_limit_gb, flags)
        self.work = Path(tempfile.mkdtemp(prefix="ugpu-ray-"))
        # The driver's resume cache where this node sees it (a local cluster, shared storage); else this node's own.
        shared = options.cache_dir is not None and Path(options.cache_dir).parent.is_dir()
        cache = options.cache_dir if shared else resume_cache_dir(None, default_db_path(), self.work)
        self.pipeline = Pipeline(plan, replace(options, out_dir=self.work / "out", cache_dir=cache), None,
                                 on_event=self._emit)  # fmt: skip
        self.pipeline.start()

    def _plan(self, mode: str, vram_limit_gb: float | None, flags: dict | None) -> Any:
        """The plan for the card Ray gave this actor (by UUID), or the CPU's."""
        import ray

        from ultrasinger_gpu_cli.plan.resolver import CPU_TARGET, resolve
        from ultrasinger_gpu_cli.usecases.plan import run_target

        if not ray.get_gpu_ids():
            return resolve(CPU_TARGET, mode, overrides=self.overrides.get("cpu", {}), flags=flags)
        from ultrasinger_gpu_cli.gpu.devices import torch_cuda_devices

        visible = torch_cuda_devices()
        if not visible or not visible[0].uuid:
            return resolve(CPU_TARGET, mode, overrides=self.overrides.get("cpu", {}), flags=flags)
        uuid = visible[0].uuid if visible[0].uuid.startswith("GPU-") else f"GPU-{visible[0].uuid}"
        target = run_target(None, uuid)
        return resolve(target, mode, vram_limit_gb, overrides=self.overrides.get(target.settings_key or "", {}),
                       flags=flags)  # fmt: skip

    def _emit(self, event: Any) -> None:
        try:
            if isinstance(event, StageProgress):
                self.events.put_nowait((self.name, event))  # a full queue drops progress, never a song
            else:
                self.events.put((self.name, event), timeout=60)  # what the driver records waits for room
        except Exception:  # noqa: BLE001 - the queue actor is gone with the cluster
            pass

    def describe(self) -> dict[str, Any]:
        plan = self.pipeline.plan
        return {"name": self.name, "pid": os.getpid(), "target": plan.target.name, "uses_gpu": plan.uses_gpu}

    def convert(self, name: str, data: bytes | None, shared_path: str | None,
                language: str | None = None) -> tuple[SongOutcome, dict[str, bytes]]:  # fmt: skip
        """One song: from its bytes (written under its own name) or a path every node sees; the
        outcome and the song folder's files (relative path -> bytes)."""
        if language is not None:
            self.pipeline.options = replace(self.pipeline.options, language=language)
        inbox = self.work / "in"
        inbox.mkdir(parents=True, exist_ok=True)
        if shared_path is not None:
            source = Path(shared_path)
        else:
            source = inbox / name
            source.write_bytes(data or b"")
        shutil.rmtree(self.work / "out", ignore_errors=True)
        try:
            outcome = convert_one(self.pipeline, source, self._emit)
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
    partial = out_dir / f".{name}.partial-{os.getpid()}"
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


def run_on_ray(paths: list[Path], options: RunOptions, store: Store | None, *, mode: str = "balanced",
               vram_limit_gb: float | None = None, flags: dict | None = None, address: str | None = None,
               shared_input: bool = False, on_event: OnEvent = ignore) -> BatchResult:  # fmt: skip
    """Convert ``paths`` on a Ray cluster; the result covers every song, written under ``-o``."""
    ray = import_ray()
    from ray.util.queue import Queue

    from ultrasinger_gpu_cli.plan.detection import plan_for
    from ultrasinger_gpu_cli.usecases.plan import run_target

    prepare(options)
    sweep(options, store)
    plan = plan_for(store, run_target(store, 0), mode, vram_limit_gb, flags)
    Pipeline(plan, options, store).check_models()  # weights missing here are missing on a local cluster too
    ray, started = join_ray(address)
    try:
        return _run(ray, Queue, paths, for_actors(options, store), plan, mode, vram_limit_gb, flags, shared_input,
                    Recorder(store, on_event), store.all_overrides() if store is not None else {})  # fmt: skip
    finally:
        if started:
            ray.shutdown()


def for_actors(options: RunOptions, store: Store | None) -> RunOptions:
    """The options an actor is given: the resume cache named (beside the driver's database)."""
    return replace(options, cache_dir=resume_cache_dir(options.cache_dir, store.path if store is not None else None,
                                                       options.out_dir))  # fmt: skip


def _run(ray: Any, queue_type: Any, paths: list[Path], options: RunOptions, plan: Any, mode: str,
         vram_limit_gb: float | None, flags: dict | None, shared_input: bool, on_event: OnEvent,
         overrides: dict[str, Any]) -> BatchResult:  # fmt: skip
    resources = ray.cluster_resources()
    gpus, cpus = float(resources.get("GPU", 0)), float(resources.get("CPU", 1))
    peak = pipeline_peak_mb(plan)
    total = plan.target.vram_total_mb
    fraction = 0.0
    if gpus > 0 and plan.uses_gpu and peak and total:
        fraction = min(1.0, math.ceil(peak / total * 20) / 20)  # in steps of 0.05 of a card
    capacity = int(gpus / fraction + 1e-9) if fraction else max(1, int(cpus))
    count = max(1, min(len(paths), capacity))
    on_event(Notice(None, f"Ray: {count} actor(s), each with {fraction:g} of a GPU" if fraction
                    else f"Ray: {count} actor(s) on CPUs ({plan.target.name} plans no GPU for this driver)"))  # fmt: skip
    events = queue_type(maxsize=10_000)
    out_dir = Path(options.out_dir)

    def relay(event: Any) -> None:  # an actor's folder is shown as where the driver writes it
        if isinstance(event, SongStarted) and event.folder is not None:
            event = replace(event, folder=out_dir / event.folder.name)
        on_event(event)

    actor_class = ray.remote(num_gpus=fraction, num_cpus=0 if fraction else 1, max_restarts=RETRIES,
                             max_task_retries=RETRIES)(SongActor)  # fmt: skip
    actors = [actor_class.options(name=f"ugpu-song-{i}", namespace=NAMESPACE).remote(
        f"ray-{i}", mode, vram_limit_gb, flags, options, events, overrides) for i in range(count)]  # fmt: skip
    result = BatchResult(f"ray-{int(time.time())}", mode)
    pending = list(paths)
    running: dict[Any, tuple[Any, Path]] = {}
    idle = list(actors)
    while pending or running:
        while idle and pending:
            actor, path = idle.pop(0), pending.pop(0)
            data = None if shared_input else path.read_bytes()
            running[actor.convert.remote(path.name, data, str(path.resolve()) if shared_input else None)] = (actor, path)
        ready, _ = ray.wait(list(running), num_returns=1, timeout=0.25)
        _drain(events, relay)
        for future in ready:
            actor, path = running.pop(future)
            idle.append(actor)
            try:
                outcome, files = ray.get(future)
                _deliver(outcome, files, path, out_dir).add_to(result)
            except (ray.exceptions.RayError, UgpuError, OSError) as exc:
                message = f"the Ray worker failed on it after {RETRIES} retries ({str(exc).splitlines()[0][:200]})"
                result.failures.append(SongFailure(path, message))
    _drain(events, relay)
    for actor in actors:
        ray.kill(actor)
    return result


class RayStage:
    """One Ray actor for a long-lived caller (a ``ugpu serve --ray`` worker): songs in, song
    folders out, the actor's events relayed while it works."""

    def __init__(self, name: str, mode: str, options: RunOptions, store: Store | None = None) -> None:
        ray = import_ray()
        from ray.util.queue import Queue

        self.ray, self.name, self.mode, self.options = ray, name, mode, for_actors(options, store)
        self.overrides = store.all_overrides() if store is not None else {}
        self.events = Queue(maxsize=10_000)
        self.actor: Any = None

    def _actor(self) -> Any:
        if self.actor is None:
            gpus = float(self.ray.cluster_resources().get("GPU", 0))
            actor_class = self.ray.remote(num_gpus=1 if gpus >= 1 else 0, num_cpus=0 if gpus >= 1 else 1,
                                          max_restarts=RETRIES, max_task_retries=RETRIES)(SongActor)  # fmt: skip
            self.actor = actor_class.options(namespace=NAMESPACE).remote(self.name, self.mode, None, None, self.options,
                                                                          self.events, self.overrides)  # fmt: skip
        return self.actor

    def convert(self, source: Path, out_dir: Path, on_event: OnEvent, language: str | None = None) -> SongOutcome:
        """``source`` converted on the actor, its folder written under ``out_dir``. An exception
        from ``on_event`` (a cancelled job) stops the actor: a new one takes the next song."""
        actor = self._actor()
        future = actor.convert.remote(source.name, source.read_bytes(), None, language)

        def relay(event: Any) -> None:
            if isinstance(event, SongStarted) and event.folder is not None:
                event = replace(event, folder=out_dir / event.folder.name)
            on_event(event)

        try:
            while not self.ray.wait([future], timeout=0.25)[0]:
                _drain(self.events, relay)
            _drain(self.events, relay)
        except BaseException:
            self.close()
            raise
        outcome, files = self.ray.get(future)
        out_dir.mkdir(parents=True, exist_ok=True)
        return _deliver(outcome, files, source, out_dir)

    def close(self) -> None:
        if self.actor is not None:
            self.ray.kill(self.actor, no_restart=True)
            self.actor = None


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


__all__ = ["RayStage", "SongActor", "import_ray", "run_on_ray"]
