"""The one stage runner: every path that runs an engine goes through :meth:`StageRunner.run`.

``ugpu run`` (through :mod:`.pipeline`) and ``ugpu whisper|demucs|crepe AUDIO`` (through
:mod:`.usecases.stages`) alike get, per stage:

* the fallback ladder (:mod:`.fallback`): out of memory -> half the batch -> the CPU;
* device binding (:mod:`.devices`): the engine loads on the CUDA ordinal of the GPU the user
  named (found by UUID), the VRAM cap is set on that ordinal, and the NVML sampler watches the
  same card;
* one measurement: wall time, torch's peak VRAM, the sampler's peak VRAM, utilisation and
  temperature, as a :class:`~.events.StageRun`;
* stages of two songs at once (a batch's next song separated ahead, ``beside=True``): the
  beside stage queues on a CUDA stream of its own, the card's peak is measured over both (each
  run says it shared the card), and out of memory while they share the card never walks the
  ladder (which would change the result): the beside stage gives way (:class:`GaveWay`, the
  pipeline runs it later, alone) and the other waits for the card to be its own and tries again;
* typed events (:mod:`.events`) of its whole life (started, each stage's start, progress and
  measured run, each step down the ladder, finished), for whatever displays them and for the
  :class:`~.recorder.Recorder`, which alone writes the ``runs``, ``performance_log`` and
  ``fallback_events`` rows from them. The runner never touches the database.

Engines are loaded once per runner and kept across songs. A run's first engine can load ahead
(:meth:`StageRunner.load_ahead`, on a thread of its own while the song is decoded and scanned):
its stage then finds it loaded and reports the load's whole time as its ``load_seconds``.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from ultrasinger_gpu_cli.gpu import devices
from ultrasinger_gpu_cli.components import StageSettings, spec
from ultrasinger_gpu_cli.gpu.devices import DeviceBinding
from ultrasinger_gpu_cli.run.diagnostics import Rehearsal, RehearsalEngine
from ultrasinger_gpu_cli.engines.base import Engine
from ultrasinger_gpu_cli.errors import EngineError
from ultrasinger_gpu_cli.weights.downloads import offline
from ultrasinger_gpu_cli.failures import FallbackEvent, is_oom
from ultrasinger_gpu_cli.run.events import (ModelFetch, OnEvent, RunFinished, RunStarted, StageFinished, StageProgress,
                                            StageRun, StageStarted, ignore)  # fmt: skip
from ultrasinger_gpu_cli.run.fallback import ladder, run_with_fallback
from ultrasinger_gpu_cli.weights.models import require_present
from ultrasinger_gpu_cli.gpu.processes import start_time
from ultrasinger_gpu_cli.plan.resolver import CPU_TARGET, Plan, resolve
from ultrasinger_gpu_cli.gpu.sampler import NvmlSampler

R = TypeVar("R")
#: What a stage does with its engine: ``call(engine, progress) -> result``.
StageCall = Callable[[Engine, Callable[[float, float], None]], R]
#: One loaded engine: component, backend, model, device (``cpu``, ``cuda:N``), compute type.
EngineKey = tuple[str, str, str, str, str]


@dataclass(frozen=True)
class RunnerOptions:
    fallback: bool = True  # False: stop at the first fault (--no-fallback)
    models_dir: Path | None = None
    rehearsal: Rehearsal | None = None  # --rehearse-fault
    fetch_missing: bool = False  # download missing weights on first use (the CLI: unless --offline)


def stage_seed(*parts: object) -> int:
    """A seed from what a result depends on (the audio's content hash, the stage, its settings)."""
    import hashlib

    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:15], 16)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's generators (whisper's temperature sampling uses torch's).
    Stages are seeded after their engine is loaded, so nothing is imported here for a stage that
    does not use it. A library with generators of its own is seeded by its engine
    (:meth:`~ultrasinger_gpu_cli.engines.base.Engine.seeded`: CTranslate2's, faster-whisper's)."""
    import random

    import numpy as np

    from ultrasinger_gpu_cli.gpu.devices import imported

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch = imported("torch")  # an engine that samples with torch imported it when it loaded
    if torch is not None:
        torch.manual_seed(seed)


class GaveWay(EngineError):
    """A stage run beside another ran out of memory: the card was shared, so it gives way (no
    fallback, no smaller batch) and runs again later, alone."""


@dataclass
class _Shift:
    """One stage at work: on which card, and whether another stage worked on it meanwhile."""

    card: str | None  # "cuda:N"; None on the CPU
    shared: bool = False


@dataclass
class _AtWork:
    """The stages at work now, across the threads of one runner."""

    shifts: list[_Shift] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    @contextmanager
    def stage(self, binding: DeviceBinding) -> Iterator[_Shift]:
        """A stage's time on its card. The card's peak counter is reset only when no other stage
        is at work on it: two at once are measured together, and both say so."""
        shift = _Shift(binding.name if binding.is_cuda else None)
        with self.changed:
            others = [other for other in self.shifts if shift.card is not None and other.card == shift.card]
            for other in others:
                other.shared = True
            shift.shared = bool(others)
            if not others:
                devices.start_measuring(binding)
            self.shifts.append(shift)
        try:
            yield shift
        finally:
            with self.changed:
                self.shifts.remove(shift)
                self.changed.notify_all()

    def wait_alone(self, card: str | None) -> None:
        """Until no stage is at work on ``card``."""
        with self.changed:
            self.changed.wait_for(lambda: not any(s.card == card for s in self.shifts))


class StageRunner:
    """Runs stages of one plan, with one set of loaded engines, as one run (``run_id``). Two
    threads may run stages at once (a batch's next song separated ahead): the engines and the
    card's binding are shared under a lock."""

    def __init__(self, plan: Plan, options: RunnerOptions = RunnerOptions(), on_event: OnEvent = ignore) -> None:
        self.plan = plan
        self.options = options
        self.emit = on_event
        self.run_id = uuid.uuid4().hex
        self.cpu_plan = resolve(CPU_TARGET, plan.mode)
        self._engines: dict[EngineKey, Engine] = {}
        self._gpu: DeviceBinding | None = None
        self._lock = threading.RLock()  # the engines, the binding and the side streams
        self._load_s: dict[EngineKey, float] = {}  # loads no stage has reported yet
        self._ahead: list[threading.Thread] = []
        self._at_work = _AtWork()
        self._streams: dict[str, Any] = {}  # card -> the CUDA stream stages beside others queue on

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self, kind: str = "run") -> None:
        self.emit(RunStarted(self.run_id, self.plan.mode, self.plan.target.gpu, os.getpid(), start_time(), kind))

    def finish(self, status: str, report: dict[str, Any] | None = None) -> None:
        self.settle()
        self.emit(RunFinished(self.run_id, status, report))
        on_card = any(engine.settings.device == "cuda" for engine in self._engines.values())
        for engine in self._engines.values():
            engine.unload(free=False)
        self._engines.clear()
        if on_card:  # one collection for every model dropped, not one each
            devices.free_memory()

    def check_models(self, component: str) -> None:
        """Before any decoding: the plan's weights are here, or fetched now (``fetch_missing``, not
        offline), or a clear error says where they were looked for and how to get them."""
        settings = self.plan.components[component].typed()
        spec(component).ref(settings.backend).check_installed()  # before its module is imported
        backend = spec(component).backend(settings.backend)
        status = backend.model_status(settings.model, self.options.models_dir)
        # A conversion from weights already here (faster-whisper, TensorFlow CREPE) is no download:
        # it runs even with --offline, but fetches nothing it converts from.
        can_fetch = self.options.fetch_missing and not offline()
        if not status.present and backend.pull is not None and (can_fetch or backend.pull_offline):
            extra = {"download": can_fetch} if backend.pull_offline else {}

            def progress(done: int, total: int | None) -> None:
                self.emit(ModelFetch(component, settings.model, done, total))

            backend.pull(status, self.options.models_dir, progress=progress, **extra)
            status = backend.model_status(settings.model, self.options.models_dir)
            self.emit(ModelFetch(component, settings.model, 0, None, finished=True, converted=backend.pull_offline))
        require_present(status, fetch=backend.ships_with or None)

    # -- devices and engines ------------------------------------------------------------------------
    def binding(self, settings: StageSettings) -> DeviceBinding:
        """The CPU, or the card the plan is for as PyTorch numbers it (bound and capped once)."""
        if settings.device != "cuda":
            return DeviceBinding.cpu()
        with self._lock:
            if self._gpu is None:
                gpu = devices.bind(self.plan.target.gpu)
                devices.cap_memory(gpu, self.plan.memory_fraction)
                self._gpu = gpu
            return self._gpu

    def _side_stream(self, binding: DeviceBinding) -> Any:
        """The one CUDA stream a card's beside stages queue on (None on the CPU): one, so the
        memory the allocator caches for it serves every song."""
        with self._lock:
            if binding.name not in self._streams:
                self._streams[binding.name] = devices.side_stream(binding)
            return self._streams[binding.name]

    def _loaded(self, component: str, settings: StageSettings) -> tuple[Engine, float]:
        """The engine, loaded (now, or before: by a load ahead, whose end it waits for), and the
        seconds its load took where no stage has reported them yet (else the seconds waited)."""
        waiting = time.perf_counter()
        with self._lock:
            engine, key = self._engine(component, settings)
            return engine, self._load_s.pop(key, time.perf_counter() - waiting)

    def _engine(self, component: str, settings: StageSettings) -> tuple[Engine, EngineKey]:
        loading = time.perf_counter()  # a load's time includes binding the card (the CUDA context)
        binding = self.binding(settings)
        key = (component, settings.backend, settings.model, binding.name, settings.compute_type)
        engine = self._engines.get(key)
        if engine is None:
            for other in [k for k in self._engines if k[0] == component and k[3:] != key[3:]]:
                self._engines.pop(other).unload()  # moving to the CPU (or another precision) frees the old copy
                self._load_s.pop(other, None)
            engine = spec(component).create(settings, self.options.models_dir, binding)
            if self.options.rehearsal:
                engine = RehearsalEngine(engine, component, self.options.rehearsal)
            engine.ensure_loaded()
            self._engines[key] = engine
            self._load_s[key] = time.perf_counter() - loading
        engine.retune(settings)
        return engine, key

    def settle(self) -> None:
        """Wait for a load ahead to end (:meth:`load_ahead`): before the engines go, or where the
        run stops before its stage."""
        for thread in self._ahead:
            thread.join()
        self._ahead.clear()

    def load_ahead(self, component: str) -> None:
        """Start loading the plan's engine for ``component`` on a thread of its own (its library's
        imports, its weights, the card's context), so that the host work before its stage (the
        song's decoding and scan) runs meanwhile; its stage waits for the load's end. Only where
        nothing is loaded or loading yet (a run's first song). A load that fails here is left to
        the stage, which loads again and meets the failure on its fallback ladder as it would have."""
        if self._engines or self._ahead:
            return
        settings = self.plan.components[component].typed()

        def load() -> None:
            try:
                with self._lock:
                    self._engine(component, settings)  # its time stays for the stage to report
            except Exception:  # the stage's own load meets it again, on its ladder
                pass

        thread = threading.Thread(target=load, name=f"ugpu-load-{component}", daemon=True)
        self._ahead.append(thread)
        thread.start()

    # -- one stage ----------------------------------------------------------------------------------
    def run(self, component: str, song: str, audio_seconds: float, call: StageCall[R], *,
            seed: int | None = None, beside: bool = False) -> tuple[R, StageRun, list[FallbackEvent]]:  # fmt: skip
        """Run one stage down its fallback ladder; measure, log and report it. ``seed`` (from the
        song's content and the settings) seeds every random choice of a stage that may draw any, so
        a song's result never depends on what ran before it in the process, or on a resume.
        ``beside``: the stage runs while another thread's stages work (on a stream of its own);
        out of memory on a shared card raises :class:`GaveWay` instead of stepping down."""
        rungs = ladder(component, self.plan.components[component].typed(), self.cpu_plan.components[component].typed())
        events: list[FallbackEvent] = []

        def on_fallback(event: FallbackEvent) -> None:
            event = replace(event, run_id=self.run_id, gpu=self.plan.target.gpu if event.device == "cuda" else event.gpu)
            events.append(event)
            self.emit(event)

        def attempt(settings: StageSettings) -> tuple[R, StageRun]:
            engine, load_seconds = self._loaded(component, settings)
            binding = engine.binding
            started = time.perf_counter()

            def progress(fraction: float, seconds: float) -> None:
                elapsed = time.perf_counter() - started
                speed = seconds / elapsed if elapsed > 0 and seconds > 0 else None
                self.emit(StageProgress(song, component, fraction, speed, self.run_id))

            stream = self._side_stream(binding) if beside else None
            waited = False
            while True:
                if seed is not None and not spec(component).ref(settings.backend).deterministic:
                    seed_everything(seed)
                    engine.seeded(seed)
                shift = _Shift(None)
                try:
                    with NvmlSampler(binding.nvml_index) as sampler, self._at_work.stage(binding) as shift:
                        started = time.perf_counter()
                        with devices.on_stream(stream, binding):
                            result = call(engine, progress)
                        peak = devices.peak_vram_mb(binding)
                        wall = time.perf_counter() - started
                    break
                except Exception as exc:
                    if not (shift.shared and is_oom(exc)) or waited:  # alone on the card: the ladder's
                        raise
                    if beside:
                        raise GaveWay(f"{component} ran out of memory beside another stage on {binding.name}") from exc
                # Out of memory while a stage beside held part of the card: once the card is this
                # stage's alone (the exception and its frames let go), the same settings once more.
                self._at_work.wait_alone(shift.card)
                devices.free_memory()
                waited = True
            run = StageRun(
                component, settings.backend, engine.model_name, binding.kind, wall, audio_seconds, settings, peak,
                binding.gpu, binding.name if binding.is_cuda else None, sampler.summary,
                skipped=spec(component).io.empty(result), load_seconds=load_seconds, shared_card=shift.shared,
            )  # fmt: skip
            return result, run

        self.emit(StageStarted(song, component, self.run_id, audio_seconds, time.time()))
        (result, run), _ = run_with_fallback(component, rungs, attempt, enabled=self.options.fallback,
                                             on_event=on_fallback, song=song)  # fmt: skip
        self.emit(StageFinished(song, run, self.run_id))
        return result, run, events
