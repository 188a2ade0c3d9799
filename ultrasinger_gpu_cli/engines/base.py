"""The engine interface: load once, run on arrays with a progress callback, unload.

An engine never prints: it reports through the callback and raises typed errors.
"""

from __future__ import annotations

import gc
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ultrasinger_gpu_cli.errors import GpuUnavailableError

#: ``progress(fraction_done, audio_seconds_done)``
Progress = Callable[[float, float], None]


def _no_progress(fraction: float, seconds: float) -> None:
    return None


def free_memory() -> None:
    """Collect garbage and hand cached CUDA memory back to the driver."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


@dataclass
class EngineRun:
    """What one run of an engine cost."""

    engine: str
    model: str
    device: str
    wall_seconds: float
    audio_seconds: float
    peak_vram_mb: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def speed_x(self) -> float | None:
        """x real time: audio seconds processed per wall second."""
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["speed_x"] = None if self.speed_x is None else round(self.speed_x, 3)
        return data


class Engine(ABC):
    """Base of the Demucs, Whisper and CREPE engines."""

    name: str = "engine"

    def __init__(self, settings: dict[str, Any], models_dir: Path | None = None) -> None:
        self.settings = dict(settings)
        self.models_dir = models_dir
        self._model: Any = None

    @property
    def model_name(self) -> str:
        return str(self.settings.get("model") or self.settings.get("model_capacity"))

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def device(self):
        import torch

        wanted = self.settings.get("device", "cpu")
        if wanted == "cuda" and not torch.cuda.is_available():
            raise GpuUnavailableError(f"{self.name}: the plan says cuda, but PyTorch sees no usable GPU",
                                      hint="run `ugpu detect`")  # fmt: skip
        return torch.device(wanted)

    @abstractmethod
    def load(self) -> None:
        """Load the weights onto the device (once; kept across songs)."""

    def unload(self) -> None:
        """Drop the model and give its VRAM back."""
        self._model = None
        free_memory()

    def ensure_loaded(self) -> None:
        if not self.loaded:
            self.load()

    @contextmanager
    def measure(self, audio_seconds: float) -> Iterator[EngineRun]:
        """Time a run and, on CUDA, record its peak VRAM."""
        import torch

        device = self.device()
        on_cuda = device.type == "cuda"
        if on_cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        run = EngineRun(self.name, self.model_name, device.type, 0.0, audio_seconds, settings=dict(self.settings))
        start = time.perf_counter()
        yield run
        if on_cuda:
            torch.cuda.synchronize(device)
            run.peak_vram_mb = int(torch.cuda.max_memory_allocated(device) // (1024 * 1024))
        run.wall_seconds = time.perf_counter() - start


__all__ = ["Engine", "EngineRun", "Progress", "_no_progress"]
