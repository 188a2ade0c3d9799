"""The one stage runner: every path that runs an engine goes through :meth:`StageRunner.run`.

``ugpu run`` (through :mod:`.pipeline`) and ``ugpu whisper|demucs|crepe AUDIO`` (through
:mod:`.usecases.stages`) alike get, per stage:

* the fallback ladder (:mod:`.fallback`): out of memory -> half the batch -> the CPU;
* device binding (:mod:`.devices`): the engine loads on the CUDA ordinal of the GPU the user
  named (found by UUID), the VRAM cap is set on that ordinal, and the NVML sampler watches the
  same card;
* one measurement: wall time, torch's peak VRAM, the sampler's peak VRAM, utilisation and
  temperature, as a :class:`~.events.StageRun`;
* typed events (:mod:`.events`) of its whole life (started, each stage's start, progress and
  measured run, each step down the ladder, finished), for whatever displays them and for the
  :class:`~.recorder.Recorder`, which alone writes the ``runs``, ``performance_log`` and
  ``fallback_events`` rows from them. The runner never touches the database.

Engines are loaded once per runner and kept across songs.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from ultrasinger_gpu_cli.gpu import devices
from ultrasinger_gpu_cli.components import StageSettings, spec
from ultrasinger_gpu_cli.gpu.devices import DeviceBinding
from ultrasinger_gpu_cli.run.diagnostics import Rehearsal, RehearsalEngine
from ultrasinger_gpu_cli.engines.base import Engine
from ultrasinger_gpu_cli.weights.downloads import offline
from ultrasinger_gpu_cli.failures import FallbackEvent
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
    """Seed Python's, numpy's and torch's generators (whisper's temperature sampling uses torch's),
    and CTranslate2's where an engine loaded it (faster-whisper's temperature fallback samples with
    it: unseeded, two runs of one song could write different words). Stages are seeded after their
    engine is loaded, so nothing is imported here for a stage that does not use it."""
    import random
    import sys

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch = sys.modules.get("torch")  # an engine that samples with torch imported it when it loaded
    if torch is not None:
        torch.manual_seed(seed)
    ctranslate2 = sys.modules.get("ctranslate2")
    if ctranslate2 is not None:
        ctranslate2.set_random_seed(seed % 2**32)


class StageRunner:
    """Runs stages of one plan, with one set of loaded engines, as one run (``run_id``)."""

    def __init__(self, plan: Plan, options: RunnerOptions = RunnerOptions(), on_event: OnEvent = ignore) -> None:
        self.plan = plan
        self.options = options
        self.emit = on_event
        self.run_id = uuid.uuid4().hex
        self.cpu_plan = resolve(CPU_TARGET, plan.mode)
        self._engines: dict[tuple[str, str, str, str], Engine] = {}
        self._gpu: DeviceBinding | None = None

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self, kind: str = "run") -> None:
        self.emit(RunStarted(self.run_id, self.plan.mode, self.plan.target.gpu, os.getpid(), start_time(), kind))

    def finish(self, status: str, report: dict[str, Any] | None = None) -> None:
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
        if self._gpu is None:
            gpu = devices.bind(self.plan.target.gpu)
            devices.cap_memory(gpu, self.plan.memory_fraction)
            self._gpu = gpu
        return self._gpu

    def engine(self, component: str, settings: StageSettings) -> Engine:
        binding = self.binding(settings)
        key = (component, settings.backend, settings.model, binding.name, settings.compute_type)
        engine = self._engines.get(key)
        if engine is None:
            for other in [k for k in self._engines if k[0] == component and k[3:] != key[3:]]:
                self._engines.pop(other).unload()  # moving to the CPU (or another precision) frees the old copy
            engine = spec(component).create(settings, self.options.models_dir, binding)
            if self.options.rehearsal:
                engine = RehearsalEngine(engine, component, self.options.rehearsal)
            engine.ensure_loaded()
            self._engines[key] = engine
        engine.retune(settings)
        return engine

    # -- one stage ----------------------------------------------------------------------------------
    def run(self, component: str, song: str, audio_seconds: float, call: StageCall[R], *,
            seed: int | None = None) -> tuple[R, StageRun, list[FallbackEvent]]:  # fmt: skip
        """Run one stage down its fallback ladder; measure, log and report it. ``seed`` (from the
        song's content and the settings) seeds every random choice, so a song's result never
        depends on what ran before it in the process, or on a resume."""
        rungs = ladder(component, self.plan.components[component].typed(), self.cpu_plan.components[component].typed())
        events: list[FallbackEvent] = []

        def on_fallback(event: FallbackEvent) -> None:
            event = replace(event, run_id=self.run_id, gpu=self.plan.target.gpu if event.device == "cuda" else event.gpu)
            events.append(event)
            self.emit(event)

        def attempt(settings: StageSettings) -> tuple[R, StageRun]:
            loading = time.perf_counter()
            engine = self.engine(component, settings)
            load_seconds = time.perf_counter() - loading
            binding = engine.binding
            started = time.perf_counter()

            def progress(fraction: float, seconds: float) -> None:
                elapsed = time.perf_counter() - started
                speed = seconds / elapsed if elapsed > 0 and seconds > 0 else None
                self.emit(StageProgress(song, component, fraction, speed, self.run_id))

            if seed is not None:
                seed_everything(seed)
            with NvmlSampler(binding.nvml_index) as sampler:
                devices.start_measuring(binding)
                started = time.perf_counter()
                result = call(engine, progress)
                peak = devices.peak_vram_mb(binding)
                wall = time.perf_counter() - started
            run = StageRun(
                component, settings.backend, engine.model_name, binding.kind, wall, audio_seconds, settings, peak,
                binding.gpu, binding.name if binding.is_cuda else None, sampler.summary,
                skipped=spec(component).io.empty(result), load_seconds=load_seconds,
            )  # fmt: skip
            return result, run

        self.emit(StageStarted(song, component, self.run_id, audio_seconds, time.time()))
        (result, run), _ = run_with_fallback(component, rungs, attempt, enabled=self.options.fallback,
                                             on_event=on_fallback, song=song)  # fmt: skip
        self.emit(StageFinished(song, run, self.run_id))
        return result, run, events
