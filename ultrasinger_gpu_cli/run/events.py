"""What a run reports, typed: the result of one stage, and the events a display renders.

Core code. The CLI, an HTTP server or a batch runner subscribe with one callback that takes
an :data:`Event`; each kind is a frozen dataclass, dispatched on its type.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from ultrasinger_gpu_cli.components import StageSettings
from ultrasinger_gpu_cli.failures import FallbackEvent
from ultrasinger_gpu_cli.gpu.facts import GpuIdentity, GpuSummary


@dataclass(frozen=True)
class StageRun:
    """One stage on one song: the one result type for ``ugpu run`` and the stage commands."""

    stage: str
    backend: str
    model: str
    device: str  # "cpu", "cuda", or "cache" for a result taken from the resume cache
    wall_seconds: float
    audio_seconds: float
    settings: StageSettings | None = None  # None for a cached result
    peak_vram_mb: int | None = None  # torch's peak allocation on the card
    gpu: GpuIdentity | None = None  # the card it ran on
    cuda_device: str | None = None  # "cuda:N": the same card as PyTorch numbers it
    sampled: GpuSummary = field(default_factory=GpuSummary)
    cached: bool = False
    cache_key: str | None = None
    skipped: bool = False  # no voice: nothing was computed, so no speed to speak of
    load_seconds: float = 0.0  # loading the engine's model first (0 when this process had it loaded)
    shared_card: bool = False  # another song's stage worked on the card meanwhile: the peaks are both's

    @property
    def speed_x(self) -> float | None:
        """x real time: audio seconds processed per wall second (None when skipped)."""
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 and not self.skipped else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage, "backend": self.backend, "model": self.model, "device": self.device,
            "cuda_device": self.cuda_device, "gpu_index": None if self.gpu is None else self.gpu.index,
            "gpu_id": None if self.gpu is None else self.gpu.uuid,
            "settings": {"cache_key": self.cache_key} if self.settings is None else self.settings.values(),
            "wall_seconds": round(self.wall_seconds, 3), "load_seconds": round(self.load_seconds, 3),
            "audio_seconds": round(self.audio_seconds, 3),
            "speed_x": None if self.speed_x is None else round(self.speed_x, 3), "peak_vram_mb": self.peak_vram_mb,
            "gpu_peak_vram_used_mb": self.sampled.peak_vram_used_mb,
            "gpu_mean_utilization_percent": self.sampled.mean_utilization_percent,
            "gpu_max_temperature_c": self.sampled.max_temperature_c, "cached": self.cached,
            "skipped": self.skipped, "shared_card": self.shared_card,
        }  # fmt: skip


@dataclass(frozen=True)
class SongEvent:
    """Something that happened to one song (its file name)."""

    song: str


@dataclass(frozen=True)
class SongStarted(SongEvent):
    """A song's conversion began, into this folder."""

    folder: Path | None = None


@dataclass(frozen=True)
class SongAhead(SongEvent):
    """A batch's next song is separated ahead, on another thread, while the song before it is at
    work: its Demucs stage's events follow from that thread; :class:`SongStarted` comes when its
    turn comes."""

    folder: Path | None = None


@dataclass(frozen=True)
class RunStarted:
    """A stage runner began converting (its ``runs`` row: ``ugpu monitor`` shows it)."""

    run_id: str
    mode: str
    gpu: GpuIdentity | None
    pid: int  # the process that converts (a ``--gpus`` worker's own)
    pid_started: float | None  # when that process started: a reused PID is not the run
    kind: str = "run"


@dataclass(frozen=True)
class RunFinished:
    """A stage runner is done: how it ended, and the report it leaves."""

    run_id: str
    status: str
    report: dict[str, Any] | None = None


@dataclass(frozen=True)
class RunIdle:
    """A serving worker between songs: nothing runs on it now."""

    run_id: str


@dataclass(frozen=True)
class StageStarted(SongEvent):
    """A stage is about to load its engine and run."""

    stage: str
    run_id: str | None = None
    audio_seconds: float | None = None
    started_at: float | None = None  # seconds since the epoch


@dataclass(frozen=True)
class StageProgress(SongEvent):
    """How far a running stage is, and how fast (x real time so far)."""

    stage: str
    fraction: float
    speed_x: float | None
    run_id: str | None = None


@dataclass(frozen=True)
class StageFinished(SongEvent):
    """A stage finished (or was taken from the resume cache): its measured run."""

    run: StageRun
    run_id: str | None = None


@dataclass(frozen=True)
class Notice:
    """Something a person should know (no vocals found, a stand-in used...)."""

    song: str | None
    message: str


@dataclass
class SongReport:
    """One song's result: its folder and files, what ran where, and how long it took."""

    source: Path
    folder: Path
    files: dict[str, Path]
    title: str
    artist: str
    bpm: float
    language: str | None
    notes: int
    stages: list[StageRun] = field(default_factory=list)
    fallbacks: list[FallbackEvent] = field(default_factory=list)
    wall_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": str(self.source), "folder": str(self.folder),
            "files": {k: str(v) for k, v in self.files.items()}, "title": self.title, "artist": self.artist,
            "bpm": self.bpm, "language": self.language, "notes": self.notes,
            "stages": [s.to_dict() for s in self.stages], "fallbacks": [f.to_dict() for f in self.fallbacks],
            "wall_seconds": round(self.wall_seconds, 3),
        }  # fmt: skip


@dataclass(frozen=True)
class SongFinished(SongEvent):
    """A song's folder is written."""

    report: SongReport


@dataclass(frozen=True)
class SongFailed(SongEvent):
    """A song that could not be converted; the batch goes on with the next one."""

    error: str


@dataclass(frozen=True)
class ModelFetch:
    """Missing weights being downloaded (or converted, offline) on first use: how far (bytes),
    out of how much."""

    component: str
    model: str
    done_bytes: int
    total_bytes: int | None
    finished: bool = False
    converted: bool = False  # made from weights already here (no download, no published checksum)


Event = Union[RunStarted, RunFinished, RunIdle, ModelFetch, SongStarted, SongAhead, StageStarted, StageProgress,
              StageFinished, FallbackEvent, Notice, SongFinished, SongFailed]
OnEvent = Callable[[Event], None]


def ignore(event: Event) -> None:
    return None


def serialized(on_event: OnEvent) -> OnEvent:
    """``on_event`` called by one thread at a time (events come from the engines' threads and
    from a pipeline's host worker; the recorder and the displays are written for one)."""
    lock = threading.Lock()

    def call(event: Event) -> None:
        with lock:
            on_event(event)

    return call
