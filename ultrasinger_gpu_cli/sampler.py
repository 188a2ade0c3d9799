"""A background NVML sampler: peak VRAM, mean utilisation and max temperature of a stage.

The same sampling code serves ``ugpu run`` and ``ugpu monitor`` (through :mod:`.nvml`).
Without a GPU it samples nothing and reports ``None``s.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from ultrasinger_gpu_cli.nvml import Nvml, get_nvml


@dataclass
class SampleSummary:
    samples: int = 0
    peak_vram_used_mb: int | None = None
    mean_utilization_percent: float | None = None
    max_temperature_c: int | None = None


class NvmlSampler:
    """``with NvmlSampler(gpu_index) as sampler: ...`` then read ``sampler.summary``."""

    def __init__(self, gpu_index: int | None, interval_s: float = 0.5, nvml: Nvml | None = None) -> None:
        self.gpu_index = gpu_index
        self.interval_s = interval_s
        self.nvml = nvml or get_nvml()
        self.summary = SampleSummary()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._utils: list[int] = []

    def _take(self) -> None:
        sample = self.nvml.sample(self.gpu_index)
        if sample.lost:
            return
        s = self.summary
        s.samples += 1
        if sample.vram_used_mb is not None:
            s.peak_vram_used_mb = max(s.peak_vram_used_mb or 0, sample.vram_used_mb)
        if sample.temperature_c is not None:
            s.max_temperature_c = max(s.max_temperature_c or 0, sample.temperature_c)
        if sample.utilization_gpu_percent is not None:
            self._utils.append(sample.utilization_gpu_percent)
            s.mean_utilization_percent = sum(self._utils) / len(self._utils)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._take()

    def __enter__(self) -> NvmlSampler:
        if self.gpu_index is not None and self.nvml.available:
            self._take()
            self._thread = threading.Thread(target=self._loop, name="ugpu-nvml-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._take()
