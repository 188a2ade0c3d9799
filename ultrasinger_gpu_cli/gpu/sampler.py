"""A background NVML sampler: peak VRAM, mean utilisation and max temperature of a stage.

The same sampling code serves the stage runner and ``ugpu monitor`` (through :mod:`.nvml`).
Without a GPU it samples nothing and reports ``None``s.
"""

from __future__ import annotations

import threading

from ultrasinger_gpu_cli.gpu.facts import GpuSummary
from ultrasinger_gpu_cli.gpu.nvml import Nvml, get_nvml


class NvmlSampler:
    """``with NvmlSampler(nvml_index) as sampler: ...`` then read ``sampler.summary``."""

    def __init__(self, nvml_index: int | None, interval_s: float = 0.5, nvml: Nvml | None = None) -> None:
        self.nvml_index = nvml_index
        self.interval_s = interval_s
        self.nvml = nvml or get_nvml()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._samples = 0
        self._peak_vram: int | None = None
        self._max_temp: int | None = None
        self._utils: list[int] = []

    @property
    def summary(self) -> GpuSummary:
        mean = sum(self._utils) / len(self._utils) if self._utils else None
        return GpuSummary(self._samples, self._peak_vram, mean, self._max_temp)

    def _take(self) -> None:
        assert self.nvml_index is not None
        sample = self.nvml.sample(self.nvml_index)
        if sample.lost:
            return
        self._samples += 1
        if sample.vram_used_mb is not None:
            self._peak_vram = max(self._peak_vram or 0, sample.vram_used_mb)
        if sample.temperature_c is not None:
            self._max_temp = max(self._max_temp or 0, sample.temperature_c)
        if sample.utilization_gpu_percent is not None:
            self._utils.append(sample.utilization_gpu_percent)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._take()

    def __enter__(self) -> NvmlSampler:
        if self.nvml_index is not None and self.nvml.available:
            self._take()
            self._thread = threading.Thread(target=self._loop, name="ugpu-nvml-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._take()
