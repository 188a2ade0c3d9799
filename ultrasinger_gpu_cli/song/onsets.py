"""Where a sung word starts: Whisper's estimate moved onto the voice's own onset.

Whisper times a word by the cross-attention of its tokens over 20 ms audio frames. ugpu reads
that attention on every head of the decoder's upper half
(:func:`~ultrasinger_gpu_cli.components.whisper.word_heads`), which follows a singer's attack
far better than a release's speech-tuned heads (those lock onto the held vowel and put sung
words a median ~100 ms late); still, an estimate read off 20 ms frames of attention lands a
frame or several either side of where the voice starts. So each recognised word's start moves
to the voice's onset near it, found in the pitch track the pipeline computes anyway:

1. a **voicing onset** (the pitch tracker's voiced frames begin after an unvoiced gap: the vowel
   or voiced consonant after a pause or an unvoiced consonant), else
2. a **new pitch level** inside continuous voicing (legato: the next word starts where the voice
   moves to its note),

searched :data:`SEARCH_S` either side of Whisper's start (about a consonant cluster: Whisper's
estimate has no known lean either way on these heads), never so late that the word
loses its last :data:`MIN_WORD_S`. The onsets go to the words all together, in order: each
onset starts one word at most, each word starts a sung syllable after the one before, and of
those ways the one with the fewest words left at Whisper's start, then the fewest on a pitch
level where a voicing onset was in reach, then the least movement, wins (word by word, a word
Whisper heard short took the next word's onset, the nearest to its own late start). A word with
no onset in reach keeps Whisper's start. The end of a word is
left to the note builder, which trims every note to its voiced frames.

Before that search, a word Whisper's alignment handed a rest (an instrumental bar between two
lines of one chunk becomes the start of the next line's first word) starts where the voice
comes back after it (:func:`after_rests`): the search then starts from there.

Pure numpy; works on any pitch backend's track (frames, Hz, confidence).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np

from ultrasinger_gpu_cli.song.median import median
from ultrasinger_gpu_cli.song.words import Word

SEARCH_S = 0.2
MIN_WORD_S = 0.06  # a sung syllable is at least this long
PAUSE_S = 0.25  # unvoiced this long: a rest or a breath, not a consonant (an unvoiced consonant lasts 50-150 ms)
PHRASE_PAUSE_S = 0.8  # a pause at least this long between words ends a phrase: no held note holds one
LONG_WORD = 2.0  # a word longer than this many times the song's median word: its start is in doubt
MIN_LEVEL_S = 0.048  # a voiced stretch or a pitch level shorter than this is no onset
LEVEL_STEP = 0.8  # semitones from the level's median: the voice has moved to a new note
SMOOTH_FRAMES = 5  # a median over this many frames irons out the tracker's single-frame jitter
LEVEL_MEMORY_S = 0.25  # a level is the median of its last quarter second (bounded work on a long held note)


@dataclass(frozen=True)
class VoiceOnsets:
    """The onsets a pitch track shows (seconds): voicing onsets, and every new pitch level
    (voicing onsets included); and the track's frames (``times``, ``voiced``) they were found in."""

    voicing: np.ndarray
    levels: np.ndarray
    times: np.ndarray
    voiced: np.ndarray


def _smoothed(midi: np.ndarray, voiced: np.ndarray) -> np.ndarray:
    """A running median of the voiced frames' pitch over :data:`SMOOTH_FRAMES` (voiced frames only)."""
    out = midi.copy()
    half = SMOOTH_FRAMES // 2
    for i in np.flatnonzero(voiced):
        window = midi[max(0, i - half) : i + half + 1]
        window = window[~np.isnan(window)]
        out[i] = median(window)
    return out


def voice_onsets(times: np.ndarray, frequency: np.ndarray, voiced: np.ndarray) -> VoiceOnsets:
    """The track's onsets: where a voiced stretch of at least :data:`MIN_LEVEL_S` starts, and where
    the voice settles on a new pitch level (more than :data:`LEVEL_STEP` from the level's last
    :data:`LEVEL_MEMORY_S`) for at least as long."""
    times = np.asarray(times, dtype=float)
    if len(times) < 2 or not voiced.any():
        return VoiceOnsets(np.zeros(0), np.zeros(0), times, np.asarray(voiced, dtype=bool))
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
        elif abs(smooth[i] - median(level[-memory:])) > LEVEL_STEP:
            segments.append((first, i, first == 0 or not voiced[first - 1]))
            first, level = i, [smooth[i]]
        else:
            level.append(smooth[i])
    if first is not None:
        segments.append((first, len(times), first == 0 or not voiced[first - 1]))
    kept = [(a, gap) for a, b, gap in segments if b - a >= min_frames]
    return VoiceOnsets(np.array([times[a] for a, gap in kept if gap]), np.array([times[a] for a, _ in kept]), times,
                       np.asarray(voiced, dtype=bool))  # fmt: skip


class _Start(NamedTuple):
    """A place a word may start, and what taking it costs."""

    start_s: float
    kept: int  # 1: Whisper's own start (no onset in reach taken)
    level_only: int  # 1: a pitch level, not a voicing onset
    moved_s: float  # how far from Whisper's start

    def may_follow(self, before: _Start) -> bool:
        """In order, and an onset taken a sung syllable after the word before (two of Whisper's
        own starts stay as close as Whisper put them)."""
        gap = self.start_s - before.start_s
        return gap >= MIN_WORD_S or (gap >= 0 and bool(self.kept and before.kept))


def _starts(w: Word, onsets: VoiceOnsets, voicing: set[float]) -> list[_Start]:
    """Where word ``w`` may start: every onset in its reach, and its own start (last)."""
    low, high = w.start_s - SEARCH_S, min(w.start_s + SEARCH_S, w.end_s - MIN_WORD_S)
    near = onsets.levels[(onsets.levels >= low) & (onsets.levels <= high)] if len(onsets.levels) else onsets.levels
    return [_Start(float(o), 0, int(float(o) not in voicing), abs(float(o) - w.start_s)) for o in near] + [
        _Start(w.start_s, 1, 0, 0.0)]  # fmt: skip


def after_rests(words: Sequence[Word], onsets: VoiceOnsets) -> list[Word]:
    """Each long word started where the voice comes back after the rest Whisper gave it.

    Whisper's alignment gives every audio frame to a token, rests too: where a chunk holds an
    instrumental bar between two lines, the bar goes to the next line's first word, which then
    starts where the line before ended and lasts far longer than the words around it. (Whisper's
    own rules cut such a word to twice the median word from its end, blind to the voice, and only
    at a segment's first word or after a sentence end; inside ugpu's chunks neither is there.)
    A singer's word starts with the voice: where the voice starts (a voicing onset) within
    :data:`SEARCH_S` of Whisper's start, Whisper heard the word begin and :func:`refine_starts`
    moves it onto that onset. Where none does, Whisper's start lies in a rest or on the held end
    of the word before; then a word longer than :data:`LONG_WORD` times the median word starts
    at the last voicing onset inside it that follows a rest (at least :data:`PAUSE_S` with no
    voiced frame) and leaves it :data:`MIN_WORD_S`. A long word the voice sings through keeps
    its start; so does one the tracker hears no voice in after a rest.

    A rest as long as a phrase's pause (:data:`PHRASE_PAUSE_S`) inside a long word is no held
    note either, even where a voicing onset lies near Whisper's start: that voice is the word
    before's held end (the alignment gave it the frames up to there), and the word starts at
    the last voicing onset after such a rest. Not a line's last word (the next word starts a
    line): there the alignment gives the word the audio after it, up to the next line, so a
    rest inside it is its end, not its start."""
    if len(words) < 2 or not len(onsets.voicing):
        return list(words)
    long_s = LONG_WORD * float(np.median([w.end_s - w.start_s for w in words]))
    voiced_at = np.flatnonzero(onsets.voiced)
    out = []
    for k, w in enumerate(words):
        heard = np.abs(onsets.voicing - w.start_s).min() <= SEARCH_S  # a voice starts near Whisper's start
        ends_line = k + 1 == len(words) or words[k + 1].phrase_start
        rest_s = PAUSE_S if not heard else None if ends_line else PHRASE_PAUSE_S
        if w.end_s - w.start_s > long_s and rest_s is not None:
            for onset in onsets.voicing[(onsets.voicing > w.start_s) & (onsets.voicing <= w.end_s - MIN_WORD_S)][::-1]:
                before = voiced_at[voiced_at < np.searchsorted(onsets.times, onset)]  # the voiced frames before it
                silent_since = float(onsets.times[before[-1] + 1]) if len(before) else float(onsets.times[0])
                if onset - max(silent_since, w.start_s) >= rest_s:
                    w = replace(w, start_s=float(onset))
                    break
        out.append(w)
    return out


def refine_starts(words: Sequence[Word], onsets: VoiceOnsets) -> list[Word]:
    """Each word's start moved onto the voice's onset near it (see the module's rules; a long word
    without an onset near its start first after its rest, :func:`after_rests`); a word
    moved earlier shortens the word before it, which never ends after the next one starts.

    The onsets are given to the words all together, in order: an onset starts at most one word,
    and each word starts at least a sung syllable after the one before (one taken onset is never
    the next word's too). Of the ways to do so, the one that leaves the fewest words at Whisper's
    start, then puts the fewest on a pitch level where a voicing onset was in reach, then moves
    the words least. (Word by word, a word Whisper heard short would take its neighbour's onset,
    the nearest to its own late start, and leave that neighbour none.)"""
    if not words:
        return []
    words = after_rests(words, onsets)
    voicing = {float(o) for o in onsets.voicing}
    options = [_starts(w, onsets, voicing) for w in words]
    # cost[i][k]: the least (kept, level_only, moved_s) of words 0..i with word i at options[i][k];
    # came[i][k]: word i - 1's option on that way
    cost = [[(o.kept, o.level_only, o.moved_s) for o in options[0]]]
    came: list[list[int]] = [[-1] * len(options[0])]
    for i in range(1, len(words)):
        row, back = [], []
        for o in options[i]:
            ways = [(cost[i - 1][k], k) for k, before in enumerate(options[i - 1]) if o.may_follow(before)]
            if ways:
                (kept, level, moved), k = min(ways)
                row.append((kept + o.kept, level + o.level_only, moved + o.moved_s))
            else:  # no way to it: from the word before's own start, at a cost no other way reaches
                row.append((10**9, 0, 0.0))
                k = len(options[i - 1]) - 1
            back.append(k)
        cost.append(row)
        came.append(back)
    k = min(range(len(cost[-1])), key=lambda j: cost[-1][j])
    starts = [0.0] * len(words)
    for i in range(len(words) - 1, -1, -1):
        starts[i] = options[i][k].start_s
        k = came[i][k]
    out: list[Word] = []
    for w, start in zip(words, starts):
        if out and out[-1].end_s > start:
            out[-1] = replace(out[-1], end_s=max(out[-1].start_s + MIN_WORD_S, start))
        out.append(replace(w, start_s=start) if start != w.start_s else w)
    return out
