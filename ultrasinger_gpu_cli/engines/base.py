"""The engine interface: load once, run on arrays with a progress callback, unload.

An engine is one backend of one component (``components/<name>.py`` registers it). It never
prints and never times itself: the stage runner (:mod:`ultrasinger_gpu_cli.run.runner`) measures
every run the same way. It reports progress through the callback and raises typed errors.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from ultrasinger_gpu_cli.components.settings import StageSettings
from ultrasinger_gpu_cli.gpu.devices import DeviceBinding, free_memory

#: ``progress(fraction_done, audio_seconds_done)``
Progress = Callable[[float, float], None]
S = TypeVar("S", bound=StageSettings)


def no_progress(fraction: float, seconds: float) -> None:
    return None


class Engine(ABC, Generic[S]):
    """Base of every backend's engine."""

    def __init__(self, settings: S, models_dir: Path | None = None, binding: DeviceBinding | None = None) -> None:
        self.settings: S = settings
        self.models_dir = models_dir
        self._binding = binding
        self._model: Any = None

    @property
    def model_name(self) -> str:
        return self.settings.model

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def binding(self) -> DeviceBinding:
        """Where this engine runs: the CPU, or the CUDA ordinal of the GPU the user named."""
        if self._binding is None:
            if self.settings.device == "cuda":
                from ultrasinger_gpu_cli.gpu.devices import bind

                self._binding = bind(None)  # used as a library: torch's current device
            else:
                self._binding = DeviceBinding.cpu()
        return self._binding

    def device(self):
        """The ``torch.device`` to load and compute on (``cuda:N`` or ``cpu``)."""
        return self.binding.torch_device()

    def retune(self, settings: S) -> None:
        """New settings of the same model on the same device (a smaller batch after out of memory)."""
        self.settings = settings

    @abstractmethod
    def load(self) -> None:
        """Load the weights onto the device (once; kept across songs)."""

    def seeded(self, seed: int) -> None:
        """The stage's seed (from the song and the settings), given before each run of a backend
        that may draw random numbers, after Python's, numpy's and torch's generators took it: an
        engine whose library draws from a generator of its own seeds that one from it."""

    def unload(self, *, free: bool = True) -> None:
        """Drop the model and give its VRAM back: a card's model is collected at once and torch's
        cached blocks go back to the driver; a CPU model's memory goes back as it is dropped (no
        full garbage collection, a tenth of a second each, at the end of every CPU run).
        ``free=False``: only drop it (the caller frees once for several engines)."""
        self._model = None
        if free:
            free_memory(collect=self.settings.device == "cuda")

    def ensure_loaded(self) -> None:
        if not self.loaded:
            self.load()


__all__ = ["Engine", "Progress", "no_progress"]
