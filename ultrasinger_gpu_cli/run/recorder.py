"""The one writer of what runs leave in the database: subscribed to the run's events, it keeps
the ``runs`` rows (the live state ``ugpu monitor`` shows), a ``performance_log`` row per stage
and a ``fallback_events`` row per step down a ladder.

The stage runner only emits events; whoever drives runs puts a :class:`Recorder` in front of its
display. A worker process or a Ray actor never opens the database: its events travel home, where
the driver's recorder writes them (each event names its run). A read-only database: the run
goes on, unlogged, and says so once.
"""

from __future__ import annotations

import time
from typing import Any

from ultrasinger_gpu_cli.failures import FallbackEvent
from ultrasinger_gpu_cli.run.events import (Notice, OnEvent, RunFinished, RunIdle, RunStarted, SongAhead, SongStarted,
                                            StageFinished, StageProgress, StageStarted, ignore)  # fmt: skip
from ultrasinger_gpu_cli.store.db import Store

#: The live state is written at most this often per run (progress events come many times a second).
LIVE_EVERY_S = 0.5


class Recorder:
    """Records the events it is given, then passes each on to ``then`` (the display)."""

    def __init__(self, store: Store | None, then: OnEvent = ignore, live_every_s: float = LIVE_EVERY_S) -> None:
        self.read_only = store.path if store is not None and store.read_only else None
        self.store = None if self.read_only is not None else store
        self.then = then
        self.live_every_s = live_every_s
        self._last_live: dict[str, float] = {}
        self._log_ids: dict[str, list[str]] = {}
        self._ahead: set[str] = set()  # songs separated ahead, before their turn: not the run's live song yet

    def __call__(self, event: Any) -> None:
        if self.store is not None:
            self.record(event)
        elif self.read_only is not None and isinstance(event, RunStarted):
            self.then(Notice(None, f"the ugpu database {self.read_only} is read-only: this run is not logged "
                                   "(make it writable, or use --db / UGPU_DB, to log runs)"))  # fmt: skip
        self.then(event)

    def last_log_id(self, run_id: str) -> str | None:
        """The ``performance_log`` row of the run's last measured stage."""
        ids = self._log_ids.get(run_id)
        return ids[-1] if ids else None

    def record(self, event: Any) -> None:
        store = self.store
        assert store is not None
        if isinstance(event, RunStarted):
            store.reap_dead_runs()  # ghosts of killed runs: interrupted, not running forever
            store.start_run(event.run_id, mode=event.mode, gpu=event.gpu, pid=event.pid, kind=event.kind,
                            pid_started=event.pid_started)  # fmt: skip
        elif isinstance(event, (SongAhead, SongStarted)):
            (self._ahead.add if isinstance(event, SongAhead) else self._ahead.discard)(event.song)
        elif isinstance(event, (StageStarted, StageProgress)) and event.song in self._ahead:
            return  # the live state stays on the song whose turn it is; its stage is logged when it ends
        elif isinstance(event, StageStarted) and event.run_id:
            store.update_run(event.run_id, song=event.song, stage=event.stage, progress=0.0, speed=None,
                             audio_seconds=event.audio_seconds, stage_started_at=event.started_at)  # fmt: skip
        elif isinstance(event, StageProgress) and event.run_id:
            now = time.monotonic()
            if now - self._last_live.get(event.run_id, float("-inf")) < self.live_every_s and event.fraction < 1.0:
                return
            self._last_live[event.run_id] = now
            store.update_run(event.run_id, song=event.song, stage=event.stage, progress=event.fraction,
                             speed=event.speed_x)  # fmt: skip
        elif isinstance(event, StageFinished) and event.run_id and not event.run.cached:
            self._log_ids.setdefault(event.run_id, []).append(self._log(event))
        elif isinstance(event, FallbackEvent):
            store.record_fallback(event, run_id=event.run_id)
        elif isinstance(event, RunIdle):
            store.update_run(event.run_id, song=None, stage=None, progress=None, speed=None)
        elif isinstance(event, RunFinished):
            store.finish_run(event.run_id, event.status, event.report)
            self._last_live.pop(event.run_id, None)

    def _log(self, event: StageFinished) -> str:
        """One ``performance_log`` row: peak VRAM from torch on CUDA, else from the NVML sampler."""
        run = event.run
        util = run.sampled.mean_utilization_percent
        assert self.store is not None
        return self.store.log_performance(
            skipped=run.skipped,
            component=run.stage, device=run.device, processing_speed_multiplier=run.speed_x,
            gpu=run.gpu if run.device == "cuda" else None,
            vram_used_mb=run.peak_vram_mb if run.peak_vram_mb is not None else run.sampled.peak_vram_used_mb,
            gpu_utilization_percent=None if util is None else int(round(util)),
            temperature_celsius=run.sampled.max_temperature_c, run_id=event.run_id, song=event.song,
            model_name=run.model, wall_seconds=run.wall_seconds, audio_seconds=run.audio_seconds, backend=run.backend,
        )  # fmt: skip
