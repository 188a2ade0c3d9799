"""Words + pitch -> notes -> an UltraStar file (format 1.1.0, or 0.3.0 for old games), and MIDI.

Pure functions, no heavy imports.

Syllables come from the language's hyphenation dictionary (pyphen) where there is one, else
from a documented simple rule (:func:`rule_syllables`): a word splits between vowel groups; a
single consonant between two vowel groups starts the next syllable, of two or more the first
stays with the syllable before. The word's time is shared out by letters. Each
syllable is one note whose pitch is the median MIDI value of the confidently voiced pitch
frames inside it; a long syllable whose pitch moves is split into ``~`` continuation notes.
"""

from __future__ import annotations

import functools
import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ultrasinger_gpu_cli.paths import clean_text, fit_name
from ultrasinger_gpu_cli.words import Word

VOWELS = set("aeiouyäöüáéíóúàèìòùâêîôûãõåæøœëïÿAEIOUYÄÖÜÁÉÍÓÚÀÈÌÒÙÂÊÎÔÛÃÕÅÆØŒËÏŸ")
LANGUAGES = {
    "en": "English", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian", "pt": "Portuguese",
    "nl": "Dutch", "pl": "Polish", "sv": "Swedish", "fi": "Finnish", "da": "Danish", "no": "Norwegian",
    "ja": "Japanese", "ko": "Korean", "zh": "Chinese", "ru": "Russian", "tr": "Turkish", "cs": "Czech",
}  # fmt: skip
CONFIDENCE = 0.5  # periodicity above which a pitch frame counts as voiced
PHRASE_PAUSE_S = 0.8  # a pause at least this long between words ends a phrase
MIN_SPLIT_S = 0.15  # a pitch run must last this long to become its own ~ note


@dataclass
class Note:
    start_beat: int
    length_beats: int
    midi: int
    text: str
    kind: str = ":"  # ":" normal, "*" golden, "F" freestyle, "R" rap

    @property
    def end_beat(self) -> int:
        return self.start_beat + self.length_beats


@dataclass
class Song:
    title: str
    artist: str
    bpm: float  # the file's #BPM (a beat is a quarter of 60 / bpm seconds)
    gap_ms: int
    notes: list[Note] = field(default_factory=list)
    phrase_ends: list[int] = field(default_factory=list)  # beats of "- " lines
    language: str | None = None

    @property
    def beat_s(self) -> float:
        return 60.0 / (self.bpm * 4)

    def note_times(self) -> list[tuple[float, float]]:
        return [(self.gap_ms / 1000 + n.start_beat * self.beat_s, self.gap_ms / 1000 + n.end_beat * self.beat_s)
                for n in self.notes]  # fmt: skip


# -- syllables --------------------------------------------------------------------------------
_REGIONAL = {"en": "en_US", "de": "de_DE", "fr": "fr_FR", "pt": "pt_PT", "nl": "nl_NL", "it": "it_IT"}


@functools.lru_cache(maxsize=32)
def _dictionary(language: str) -> Any:
    """The hyphenation dictionary (pyphen's LibreOffice dictionaries) for a language, or None."""
    try:
        import pyphen
    except ImportError:
        return None
    name = _REGIONAL.get(language) or pyphen.language_fallback(language)
    # Sung syllables may be a single letter ("a-gain"): no typographic minimum at the ends.
    return pyphen.Pyphen(lang=name, left=1, right=1) if name else None


def syllables(word: str, language: str | None = None) -> list[str]:
    """Split a word into syllables: by the language's hyphenation dictionary where there is
    one (pyphen), else by the vowel-group rule. Punctuation stays with its syllable."""
    dictionary = _dictionary(language) if language else None
    if dictionary is not None:
        cuts = dictionary.positions(word)
        if cuts:
            bounds = [0, *cuts, len(word)]
            return [word[a:b] for a, b in zip(bounds, bounds[1:]) if word[a:b]]
        return [word]
    return rule_syllables(word, language)


def rule_syllables(word: str, language: str | None = None) -> list[str]:
    """The vowel-group rule: a word splits between vowel groups; a single consonant between two
    groups starts the next syllable, of two or more the first stays. In English a final silent
    "e" after a consonant makes no syllable of its own ("make")."""
    letters = [i for i, ch in enumerate(word) if ch.isalpha()]
    if len(letters) <= 3:
        return [word]
    groups = []  # (start, end) index ranges of vowel groups
    i = 0
    while i < len(word):
        if word[i] in VOWELS:
            j = i
            while j + 1 < len(word) and word[j + 1] in VOWELS:
                j += 1
            groups.append((i, j))
            i = j + 1
        else:
            i += 1
    if len(groups) <= 1:
        return [word]
    cuts = []
    for (_, end_a), (start_b, _) in zip(groups, groups[1:]):
        consonants = start_b - end_a - 1
        cuts.append(end_a + 1 if consonants <= 1 else end_a + 2)
    core = word.rstrip(".,!?;:")
    if language in (None, "en") and core.lower().endswith("e") and groups[-1][0] == len(core) - 1:
        cuts = cuts[:-1]
    pieces, last = [], 0
    for cut in cuts:
        if 0 < cut < len(word) and cut > last:
            pieces.append(word[last:cut])
            last = cut
    pieces.append(word[last:])
    return [p for p in pieces if p]


def split_words(words: Sequence[Word], language: str | None = None) -> list[Word]:
    """Words -> syllables, sharing each word's time out by letters."""
    out = []
    for w in words:
        parts = syllables(w.text.strip(), language)
        weights = np.array([max(1, sum(ch.isalpha() for ch in p)) for p in parts], dtype=float)
        bounds = w.start_s + np.concatenate(([0.0], np.cumsum(weights) / weights.sum())) * (w.end_s - w.start_s)
        for k, part in enumerate(parts):
            out.append(Word(part, float(bounds[k]), float(bounds[k + 1]), word_end=k == len(parts) - 1,
                            phrase_start=w.phrase_start and k == 0))
    return out


# -- pitch -------------------------------------------------------------------------------------
def hz_to_midi(freq: np.ndarray) -> np.ndarray:
    return 69 + 12 * np.log2(np.maximum(freq, 1e-6) / 440.0)


def _pitch_runs(times: np.ndarray, midi: np.ndarray) -> list[tuple[float, float, int]]:
    """Runs of the same rounded pitch: (start s, end s, midi)."""
    rounded = np.round(midi).astype(int)
    runs = []
    start = 0
    for i in range(1, len(rounded) + 1):
        if i == len(rounded) or rounded[i] != rounded[start]:
            runs.append((float(times[start]), float(times[i - 1]), int(np.round(np.median(midi[start:i])))))
            start = i
    return runs


@dataclass
class PitchedUnit:
    unit: Word
    parts: list[tuple[float, float, int | None]]  # (start, end, midi) - more than one: ~ notes


def pitch_units(
    units: Sequence[Word], times: np.ndarray, frequency: np.ndarray, confidence: np.ndarray,
    threshold: float = CONFIDENCE,
) -> list[PitchedUnit]:  # fmt: skip
    voiced = (confidence >= threshold) & (frequency > 0)
    out = []
    for u in units:
        inside = voiced & (times >= u.start_s) & (times < u.end_s)
        if not inside.any():
            out.append(PitchedUnit(u, [(u.start_s, u.end_s, None)]))
            continue
        midi = hz_to_midi(frequency[inside])
        runs = [r for r in _pitch_runs(times[inside], midi) if r[1] - r[0] >= MIN_SPLIT_S]
        if len(runs) <= 1 or u.end_s - u.start_s < 2 * MIN_SPLIT_S:
            out.append(PitchedUnit(u, [(u.start_s, u.end_s, int(np.round(np.median(midi))))]))
            continue
        merged: list[list] = []
        for start, end, m in runs:  # neighbouring runs of the same pitch join
            if merged and merged[-1][2] == m:
                merged[-1][1] = end
            else:
                merged.append([start, end, m])
        parts = []
        for k, (start, _end, m) in enumerate(merged):
            s = u.start_s if k == 0 else start
            e = u.end_s if k == len(merged) - 1 else merged[k + 1][0]
            parts.append((s, e, m))
        out.append(PitchedUnit(u, parts))
    # Units without voiced frames take their neighbour's pitch (or C4).
    last = next((p[2] for pu in out for p in pu.parts if p[2] is not None), 60)
    for pu in out:
        fixed = []
        for s, e, m in pu.parts:
            m = last if m is None else m
            last = m
            fixed.append((s, e, m))
        pu.parts = fixed
    return out


# -- notes -------------------------------------------------------------------------------------
def build_song(
    words: Sequence[Word], times: np.ndarray, frequency: np.ndarray, confidence: np.ndarray, *,
    bpm: float, title: str, artist: str, language: str | None = None, split_syllables: bool = True,
) -> Song:  # fmt: skip
    """Notes on a beat grid: ``#BPM`` = ``bpm`` (so a beat is a sixteenth of the song's tempo),
    ``#GAP`` = the first note's start, no overlaps, a phrase end at every pause."""
    units = split_words(words, language) if split_syllables else list(words)
    units = [u for u in units if u.end_s > u.start_s and u.text.strip()]
    song = Song(title=title, artist=artist, bpm=bpm, gap_ms=0, language=language)
    if not units:
        return song
    gap_s = units[0].start_s
    song.gap_ms = int(round(gap_s * 1000))
    beat_s = song.beat_s

    def beat(t: float) -> int:
        return int(round((t - gap_s) / beat_s))

    previous_end_s = None
    for pu in pitch_units(units, times, frequency, confidence):
        u = pu.unit
        if song.notes and previous_end_s is not None and (u.phrase_start or u.start_s - previous_end_s >= PHRASE_PAUSE_S):
            song.phrase_ends.append(song.notes[-1].end_beat)
        for k, (s, e, midi) in enumerate(pu.parts):
            text = u.text if k == 0 else "~"
            if k == len(pu.parts) - 1 and u.word_end:
                text = text.rstrip() + " "
            start = beat(s)
            if song.notes and start < song.notes[-1].end_beat:  # no overlaps: trim the previous note
                prev = song.notes[-1]
                prev.length_beats = max(1, start - prev.start_beat)
                start = max(start, prev.end_beat)
            length = max(1, beat(e) - start)
            song.notes.append(Note(start, length, int(midi), text))
        previous_end_s = u.end_s
    # A phrase end must not sit inside the next phrase's first note.
    ends = []
    for end_beat in song.phrase_ends:
        nxt = next((n.start_beat for n in song.notes if n.start_beat >= end_beat), end_beat)
        ends.append(min(end_beat, nxt))
    song.phrase_ends = ends
    return song


def _number(value: float, comma: bool) -> str:
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return text.replace(".", ",") if comma else text


def to_ultrastar(
    song: Song, *, audio: str, vocals: str | None = None, instrumental: str | None = None,
    version: str = "1.1.0", creator: str = "ugpu",
) -> str:  # fmt: skip
    """The file's text: UTF-8, ``#VERSION`` first, notes, phrase ends, ``E``.

    Every header value is one line without control characters, whatever a tag or a file name
    held; the file headers name the files given (ugpu's own), never a tag's text.
    """
    old = version.startswith("0.")
    audio = fit_name(audio)
    headers = [f"#VERSION:{version}", f"#TITLE:{clean_text(song.title) or 'Unknown Title'}",
               f"#ARTIST:{clean_text(song.artist) or 'Unknown Artist'}", f"#MP3:{audio}"]  # fmt: skip
    if not old:
        headers.append(f"#AUDIO:{audio}")
        if vocals:
            headers.append(f"#VOCALS:{fit_name(vocals)}")
        if instrumental:
            headers.append(f"#INSTRUMENTAL:{fit_name(instrumental)}")
    headers += [f"#BPM:{_number(song.bpm, old)}", f"#GAP:{song.gap_ms}"]
    language = clean_text(LANGUAGES.get(song.language, song.language)) if song.language else ""
    if language:
        headers.append(f"#LANGUAGE:{language}")
    headers.append(f"#CREATOR:{clean_text(creator)}")
    lines = list(headers)
    ends = sorted(song.phrase_ends)
    e = 0
    for note in song.notes:
        while e < len(ends) and ends[e] <= note.start_beat:
            lines.append(f"- {ends[e]}")
            e += 1
        text = clean_text(note.text) + (" " if note.text.endswith(" ") else "")
        lines.append(f"{note.kind} {note.start_beat} {note.length_beats} {note.midi - 60} {text or '~'}")
    lines.append("E")
    return "\n".join(lines) + "\n"


#: Song times a chart may use: from the start of the audio to a day in.
MAX_SONG_S = 24 * 3600.0


def _header_number(headers: dict[str, str], key: str, default: str | None, low: float, high: float) -> float:
    raw = headers.get(key, default)
    if raw is None:
        raise ValueError(f"the file has no #{key}")
    try:
        value = float(raw.replace(",", "."))
    except ValueError:
        raise ValueError(f"#{key}:{raw} is not a number") from None
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"#{key}:{raw} is out of range ({low:g} to {high:g})")
    return value


def parse_ultrastar(text: str) -> tuple[dict[str, str], list[Word]]:
    """Headers and the notes' syllables with their times (for ``--timings``).

    Raises ValueError naming the line for a note that is not ``TYPE START LENGTH PITCH TEXT``
    with whole numbers, that has no length, or that lies before the audio's start or past a day.
    """
    headers: dict[str, str] = {}
    notes: list[tuple[int, int, int, str] | None] = []
    for number, raw in enumerate(text.lstrip("\ufeff").splitlines(), start=1):
        line = raw.rstrip("\r")
        if line.startswith("#") and ":" in line:
            key, value = line[1:].split(":", 1)
            headers[key.strip().upper()] = value.strip()
        elif line[:1] in (":", "*", "F", "R", "G") and line[1:2] == " ":
            parts = line.split(" ", 4)
            if len(parts) < 4:
                raise ValueError(f"line {number}: a note needs TYPE START LENGTH PITCH TEXT: {line[:60]!r}")
            try:
                start, length = int(parts[1]), int(parts[2])
                int(parts[3])
            except ValueError:
                raise ValueError(f"line {number}: start, length and pitch must be whole numbers: {line[:60]!r}") from None
            if length <= 0:
                raise ValueError(f"line {number}: a note's length must be at least 1 beat: {line[:60]!r}")
            notes.append((number, start, length, parts[4] if len(parts) > 4 else ""))
        elif line.startswith("-"):
            notes.append(None)  # phrase end
        elif line.strip() == "E":
            break
    bpm = _header_number(headers, "BPM", None, 1.0, 10_000.0)
    gap = _header_number(headers, "GAP", "0", -MAX_SONG_S * 1000, MAX_SONG_S * 1000) / 1000
    beat_s = 60 / (bpm * 4)
    out: list[Word] = []
    phrase = True
    for item in notes:
        if item is None:
            phrase = True
            continue
        number, start, length, syllable = item
        start_s, end_s = gap + start * beat_s, gap + (start + length) * beat_s
        if start_s < 0 or end_s > MAX_SONG_S:
            where = "before the start of the audio" if start_s < 0 else "more than a day in"
            raise ValueError(f"line {number}: the note at beat {start} lies {where} ({start_s:.2f} s with #BPM and #GAP)")
        if syllable.strip() == "~" and out:  # a continuation extends the syllable before it
            prev = out[-1]
            out[-1] = Word(prev.text, prev.start_s, end_s, word_end=prev.word_end or syllable.endswith(" "),
                           phrase_start=prev.phrase_start)  # fmt: skip
            continue
        out.append(Word(syllable.rstrip() or syllable, start_s, end_s,
                        word_end=syllable.endswith(" ") or syllable.startswith("~"), phrase_start=phrase))  # fmt: skip
        phrase = False
    return headers, out


# -- MIDI ----------------------------------------------------------------------------------------
def _varlen(value: int) -> bytes:
    if value < 0:
        raise ValueError(f"a MIDI delta time cannot be negative ({value})")
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def to_midi(song: Song, ticks_per_quarter: int = 480) -> bytes:
    """A type-0 standard MIDI file of the melody at the song's tempo."""
    quarter_s = 60.0 / song.bpm
    tempo = int(round(quarter_s * 1_000_000))
    events = [(0, bytes([0xFF, 0x51, 0x03]) + tempo.to_bytes(3, "big"))]
    for (start, end), note in zip(song.note_times(), song.notes):
        pitch = max(0, min(127, note.midi))
        on = max(0, int(round(start / quarter_s * ticks_per_quarter)))
        off = max(on + 1, int(round(end / quarter_s * ticks_per_quarter)))
        events.append((on, bytes([0x90, pitch, 96])))
        events.append((off, bytes([0x80, pitch, 0])))
    events.sort(key=lambda e: (e[0], e[1][0] == 0x90))
    track = b""
    now = 0
    for tick, data in events:
        track += _varlen(tick - now) + data
        now = tick
    track += b"\x00\xff\x2f\x00"
    header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, ticks_per_quarter)
    return header + b"MTrk" + struct.pack(">I", len(track)) + track


def safe_name(text: str, fallback: str = "song") -> str:
    """A folder or file name safe on every OS and within the file system's length limit."""
    return fit_name(text, fallback=fallback)
