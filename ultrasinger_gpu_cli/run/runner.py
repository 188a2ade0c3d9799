"""The one stage runner: every path that runs an engine goes through :meth:`StageRunner.run`.

``ugpu run`` (through :mod:`.pipeline`) and ``ugpu whisper|demucs|crepe AUDIO`` (through
:mod:`.usecases.stages`) alike get, per stage:

* the fallback ladder (:mod:`.fallback`): out of memory -> half the batch -> the CPU;
* device binding (:mod:`.devices`): the engine loads on the CUDA ordinal of the GPU the user
  named (found by UUID), the VRAM cap is set on that ordinal, and the NVML sampler watches the
  same card;
* one measurement: wall time, torch's peak VRAM, the sampler's peak VRAM, utilisation and
  temperature, as a :class:`~.events.StageRun`;
* a ``runs`` row with the live state (``ugpu monitor`` shows it), a ``performance_log`` row per
  stage, a ``fallback_events`` row per step down the ladder;
* typed events (:mod:`.events`) for whatever displays them.

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
from ultrasinger_gpu_cli.run.events import ModelFetch, Notice, OnEvent, StageFinished, StageProgress, StageRun
from ultrasinger_gpu_cli.failures import FallbackEvent
from ultrasinger_gpu_cli.run.events import StageStarted, ignore
from ultrasinger_gpu_cli.run.fallback import ladder, run_with_fallback
from ultrasinger_gpu_cli.weights.models import require_present
from ultrasinger_gpu_cli.gpu.processes import start_time
from ultrasinger_gpu_cli.plan.resolver import CPU_TARGET, Plan, resolve
from ultrasinger_gpu_cli.gpu.sampler import NvmlSampler
from ultrasinger_gpu_cli.store.db import Store

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
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    ctranslate2 = sys.modules.get("ctranslate2")
    if ctranslate2 is not None:
        ctranslate2.set_random_seed(seed % 2**32)


class StageRunner:
    """Runs stages of one plan, with one set of loaded engines and one ``runs`` row."""

    def __init__(self, plan: Plan, store: Store | None, options: RunnerOptions = RunnerOptions(),
                 on_event: OnEvent = ignore) -> None:  # fmt: skip
        self.plan = plan
        self.read_only_db = store.path if store is not None and store.read_only else None
        self.store = None if self.read_only_db else store  # a read-only database: run, but log nothing
        self.options = options
        self.emit = on_event
        self.run_id = uuid.uuid4().hex
        self.cpu_plan = resolve(CPU_TARGET, plan.mode)
        self._engines: dict[tuple[str, str, str, str], Engine] = {}
        self._gpu: DeviceBinding | None = None
        self._last_live = 0.0
        self.log_ids: list[str] = []

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self, kind: str = "run") -> None:
        if self.read_only_db is not None:
            self.emit(Notice(None, f"the ugpu database {self.read_only_db} is read-only: this run is not logged "
                                   "(make it writable, or use --db / UGPU_DB, to log runs)"))  # fmt: skip
        if self.store is not None:
            self.store.reap_dead_runs()  # ghosts of killed runs: interrupted, not running forever
            self.store.start_run(self.run_id, mode=self.plan.mode, gpu=self.plan.target.gpu, pid=os.getpid(), kind=kind,
                                 pid_started=start_time())  # fmt: skip

    def finish(self, status: str, report: dict[str, Any] | None = None) -> None:
        if self.store is not None:
            self.store.finish_run(self.run_id, status, report)
        for engine in self._engines.values():
            engine.unload()
        self._engines.clear()

    def check_models(self, component: str) -> None:
        """Before any decoding: the plan's weights are here, or fetched now (``fetch_missing``, not
        offline), or a clear error says where they were looked for and how to get them."""
        settings = self.plan.components[component].typed()
        backend = spec(component).backend(settings.backend)
        backend.check_installed()
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
            if event.device == "cuda":
                event = replace(event, gpu=self.plan.target.gpu)
            events.append(event)
            if self.store is not None:
                self.store.record_fallback(event, run_id=self.run_id)
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
                self.emit(StageProgress(song, component, fraction, speed))
                self._live(song, component, fraction, speed)

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

        self.emit(StageStarted(song, component))
        if self.store is not None:
            self.store.update_run(self.run_id, song=song, stage=component, progress=0.0, speed=None,
                                  audio_seconds=audio_seconds, stage_started_at=time.time())  # fmt: skip
        (result, run), _ = run_with_fallback(component, rungs, attempt, enabled=self.options.fallback,
                                             on_event=on_fallback, song=song)  # fmt: skip
        self.record(run, song)
        self.emit(StageFinished(song, run))
        return result, run, events

    def record(self, run: StageRun, song: str) -> str | None:
        """One ``performance_log`` row: peak VRAM from torch on CUDA, else from the NVML sampler."""
        if self.store is None:
            return None
        util = run.sampled.mean_utilization_percent
        log_id = self.store.log_performance(
            skipped=run.skipped,
            component=run.stage, device=run.device, processing_speed_multiplier=run.speed_x,
            gpu=run.gpu if run.device == "cuda" else None,
            vram_used_mb=run.peak_vram_mb if run.peak_vram_mb is not None else run.sampled.peak_vram_used_mb,
            gpu_utilization_percent=None if util is None else int(round(util)),
            temperature_celsius=run.sampled.max_temperature_c, run_id=self.run_id, song=song, model_name=run.model,
            wall_seconds=run.wall_seconds, audio_seconds=run.audio_seconds, backend=run.backend,
        )  # fmt: skip
        self.log_ids.append(log_id)
        return log_id

    def _live(self, song: str, stage: str, fraction: float, speed: float | None) -> None:
        now = time.monotonic()
        if self.store is None or (now - self._last_live < 0.5 and fraction < 1.0):
            return
        self._last_live = now
        self.store.update_run(self.run_id, song=song, stage=stage, progress=fraction, speed=speed)
