"""Tempo and beat grid of a song: librosa's beat tracker (computed here in numpy), refined to a
fine tempo.

The onset envelope (spectral flux of the log spectrum) is computed a block of frames at a time,
so memory stays bounded whatever the song's length; librosa's dynamic-programming beat tracker
(:func:`track_beats`, on the tempo of :func:`mean_tempogram`, also read in blocks) places the
beats on it, with no JIT to compile in each process. Its tempo is quantised to whole envelope
frames (123.05 or 117.45 near 120 BPM at 43 frames a second); the beat period written is instead
the least-squares slope of the tracked beat times against their index, which is precise to a
fraction of a frame over a song's many beats.
The grid's phase is then moved onto the attacks with a short-window envelope.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_BPM = 120.0
#: Frames whose spectra are computed at once: memory stays bounded whatever the song's length.
BLOCK_FRAMES = 2048
FRAME, HOP = 2048, 512
FINE_FRAME, FINE_HOP = 512, 64  # the attacks' envelope that places the grid's phase


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


# -- librosa's tempo estimate and beat tracker, without librosa ---------------------------------------
# The same computations as librosa 0.11's ``beat.beat_track(onset_envelope=...)`` (Ellis' dynamic
# programme on the tempo of the mean tempogram, log-normal prior around 120 BPM), in numpy: librosa's
# numba kernels compile in every new process (about 2.5 s of a cold run here; some are never
# cached), and its tempogram of the whole song held 344 values per envelope frame. A test checks
# the beats equal librosa's own on songs of every tempo.
TEMPOGRAM_S = 8.0  # the tempogram's autocorrelation window (librosa's ac_size)
MAX_BPM = 320.0  # no tempo above this (librosa's max_tempo)
TIGHTNESS = 100.0  # how closely beats keep the tempo (librosa's default)
_TINY = np.finfo(np.float64).tiny


def _periodic_hann(n: int) -> np.ndarray:
    """scipy's ``get_window("hann", n, fftbins=True)``, computed its way (bit for bit)."""
    fac = np.linspace(-np.pi, np.pi, n + 1)
    w = np.zeros(n + 1)
    w += 0.5 * np.cos(0 * fac)
    w += 0.5 * np.cos(1 * fac)
    return w[:-1]


def next_fast_len(n: int) -> int:
    """The smallest 5-smooth length (2^a 3^b 5^c) >= ``n``: scipy.fft's ``next_fast_len(n, real=True)``,
    without importing scipy (0.2 s of a cold run)."""
    best = 1 << max(0, n - 1).bit_length()  # a power of two always qualifies
    fives = 1
    while fives < best:
        threes = fives
        while threes < best:
            twos = threes
            while twos < n:
                twos *= 2
            best = min(best, twos)
            threes *= 3
        fives *= 5
    return best


def mean_tempogram(envelope: np.ndarray, rate: int) -> np.ndarray:
    """The onset envelope's tempogram averaged over the song (what the tempo estimate reads):
    for every envelope frame, the autocorrelation of the :data:`TEMPOGRAM_S` around it (centred,
    the envelope ramped to zero at its ends, a periodic Hann window), normalised to its peak;
    computed a block of frames at a time, so memory stays flat however long the song is."""
    win = int(TEMPOGRAM_S * rate / HOP)
    padded = np.pad(np.asarray(envelope, dtype=np.float64), (win // 2, win // 2), mode="linear_ramp", end_values=(0, 0))
    window = _periodic_hann(win)
    n_pad = next_fast_len(2 * win - 1)
    frames = np.lib.stride_tricks.sliding_window_view(padded, win)
    total = np.zeros(win)
    for first in range(0, len(envelope), BLOCK_FRAMES):
        block = frames[first : min(len(envelope), first + BLOCK_FRAMES)] * window
        spectrum = np.fft.rfft(block, n=n_pad, axis=-1)
        autocorrelation = np.fft.irfft(spectrum.real**2 + spectrum.imag**2, n=n_pad, axis=-1)[:, :win]
        peak = np.max(np.abs(autocorrelation), axis=-1, keepdims=True)
        peak[peak < _TINY] = 1.0
        total += (autocorrelation / peak).sum(axis=0)
    return total / len(envelope)


def tempo_of(mean_tg: np.ndarray, rate: int, start_bpm: float = DEFAULT_BPM) -> float:
    """The tempo (BPM) the mean tempogram peaks at, weighted by a log-normal prior (one octave
    wide) around ``start_bpm``; nothing above :data:`MAX_BPM`."""
    lags = np.arange(len(mean_tg), dtype=np.float64)
    with np.errstate(divide="ignore"):
        bpms = np.where(lags > 0, 60.0 * rate / (HOP * np.maximum(lags, 1.0)), np.inf)
        logprior = -0.5 * ((np.log2(bpms) - np.log2(start_bpm)) / 1.0) ** 2
    logprior[: int(np.argmax(bpms < MAX_BPM))] = -np.inf
    return float(bpms[int(np.argmax(np.log1p(1e6 * mean_tg) + logprior))])


def track_beats(envelope: np.ndarray, bpm: float, rate: int) -> np.ndarray:
    """The beat frames of the onset envelope at ``bpm``: Ellis' dynamic programme (each beat's
    score is the smoothed onset strength plus the best earlier beat's, penalised by how far the
    gap is from the tempo's, in log time), the last beat the last strong local maximum, weak
    leading and trailing beats trimmed."""
    envelope = np.asarray(envelope, dtype=np.float64)
    n = len(envelope)
    per_beat = float(np.round(rate / HOP * 60.0 / bpm))
    onsets = envelope / (envelope.std(ddof=1) + _TINY)
    window = np.exp(-0.5 * (np.arange(-per_beat, per_beat + 1) * 32.0 / per_beat) ** 2)
    local = np.convolve(onsets, window, mode="same") if n >= len(window) else np.convolve(onsets, window)[len(window) // 2 :][:n]
    # The programme: frame i's predecessor lies between round(per_beat / 2) and 2 * per_beat frames
    # back, so a block of that many frames depends only on frames before it.
    near = int(np.round(per_beat / 2))
    gaps = np.arange(near, int(2 * per_beat) + 1)
    penalty = TIGHTNESS * (np.log(gaps.astype(np.float64)) - np.log(per_beat)) ** 2
    cumscore = np.empty(n)
    backlink = np.full(n, -1, dtype=np.int64)
    step = max(1, near)
    for first in range(0, n, step):
        rows = np.arange(first, min(n, first + step))
        locs = rows[:, None] - gaps[None, :]
        valid = locs >= 0
        scores = np.where(valid, cumscore[np.maximum(locs, 0)] - penalty[None, :], -np.inf)
        best = np.argmax(scores, axis=1)  # the first best: the nearest predecessor, as the loop finds it
        found = valid[np.arange(len(rows)), best]
        cumscore[rows] = local[rows] + np.where(found, scores[np.arange(len(rows)), best], 0.0)
        backlink[rows] = np.where(found, locs[np.arange(len(rows)), best], -1)
    start = int(np.argmax(local >= 0.01 * local.max()))  # no beat before the onsets begin
    backlink[:start] = -1
    # The last beat: the last local maximum of the cumulative score at half their median or more.
    peaks = np.zeros(n, dtype=bool)
    if n > 2:
        peaks[1:-1] = (cumscore[1:-1] > cumscore[:-2]) & (cumscore[1:-1] >= cumscore[2:])
    if n > 1:
        peaks[-1] = cumscore[-1] > cumscore[-2]
    tail = n - 1
    if peaks.any():
        strong = np.flatnonzero(peaks & (cumscore >= 0.5 * np.median(cumscore[peaks])))
        tail = int(strong[-1]) if len(strong) else n - 1
    beats = np.zeros(n, dtype=bool)
    frame = tail
    while frame >= 0:
        beats[frame] = True
        frame = int(backlink[frame])
    # Weak beats at the ends go: the frames up to the first (and from the last) whose smoothed
    # onset strength exceeds half the RMS of the beats' smoothed strengths.
    smooth = np.convolve(local[beats], np.hanning(5))[2 : n + 2]
    threshold = 0.5 * float(np.sqrt(np.mean(smooth**2)))
    above = np.flatnonzero(local > threshold)
    if len(above) == 0:
        return np.zeros(0, dtype=int)
    beats[: above[0]] = False
    beats[above[-1] + 1 :] = False
    return np.flatnonzero(beats)


def detect_tempo(mono: np.ndarray, rate: int) -> Tempo:
    """The song's quarter-note tempo and beat grid; 120 BPM from 0 s for silence or very short audio."""
    if len(mono) < rate * 4:
        return Tempo(DEFAULT_BPM)
    flux = onset_flux(np.asarray(mono, dtype=np.float32))
    if len(flux) < 8 or not np.isfinite(flux).all() or flux.std() < 1e-9:
        return Tempo(DEFAULT_BPM)
    envelope = np.concatenate([[0.0], flux])  # flux[i] is the change into frame i + 1
    frames = track_beats(envelope, tempo_of(mean_tempogram(envelope, rate), rate), rate).astype(float)
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

