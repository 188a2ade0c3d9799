"""The UltraStar file (format 1.1.0, or 0.3.0 for old games): writing, reading, and
re-pitching a chart in place. Pure functions, no heavy imports. How the notes themselves are
made from words and pitch is :mod:`.notes`.

**Duets**: a chart with ``P1`` and ``P2`` sections, one per singer, both on the same beat grid
(each section's beats count from the same ``#GAP``); a line both sing is written in both
sections. The singers' names are ``#P1``/``#P2`` in format 1.x and ``#DUETSINGERP1``/
``#DUETSINGERP2`` in 0.x (both are read). A note's ``singer`` is :data:`SOLO` in a chart that is
not a duet, else :data:`P1`, :data:`P2` or :data:`BOTH` (a ``P3`` section, as some editors
write lines sung together)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace


from ultrasinger_gpu_cli.song.paths import clean_text, fit_name
from ultrasinger_gpu_cli.song.words import Word

LANGUAGES = {
    "en": "English", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian", "pt": "Portuguese",
    "nl": "Dutch", "pl": "Polish", "sv": "Swedish", "fi": "Finnish", "da": "Danish", "no": "Norwegian",
    "ja": "Japanese", "ko": "Korean", "zh": "Chinese", "ru": "Russian", "tr": "Turkish", "cs": "Czech",
}  # fmt: skip


SOLO, P1, P2, BOTH = 0, 1, 2, 3  # who sings a note: the one singer, the first, the second, both
DEFAULT_SINGERS = ("Singer 1", "Singer 2")


def sings(singer: int, section: int) -> bool:
    """A note of ``singer`` belongs in duet section ``section`` (:data:`P1` or :data:`P2`)."""
    return singer == section or singer == BOTH


@dataclass
class Note:
    start_beat: int
    length_beats: int
    midi: int
    text: str
    kind: str = ":"  # ":" normal, "*" golden, "F" freestyle, "R" rap
    singer: int = SOLO

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
    singers: tuple[str, str] = DEFAULT_SINGERS  # a duet's singers' names (P1, P2)
    year: str | None = None  # from the audio file's tags
    genre: str | None = None

    @property
    def duet(self) -> bool:
        return any(n.singer != SOLO for n in self.notes)

    @property
    def beat_s(self) -> float:
        return 60.0 / (self.bpm * 4)

    def note_times(self) -> list[tuple[float, float]]:
        return [(self.gap_ms / 1000 + n.start_beat * self.beat_s, self.gap_ms / 1000 + n.end_beat * self.beat_s)
                for n in self.notes]  # fmt: skip


def _number(value: float, comma: bool) -> str:
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return text.replace(".", ",") if comma else text


def _file_header(name: str) -> str:
    """A file header's value: the file's name as it is on disk. A name a header cannot hold (a
    folder in it, a line break) is a bug in the caller, not something to cut silently."""
    if not name or name != clean_text(name) or "/" in name or "\\" in name:
        raise ValueError(f"not a file name a chart header can hold: {name!r}")
    return name


@dataclass(frozen=True)
class ChartFiles:
    """The files beside a chart that its headers name, as they are named on disk."""

    audio: str
    vocals: str | None = None
    instrumental: str | None = None
    cover: str | None = None
    video: str | None = None  # a music video UltraStar plays behind the lyrics (#VIDEO)


def to_ultrastar(
    song: Song, *, audio: str, vocals: str | None = None, instrumental: str | None = None, cover: str | None = None,
    video: str | None = None, version: str = "1.1.0", creator: str = "ugpu",
) -> str:  # fmt: skip
    """The file's text: UTF-8, ``#VERSION`` first, notes, phrase ends, ``E``.

    Every header value is one line without control characters, whatever a tag or a file name
    held; the file headers name the files given (ugpu's own, already named to fit the file
    system) exactly as they are on disk: never cut again, never a tag's text.
    """
    old = version.startswith("0.")
    audio = _file_header(audio)
    headers = [f"#VERSION:{version}", f"#TITLE:{clean_text(song.title) or 'Unknown Title'}",
               f"#ARTIST:{clean_text(song.artist) or 'Unknown Artist'}", f"#MP3:{audio}"]  # fmt: skip
    if not old:
        headers.append(f"#AUDIO:{audio}")
        if vocals:
            headers.append(f"#VOCALS:{_file_header(vocals)}")
        if instrumental:
            headers.append(f"#INSTRUMENTAL:{_file_header(instrumental)}")
    if cover:
        headers.append(f"#COVER:{_file_header(cover)}")
    if video:
        headers.append(f"#VIDEO:{_file_header(video)}")
    headers += [f"#BPM:{_number(song.bpm, old)}", f"#GAP:{song.gap_ms}"]
    headers += [f"#{key}:{clean_text(value)}" for key, value in (("GENRE", song.genre), ("YEAR", song.year))
                if value and clean_text(value)]  # fmt: skip
    language = clean_text(LANGUAGES.get(song.language, song.language)) if song.language else ""
    if language:
        headers.append(f"#LANGUAGE:{language}")
    headers.append(f"#CREATOR:{clean_text(creator)}")
    if song.duet:
        keys = ("DUETSINGERP1", "DUETSINGERP2") if old else ("P1", "P2")
        headers += [f"#{key}:{clean_text(name) or default}"
                    for key, name, default in zip(keys, song.singers, DEFAULT_SINGERS)]  # fmt: skip
    lines = list(headers)
    if not song.duet:
        lines += _note_lines(song.notes, song.phrase_ends)
    else:
        for section in (P1, P2):
            mine = [n for n in song.notes if sings(n.singer, section)]
            lines.append(f"P{section}")
            lines += _note_lines(mine, _section_ends(mine, song.phrase_ends))
    lines.append("E")
    return "\n".join(lines) + "\n"


def _note_lines(notes: Sequence[Note], phrase_ends: Sequence[int]) -> list[str]:
    lines = []
    ends = sorted(phrase_ends)
    e = 0
    for note in notes:
        while e < len(ends) and ends[e] <= note.start_beat:
            lines.append(f"- {ends[e]}")
            e += 1
        text = clean_text(note.text) + (" " if note.text.endswith(" ") else "")
        lines.append(f"{note.kind} {note.start_beat} {note.length_beats} {note.midi - 60} {text or '~'}")
    return lines


def _section_ends(notes: Sequence[Note], phrase_ends: Sequence[int]) -> list[int]:
    """One singer's phrase ends: between two of their notes wherever the song's lines break there
    (at the first break, never inside their earlier note)."""
    ends = sorted(phrase_ends)
    out = []
    for a, b in zip(notes, notes[1:]):
        inside = [e for e in ends if a.start_beat < e <= b.start_beat]
        if inside:
            out.append(min(max(inside[0], a.end_beat), b.start_beat))
    return out


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


PITCHED = (":", "*", "G")  # note types whose pitch is sung (F freestyle and R rap are not)
AUDIO_HEADERS = ("MP3", "AUDIO", "VOCALS", "INSTRUMENTAL")


@dataclass(frozen=True)
class ChartNote:
    line: int  # index into Chart.lines
    kind: str
    start_beat: int  # absolute (``#RELATIVE`` charts resolved)
    length_beats: int
    pitch: int  # half-steps from C4, as in the file
    text: str  # the syllable as written (a trailing space ends a word)
    start_s: float
    end_s: float
    phrase_start: bool
    singer: int = SOLO

    @property
    def end_beat(self) -> int:
        return self.start_beat + self.length_beats


@dataclass(frozen=True)
class Chart:
    """An UltraStar chart as read: its lines kept verbatim, so it can be written back changing
    nothing but what is asked (:func:`repitch`)."""

    lines: tuple[str, ...]
    headers: dict[str, str]
    notes: tuple[ChartNote, ...]
    bpm: float
    gap_s: float

    @property
    def duet(self) -> bool:
        return any(n.singer != SOLO for n in self.notes)

    @property
    def singers(self) -> tuple[str, str]:
        """A duet's singers' names as the chart gives them (either format's headers), else the defaults."""
        h = self.headers
        return (h.get("P1") or h.get("DUETSINGERP1") or DEFAULT_SINGERS[0],
                h.get("P2") or h.get("DUETSINGERP2") or DEFAULT_SINGERS[1])  # fmt: skip

    def part(self, section: int) -> Chart:
        """One singer's notes of a duet (lines both sing included); a chart that is not a duet: itself."""
        if not self.duet:
            return self
        return replace(self, notes=tuple(n for n in self.notes if sings(n.singer, section)))

    def sections(self) -> list[tuple[int, tuple[ChartNote, ...]]]:
        """(section, its notes in the file's order): one :data:`SOLO` section, or a duet's P1 and P2."""
        if not self.duet:
            return [(SOLO, self.notes)]
        return [(s, self.part(s).notes) for s in (P1, P2)]

    def words(self) -> list[Word]:
        """The syllables with their times; a ``~`` continuation extends the syllable before it.

        A word ends where the chart says so in either way charters write it: a space after the
        syllable (``: 4 2 7 it ``), or before the next one (``: 6 2 7  was``); a phrase end and
        the last note end one too. A duet: each singer's syllables read in their own section,
        then all in the order they are sung (a ``P3`` line both sing, once)."""
        return self._by_section(_syllables)

    def lyric_words(self) -> list[Word]:
        """Whole words: each word's syllables joined, from its first syllable's start to its last's end."""
        return self._by_section(lambda notes: _whole_words(_syllables(notes)))

    def _by_section(self, read: Callable[[tuple[ChartNote, ...]], list[Word]]) -> list[Word]:
        if not self.duet:
            return read(self.notes)
        seen: set[int] = set()
        out: list[Word] = []
        for _section, notes in self.sections():
            out += read(tuple(n for n in notes if n.line not in seen))
            seen.update(n.line for n in notes)
        return sorted(out, key=lambda w: w.start_s)


def _syllables(notes: tuple[ChartNote, ...]) -> list[Word]:
    out: list[Word] = []
    phrase = True
    for i, n in enumerate(notes):
        phrase = phrase or n.phrase_start
        nxt = notes[i + 1] if i + 1 < len(notes) else None
        ends = (n.text.endswith(" ") or nxt is None or nxt.phrase_start
                or (nxt.text.startswith(" ") and not nxt.text.strip().startswith("~")))  # fmt: skip
        if n.text.strip().startswith("~") and out:  # a continuation ("~", or "~n": the letters sung on it)
            prev = out[-1]
            out[-1] = Word(prev.text + n.text.strip()[1:], prev.start_s, n.end_s, word_end=ends,
                           phrase_start=prev.phrase_start)  # fmt: skip
            continue
        out.append(Word(n.text.strip() or n.text, n.start_s, n.end_s, word_end=ends, phrase_start=phrase))
        phrase = False
    return out


def _whole_words(syllables: list[Word]) -> list[Word]:
    out: list[Word] = []
    open_word: list[Word] = []
    for syllable in syllables:
        open_word.append(syllable)
        if syllable.word_end:
            out.append(Word("".join(s.text for s in open_word), open_word[0].start_s, open_word[-1].end_s,
                            phrase_start=open_word[0].phrase_start))  # fmt: skip
            open_word = []
    return out


_DUET_SECTION = re.compile(r"^P ?[123]\s*$")


def read_chart(text: str) -> Chart:
    """Read a chart. Raises ValueError naming the line for a note that is not ``TYPE START
    LENGTH PITCH TEXT`` with whole numbers, that has no length, or that lies before the audio's
    start or past a day."""
    lines = tuple(text.lstrip("\ufeff").split("\n"))
    headers: dict[str, str] = {}
    raw_notes: list[tuple[int, str, int, int, int, str, bool, int]] = []
    relative = None
    offset = 0
    phrase = True
    singer = SOLO
    for index, raw in enumerate(lines):
        line = raw.rstrip("\r")
        number = index + 1
        if line.startswith("#") and ":" in line:
            key, value = line[1:].split(":", 1)
            headers[key.strip().upper()] = value.strip()
        elif line[:1] in (":", "*", "F", "R", "G") and line[1:2] == " ":
            parts = line.split(" ", 4)
            if len(parts) < 4:
                raise ValueError(f"line {number}: a note needs TYPE START LENGTH PITCH TEXT: {line[:60]!r}")
            try:
                start, length, pitch = int(parts[1]), int(parts[2]), int(parts[3])
            except ValueError:
                raise ValueError(f"line {number}: start, length and pitch must be whole numbers: {line[:60]!r}") from None
            if length <= 0:
                raise ValueError(f"line {number}: a note's length must be at least 1 beat: {line[:60]!r}")
            if relative is None:
                relative = headers.get("RELATIVE", "").strip().lower() in ("yes", "true", "1")
            raw_notes.append((index, line[0], start + offset, length, pitch, parts[4] if len(parts) > 4 else "", phrase,
                              singer))  # fmt: skip
            phrase = False
        elif _DUET_SECTION.match(line):  # a duet's section: its beats count from the song's start again
            singer = int(line.replace(" ", "")[1])
            phrase, offset = True, 0
        elif line.startswith("-"):
            phrase = True
            if relative:
                numbers = line[1:].split()
                try:
                    offset += int(numbers[-1]) if numbers else 0
                except ValueError:
                    raise ValueError(f"line {number}: a phrase end needs whole beats: {line[:60]!r}") from None
        elif line.strip() == "E":
            break
    bpm = _header_number(headers, "BPM", None, 1.0, 10_000.0)
    gap = _header_number(headers, "GAP", "0", -MAX_SONG_S * 1000, MAX_SONG_S * 1000) / 1000
    beat_s = 60 / (bpm * 4)
    notes = []
    for index, kind, start, length, pitch, syllable, starts_phrase, sung_by in raw_notes:
        start_s, end_s = gap + start * beat_s, gap + (start + length) * beat_s
        if start_s < 0 or end_s > MAX_SONG_S:
            where = "before the start of the audio" if start_s < 0 else "more than a day in"
            raise ValueError(f"line {index + 1}: the note at beat {start} lies {where} ({start_s:.2f} s with #BPM and #GAP)")
        notes.append(ChartNote(index, kind, start, length, pitch, syllable, start_s, end_s, starts_phrase, sung_by))
    return Chart(lines, headers, tuple(notes), bpm, gap)


def _parts(note: ChartNote, new: int | Sequence[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    return [(note.start_beat, note.length_beats, new)] if isinstance(new, int) else [tuple(p) for p in new]  # type: ignore[misc]


def repitch(chart: Chart, midi: Sequence[int | Sequence[tuple[int, int, int]] | None], *, audio: str,
            vocals: str | None = None, instrumental: str | None = None, cover: str | None = None,
            video: str | None = None, version: str | None = None) -> str:  # fmt: skip
    """The chart with new pitches and nothing else changed: every note's type, start, length
    and syllable, the phrase ends and every other header stay as written. A sung note with no
    new pitch (``None``: no voice under it) keeps its own; freestyle and rap notes keep theirs.
    A note given as several parts (a melisma the voice sings inside it) becomes that many notes
    covering exactly its beats: the syllable on the first, ``~`` on the others, the word's
    trailing space on the last. Only the file headers name the new files (``#AUDIO``,
    ``#VOCALS``, ``#INSTRUMENTAL`` are added to a 1.x chart that lacks them; ``#COVER`` and
    ``#VIDEO``, where given, to any chart). ``version`` (asked
    for explicitly) converts the headers to that format version: ``#VERSION``, the 1.x audio
    headers, ``#BPM``'s decimal mark."""
    lines: list[str | list[str]] = list(chart.lines)
    for note, new in zip(chart.notes, midi):
        if new is None or note.kind not in PITCHED:
            continue
        raw = chart.lines[note.line]
        cr = "\r" if raw.endswith("\r") else ""
        kind, start, length, _pitch, *rest = raw.rstrip("\r").split(" ", 4)
        parts = _parts(note, new)
        if len(parts) == 1 and parts[0][:2] == (note.start_beat, note.length_beats):
            lines[note.line] = " ".join([kind, start, length, str(parts[0][2] - 60), *rest]) + cr
            continue
        offset = note.start_beat - int(start)  # #RELATIVE charts: beats written from the line's start
        text = rest[0] if rest else ""
        split = []
        for k, (beat, beats, pitch) in enumerate(parts):
            syllable = (text.rstrip(" ") or "~") if k == 0 else "~"
            if k == len(parts) - 1 and text.endswith(" "):
                syllable += " "
            split.append(" ".join([kind, str(beat - offset), str(beats), str(pitch - 60), syllable]) + cr)
        lines[note.line] = split
    lines = [line for item in lines for line in (item if isinstance(item, list) else [item])]
    values = {"MP3": audio, "AUDIO": audio, "VOCALS": vocals, "INSTRUMENTAL": instrumental, "COVER": cover, "VIDEO": video}
    seen: set[str] = set()
    last_audio = None
    for i, raw in enumerate(lines):
        if not raw.startswith("#") or ":" not in raw:
            continue
        key = raw[1:].split(":", 1)[0].strip().upper()
        if key in values and values[key]:
            cr = "\r" if raw.endswith("\r") else ""
            lines[i] = f"{raw.split(':', 1)[0]}:{_file_header(values[key])}{cr}"
            seen.add(key)
            last_audio = i
    target = version or chart.headers.get("VERSION", "0")
    if not target.startswith("0"):
        missing = [k for k in AUDIO_HEADERS if k not in seen and values[k]]
        at = (last_audio + 1) if last_audio is not None else 1
        cr = "\r" if lines and lines[0].endswith("\r") else ""
        lines[at:at] = [f"#{k}:{_file_header(values[k])}{cr}" for k in missing]  # type: ignore[arg-type]
    elif "MP3" not in seen:
        lines.insert(0, f"#MP3:{_file_header(audio)}")
    for key in ("COVER", "VIDEO"):  # after the audio headers (and the cover), where the chart names none
        if values[key] and key not in seen:
            cr = "\r" if lines and lines[0].endswith("\r") else ""
            heads = [i for i, raw in enumerate(lines)
                     if raw.startswith("#") and raw[1:].split(":", 1)[0].strip().upper() in (*AUDIO_HEADERS, "COVER")]
            lines.insert(heads[-1] + 1 if heads else 1, f"#{key}:{_file_header(values[key])}{cr}")  # type: ignore[arg-type]
    if version is not None and version != chart.headers.get("VERSION", "0.3.0"):
        lines = _convert_headers(lines, version)
    return "\n".join(lines)


_DUET_NAMES_OLD = {"P1": "DUETSINGERP1", "P2": "DUETSINGERP2"}  # 1.x -> 0.x
_DUET_NAMES_NEW = {v: k for k, v in _DUET_NAMES_OLD.items()}


def _convert_headers(lines: list[str], version: str) -> list[str]:
    old = version.startswith("0.")
    out = []
    for raw in lines:
        key = raw[1:].split(":", 1)[0].strip().upper() if raw.startswith("#") and ":" in raw else None
        cr = "\r" if raw.endswith("\r") else ""
        if key == "VERSION":
            continue
        if old and key in ("AUDIO", "VOCALS", "INSTRUMENTAL"):
            continue
        if key == "BPM":
            value = raw.rstrip("\r").split(":", 1)[1].strip()
            raw = f"{raw.split(':', 1)[0]}:{value.replace('.', ',') if old else value.replace(',', '.')}{cr}"
        singer = _DUET_NAMES_OLD.get(key) if old else _DUET_NAMES_NEW.get(key)  # a duet's singers, in the version's header
        if singer is not None:
            raw = f"#{singer}:{raw.rstrip(chr(13)).split(':', 1)[1]}{cr}"
        out.append(raw)
    cr = "\r" if out and out[0].endswith("\r") else ""
    return [f"#VERSION:{version}{cr}", *out]


def chart_song(chart: Chart, midi: Sequence[int | Sequence[tuple[int, int, int]] | None], *, title: str, artist: str, language: str | None) -> Song:
    """The re-pitched chart as a :class:`Song` (for the MIDI file and the report)."""
    bpm = chart.bpm
    song = Song(title=title, artist=artist, bpm=bpm, gap_ms=int(round(chart.gap_s * 1000)), language=language,
                singers=chart.singers)  # fmt: skip
    for note, new in zip(chart.notes, midi):
        if note.phrase_start and song.notes:
            song.phrase_ends.append(song.notes[-1].end_beat)
        if new is None or note.kind not in PITCHED:
            song.notes.append(Note(note.start_beat, note.length_beats, note.pitch + 60, note.text, note.kind, note.singer))
            continue
        for k, (beat, beats, pitch) in enumerate(_parts(note, new)):
            song.notes.append(Note(beat, beats, pitch, note.text if k == 0 else "~", note.kind, note.singer))
    return song


def safe_name(text: str, fallback: str = "song") -> str:
    """A folder or file name safe on every OS and within the file system's length limit."""
    return fit_name(text, fallback=fallback)
