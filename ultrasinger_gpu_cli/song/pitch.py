"""The pitch track: the voice's pitch frame by frame (seconds, Hz, periodicity), the one type the
pitch engines return, the notes are made from and ``ugpu run`` keeps beside the chart
(``NAME.pitch.npz``, which ``ugpu preview`` draws under the notes)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class PitchTrack:
    times: np.ndarray  # seconds, one per frame
    frequency: np.ndarray  # Hz; 0 where not computed
    confidence: np.ndarray  # periodicity in [0, 1]; 0 where not computed
    computed: np.ndarray | None = None  # bool: frames that went through the network (None: not known)
    step_ms: int | None = None

    def to_csv(self) -> str:
        """crepe's own CSV layout: ``time,frequency,confidence``."""
        lines = ["time,frequency,confidence"]
        lines += [f"{t:.3f},{f:.3f},{c:.6f}" for t, f, c in zip(self.times, self.frequency, self.confidence)]
        return "\n".join(lines) + "\n"

    def save(self, path: Path) -> None:
        """The frames as ``times_s``, ``frequency_hz``, ``confidence`` (float32, compressed: a few
        hundred KB a song), written whole or not at all."""
        from ultrasinger_gpu_cli.files import atomic_path

        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, times_s=np.asarray(self.times, np.float32),
                                    frequency_hz=np.asarray(self.frequency, np.float32),
                                    confidence=np.asarray(self.confidence, np.float32))  # fmt: skip

    @classmethod
    def load(cls, path: Path) -> PitchTrack | None:
        """A track :meth:`save` wrote; None when the file is missing or is not one."""
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(data["times_s"].astype(float), data["frequency_hz"].astype(float),
                           data["confidence"].astype(float))  # fmt: skip
        except (OSError, ValueError, KeyError, EOFError):
            return None
