"""Test-only backends, registered through the real component registry (one line each).

* ``test-flaky`` (CREPE): the real torchcrepe engine, except that a batch above 128 frames
  raises CUDA's out-of-memory error, the way a small card would. While it runs it looks at
  what ``ugpu monitor`` sees in the database.
* ``test-probe`` (CREPE): records the device it was bound to and touches no framework, so
  the device-binding test can run on a machine without a GPU.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ultrasinger_gpu_cli.components.base import Backend
from ultrasinger_gpu_cli.components.crepe import CrepeSettings
from ultrasinger_gpu_cli.engines.base import Engine, Progress, no_progress
from ultrasinger_gpu_cli.engines.crepe_engine import CrepeEngine
from ultrasinger_gpu_cli.song.pitch import PitchTrack
from ultrasinger_gpu_cli.weights.models import crepe_status

SEEN: list[tuple[Any, ...]] = []  # what the engines saw, in order
ON_RUN: list[Any] = []  # callbacks a test hangs on the probe's run


class FlakyEngine(CrepeEngine):
    def run(self, audio: np.ndarray, progress: Progress = no_progress, **kwargs: Any) -> PitchTrack:
        from ultrasinger_gpu_cli.gpu.monitoring import Monitor
        from ultrasinger_gpu_cli.store.db import Store

        with Store.open(os.environ["UGPU_DB"]) as store:
            live = [(r.stage, r.alive) for r in Monitor(store=store).snapshot(processes=False).runs]
        SEEN.append(("run", self.settings.batch_size, live))
        if self.settings.batch_size > 128:
            import torch

            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (test-flaky at batch {self.settings.batch_size})")
        return super().run(audio, progress, **kwargs)


class ProbeEngine(Engine[CrepeSettings]):
    def load(self) -> None:
        SEEN.append(("load", self.binding.name, str(self.device())))
        self._model = object()

    def run(self, audio: np.ndarray, progress: Progress = no_progress, **kwargs: Any) -> PitchTrack:
        SEEN.append(("run", self.binding.name, self.binding.nvml_index))
        for callback in ON_RUN:
            callback()
        hop = int(16_000 * self.settings.step_size / 1000)
        n = 1 + len(audio) // hop
        progress(1.0, len(audio) / 16_000)
        zeros = np.zeros(n, dtype=np.float32)
        return PitchTrack(np.arange(n) * hop / 16_000, zeros, zeros.copy(), np.zeros(n, dtype=bool), self.settings.step_size)


class NoisyEngine(CrepeEngine):
    """torchcrepe, then each 0.5 s of pitch moved by a random number of semitones drawn from
    torch's generator: the chart depends on that generator's state unless ugpu seeds it."""

    def run(self, audio: np.ndarray, progress: Progress = no_progress, **kwargs: Any) -> PitchTrack:
        import torch

        track = super().run(audio, progress, **kwargs)
        steps = torch.randint(-3, 4, (len(track.frequency) // 50 + 1,)).numpy().repeat(50)[: len(track.frequency)]
        return PitchTrack(track.times, track.frequency * 2 ** (steps / 12), track.confidence, track.computed,
                          track.step_ms)  # fmt: skip


NOISY = Backend("test-noisy", NoisyEngine, "torchcrepe plus random pitch steps from torch's generator", crepe_status)
FLAKY = Backend("test-flaky", FlakyEngine, "torchcrepe that runs out of memory above 128 frames", crepe_status)
PROBE = Backend("test-probe", ProbeEngine, "records its device binding", crepe_status)
