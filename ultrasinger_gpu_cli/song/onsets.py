"""Where a sung word starts: Whisper's estimate moved onto the voice's own onset.

Whisper times a word by the cross-attention of its tokens over 20 ms audio frames, and that
attention peaks on the sound that identifies the word: in singing, the held vowel. The singer's
attack (where a chart's note starts) comes at or before that point, by at most a consonant
cluster; measured on hand-charted songs, Whisper's starts lie a median ~100 ms after the
chart's. So each recognised word's start moves to the voice's onset near it, found in the pitch
track the pipeline computes anyway:

1. a **voicing onset** (the pitch tracker's voiced frames begin after an unvoiced gap: the vowel
   or voiced consonant after a pause or an unvoiced consonant), else
2. a **new pitch level** inside continuous voicing (legato: the next word starts where the voice
   moves to its note),

the one nearest Whisper's start, searched from :data:`SEARCH_BEFORE_S` before it (a long
consonant cluster) to :data:`SEARCH_AFTER_S` after it (a couple of Whisper's frames), never
before the previous word's start plus a sung syllable, nor so late that the word loses its last
:data:`MIN_WORD_S`. A word with no onset in reach keeps Whisper's start. The end of a word is
left to the note builder, which trims every note to its voiced frames.

Pure numpy; works on any pitch backend's track (frames, Hz, confidence).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from ultrasinger_gpu_cli.song.words import Word

SEARCH_BEFORE_S = 0.3
SEARCH_AFTER_S = 0.05
MIN_WORD_S = 0.06  # a sung syllable is at least this long
MIN_LEVEL_S = 0.048  # a voiced stretch or a pitch level shorter than this is no onset
LEVEL_STEP = 0.8  # semitones from the level's median: the voice has moved to a new note
SMOOTH_FRAMES = 5  # a median over this many frames irons out the tracker's single-frame jitter
LEVEL_MEMORY_S = 0.25  # a level is the median of its last quarter second (bounded work on a long held note)


@dataclass(frozen=True)
class VoiceOnsets:
    """The onsets a pitch track shows (seconds): voicing onsets, and every new pitch level
    (voicing onsets included)."""

    voicing: np.ndarray
    levels: np.ndarray


def _smoothed(midi: np.ndarray, voiced: np.ndarray) -> np.ndarray:
    """A running median of the voiced frames' pitch over :data:`SMOOTH_FRAMES` (voiced frames only)."""
    out = midi.copy()
    half = SMOOTH_FRAMES // 2
    for i in np.flatnonzero(voiced):
        window = midi[max(0, i - half) : i + half + 1]
        window = window[~np.isnan(window)]
        out[i] = float(np.median(window))
    return out


def voice_onsets(times: np.ndarray, frequency: np.ndarray, voiced: np.ndarray) -> VoiceOnsets:
    """The track's onsets: where a voiced stretch of at least :data:`MIN_LEVEL_S` starts, and where
    the voice settles on a new pitch level (more than :data:`LEVEL_STEP` from the level's last
    :data:`LEVEL_MEMORY_S`) for at least as long."""
    times = np.asarray(times, dtype=float)
    if len(times) < 2 or not voiced.any():
        return VoiceOnsets(np.zeros(0), np.zeros(0))
    step = float(np.median(np.diff(times)))
    min_frames = max(1, int(round(MIN_LEVEL_S / step)))
    memory = max(min_frames, int(round(LEVEL_MEMORY_S / step)))
    midi = np.where(voiced, 69 + 12 * np.log2(np.maximum(frequency, 1e-6) / 440.0), np.nan)
    smooth = _smoothed(midi, voiced)
    segments: list[tuple[int, int, bool]] = []  # (first, end, starts after an unvoiced gap)
    first = None
    level: list[float] = []
    for i in range(len(times)):
        if not voiced[i]:
            if first is not None:
                segments.append((first, i, first == 0 or not voiced[first - 1]))
                first = None
            continue
        if first is None:
            first, level = i, [smooth[i]]
        elif abs(smooth[i] - float(np.median(level[-memory:]))) > LEVEL_STEP:
            segments.append((first, i, first == 0 or not voiced[first - 1]))
            first, level = i, [smooth[i]]
        else:
            level.append(smooth[i])
    if first is not None:
        segments.append((first, len(times), first == 0 or not voiced[first - 1]))
    kept = [(a, gap) for a, b, gap in segments if b - a >= min_frames]
    return VoiceOnsets(np.array([times[a] for a, gap in kept if gap]), np.array([times[a] for a, _ in kept]))


def refine_starts(words: Sequence[Word], onsets: VoiceOnsets) -> list[Word]:
    """Each word's start moved onto the voice's onset near it (see the module's rules); a word
    moved earlier shortens the word before it, which never ends after the next one starts."""
    out: list[Word] = []
    for w in words:
        low = w.start_s - SEARCH_BEFORE_S
        if out:
            low = max(low, out[-1].start_s + MIN_WORD_S)
        high = min(w.start_s + SEARCH_AFTER_S, w.end_s - MIN_WORD_S)
        start = w.start_s
        for candidates in (onsets.voicing, onsets.levels):
            near = candidates[(candidates >= low) & (candidates <= high)] if len(candidates) else candidates
            if len(near):
                start = float(near[np.argmin(np.abs(near - w.start_s))])
                break
        if out and out[-1].end_s > start:
            out[-1] = replace(out[-1], end_s=max(out[-1].start_s + MIN_WORD_S, start))
        out.append(replace(w, start_s=start) if start != w.start_s else w)
    return out
