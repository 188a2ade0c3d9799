"""Whisper's input: the log-mel spectrogram of a 30-s window, as openai-whisper computes it
(``whisper.log_mel_spectrogram(whisper.pad_or_trim(audio), n_mels)``: the same torch operations
on the same filter bank, so both Whisper backends see bit-identical features), without importing
openai-whisper: the faster-whisper backend needs only this, and ``import whisper`` brings numba
and tiktoken with it.

The filter bank is librosa's Slaney mel filters for 16 kHz and a 400-point FFT, the matrix
openai-whisper ships in ``assets/mel_filters.npz`` (computed here in float64 and stored as
float32, as librosa does; a test checks it against whisper's file bit for bit).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import import_module
from typing import Any

import numpy as np

SAMPLE_RATE = 16_000
N_FFT = 400
HOP_LENGTH = 160  # 10 ms: a window's frames are its samples // HOP_LENGTH
N_SAMPLES = 30 * SAMPLE_RATE  # one window
N_FRAMES = N_SAMPLES // HOP_LENGTH

_F_SP = 200.0 / 3  # Slaney's scale: linear below 1 kHz ...
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0  # ... logarithmic above


def _hz_to_mel(hz: float) -> float:
    return _MIN_LOG_MEL + np.log(hz / _MIN_LOG_HZ) / _LOGSTEP if hz >= _MIN_LOG_HZ else hz / _F_SP


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    hz = _F_SP * mels
    log = mels >= _MIN_LOG_MEL
    hz[log] = _MIN_LOG_HZ * np.exp(_LOGSTEP * (mels[log] - _MIN_LOG_MEL))
    return hz


@lru_cache(maxsize=4)
def mel_filters(n_mels: int) -> np.ndarray:
    """(n_mels, 201) float32: triangles between neighbouring mel centres, each scaled to unit area."""
    weights = np.zeros((n_mels, 1 + N_FFT // 2), dtype=np.float32)
    bins_hz = np.fft.rfftfreq(n=N_FFT, d=1.0 / SAMPLE_RATE)
    edges_hz = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(SAMPLE_RATE / 2), n_mels + 2))
    widths = np.diff(edges_hz)
    ramps = np.subtract.outer(edges_hz, bins_hz)
    for i in range(n_mels):
        weights[i] = np.maximum(0, np.minimum(-ramps[i] / widths[i], ramps[i + 2] / widths[i + 1]))
    weights *= (2.0 / (edges_hz[2 : n_mels + 2] - edges_hz[:n_mels]))[:, np.newaxis]
    return weights


def prepare() -> None:
    """Import the features' library (torch, 1-2 s in a fresh process) now: the engine's load
    calls it, so that a load ahead of the song (``StageRunner.load_ahead``) takes it off the
    song's path, as it takes the model's weights."""
    import_module("torch")


def log_mel(piece: np.ndarray, n_mels: int) -> Any:
    """A torch tensor (n_mels, 3000): ``piece`` (16 kHz mono float32, at most 30 s) padded with
    silence to 30 s, its power spectrum on the mel scale, log10, floored 8 below its peak, scaled."""
    import torch

    audio = torch.from_numpy(np.ascontiguousarray(piece[:N_SAMPLES], dtype=np.float32))
    if audio.shape[-1] < N_SAMPLES:
        audio = torch.nn.functional.pad(audio, [0, N_SAMPLES - audio.shape[-1]])
    window = torch.hann_window(N_FFT)
    stft = torch.stft(audio, N_FFT, HOP_LENGTH, window=window, return_complex=True)
    magnitudes = stft[..., :-1].abs() ** 2
    mel = torch.from_numpy(mel_filters(n_mels)) @ magnitudes
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


def frames_in(piece: np.ndarray) -> int:
    """The window's frames that hold ``piece`` (the rest is padding)."""
    return min(N_FRAMES, piece.shape[-1] // HOP_LENGTH)
