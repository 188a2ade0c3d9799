"""Tempo of a song from its onset envelope (spectral flux + autocorrelation). numpy only."""

from __future__ import annotations

import numpy as np

DEFAULT_BPM = 120.0


#: Frames whose spectra are computed at once: memory stays bounded whatever the song's length.
BLOCK_FRAMES = 2048


def onset_flux(mono: np.ndarray, frame: int = 2048, hop: int = 512) -> np.ndarray:
    """Spectral flux (the positive change of the log spectrum), one value per hop, computed a
    block of frames at a time."""
    n = 1 + (len(mono) - frame) // hop
    window = np.hanning(frame)
    flux = np.empty(max(0, n - 1))
    previous = None
    for first in range(0, n, BLOCK_FRAMES):
        count = min(BLOCK_FRAMES, n - first)
        idx = np.arange(frame)[None, :] + hop * np.arange(first, first + count)[:, None]
        log_mag = np.log1p(100 * np.abs(np.fft.rfft(mono[idx] * window, axis=1)))
        if previous is not None:
            log_mag = np.concatenate([previous, log_mag])
        diffs = np.maximum(np.diff(log_mag, axis=0), 0).sum(axis=1)
        start = first - 1 if previous is not None else 0
        flux[start : start + len(diffs)] = diffs
        previous = log_mag[-1:]
    return flux


def detect_bpm(mono: np.ndarray, rate: int, *, low: float = 70.0, high: float = 180.0) -> float:
    """Beats per minute in [low, high]; 120 for silence or very short audio."""
    frame, hop = 2048, 512
    if len(mono) < rate * 4:
        return DEFAULT_BPM
    flux = onset_flux(mono, frame, hop)
    if not np.isfinite(flux).all() or flux.std() < 1e-9:
        return DEFAULT_BPM
    flux = (flux - flux.mean()) / flux.std()
    fps = rate / hop
    # The autocorrelation at the lags a tempo in [low, high] can have (the others are never chosen).
    max_lag = min(len(flux) - 1, int(fps * 60 / low) + 1)
    lags = np.arange(max_lag + 1)
    ac = np.array([np.dot(flux[: len(flux) - lag], flux[lag:]) for lag in lags])
    valid = (lags >= fps * 60 / high) & (lags <= fps * 60 / low)
    if not valid.any():
        return DEFAULT_BPM
    bpm_of_lag = 60 * fps / np.maximum(lags, 1)
    prior = np.exp(-0.5 * (np.log2(bpm_of_lag / 120.0) / 0.9) ** 2)  # gently favour ~120
    score = np.where(valid, ac * prior, -np.inf)
    lag = int(np.argmax(score))
    return float(round(60 * fps / lag, 2))
