"""Tempo of a song from its onset envelope (spectral flux + autocorrelation). numpy only."""

from __future__ import annotations

import numpy as np

DEFAULT_BPM = 120.0


def detect_bpm(mono: np.ndarray, rate: int, *, low: float = 70.0, high: float = 180.0) -> float:
    """Beats per minute in [low, high]; 120 for silence or very short audio."""
    frame, hop = 2048, 512
    if len(mono) < rate * 4:
        return DEFAULT_BPM
    n = 1 + (len(mono) - frame) // hop
    idx = np.arange(frame)[None, :] + hop * np.arange(n)[:, None]
    spectrum = np.abs(np.fft.rfft(mono[idx] * np.hanning(frame), axis=1))
    log_mag = np.log1p(100 * spectrum)
    flux = np.maximum(np.diff(log_mag, axis=0), 0).sum(axis=1)
    if not np.isfinite(flux).all() or flux.std() < 1e-9:
        return DEFAULT_BPM
    flux = (flux - flux.mean()) / flux.std()
    fps = rate / hop
    ac = np.correlate(flux, flux, mode="full")[len(flux) - 1 :]
    lags = np.arange(len(ac))
    valid = (lags >= fps * 60 / high) & (lags <= fps * 60 / low)
    if not valid.any():
        return DEFAULT_BPM
    bpm_of_lag = 60 * fps / np.maximum(lags, 1)
    prior = np.exp(-0.5 * (np.log2(bpm_of_lag / 120.0) / 0.9) ** 2)  # gently favour ~120
    score = np.where(valid, ac * prior, -np.inf)
    lag = int(np.argmax(score))
    return float(round(60 * fps / lag, 2))
