"""Where the voice is: an energy gate on the vocals stem, and 30-second chunks for Whisper.

Pure numpy. On a separated vocals stem the energy gate is a good voice detector: Demucs
leaves near-silence where nobody sings.
"""

from __future__ import annotations

import numpy as np

FRAME_S = 0.02


BLOCK_FRAMES = 10_000  # frames measured at once: memory stays flat whatever the song's length


def frame_db(audio: np.ndarray, sample_rate: int, frame_s: float = FRAME_S) -> np.ndarray:
    """RMS level of consecutive frames in dBFS, computed :data:`BLOCK_FRAMES` at a time (a
    float64 copy of a whole two-hour song would take 2 GB)."""
    hop = max(1, int(sample_rate * frame_s))
    n = len(audio) // hop
    out = np.zeros(n, dtype=np.float32)
    for first in range(0, n, BLOCK_FRAMES):
        count = min(BLOCK_FRAMES, n - first)
        frames = audio[first * hop : (first + count) * hop].reshape(count, hop).astype(np.float64)
        rms = np.sqrt(np.mean(frames * frames, axis=1))
        out[first : first + count] = 20 * np.log10(np.maximum(rms, 1e-10))
    return out


def voiced_regions(
    audio: np.ndarray,
    sample_rate: int,
    *,
    below_peak_db: float = 35.0,
    floor_db: float = -50.0,
    min_gap_s: float = 0.6,
    min_len_s: float = 0.15,
    pad_s: float = 0.25,
) -> list[tuple[float, float]]:
    """Regions (start, end) in seconds where the level is within ``below_peak_db`` of the peak.

    Gaps shorter than ``min_gap_s`` are bridged, blips shorter than ``min_len_s`` dropped and
    each region padded by ``pad_s``. Silence (nothing above ``floor_db``) gives no regions.
    """
    db = frame_db(audio, sample_rate)
    if db.size == 0:
        return []
    peak = float(np.percentile(db, 99.5))
    threshold = max(peak - below_peak_db, floor_db)
    active = db > threshold
    if not active.any():
        return []
    edges = np.flatnonzero(np.diff(np.concatenate(([0], active.astype(np.int8), [0]))))
    regions = [(float(s) * FRAME_S, float(e) * FRAME_S) for s, e in zip(edges[::2], edges[1::2])]
    merged: list[list[float]] = []
    for start, end in regions:
        if merged and start - merged[-1][1] < min_gap_s:
            merged[-1][1] = end
        else:
            merged.append([start, end])
    duration = len(audio) / sample_rate
    out = []
    for start, end in merged:
        if end - start < min_len_s:
            continue
        out.append((max(0.0, start - pad_s), min(duration, end + pad_s)))
    # Padding can make neighbours touch: join them.
    joined: list[tuple[float, float]] = []
    for start, end in out:
        if joined and start <= joined[-1][1]:
            joined[-1] = (joined[-1][0], max(end, joined[-1][1]))
        else:
            joined.append((start, end))
    return joined


def chunk_regions(
    regions: list[tuple[float, float]], audio: np.ndarray, sample_rate: int, max_s: float = 30.0
) -> list[tuple[float, float]]:
    """Pack voiced regions into chunks of at most ``max_s`` seconds for Whisper.

    Neighbouring regions share a chunk while it stays under ``max_s`` (Whisper reads better
    with context); a region longer than that is cut at its quietest point between 2/3 and
    all of ``max_s``.
    """
    pieces: list[tuple[float, float]] = []
    for start, end in regions:
        while end - start > max_s:
            lo, hi = start + max_s * 2 / 3, start + max_s
            db = frame_db(audio[int(lo * sample_rate) : int(hi * sample_rate)], sample_rate)
            cut = lo + (int(np.argmin(db)) * FRAME_S if db.size else max_s / 3)
            pieces.append((start, cut))
            start = cut
        pieces.append((start, end))
    chunks: list[tuple[float, float]] = []
    for start, end in pieces:
        if chunks and end - chunks[-1][0] <= max_s:
            chunks[-1] = (chunks[-1][0], end)
        else:
            chunks.append((start, end))
    return chunks


def overlapped(chunks: list[tuple[float, float]], overlap_s: float, duration_s: float,
               max_s: float = 30.0) -> list[tuple[float, float]]:  # fmt: skip
    """The windows Whisper reads for ``chunks``: where two chunks touch (a cut inside sung
    audio), each window reaches ``overlap_s`` into its neighbour, so the word the cut falls in is
    heard whole by the window it starts in; never past ``max_s`` or the song."""
    windows = []
    for i, (start, end) in enumerate(chunks):
        room = max(0.0, (max_s - (end - start)) / 2)
        reach = min(overlap_s, room)
        left = i > 0 and abs(chunks[i - 1][1] - start) < 1e-6
        right = i + 1 < len(chunks) and abs(chunks[i + 1][0] - end) < 1e-6
        windows.append((max(0.0, start - reach) if left else start, min(duration_s, end + reach) if right else end))
    return windows


def frame_mask(regions: list[tuple[float, float]], n_frames: int, hop_s: float) -> np.ndarray:
    """Boolean mask of frames (centred at ``i * hop_s``) that fall inside any region."""
    times = np.arange(n_frames) * hop_s
    mask = np.zeros(n_frames, dtype=bool)
    for start, end in regions:
        mask |= (times >= start) & (times <= end)
    return mask


def frames_to_compute(audio: np.ndarray, sample_rate: int, n_frames: int, hop_s: float,
                      regions: list[tuple[float, float]] | None = None, gate: bool = True) -> np.ndarray:  # fmt: skip
    """The pitch frames a pitch backend computes: those inside ``regions`` (the word spans), else
    inside the voice an energy gate finds; every frame with ``gate=False``."""
    if not gate:
        return np.ones(n_frames, dtype=bool)
    return frame_mask(regions if regions is not None else voiced_regions(audio, sample_rate), n_frames, hop_s)
