"""How notes are made: words and a pitch track -> the notes, phrases and beat grid of a chart.

Pure functions, no heavy imports (README, "How notes are made").

1. **Words.** No word is dropped: a zero-length word gets :data:`MIN_WORD_S` where its
   neighbours leave room, else it joins the word before it. A recognised word's start moves
   onto the voice's onset near it (:mod:`.onsets`): Whisper's start is read off its attention.
2. **Syllables** (:mod:`.syllables`) come from the language's hyphenation dictionary (pyphen)
   where there is one, else from the vowel-group rule; a word's time is shared out by letters.
3. **The voice decides the note.** Each syllable's note is trimmed to the confidently voiced
   pitch frames inside the syllable's time, so notes don't cover silence; a voice heard for less
   than a sung syllable lasts keeps that much of its syllable (:func:`sung_long`). A syllable with no
   voiced frame is a freestyle note (``F``) with its text. With ``rap=True`` a word with no
   stable pitch becomes rap notes (``R``).
4. **Pitch** (:func:`note_pitch`): octave flips folded, the held frames only (attack and release
   left out), the pitch the voice dwells on longest, each frame weighted by the tracker's
   confidence; then, once the middle of the voice's range is known, frames more than
   :data:`VOICE_SPAN` from it (a bass line the tracker followed) are left out; once the song's
   key is known, a pitch between two semitones is written in it (:mod:`.keys`); a note that leaps
   away from both its neighbours and straight back is heard again near them
   (:func:`without_leaps`). A syllable
   splits into ``~`` continuations where the voice holds a new pitch (not an octave jump) for
   :data:`MIN_SPLIT_S`; a re-pitched chart's notes split the same way on its own grid
   (:func:`repitch_parts`).
5. **Phrases** break at pauses of :data:`PHRASE_PAUSE_S`, at Whisper segment starts and lyrics
   lines, where Whisper wrote a capital letter (:func:`capitals_start_lines`), after sentence
   ends, and wherever a line would run past :data:`MAX_LINE_S` or :data:`MAX_LINE_SYLLABLES`:
   between words, at a breath (a gap of :data:`.onsets.PAUSE_S`) where there is one, else after
   a clause mark Whisper wrote (:data:`CLAUSE_END`), else in the line's middle (a shorter gap is
   a consonant, not a line end). No line is left a single syllable.
6. **The grid** (:func:`grid_multiple`). ``#BPM`` is the song's tempo times the smallest multiple
   (1, 2, 4 or 8) that puts it at :data:`MIN_CHART_BPM` or more, as hand charts do, finer only
   where more than :data:`FINER_SHARE` of the notes would lose their sung start on it (a note
   written a beat long runs into the next, which moves off its beat: :func:`on_grid`); ``#GAP`` is a
   beat of the song's beat grid, so notes line up with the beats in an editor. A note starts on
   the beat its voice starts in (:func:`start_beat`), as charters place it, and ends on the beat
   nearest its end, a beat before the next note where it would touch it (:func:`on_grid`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ultrasinger_gpu_cli.song.keys import SungKey
from ultrasinger_gpu_cli.song.median import median
from ultrasinger_gpu_cli.song.onsets import PAUSE_S, PHRASE_PAUSE_S, refine_starts, voice_onsets
from ultrasinger_gpu_cli.song.spoken import is_title
from ultrasinger_gpu_cli.song.syllables import MIN_SYLLABLE_S, place_words, split_words
from ultrasinger_gpu_cli.song.tempo import Tempo
from ultrasinger_gpu_cli.song.ultrastar import PITCHED, Chart, Note, Song
from ultrasinger_gpu_cli.song.words import Word

CONFIDENCE = 0.5  # periodicity above which a pitch frame counts as voiced
MAX_LINE_S = 8.0  # a line longer than this is split (at a breath, a clause mark, else its middle)
MAX_LINE_SYLLABLES = 12
MIN_SPLIT_S = 0.15  # a pitch run must last this long to become its own ~ note
GRID_MULTIPLES = (1, 2, 4, 8)  # #BPM = tempo x this: a beat is a 16th, 32nd, 64th or 128th note
SENTENCE_END = re.compile(r"[.!?…。！？]['\"»”)]*$")
CLAUSE_END = re.compile(r"[,;:—–、，；：]['\"»”)]*$")  # a comma, colon, dash ...: where a long line may break
STABLE_COVERAGE = 0.5  # rap: a syllable's pitch is stable when this much of it is voiced ...
STABLE_SHARE = 0.6  # ... and this share of its voiced frames lie within a semitone of its pitch
STABLE_SLOPE = 20.0  # semitones per second: faster than this the voice is moving, not holding a note
DENSITY_WIDTH = 0.5  # semitones: a note's pitch is the peak of its frames' density at this width
RISE_ST = 1.0  # semitones a voice climbs through a note to be rising into it (less is intonation)
RISING_SHARE = 0.7  # the share of a rising note's held frames that rise or hold
VOICE_SPAN = 12  # semitones either side of the voice's middle: a singer's two-octave range
LEAP = 7  # semitones: a note this far from both its neighbours, on one side, is a note heard wrong
PHRASE_SPAN = 6  # semitones either side of its neighbours' middle where such a note is heard again
MIN_CHART_BPM = 200.0  # hand charts' #BPM lies between about 200 and 600: a beat of 75 to 25 ms
FINER_SHARE = 0.1  # the grid goes finer only while more than this share of the notes would move off their start


def sentence_end(text: str) -> bool:
    """Whether a written word ends a sentence (".", "!", "?" ...; not an abbreviated title: "Mr.")."""
    return bool(SENTENCE_END.search(text.rstrip())) and not is_title(text)


# -- pitch -----------------------------------------------------------------------------------------
def hz_to_midi(freq: np.ndarray) -> np.ndarray:
    return 69 + 12 * np.log2(np.maximum(freq, 1e-6) / 440.0)


def fold_octaves(midi: np.ndarray) -> np.ndarray:
    """Values an octave or two from the median (within a semitone and a half) folded onto it:
    a tracker's octave flips inside one sung note."""
    if len(midi) == 0:
        return midi
    centre = median(midi)
    shift = np.round((midi - centre) / 12.0)
    folded = midi - 12 * shift
    near = (np.abs(shift) >= 1) & (np.abs(shift) <= 2) & (np.abs(folded - centre) <= 1.5)
    return np.where(near, folded, midi)


def stable_frames(midi: np.ndarray, step_s: float) -> np.ndarray:
    """The frames where the voice holds its pitch: it moves slower than :data:`STABLE_SLOPE`
    semitones a second to both neighbours (frames ``step_s`` apart): the attack's scoop and the
    release's fall are left out, a vibrato of half a semitone kept."""
    if len(midi) < 3:
        return np.ones(len(midi), dtype=bool)
    calm = np.abs(np.diff(midi)) < STABLE_SLOPE * step_s
    keep = np.ones(len(midi), dtype=bool)
    keep[1:] &= calm
    keep[:-1] &= calm
    return keep


def note_pitch(midi: np.ndarray, weight: np.ndarray | None = None, step_s: float = 0.016) -> float:
    """A sung note's pitch (fractional MIDI): octave flips folded, then the pitch the voice dwells
    on longest in its held frames (:func:`stable_frames`), each frame counting by the tracker's
    confidence: the peak of their density, smoothed over :data:`DENSITY_WIDTH` semitones. Unlike
    a plain median, a scoop into the note or a fall out of it does not pull the pitch off. A voice
    that rises into its note slowly, all through it (its last third :data:`RISE_ST` or more above
    its first, :data:`RISING_SHARE` of its steps rising or holding, the tracker as sure of it
    there as before), is written at the pitch it rises to, as a person charting it hears the note
    it reaches for; a fall is a release and keeps the held pitch."""
    midi = fold_octaves(np.asarray(midi, dtype=float))
    weight = np.ones(len(midi)) if weight is None else np.asarray(weight, dtype=float)
    if len(midi) == 0:
        raise ValueError("a note's pitch needs voiced frames")
    held = stable_frames(midi, step_s)
    if held.sum() >= 2:
        midi, weight = midi[held], weight[held]
    if len(midi) < 3:
        return median(midi)
    third = max(1, len(midi) // 3)
    arrives = median(midi[-third:])
    if (arrives - median(midi[:third]) >= RISE_ST and np.mean(np.diff(midi) >= -0.05) >= RISING_SHARE
            and weight[-third:].mean() >= weight[:third].mean()):  # fmt: skip
        return float(arrives)  # the voice rises into the note all through it: the pitch it rises to
    grid = np.arange(np.floor(midi.min()) - 1, np.ceil(midi.max()) + 1, 0.05)
    density = (weight[None, :] * np.exp(-0.5 * ((grid[:, None] - midi[None, :]) / DENSITY_WIDTH) ** 2)).sum(axis=1)
    return float(grid[int(np.argmax(density))])


def voice_centre(pitches: Sequence[float], durations: Sequence[float]) -> float | None:
    """The middle of the voice's range: the duration-weighted median of its notes' pitches."""
    if not pitches:
        return None
    order = np.argsort(pitches)
    values, weights = np.asarray(pitches, dtype=float)[order], np.asarray(durations, dtype=float)[order] + 1e-9
    cumulative = np.cumsum(weights)
    return float(values[np.searchsorted(cumulative, cumulative[-1] / 2)])


@dataclass(frozen=True)
class PitchTrackView:
    """The pitch frames a chart is made from (times in seconds, Hz, periodicity).

    ``centre`` (MIDI), once known, is the middle of the voice's range: a note's frames more than
    :data:`VOICE_SPAN` semitones from it (a bass line or an instrument the tracker followed on a
    mix, or a leak of one into the vocals) are left out where the note has others."""

    times: np.ndarray
    frequency: np.ndarray
    confidence: np.ndarray
    threshold: float = CONFIDENCE
    centre: float | None = None
    key: SungKey | None = None

    @functools.cached_property
    def voiced(self) -> np.ndarray:
        return (self.confidence >= self.threshold) & (self.frequency > 0)

    @functools.cached_property
    def step_s(self) -> float:
        return float(np.median(np.diff(self.times))) if len(self.times) > 1 else 0.01

    @functools.cached_property
    def midi(self) -> np.ndarray:
        return hz_to_midi(self.frequency)

    def inside(self, start_s: float, end_s: float) -> np.ndarray:
        """The voiced frames in [start, end), within the voice's range where it has any there."""
        inside = self.voiced & (self.times >= start_s) & (self.times < end_s)
        if self.centre is not None and inside.any():
            in_range = inside & (np.abs(self.midi - self.centre) <= VOICE_SPAN)
            if in_range.sum() >= 2:
                return in_range
        return inside

    def pitch_between(self, start_s: float, end_s: float) -> int | None:
        """The pitch of the voiced frames in [start, end) (:func:`note_pitch`), or None; once the
        song's key is known, written in it (:meth:`SungKey.write`)."""
        inside = self.inside(start_s, end_s)
        if not inside.any():
            return None
        pitch = note_pitch(self.midi[inside], self.confidence[inside], self.step_s)
        if self.centre is not None and abs(pitch - self.centre) > VOICE_SPAN:  # only out-of-range frames: fold them in
            pitch -= 12 * np.round((pitch - self.centre) / 12)
        return self._written(pitch, start_s, end_s)

    def pitch_near(self, start_s: float, end_s: float, middle: float, span: float) -> int | None:
        """:meth:`pitch_between` from the voiced frames in [start, end) within ``span`` semitones
        of ``middle`` only (None where fewer than two are)."""
        inside = self.inside(start_s, end_s) & (np.abs(self.midi - middle) <= span)
        if inside.sum() < 2:
            return None
        return self._written(note_pitch(self.midi[inside], self.confidence[inside], self.step_s), start_s, end_s)

    def _written(self, pitch: float, start_s: float, end_s: float) -> int:
        """A heard pitch as the chart writes it: in the song's key once it is known."""
        if self.key is not None:
            return self.key.write(pitch, (start_s + end_s) / 2)
        return int(np.round(pitch))


@dataclass(frozen=True)
class SyllableVoice:
    """What the voice does inside one syllable's time."""

    unit: Word
    start_s: float  # trimmed to the voiced frames (the syllable's own times where none is voiced)
    end_s: float
    parts: tuple[tuple[float, float, int], ...]  # (start, end, midi); more than one: ~ notes
    voiced: bool
    stable: bool


def _runs(times: np.ndarray, midi: np.ndarray) -> list[list[Any]]:
    """Runs of one rounded pitch, [start s, end s, midi], joined where the same pitch resumes."""
    rounded = np.round(midi).astype(int)
    runs: list[list[Any]] = []
    start = 0
    for i in range(1, len(rounded) + 1):
        if i == len(rounded) or rounded[i] != rounded[start]:
            runs.append([float(times[start]), float(times[i - 1]), int(np.round(median(midi[start:i])))])
            start = i
    return runs


def listen(unit: Word, track: PitchTrackView) -> SyllableVoice:
    inside = track.inside(unit.start_s, unit.end_s)
    if not inside.any():
        return SyllableVoice(unit, unit.start_s, unit.end_s, (), False, False)
    times = track.times[inside]
    midi = fold_octaves(track.midi[inside])
    start_s = max(unit.start_s, float(times[0]))
    end_s = min(unit.end_s, float(times[-1]) + track.step_s)
    pitch = track.pitch_between(unit.start_s, unit.end_s)
    assert pitch is not None
    coverage = len(times) * track.step_s / max(unit.end_s - unit.start_s, track.step_s)
    stable = coverage >= STABLE_COVERAGE and float(np.mean(np.abs(midi - pitch) <= 1.0)) >= STABLE_SHARE
    runs = [r for r in _runs(times, midi) if r[1] - r[0] >= MIN_SPLIT_S]
    merged: list[list[Any]] = []
    for run in runs:  # neighbouring runs of the same pitch join
        if merged and merged[-1][2] == run[2]:
            merged[-1][1] = run[1]
        else:
            merged.append(run)
    if len(merged) <= 1 or end_s - start_s < 2 * MIN_SPLIT_S:
        return SyllableVoice(unit, start_s, end_s, ((start_s, end_s, pitch),), True, stable)
    parts = []
    for k, (run_start, _end, m) in enumerate(merged):
        s = start_s if k == 0 else run_start
        e = end_s if k == len(merged) - 1 else merged[k + 1][0]
        heard = track.pitch_between(s, e)
        parts.append((s, e, m if heard is None else heard))
    joined: list[tuple[float, float, int]] = []
    for part in parts:  # parts the held pitch puts on one note join again
        if joined and joined[-1][2] == part[2]:
            joined[-1] = (joined[-1][0], part[1], part[2])
        else:
            joined.append(part)
    return SyllableVoice(unit, start_s, end_s, tuple(joined), True, stable)


def sung_long(voice: SyllableVoice) -> tuple[tuple[float, float, int], ...]:
    """A syllable's notes, the last ending at least :data:`.syllables.MIN_SYLLABLE_S` after the
    first starts where the syllable lasts that long: a voice heard for less than a sung syllable
    lasts is the tracker's fragment of it (a fast syllable on a mix, voiced for 40 ms: one beat,
    where hand charts write 80-250 ms). The phrases are found on the voice as heard (a breath
    after the fragment is one)."""
    first, last = voice.parts[0], voice.parts[-1]
    if last[1] - first[0] >= MIN_SYLLABLE_S:
        return voice.parts
    end = max(last[1], min(voice.unit.end_s, first[0] + MIN_SYLLABLE_S))
    return (*voice.parts[:-1], (last[0], end, last[2]))


def listen_all(units: Sequence[Word], track: PitchTrackView) -> tuple[list[SyllableVoice], PitchTrackView]:
    """Every syllable's voice, in three passes: the first finds the middle of the voice's range
    (:func:`voice_centre` of the notes heard), the second hears each note again within an octave
    of it (:attr:`PitchTrackView.centre`) and so finds the song's key (:class:`.keys.SungKey`),
    the third writes each note in that key (and no note leaps away and straight back:
    :func:`without_leaps`). Returns the voices and the track with both."""
    first = [listen(u, track) for u in units]
    centre = voice_centre([p[2] for v in first for p in v.parts], [p[1] - p[0] for v in first for p in v.parts])
    if centre is None:
        return first, track
    ranged = replace(track, centre=centre)
    second = [listen(u, ranged) for u in units]
    keyed = replace(ranged, key=SungKey.of([p for v in second for p in v.parts]))
    return without_leaps([listen(u, keyed) for u in units], keyed), keyed


def without_leaps(voices: Sequence[SyllableVoice], track: PitchTrackView) -> list[SyllableVoice]:
    """The notes heard again where one leaps :data:`LEAP` semitones or more from both the note
    before and the note after it, on the same side, inside a phrase (no pause of
    :data:`PHRASE_PAUSE_S` either side): a sung line moves in steps and small leaps, and a
    note that jumps away and straight back is the tracker's (an octave flip, a bass or a chord
    tone of the mix for that note), not the singer's (hand charts have none). It is heard from
    its frames within :data:`PHRASE_SPAN` of its neighbours' middle; where it has none there, it
    keeps its pitch."""
    parts = [[list(p) for p in v.parts] for v in voices]
    flat = sorted((p for v in parts for p in v), key=lambda p: p[0])  # the same lists: a new pitch lands in parts
    for before, note, after in zip(flat, flat[1:], flat[2:]):
        if note[0] - before[1] >= PHRASE_PAUSE_S or after[0] - note[1] >= PHRASE_PAUSE_S:
            continue
        up, down = note[2] - before[2], note[2] - after[2]
        if up * down <= 0 or min(abs(up), abs(down)) < LEAP:
            continue
        middle = (before[2] + after[2]) / 2
        heard = track.pitch_near(note[0], note[1], middle, PHRASE_SPAN)
        folded = note[2] - 12 * round((note[2] - middle) / 12)
        if heard is not None:
            note[2] = heard
        elif abs(folded - middle) <= PHRASE_SPAN:  # an octave flip the frames cannot undo
            note[2] = folded
    out = []
    for v, mine in zip(voices, parts):
        joined: list[tuple[float, float, int]] = []
        for s, e, m in mine:  # parts the new pitch puts on one note join again
            if joined and joined[-1][2] == m:
                joined[-1] = (joined[-1][0], e, m)
            else:
                joined.append((s, e, int(m)))
        out.append(replace(v, parts=tuple(joined)) if tuple(joined) != v.parts else v)
    return out


def listen_singers(units: Sequence[Word], track: PitchTrackView) -> list[SyllableVoice]:
    """:func:`listen_all` for each singer of a duet apart (each voice has its own range; lines
    both sing are heard as a third voice), in the units' order; one singer: :func:`listen_all`."""
    singers = sorted({u.singer for u in units})
    if len(singers) <= 1:
        return listen_all(units, track)[0]
    voices: list[SyllableVoice | None] = [None] * len(units)
    for singer in singers:
        mine = [i for i, u in enumerate(units) if u.singer == singer]
        for i, voice in zip(mine, listen_all([units[i] for i in mine], track)[0]):
            voices[i] = voice
    return voices  # type: ignore[return-value]


# -- phrases ---------------------------------------------------------------------------------------
#: Languages that write their nouns with a capital letter: there a capital starts no line.
NOUN_CAPITALS = frozenset({"de", "lb"})
_PRONOUN_I = re.compile(r"^I(?:['’](?:m|ve|d|ll|s))?\W*$")  # English "I", "I'm", "I've" ...: capital anywhere


def capitals_start_lines(words: Sequence[Word], language: str | None) -> list[Word]:
    """Recognised words with a line starting at each word Whisper wrote with a capital letter.

    Whisper writes sung lyrics the way lyric sheets and subtitles are written, each line starting
    with a capital ("So far away from home / So far away that I don't know / Where my home is
    anymore"), also where the singer takes no breath between the lines. So a capitalised word
    starts a line, except English "I" and its contractions, an acronym ("TV") and an abbreviated
    title ("Mr.": capitalised wherever they stand), a word that goes on from a title or a
    capitalised word (a name: "Fancy Pants" in "for Mr. Fancy Pants"), and every word of a
    language that capitalises its nouns (:data:`NOUN_CAPITALS`). Lines too short or too long are
    still joined or split as the other breaks are (:func:`phrase_starts`)."""
    if language in NOUN_CAPITALS:
        return list(words)

    def capital(w: Word) -> bool:
        text = w.text.strip().lstrip("\"'¿¡(«“‘")
        letters = "".join(ch for ch in text if ch.isalpha())
        acronym = len(letters) >= 2 and letters.isupper()  # "TV", "OK", "DJ": capitals wherever they stand
        return (text[:1].isupper() and not acronym and not is_title(text)
                and not (language in (None, "en") and _PRONOUN_I.match(text)))  # fmt: skip

    out = []
    for i, w in enumerate(words):
        before = words[i - 1] if i > 0 else None  # a capital after a title or a capitalised word: a name goes on
        name = before is not None and (capital(before) or is_title(before.text)) and not sentence_end(before.text)
        out.append(replace(w, phrase_start=True) if capital(w) and not name and not w.phrase_start else w)
    return out


def clause_end(voice: SyllableVoice) -> bool:
    """Whether a syllable ends a word Whisper wrote a clause mark after (a comma, a colon, a dash ...)."""
    return voice.unit.word_end and bool(CLAUSE_END.search(voice.unit.text.rstrip()))


def _hard_break(prev: SyllableVoice, cur: SyllableVoice) -> bool:
    return (cur.unit.phrase_start or cur.unit.singer != prev.unit.singer or cur.start_s - prev.end_s >= PHRASE_PAUSE_S
            or (prev.unit.word_end and sentence_end(prev.unit.text)))  # fmt: skip


def phrase_starts(voices: Sequence[SyllableVoice]) -> list[int]:
    """Indices of the syllables that start a line (0 first)."""
    n = len(voices)
    if n == 0:
        return []
    lines = [[0, 0]]  # [first, last] syllable of each line
    for i in range(1, n):
        if _hard_break(voices[i - 1], voices[i]):
            lines.append([i, i])
        else:
            lines[-1][1] = i

    def gap(i: int) -> float:  # the pause before syllable i
        return voices[i].start_s - voices[i - 1].end_s

    def too_long(first: int, last: int) -> bool:
        return last - first + 1 > MAX_LINE_SYLLABLES or voices[last].end_s - voices[first].start_s > MAX_LINE_S

    split: list[list[int]] = []
    stack = list(reversed(lines))
    while stack:
        first, last = stack.pop()
        cuts = list(range(first + 2, last)) if too_long(first, last) else []  # both sides keep 2 syllables
        # Between words where possible: a line should not break inside a word.
        at_words = [i for i in cuts if voices[i - 1].unit.word_end]
        cuts = at_words or cuts
        if not cuts:
            split.append([first, last])
            continue
        cut = max(cuts, key=lambda i: (gap(i) >= PAUSE_S, clause_end(voices[i - 1]), -abs(i - (first + last + 1) / 2),
                                       gap(i)))  # fmt: skip
        stack += [[cut, last], [first, cut - 1]]
    # No line of a single syllable: it joins the neighbour it is closer to in time.
    while len(split) > 1:
        single = next((k for k, (a, b) in enumerate(split) if a == b), None)
        if single is None:
            break
        a, _ = split[single]
        before = gap(a) if single > 0 else float("inf")
        after = gap(a + 1) if single + 1 < len(split) else float("inf")
        if before <= after:
            split[single - 1][1] = a
        else:
            split[single + 1][0] = a
        del split[single]
    return [a for a, _ in split]


# -- the chart -------------------------------------------------------------------------------------
def grid_beat(t: float, gap_s: float, beat_s: float) -> int:
    """The chart beat nearest time ``t``; none before ``gap_s`` (a chart's notes lie inside the audio)."""
    return max(0, int(round((t - gap_s) / beat_s)))


def start_beat(t: float, gap_s: float, beat_s: float) -> int:
    """The beat a note sung from ``t`` starts on: the beat ``t`` falls in, the first in which the
    note is heard, as charters place a note (the first beat in which its syllable's vowel is
    audible, not the nearest beat: a vowel heard from the middle of a beat is sung in it). The
    voice's onsets are where its vowels start (:mod:`.onsets`), so rounding would write a note
    half a beat late on average. Beat 0 for a start before ``gap_s``."""
    return max(0, int(np.floor((t - gap_s) / beat_s + 1e-9)))


def on_grid(spans: Sequence[tuple[float, float]], gap_s: float, beat_s: float) -> list[tuple[int, int]]:
    """Sung spans (seconds, in order) as chart notes: (start beat, length in beats). Each note
    starts on the beat its sung start falls in (:func:`start_beat`; none before ``gap_s``: a
    chart's notes lie inside the audio), ends on the beat nearest its sung end and lasts at least
    a beat; a note running into the next one is cut back to end where the next starts, and only
    where it is a beat long already (both on one beat) does the next one move a beat later. No
    overlaps, and a beat between two notes where the first is longer than a beat: charters leave
    one (the consonant between two sung vowels; notes that touch show as one bar, and a singer
    scored through the consonant loses the note's end), hand charts almost never let two notes
    touch, a melisma's ``~`` notes included."""
    placed: list[list[int]] = []
    for s, e in spans:
        start = start_beat(s, gap_s, beat_s)
        if placed and start < placed[-1][0] + placed[-1][1]:  # no overlaps: trim the previous note
            placed[-1][1] = max(1, start - placed[-1][0])
            start = max(start, placed[-1][0] + placed[-1][1])
        if placed and start == placed[-1][0] + placed[-1][1] and placed[-1][1] > 1:
            placed[-1][1] -= 1  # a beat between the two
        placed.append([start, max(1, grid_beat(e, gap_s, beat_s) - start)])
    return [(a, n) for a, n in placed]


def grid_multiple(tempo: Tempo, gap_s: float, spans: Sequence[tuple[float, float]]) -> int:
    """The multiple of the tempo that makes ``#BPM``, as hand charts choose it: the coarsest at
    which a beat is at most a 16th note at :data:`MIN_CHART_BPM` (75 ms), and finer only while
    more than :data:`FINER_SHARE` of the notes would lose their sung start on it (two notes on
    one beat: :func:`on_grid` moves the second a beat later; the finest, 8, at most). A note
    shorter than a beat with room after it is written a beat long, starting where it is sung, as
    a charter writes it. A coarse grid is one an editor can read and a singer can follow; it
    moves each onset by at most half a beat (``make quality-real`` reports what that costs)."""
    spans = [(s, e) for s, e in spans if e > s]
    coarsest = next((m for m in GRID_MULTIPLES if tempo.bpm * m >= MIN_CHART_BPM - 1e-9), GRID_MULTIPLES[-1])
    for multiple in (m for m in GRID_MULTIPLES if m >= coarsest):
        beat_s = tempo.beat_s / 4 / multiple
        placed = on_grid(spans, gap_s, beat_s)
        moved = sum(start != start_beat(s, gap_s, beat_s) for (start, _), (s, _e) in zip(placed, spans))
        if moved <= FINER_SHARE * len(spans):
            return multiple
    return GRID_MULTIPLES[-1]


def build_song(
    words: Sequence[Word], times: np.ndarray, frequency: np.ndarray, confidence: np.ndarray, *,
    tempo: Tempo | float, title: str, artist: str, language: str | None = None, split_syllables: bool = True,
    rap: bool = False, refine_onsets: bool = False,
) -> Song:  # fmt: skip
    """The chart: notes on the song's beat grid, no overlaps, phrase ends a singer can read.
    ``refine_onsets`` (words a recogniser timed): each word starts at the voice's onset near its
    given start (:mod:`.onsets`)."""
    tempo = tempo if isinstance(tempo, Tempo) else Tempo(float(tempo))
    track = PitchTrackView(np.asarray(times), np.asarray(frequency), np.asarray(confidence))
    if refine_onsets:
        words = refine_starts(place_words(words), voice_onsets(track.times, track.frequency, track.voiced))
    units = split_words(words, language) if split_syllables else place_words(words)
    song = Song(title=title, artist=artist, bpm=tempo.bpm, gap_ms=0, language=language)
    if not units:
        return song
    voices = listen_singers(units, track)
    rap_words = _rap_words(voices) if rap else set()
    sung = [p[2] for v in voices for p in v.parts]
    free_pitch = int(np.round(np.median(sung))) if sung else 60  # freestyle notes: the song's middle
    parts = [sung_long(v) if v.parts else ((v.start_s, v.end_s, free_pitch),) for v in voices]
    spans = [(s, e) for voice in parts for s, e, _ in voice]
    # #GAP: the grid's beat at or before the earliest sung time (words need not come in order) ...
    first_s = min(s for s, _ in spans)
    gap_s = tempo.beat_at_or_before(first_s)
    multiple = grid_multiple(tempo, gap_s, spans)
    song.bpm = round(tempo.bpm * multiple, 2)
    beat_s = song.beat_s
    if gap_s > first_s:  # ... which lies before the audio's start: back on the chart's finer grid, never before 0
        gap_s -= min(np.ceil((gap_s - first_s) / beat_s - 1e-9), np.floor(gap_s / beat_s + 1e-9)) * beat_s
    song.gap_ms = int(round(gap_s * 1000))
    placed = iter(on_grid(spans, gap_s, beat_s))
    starts = set(phrase_starts(voices)) - {0}
    word = 0
    for i, (v, voice) in enumerate(zip(voices, parts)):
        kind = "F" if not v.voiced else "R" if word in rap_words else ":"
        for k, (_s, _e, midi) in enumerate(voice):
            text = v.unit.text if k == 0 else "~"
            if k == len(voice) - 1 and v.unit.word_end:
                text = text.rstrip() + " "
            start, length = next(placed)
            if k == 0 and i in starts and song.notes:
                song.phrase_ends.append(song.notes[-1].end_beat)
            song.notes.append(Note(start, length, int(midi), text, kind, v.unit.singer))
        word += v.unit.word_end
    # A phrase end must not sit inside the next phrase's first note.
    ends = []
    for end_beat in song.phrase_ends:
        nxt = next((n.start_beat for n in song.notes if n.start_beat >= end_beat), end_beat)
        ends.append(min(end_beat, nxt))
    song.phrase_ends = ends
    return song


#: A re-pitched note: its parts as (start beat, length in beats, MIDI) on the chart's own grid;
#: more than one where the voice moves to a new held pitch inside the note (a melisma: ``~`` notes).
NoteParts = tuple[tuple[int, int, int], ...]


def repitch_parts(chart: Chart, times: np.ndarray, frequency: np.ndarray, confidence: np.ndarray) -> list[NoteParts | None]:
    """The new pitches of a chart's notes, heard the way :func:`build_song` hears syllables (held
    frames, the voice's range, melismas), with the chart's notes and grid kept: a note whose
    voice moves to a new held pitch is split at the beat the change falls in, every part at least
    a beat long. ``None`` for a note with no voice under it, and for freestyle and rap notes."""
    track = PitchTrackView(np.asarray(times), np.asarray(frequency), np.asarray(confidence))
    sung = [i for i, n in enumerate(chart.notes) if n.kind in PITCHED]
    voices = listen_singers([Word(chart.notes[i].text, chart.notes[i].start_s, chart.notes[i].end_s,
                                  singer=chart.notes[i].singer) for i in sung], track)  # fmt: skip
    out: list[NoteParts | None] = [None] * len(chart.notes)
    beat_s = 60 / (chart.bpm * 4)
    for i, voice in zip(sung, voices):
        if not voice.voiced:
            continue
        note = chart.notes[i]
        cuts = [note.start_beat]
        for s, _e, _m in voice.parts[1:]:
            cuts.append(min(note.end_beat - 1, max(cuts[-1] + 1, start_beat(s, chart.gap_s, beat_s))))
        cuts.append(note.end_beat)
        parts: list[tuple[int, int, int]] = []
        for k, (_s, _e, midi) in enumerate(voice.parts):
            start, end = cuts[k], cuts[k + 1]
            if end <= start:
                continue
            if parts and parts[-1][2] == midi:
                parts[-1] = (parts[-1][0], end - parts[-1][0], midi)
            else:
                parts.append((start, end - start, int(midi)))
        out[i] = tuple(parts) if parts else None
    return out


def _rap_words(voices: Sequence[SyllableVoice]) -> set[int]:
    """Words (by index) whose voiced syllables mostly have no stable pitch."""
    words: dict[int, list[bool]] = {}
    word = 0
    for v in voices:
        if v.voiced:
            words.setdefault(word, []).append(v.stable)
        word += v.unit.word_end
    return {w for w, stable in words.items() if sum(not s for s in stable) * 2 > len(stable)}


def lyrics_text(notes: Sequence[Any]) -> str:
    """The sung text of notes: syllables joined, a ``~`` continuation adding only its word end."""
    return "".join(n.text if n.text.strip() != "~" else " " * n.text.endswith(" ") for n in notes)
