"""The song's key, heard from its sung notes, and a sung pitch written in it.

A sung note lands between two semitones more often than a tracker's error suggests: a singer
scoops, goes flat on a short note, or the tracker follows a chord tone of the mix for a few
frames. A person charting a song writes such a note as the tone of the song's key it leans
to: hand charts keep 95-100% of their notes in one diatonic scale (the seven tones of a major
key, or of its relative minor and other modes: the same pitch classes). So a note whose pitch
rounds to a tone outside the key is written as the key's tone on the side the voice leans to
(every tone outside a diatonic scale lies between two inside it), where

* the key is clear around the note: the best scale of the sung notes within
  :data:`KEY_WINDOW_S` holds :data:`KEY_SHARE` of their sung time (a song that modulates is read
  in each stretch's own key; a chromatic passage, or a song no scale fits, has none), and
* the voice is not squarely on the outside tone (within :data:`IN_TUNE`): a blue note or a
  chromatic passing tone sung in tune is meant, and kept.

Pure numpy; no heavy imports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: The major scale's pitch classes from its tonic; its modes (natural minor, dorian, ...) are the
#: same seven pitch classes under another tonic, so one set per tonic covers them all.
DIATONIC = (0, 2, 4, 5, 7, 9, 11)
KEY_WINDOW_S = 30.0  # the notes within this many seconds either side of a note tell its key
KEY_SHARE = 0.8  # the key's scale must hold this share of their sung time to be trusted
IN_TUNE = 0.1  # semitones: a tone outside the key sung this close to its pitch is meant
MIN_KEY_NOTES = 8  # fewer sung notes than this around a note tell no key

_SCALES = np.array([[int((pc - tonic) % 12 in DIATONIC) for pc in range(12)] for tonic in range(12)])


@dataclass(frozen=True)
class SungKey:
    """The sung notes a song's key is read from: their middles (seconds, ascending), pitch
    classes (0 = C) and lengths (seconds)."""

    middles_s: np.ndarray
    pitch_classes: np.ndarray
    lengths_s: np.ndarray

    @classmethod
    def of(cls, notes: Sequence[tuple[float, float, int]]) -> SungKey:
        """From sung notes as (start s, end s, MIDI)."""
        rows = sorted(((s + e) / 2, int(m) % 12, max(e - s, 0.0)) for s, e, m in notes)
        middles, classes, lengths = (np.array(c, dtype=float) for c in zip(*rows)) if rows else (np.zeros(0),) * 3
        return cls(middles, classes.astype(int), lengths)

    def scale_at(self, time_s: float) -> np.ndarray | None:
        """The diatonic scale (12 flags, one per pitch class) of the notes within
        :data:`KEY_WINDOW_S` of ``time_s``, or None where no scale holds :data:`KEY_SHARE` of their
        time (or too few notes are there to tell)."""
        lo, hi = np.searchsorted(self.middles_s, [time_s - KEY_WINDOW_S, time_s + KEY_WINDOW_S])
        if hi - lo < MIN_KEY_NOTES:
            return None
        weights = np.bincount(self.pitch_classes[lo:hi], weights=self.lengths_s[lo:hi] + 1e-3, minlength=12)
        held = _SCALES @ weights
        best = int(np.argmax(held))
        return _SCALES[best] if held[best] >= KEY_SHARE * weights.sum() else None

    def write(self, pitch: float, time_s: float) -> int:
        """A sung pitch (fractional MIDI) as the note a chart writes: the nearest semitone, or,
        where that is outside a clear key, the key's neighbouring tone the voice leans to."""
        nearest = int(np.round(pitch))
        scale = self.scale_at(time_s)
        if scale is None or scale[nearest % 12]:
            return nearest
        lean = pitch - nearest
        if abs(lean) < IN_TUNE:
            return nearest
        side = 1 if lean > 0 else -1
        return nearest + side if scale[(nearest + side) % 12] else nearest
