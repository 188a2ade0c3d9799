"""Tempo and beat grid of a song: librosa's beat tracker, refined to a fine tempo.

The onset envelope (spectral flux of the log spectrum) is computed a block of frames at a time,
so memory stays bounded whatever the song's length; librosa's dynamic-programming beat tracker
places the beats on it. Its tempo is quantised to whole envelope frames (123.05 or 117.45
near 120 BPM at 43 frames a second); the beat period written is instead the least-squares slope of the tracked beat
times against their index, which is precise to a fraction of a frame over a song's many beats.
The grid's phase is then moved onto the attacks with a short-window envelope.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_BPM = 120.0
#: Frames whose spectra are computed at once: memory stays bounded whatever the song's length.
BLOCK_FRAMES = 2048
FRAME, HOP = 2048, 512
FINE_FRAME, FINE_HOP = 512, 64
TEMPOGRAM_S = 8.0  # librosa.feature.tempo's autocorrelation window (its ac_size)  # the attacks' envelope that places the grid's phase


@dataclass(frozen=True)
class Tempo:
    """A song's beat grid: quarter-note tempo and the time of one beat on it."""

    bpm: float
    first_beat_s: float = 0.0
    beats: int = 0  # beats the tracker placed (0: the default grid, nothing was tracked)

    @property
    def beat_s(self) -> float:
        return 60.0 / self.bpm

    def beat_at_or_before(self, t: float) -> float:
        """The grid's last beat at or before ``t`` (never before the start of the audio)."""
        k = np.floor((t - self.first_beat_s) / self.beat_s + 1e-9)
        at = self.first_beat_s + k * self.beat_s
        return float(at if at >= 0 else at + self.beat_s * np.ceil(-at / self.beat_s - 1e-9))


def onset_flux(mono: np.ndarray, frame: int = FRAME, hop: int = HOP) -> np.ndarray:
    """Spectral flux (the positive change of the log spectrum), one value per hop, computed a
    block of frames at a time."""
    n = 1 + (len(mono) - frame) // hop
    if n < 2:
        return np.zeros(0)
    window = np.hanning(frame)
    flux = np.empty(n - 1)
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


def fine_period(beat_times: np.ndarray) -> float:
    """The beat period from the beat times: the least-squares slope against the beat index, over
    the beats that follow the median spacing (a skipped or doubled beat would bend the line)."""
    spacing = float(np.median(np.diff(beat_times)))
    index = np.concatenate([[0], np.cumsum(np.maximum(1, np.round(np.diff(beat_times) / spacing)))])
    keep = np.ones(len(beat_times), dtype=bool)
    for _ in range(2):  # fit, drop beats far off the line, fit again
        slope, intercept = np.polyfit(index[keep], beat_times[keep], 1)
        off = np.abs(beat_times - (slope * index + intercept))
        keep = off <= max(0.02, 3 * np.median(off))
    return float(slope)


def mean_tempogram(envelope: np.ndarray, rate: int) -> np.ndarray:
    """librosa's tempogram of the onset envelope averaged over the song (what its tempo estimate
    reads), computed a block of frames at a time: the same windows (librosa's 8-second
    autocorrelation, centred, the envelope ramped to zero at its ends), one column.
    ``librosa.beat.beat_track`` left to itself builds the whole tempogram, 344 values per
    envelope frame and several copies of it: about 35 MB per minute of song."""
    from librosa.feature import tempogram

    win = int(TEMPOGRAM_S * rate / HOP)  # librosa.feature.tempo's ac_size in frames
    padded = np.pad(envelope, (win // 2, win // 2), mode="linear_ramp", end_values=(0, 0))
    total = np.zeros(win)
    for first in range(0, len(envelope), BLOCK_FRAMES):
        last = min(len(envelope), first + BLOCK_FRAMES)
        block = tempogram(onset_envelope=padded[first : last + win - 1], sr=rate, hop_length=HOP, win_length=win,
                          center=False)  # fmt: skip
        total += block.sum(axis=-1)
    return (total / len(envelope))[:, None]


def detect_tempo(mono: np.ndarray, rate: int) -> Tempo:
    """The song's quarter-note tempo and beat grid; 120 BPM from 0 s for silence or very short audio."""
    if len(mono) < rate * 4:
        return Tempo(DEFAULT_BPM)
    flux = onset_flux(np.asarray(mono, dtype=np.float32))
    if len(flux) < 8 or not np.isfinite(flux).all() or flux.std() < 1e-9:
        return Tempo(DEFAULT_BPM)
    import librosa

    envelope = np.concatenate([[0.0], flux])  # flux[i] is the change into frame i + 1
    bpm = librosa.feature.tempo(tg=mean_tempogram(envelope, rate), sr=rate, hop_length=HOP, start_bpm=DEFAULT_BPM)
    _, frames = librosa.beat.beat_track(onset_envelope=envelope, sr=rate, hop_length=HOP, bpm=bpm, trim=True)
    frames = np.asarray(frames, dtype=float)
    if len(frames) < 4:
        return Tempo(DEFAULT_BPM)
    # A frame's time is its window's centre.
    times = (frames * HOP + FRAME / 2) / rate
    period = fine_period(times)
    if not np.isfinite(period) or period <= 0:
        return Tempo(DEFAULT_BPM)
    return Tempo(round(60.0 / period, 2), _onset_phase(mono, rate, float(times[0]), period), len(times))


def _onset_phase(mono: np.ndarray, rate: int, first_beat_s: float, period_s: float) -> float:
    """The first beat moved onto the attacks: the tracker's envelope (2048-sample windows) sees an
    attack 20-35 ms early; a short-window envelope (512 samples, 3 ms hops) finds each beat's
    attack within 60 ms, and the grid moves by their median offset."""
    fine = onset_flux(np.asarray(mono, dtype=np.float32), frame=FINE_FRAME, hop=FINE_HOP)
    if len(fine) == 0:
        return first_beat_s
    times = ((np.arange(len(fine)) + 1) * FINE_HOP + FINE_FRAME / 2) / rate
    offsets = []
    for beat in np.arange(first_beat_s, len(mono) / rate - 0.1, period_s):
        lo, hi = np.searchsorted(times, [beat - 0.06, beat + 0.06])
        if hi > lo and fine[lo:hi].max() > 0:
            offsets.append(times[lo + int(np.argmax(fine[lo:hi]))] - beat)
    return first_beat_s + float(np.median(offsets)) if offsets else first_beat_s

