"""Many GPUs on one machine (``ugpu run --gpus``): one worker process per chosen card (several
on a card whose VRAM holds more than one pipeline), each bound to its card by UUID and planned
for it, all taking songs from one queue the parent keeps.

* A worker loads its models once and converts song after song; the parent hands out the next
  song when one finishes, so fast cards take more songs.
* A worker that dies mid-song (a lost GPU, a killed process) loses nothing: its song goes back
  to the front of the queue for another worker, or for a CPU worker started for the purpose
  when none is left, and the loss is recorded as a fallback event. The stage cache makes the
  retried song resume.
* Each worker's pipeline writes its song folders atomically under ``-o``; it never opens the
  database: its events come home through its pipe, where the parent's recorder writes each
  worker's ``runs`` row (so ``ugpu monitor`` shows every worker), its stages and fallbacks, and
  the parent merges them into one progress display and one :class:`BatchResult`.

Core code: no CLI here.
"""

from __future__ import annotations

import multiprocessing
import os
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ultrasinger_gpu_cli.errors import InvalidSettingError, UgpuError
from ultrasinger_gpu_cli.run.events import Notice, OnEvent, ignore
from ultrasinger_gpu_cli.failures import FallbackEvent
from ultrasinger_gpu_cli.gpu.facts import GpuInfo
from ultrasinger_gpu_cli.run.options import RunOptions, SongInputs, read_inputs
from ultrasinger_gpu_cli.run.recorder import Recorder
from ultrasinger_gpu_cli.plan.resolver import CPU_TARGET, Plan, resolve
from ultrasinger_gpu_cli.store.db import Store
from ultrasinger_gpu_cli.usecases.batch import BatchResult, SongFailure, SongOutcome, prepare, sweep
from ultrasinger_gpu_cli.usecases.fleet import Fleet, More, Song, convert, convert_here, convert_songs, for_workers, pipeline_for

MAX_PER_GPU = 8
MAX_TRIES = 3  # a song whose worker died this many times fails (instead of killing every worker in turn)


@dataclass(frozen=True)
class Slot:
    """One worker: its name and the plan for its card (or the CPU)."""

    name: str
    plan: Plan
    threads: int | None = None  # CPU threads for its engines (None: the libraries' default)


@dataclass(frozen=True)
class Slots:
    slots: list[Slot]
    notes: list[str] = field(default_factory=list)  # packing and why, for people


def choose_gpus(text: str, gpus: list[GpuInfo]) -> list[GpuInfo]:
    """``all``, or indices and UUIDs separated by commas (``0,2``, ``GPU-3f2...``)."""
    usable = [g for g in gpus if not g.lost]
    if text.strip().lower() == "all":
        return usable
    chosen: list[GpuInfo] = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        match = [g for g in usable if str(g.index) == item or (g.uuid or "").lower() == item.lower()]
        if not match:
            valid = ", ".join([str(g.index) for g in usable] + [g.uuid for g in usable if g.uuid]) or "none (no usable GPU)"
            raise InvalidSettingError(f"invalid GPU {item!r} in --gpus; valid choices: all, {valid}")
        if match[0] not in chosen:
            chosen.append(match[0])
    if not chosen:
        raise InvalidSettingError("--gpus names no GPU; give all, or indices / UUIDs separated by commas")
    return chosen


def plan_slots(store: Store | None, gpus_text: str, per_gpu: str = "auto", *, mode: str = "balanced",
               vram_limit_gb: float | None = None, flags: dict | None = None) -> Slots:  # fmt: skip
    """The workers ``--gpus`` and ``--per-gpu`` ask for, each with the plan for its own card.

    ``per_gpu`` is ``auto`` (as many pipelines as the card's VRAM budget holds at the plan's
    estimate, each then planned for its share of the card) or a number. On a machine with no
    usable GPU, ``--gpus all`` is the CPU (``--per-gpu N`` gives N CPU workers)."""
    from ultrasinger_gpu_cli.gpu.nvml import get_nvml
    from ultrasinger_gpu_cli.usecases.plan import worker_plan

    if per_gpu != "auto" and not (per_gpu.isdigit() and 1 <= int(per_gpu) <= MAX_PER_GPU):
        raise InvalidSettingError(f"invalid --per-gpu {per_gpu!r}; give auto or a whole number from 1 to {MAX_PER_GPU}")
    gpus = get_nvml().gpus()
    notes: list[str] = []
    if not [g for g in gpus if not g.lost] and gpus_text.strip().lower() == "all":
        count = 1 if per_gpu == "auto" else int(per_gpu)
        cores = int(os.environ["OMP_NUM_THREADS"]) if os.environ.get("OMP_NUM_THREADS", "").isdigit() else os.cpu_count()
        threads = max(1, (cores or 1) // count)  # the cores shared out, never oversubscribed
        plan = worker_plan(store, 0, mode, vram_limit_gb, flags)
        notes.append(f"no usable GPU: {count} CPU worker(s), {threads} thread(s) each")
        names = ["CPU"] if count == 1 else [f"CPU #{i + 1}" for i in range(count)]
        return Slots([Slot(name, plan, threads) for name in names], notes)
    slots: list[Slot] = []
    for gpu in choose_gpus(gpus_text, gpus):
        selector = gpu.uuid or str(gpu.index)
        plan = worker_plan(store, selector, mode, vram_limit_gb, flags)
        target = plan.target
        peak, budget = plan.pipeline_peak_mb, plan.vram_budget_mb
        count = int(per_gpu) if per_gpu != "auto" else 1
        if per_gpu == "auto" and plan.uses_gpu and peak and budget:
            count = max(1, min(MAX_PER_GPU, budget // peak))
        if count > 1 and plan.uses_gpu:
            share = (vram_limit_gb or target.vram_total_gb) / count
            plan = worker_plan(store, selector, mode, share, flags)  # each worker capped to its share of the card
            notes.append(f"GPU {gpu.index} ({gpu.name}): {count} workers, each planned for {share:.1f} GB of it "
                         f"(one pipeline needs about {peak} MB of the {budget} MB budget)")  # fmt: skip
        elif not plan.uses_gpu:
            notes.append(f"GPU {gpu.index} ({gpu.name}): its worker runs on the CPU ({plan.target.name})")
        base = f"GPU {gpu.index}"
        slots += [Slot(base if count == 1 else f"{base} #{i + 1}", plan) for i in range(count)]
    return Slots(slots, notes)


# -- the worker process ---------------------------------------------------------------------------------
def _stop_once() -> None:
    """A worker stops on the first SIGINT (Ctrl-C reaches the whole process group) or SIGTERM (the
    parent stopping, when only it was told): as Ctrl-C, its song's partial files removed and its
    run marked interrupted; later signals (Ctrl-C and the parent's both) are ignored, so the
    stopping is never cut short."""
    import signal

    def stopping(signum: int, frame: object) -> None:
        """Already stopping. (Not SIG_IGN: a signal pending by then would reach Python as
        "OSError: Signal 15 ignored due to race condition".)"""

    def stop(signum: int, frame: object) -> None:
        signal.signal(signal.SIGINT, stopping)
        signal.signal(signal.SIGTERM, stopping)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


def _worker(slot: Slot, options: RunOptions, inputs: SongInputs, conn: Any) -> None:
    """Runs in its own process: one pipeline, songs from its pipe until ``None``. Each worker has
    a pipe of its own (never a queue shared with the others: a worker killed while writing to a
    shared queue would leave its lock held and block every other worker)."""
    import threading

    from ultrasinger_gpu_cli.gpu.devices import use_cpu_threads

    _stop_once()
    if slot.threads:
        use_cpu_threads(slot.threads)
    lock = threading.Lock()  # events may come from the engines' threads

    def send(kind: str, payload: Any) -> None:
        with lock:
            conn.send((kind, payload))

    pipeline = None
    try:
        pipeline = pipeline_for(slot.plan, options, None, lambda e: send("event", e), inputs)
        pipeline.start()
        send("ready", os.getpid())
        while (song := conn.recv()) is not None:
            send("outcome", convert_here(pipeline, song, lambda e: send("event", e)))
        pipeline.finish("done")
    except UgpuError as exc:  # weights missing or damaged: the same for every song
        send("fatal", exc)
    except (EOFError, BrokenPipeError):  # the parent is gone: so is the run
        pass
    except KeyboardInterrupt:  # Ctrl-C reaches every process of the group: the parent says it, once
        if pipeline is not None:
            try:
                pipeline.finish("interrupted")
            except Exception:  # noqa: BLE001 - going anyway; the parent marks the run
                pass


@dataclass
class _Worker:
    slot: Slot
    process: Any
    conn: Any
    song: Song | None = None
    ready: bool = False
    gone: bool = False


class ProcessFleet(Fleet):
    """``--gpus``: a worker process per slot, songs handed out from one queue here as workers
    come free; the workers' events recorded and shown here."""

    def __init__(self, slots: Slots, options: RunOptions, store: Store | None, on_event: OnEvent = ignore, *,
                 cpu_plan: Plan | None = None, inputs: SongInputs | None = None) -> None:  # fmt: skip
        self.slots, self.store, self.on_event, self.cpu_plan = slots, store, on_event, cpu_plan
        self.options = for_workers(options, store)
        self.inputs = inputs if inputs is not None else read_inputs(options)
        self.record = Recorder(store, on_event)  # the workers' runs, stages and fallbacks: written here only
        self.run_id, self.mode = uuid.uuid4().hex, slots.slots[0].plan.mode
        self.context = multiprocessing.get_context("spawn")  # never fork a process that may hold CUDA or threads
        self.workers: list[_Worker] = []
        self.pending: deque[Song] = deque()
        self.tries: dict[Path, int] = {}
        self.lost: list[SongOutcome] = []

    def start(self) -> None:
        for slot in {id(s.plan): s for s in self.slots.slots}.values():  # weights checked (or fetched) once, before any worker
            pipeline_for(slot.plan, self.options, self.store, inputs=self.inputs).check_models()
        for note in self.slots.notes:
            self.on_event(Notice(None, note))
        for slot in self.slots.slots:
            self._start(slot)

    def _start(self, slot: Slot) -> None:
        mine, theirs = self.context.Pipe(duplex=True)
        process = self.context.Process(target=_worker, args=(slot, self.options, self.inputs, theirs),
                                       name=f"ugpu {slot.name}", daemon=True)  # fmt: skip
        process.start()
        theirs.close()  # the parent keeps its end only: the worker's death reads as end-of-file
        self.workers.append(_Worker(slot, process, mine))

    def submit(self, song: Song) -> None:
        self.pending.append(song)

    def outcomes(self, more: More | None = None) -> Iterator[SongOutcome]:  # songs one per worker: never more
        from multiprocessing.connection import wait

        while self.pending or self.lost or any(w.song is not None for w in self.workers if not w.gone):
            while self.lost:
                yield self.lost.pop(0)
            alive = [w for w in self.workers if not w.gone]
            for worker in alive:
                if worker.ready and worker.song is None and self.pending:
                    worker.song = self.pending.popleft()
                    worker.conn.send(worker.song)
            if self.pending and not alive:
                plan = self.cpu_plan or resolve(CPU_TARGET, self.mode)
                self.on_event(Notice(None, "no worker is left: a CPU worker takes the remaining songs"))
                self._start(Slot(f"CPU (spare {len(self.workers)})", plan))
                continue
            for conn in wait([w.conn for w in alive], timeout=0.5):
                worker = next(w for w in alive if w.conn is conn)
                try:
                    kind, payload = conn.recv()
                except (EOFError, OSError):  # the process ended: killed, crashed, its GPU lost
                    worker.process.join(timeout=10)
                    self._lose(worker)
                    continue
                if kind == "event":
                    self.record(payload)
                elif kind == "ready":
                    worker.ready = True
                elif kind == "outcome":
                    worker.song = None
                    yield payload
                elif kind == "fatal":
                    raise payload

    def _lose(self, worker: _Worker) -> None:
        """A worker process ended on its own: its song goes back to the front of the queue (or
        fails after :data:`MAX_TRIES`), and the loss is recorded as a fallback event."""
        worker.gone = True
        song, worker.song = worker.song, None
        if song is None:
            return
        code = worker.process.exitcode
        others = [w.slot.name for w in self.workers if not w.gone]
        plan = worker.slot.plan
        self.record(FallbackEvent("worker", worker.slot.name, others[0] if others else "a CPU worker",
                                  f"the worker process ended (exit code {code}) during the song: the GPU was lost or the "
                                  "process was killed; the song is converted again, resuming from the stage cache",
                                  str(song.path), "cuda" if plan.uses_gpu else "cpu", plan.target.gpu, self.run_id))  # fmt: skip
        self.tries[song.path] = self.tries.get(song.path, 0) + 1
        if self.tries[song.path] >= MAX_TRIES:
            failure = SongFailure(song.path, f"its worker process ended {self.tries[song.path]} times during the song")
            self.lost.append(SongOutcome(song.path, failure=failure))
        else:
            self.pending.appendleft(song)

    def close(self, status: str, report: dict[str, Any] | None = None) -> None:
        """The workers stop: after their songs (``None`` down each pipe), or, when the run was
        interrupted, at once (SIGTERM: a parent stopped by ``kill`` alone must not leave its
        workers converting)."""
        for worker in self.workers:
            if worker.gone:
                continue
            if status == "interrupted" and worker.process.is_alive():
                worker.process.terminate()
                continue
            try:
                worker.conn.send(None)
            except OSError:
                pass
        for worker in self.workers:
            self._last_words(worker)
            worker.process.join(timeout=60)
            if worker.process.exitcode is None:
                worker.process.kill()
            worker.conn.close()

    def _last_words(self, worker: _Worker, timeout_s: float = 60.0) -> None:
        """What a stopping worker still says (its run's end) is recorded, until its pipe closes."""
        import time

        deadline = time.monotonic() + timeout_s
        while not worker.gone and time.monotonic() < deadline:
            try:
                if not worker.conn.poll(max(0.0, deadline - time.monotonic())):
                    return
                kind, payload = worker.conn.recv()
            except (EOFError, OSError):
                return
            if kind == "event":
                self.record(payload)


def run_parallel(paths: list[Path], slots: Slots, options: RunOptions, store: Store | None,
                 on_event: OnEvent = ignore, *, cpu_plan: Plan | None = None) -> BatchResult:  # fmt: skip
    """``ugpu run --gpus``: ``paths`` on the workers of ``slots``; the result covers every song."""
    inputs = prepare(options)
    sweep(options, store)
    return convert(paths, ProcessFleet(slots, options, store, on_event, cpu_plan=cpu_plan, inputs=inputs))


def convert_batch(paths: list[Path], plan: Plan, options: RunOptions, store: Store | None,
                  on_event: OnEvent = ignore, *, lanes: int | None = None) -> BatchResult:  # fmt: skip
    """``ugpu run`` without ``--gpus`` or ``--ray``: one pipeline here (the songs overlapped as the
    plan allows), or, where the plan runs on the CPU, a batch of several songs in lanes (worker
    processes, each with its share of the cores: :mod:`ultrasinger_gpu_cli.plan.lanes`).
    ``lanes``: the user's count (``--lanes``); None: as the cores and the memory allow."""
    from ultrasinger_gpu_cli.usecases.plan import host_lanes

    if lanes is not None:
        if plan.uses_gpu:
            raise InvalidSettingError("--lanes is for batches on the CPU; on GPUs use --gpus and --per-gpu")
        if lanes > 1 and not options.overlap:
            raise InvalidSettingError("--no-overlap converts one song at a time and --lanes several at once: choose one")
    chosen = host_lanes(plan, len(paths), lanes) if options.overlap and len(paths) > 1 and not plan.uses_gpu else None
    if chosen is None or chosen.count <= 1:
        return convert_songs(paths, plan, options, store, on_event)
    names = [f"CPU #{k + 1}" for k in range(chosen.count)]
    slots = Slots([Slot(name, plan, chosen.threads) for name in names], [chosen.why])
    return run_parallel(paths, slots, options, store, on_event, cpu_plan=plan)
