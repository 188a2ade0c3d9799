"""``--lyrics``: the user's own words instead of speech recognition, timed on the vocals.

* **Plain text**: one line per sung line (the breaks become phrase hints). Whisper transcribes
  the vocals as usual; the user's words are matched onto the words it heard **in order and in
  time** (:func:`match_heard`: a monotonic alignment where skipping heard words costs their
  time, so a line that repeats goes to the occurrence that keeps the song's order, and a repeat
  the lyrics leave out is skipped as one stretch; misheard words stand for the sung ones, and a
  word left with no partner costs, so one common word heard early is no anchor that crams the
  words between before it). A matched word takes the time Whisper heard
  it at. The words between two matches (Whisper missed or misheard them) are timed in the
  stretch between their neighbours: by the same Whisper model's alignment of their text to that
  audio (its cross-attention, no extra weights) where the stretch is long enough to need it,
  else shared out by letters. No word is left shorter than a sung syllable
  (:func:`unsqueeze`).
* **LRC** (``[mm:ss.xx] line``): the line times say where each line is sung, so no
  transcription is needed; each line is aligned in the audio from its time to the next line's.

Lyrics as lyric sites write them are read as they are sung (:func:`sung_lines`): what their
page adds (its title line, "You might also like", "Embed") and section headers left out, a
header alone standing for the earlier section it names, repeat marks written out, bracketed
notes left out. Every sung word of the file reaches the chart exactly once, in order. Pure core: the engine does the model work (:meth:`WhisperEngine.align`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ultrasinger_gpu_cli.errors import UgpuError
from ultrasinger_gpu_cli.song.onsets import LONG_WORD, PAUSE_S
from ultrasinger_gpu_cli.song.syllables import MIN_SYLLABLE_S, rule_syllables, share_by_letters
from ultrasinger_gpu_cli.song.ultrastar import BOTH, P1, P2, SOLO
from ultrasinger_gpu_cli.song.wordmatch import match
from ultrasinger_gpu_cli.song.words import Word, marks_joined

MAX_BYTES = 1 * 2**20  # lyrics are kilobytes
MAX_WINDOW_S = 30.0  # one Whisper window
SKIP_COST_PER_S = 0.05  # a matched word is worth skipping 20 s of heard words between two matches, no more
#: What a word of the lyrics or of the transcript left with no partner between two matches costs
#: (misheard words pair with each other, for nothing). At 0.5 a match would be worth exactly one
#: lyrics word and one heard word left unpaired, the plain edit-distance (word error rate)
#: alignment; at 0.2 a match outweighs two such pairs (0.8), not three (1.2): a lone "to" that
#: strands five words of each before and after it is not taken.
UNPAIRED_COST = 0.2
#: What a voice can sing: fast rap reaches about 7 words and 10 syllables a second; a sung line
#: lasts a second or more. Lyrics beyond this for the song's length are not this song's (and
#: would cost minutes of alignment).
MAX_WORDS_PER_S = 8.0
MIN_LINE_S = 1.0
ALIGN_MIN_S = 1.0  # a stretch shorter than this between matched words is shared by letters, not aligned
SKIPPED_WORDS = 2  # words in a row Whisper did not hear: a stretch it skipped, not a mishearing
_LRC_TIME = re.compile(r"\[(\d{1,3}):(\d{1,2}(?:[.:]\d{1,3})?)\]")
#: LRC's own tags ([ar:...], [ti:...], [offset:...]); another "[Name: ...]" line is a section header.
_LRC_TAG = re.compile(r"^\[(?:ar|al|ti|au|by|length|offset|re|tool|ve|la|lang|#)\s*:[^\]]*\]$", re.IGNORECASE)
_WORD_TIME = re.compile(r"<\d{1,3}:\d{1,2}(?:[.:]\d{1,3})?>")  # enhanced LRC word times
_SINGER_TAG = re.compile(r"^(?:\[\s*(P\s*1|P\s*2|P\s*1\s*&\s*P\s*2|P\s*3)\s*\]|(P\s*1|P\s*2|P\s*1\s*&\s*P\s*2|P\s*3)\s*:)\s*",
                         re.IGNORECASE)  # fmt: skip
#: Lyric sites' section headers: a whole line in square brackets ("[Chorus]", "[Verse 2: Artist]")
#: that is no duet tag, or a section's name alone ("Chorus:", "(Repeat chorus)", "Verse 2").
_BRACKETED = re.compile(r"^\[([^\]]*)\]$")
_SECTION = re.compile(r"^\(?\s*(?:repeat\s+(?:the\s+)?)?((?:pre-?|post-?)?(?:intro|verse|chorus|refrain|hook|bridge|"
                      r"interlude|breakdown|outro|coda|instrumental|solo|strophe|couplet))(?:\s*\d+)?\s*\)?\s*:?$",
                      re.IGNORECASE)  # fmt: skip
#: A repeat mark ending a line or a header: "(x2)", "x3", "[2x]", "×2": sung that many times.
_REPEAT = re.compile(r"(?:^|\s+)[(\[]?\s*(?:[x×]\s*([2-9])|([2-9])\s*[x×])\s*[)\]]?\s*$", re.IGNORECASE)
_ANNOTATION = re.compile(r"\[[^\]]*\]")  # "[laughs]", "[?]": never sung
#: A subtitle cue's timing line (SubRip's "00:01:02,500 --> 00:01:05,000", WebVTT's "01:02.500 -->
#: ..." with its settings after it) and the tags a cue's text may carry (<i>, <font ...>, <v Name>,
#: <c.class>, a word's own time <00:01:02.750>).
_CUE_TIME = re.compile(r"^\s*(?:(\d{1,2}):)?(\d{1,2}):(\d{2})[.,](\d{1,3})\s*-->\s*\S+")
_SUBTITLE_TAG = re.compile(r"</?(?:[ibuc]|font|lang|ruby|rt|v)(?:[.\s][^>]*)?>|<(?:\d{1,2}:)?\d{1,2}:\d{2}[.,]\d{3}>", re.IGNORECASE)
#: A chord symbol as chord sheets write it above the lyrics ("Am", "F#m7", "Gsus4", "C/G", "Bb(add9)",
#: "N.C."): a line of nothing else is played, not sung. A chord inline in the text ("[Am]Hello",
#: ChordPro) is an annotation.
_CHORD = re.compile(r"^(?:[A-G](?:#|b|♯|♭)?(?:maj|min|m|M|dim|aug|sus|add|°|ø|\+|-)*\(?\d*(?:(?:add|sus|maj|b|#)\d+)*\)?"
                    r"(?:/[A-G](?:#|b|♯|♭)?)?|N\.?C\.?|[|/%:]+)$")  # fmt: skip
#: What a lyric site's page adds to its lyrics when they are copied or scraped from it (Genius's
#: page, as it and the scraping libraries give it), never sung: the title line ("27 Contributors
#: ... Song Lyrics", a description up to its "Read More"), "You might also like" between two lines,
#: a concert advert, and "Embed" (a count before it) glued to the last line. Only as the page
#: writes them, glued to a line or alone: a sung "You might also like me" is a line.
_PAGE_TITLE = re.compile(r"^\d+\s*Contributors?.*(?:Read More|Lyrics)\s*")
_ALSO_LIKE = re.compile(r"You might also like(?=$|[A-Z\[(])")
_TICKETS = re.compile(r"See .{1,80}? LiveGet tickets as low as \$\d+")
_EMBED = re.compile(r"(?:(?<=\S)|^)\d*Embed(?:Share URLCopyEmbedCopy)?$")
#: Musixmatch's footer on the lyrics its API and the apps built on it give: the notice and a
#: tracking number on lines of their own.
_MUSIXMATCH = re.compile(r"^(?:\*+\s*This Lyrics is NOT for Commercial use\s*\*+|\(\d{10,}\))$", re.IGNORECASE)


class LyricsError(UgpuError):
    """A ``--lyrics`` file that cannot be used."""

    exit_code = 2


@dataclass(frozen=True)
class LyricsLine:
    words: tuple[str, ...]
    time_s: float | None = None  # LRC: when the line starts
    singer: int = SOLO  # a duet's: P1, P2 or BOTH (tagged lines); SOLO otherwise


@dataclass(frozen=True)
class Lyrics:
    path: Path
    lines: tuple[LyricsLine, ...]

    @property
    def timed(self) -> bool:
        return all(line.time_s is not None for line in self.lines)

    @property
    def words(self) -> list[str]:
        return [w for line in self.lines for w in line.words]

    @property
    def duet(self) -> bool:
        return any(line.singer != SOLO for line in self.lines)

    def sung_by(self, lines: list[list[Word]]) -> list[list[Word]]:
        """Each line's words marked with the line's singer (``lines`` in the lyrics' order)."""
        return [[replace(w, singer=line.singer) for w in words] for line, words in zip(self.lines, lines)]


def load_lyrics(path: Path) -> Lyrics:
    """Read a lyrics file (plain text, LRC, or subtitles: :func:`from_subtitles`); :class:`LyricsError`
    says what is wrong and how to fix it."""
    from ultrasinger_gpu_cli.song.textfiles import read_text

    text, _ = read_text(path, cap_bytes=MAX_BYTES, what="lyrics file", error=LyricsError,
                        hint="give a plain-text .txt, .lrc or .srt file of the song's words, saved as UTF-8")  # fmt: skip
    lines = _parse(text)
    if not any(line.words for line in lines):
        raise LyricsError(f"{path}: the lyrics file has no words", hint="one sung line per line of text")
    return Lyrics(path, tuple(line for line in lines if line.words))


def _seconds(minutes: str, seconds: str) -> float:
    return int(minutes) * 60 + float(seconds.replace(":", "."))


def singer_tag(text: str) -> tuple[int | None, str]:
    """A duet tag at the start of a line (``P1:``, ``P2:``, ``P1&P2:``, or a ``[P1]``-style
    header, as lyric sites write them; case and spaces ignored): (the singer, the rest of the
    line); (None, the line) where there is none."""
    found = _SINGER_TAG.match(text)
    if not found:
        return None, text
    tag = re.sub(r"\s", "", (found.group(1) or found.group(2)).upper())
    singer = {"P1": P1, "P2": P2}.get(tag, BOTH)
    return singer, text[found.end():].strip()


def _repeats(text: str) -> tuple[str, int]:
    """``text`` without its repeat mark (:data:`_REPEAT`), and how many times it is sung."""
    found = _REPEAT.search(text)
    if found is None:
        return text, 1
    return text[: found.start()].rstrip(), int(found.group(1) or found.group(2))


def section_header(line: str) -> tuple[str, int] | None:
    """A lyric site's section header (:data:`_BRACKETED`, :data:`_SECTION`): its name (lower case,
    without a singer after a colon or a repeat mark) and how many times the section is sung; None
    for a sung line (a duet tag such as ``[P1]`` included)."""
    if singer_tag(line)[0] is not None or _LRC_TIME.search(line) or _LRC_TAG.match(line):
        return None
    bracketed = _BRACKETED.match(line)
    if bracketed is not None:
        name, count = _repeats(bracketed.group(1).split(":")[0])
    else:
        rest, count = _repeats(line.rstrip(":").rstrip())
        plain = _SECTION.match(rest)
        if plain is None:
            return None
        name = plain.group(0).strip("():").lower().removeprefix("repeat").strip().removeprefix("the").strip()
    return " ".join(name.lower().strip(" -–—").split()), count


def chord_line(line: str) -> bool:
    """Whether a line holds chord symbols only (:data:`_CHORD`), as a chord sheet writes them above
    the words: "C  G  Am  F", "Em7 | D/F# |". A line of the one-letter word "A" alone is sung."""
    tokens = _repeats(line)[0].split()  # "C G Am F x2": played twice
    return bool(tokens) and all(_CHORD.match(t) for t in tokens) and any(t.strip("|/%:") not in ("", "A") for t in tokens)


def without_page_text(text: str) -> str:
    """``text`` without what a lyric site's page adds to the lyrics (:data:`_PAGE_TITLE`,
    :data:`_ALSO_LIKE`, :data:`_TICKETS`, :data:`_EMBED`, :data:`_MUSIXMATCH`); a line left empty
    is no line."""
    lines = text.splitlines()
    filled = [i for i, line in enumerate(lines) if line.strip()]
    if filled:
        lines[filled[0]] = _PAGE_TITLE.sub("", lines[filled[0]].strip(), count=1)
        lines[filled[-1]] = _EMBED.sub("", lines[filled[-1]].rstrip())
    return "\n".join(_TICKETS.sub("", _ALSO_LIKE.sub("", line)) for line in lines if not _MUSIXMATCH.match(line.strip()))


def from_subtitles(text: str) -> str:
    """Subtitles (SubRip ``.srt``, WebVTT ``.vtt``: ``ugpu whisper``'s own ``.srt``, a video's
    captions) as LRC: each cue one line at its start time (its text's lines joined, its tags left
    out; the cue numbers, the ``WEBVTT`` header and ``NOTE`` blocks are no cue's text). Text with
    no cue timing line is returned as it is."""
    lines = text.splitlines()
    if not any(_CUE_TIME.match(line) for line in lines):
        return text
    out: list[str] = []
    i = 0
    while i < len(lines):
        found = _CUE_TIME.match(lines[i])
        i += 1
        if found is None:
            continue
        hours, minutes, seconds, fraction = found.groups()
        start = int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds) + int(fraction.ljust(3, "0")) / 1000
        body: list[str] = []
        while i < len(lines) and lines[i].strip() and not _CUE_TIME.match(lines[i]):
            body.append(_SUBTITLE_TAG.sub("", lines[i]).strip())
            i += 1
        words = " ".join(part for part in body if part)
        if words:
            out.append(f"[{int(start // 60):02d}:{start % 60:05.2f}]{words}")
    return "\n".join(out) + "\n"


def sung_lines(text: str) -> list[str]:
    """The file's lines as they are sung, as lyric sites write them: what their page adds left
    out (:func:`without_page_text`); a chord sheet's chord lines (:func:`chord_line`) and section
    headers left out; a header with no lines under it
    that names an earlier section ("[Chorus]" again, "Repeat chorus") stands for that section's
    lines; a section ("[Chorus x2]") or a line ("... (x2)")
    marked to repeat is sung that many times; a lone mark is no line. A timed (LRC) line keeps
    its own times and is never repeated here."""
    out: list[str] = []
    earlier: dict[str, list[str]] = {}
    name: str | None = None
    count = 1
    body: list[str] = []

    def close() -> None:
        unnumbered = name.rstrip("0123456789 ") if name else None  # "verse 2" stands for "verse" too
        lines = body or (earlier.get(name) or earlier.get(unnumbered, []) if name else [])
        if body and name:
            earlier[name] = earlier[unnumbered] = list(body)
        out.extend(lines * count)

    for raw in without_page_text(from_subtitles(text)).splitlines():
        line = raw.strip()
        if chord_line(line):  # a chord sheet's chords, above the words they are played under
            continue
        header = section_header(line) if line else None
        if header is not None:
            close()
            (name, count), body = header, []
            continue
        rest, times = _repeats(line)
        if not rest and times > 1:
            continue  # a lone "(x2)": which lines it means is not said
        if rest:
            body += [rest] * (1 if _LRC_TIME.search(rest) else times)
    close()
    return out


def _parse(text: str) -> list[LyricsLine]:
    timed: list[LyricsLine] = []
    plain: list[LyricsLine] = []
    singer: int | None = None  # a tag holds for its line and those after it, up to the next tag
    for line in sung_lines(text):
        if _LRC_TAG.match(line):
            continue
        times = [_seconds(m, s) for m, s in _LRC_TIME.findall(line)]
        tagged, rest = singer_tag(_LRC_TIME.sub(" ", line).strip())
        singer = singer if tagged is None else tagged
        words = marks_joined(_ANNOTATION.sub(" ", _WORD_TIME.sub(" ", rest)).split())
        who = SOLO if singer is None else singer
        if times:  # a line sung more than once has more than one time
            timed += [LyricsLine(words, t, who) for t in times]
        elif words or tagged is None:
            plain.append(LyricsLine(words, singer=who))
    lines = sorted(timed, key=lambda line: line.time_s or 0.0) if timed and not plain else \
        plain + [replace(line, time_s=None) for line in timed]  # mixed: the times are not trusted
    if any(line.singer != SOLO for line in lines):  # a duet: untagged lines before the first tag are sung by both
        lines = [replace(line, singer=BOTH) if line.singer == SOLO else line for line in lines]
    return lines


def match_heard(user: list[str], heard: list[Word]) -> dict[int, int]:
    """The user's words matched onto the heard ones in order: {user index: heard index}. Leaving
    heard words unmatched between two matches costs :data:`SKIP_COST_PER_S` per second they
    span, so one matched word never pulls the lyrics across a stretch of the song."""
    if not user or not heard:
        return {}
    starts = [w.start_s for w in heard]
    spans = [b - a for a, b in zip(starts, starts[1:])] + [heard[-1].end_s - heard[-1].start_s]
    pairs = match(user, [w.text for w in heard], skip_cost_b=[SKIP_COST_PER_S * max(0.0, s) for s in spans],
                  unpaired_cost=UNPAIRED_COST)  # fmt: skip
    return dict(pairs)


def _syllable_count(word: str) -> int:
    return max(1, len(rule_syllables(word)))


def unsqueeze(words: list[Word], duration_s: float) -> list[Word]:
    """No word shorter than a sung syllable (:data:`MIN_SYLLABLE_S` per syllable): where words
    were crowded into too little time, the later ones move on into the free time after them
    (and, at the end of the song, the earlier ones back into the time before)."""
    if not words:
        return words
    need = [MIN_SYLLABLE_S * _syllable_count(w.text) for w in words]
    starts = [w.start_s for w in words]
    for k in range(1, len(words)):
        starts[k] = max(starts[k], starts[k - 1] + need[k - 1])
    limit = max(duration_s, words[-1].end_s)
    if starts[-1] + need[-1] > limit:  # pushed past the end: back from the end
        starts[-1] = limit - need[-1]
        for k in range(len(words) - 2, -1, -1):
            starts[k] = min(starts[k], starts[k + 1] - need[k])
    out = []
    for k, w in enumerate(words):
        start = max(0.0, starts[k])
        nxt = starts[k + 1] if k + 1 < len(words) else limit
        end = min(max(w.end_s, start + need[k]), max(nxt, start + need[k]))
        out.append(Word(w.text, start, end, w.probability, w.word_end, w.phrase_start))
    return out


def line_windows(lyrics: Lyrics, duration_s: float) -> list[tuple[float, float]]:
    """LRC: each line's audio, from its time to the next line's (at most one Whisper window)."""
    times = [line.time_s or 0.0 for line in lyrics.lines]
    ends = times[1:] + [duration_s]
    return [(min(t, duration_s), min(max(e, t + 0.5), t + MAX_WINDOW_S, duration_s)) for t, e in zip(times, ends)]


def timed_words(texts: list[list[str]], aligned: list[list[tuple[str, float, float]]],
                windows: list[tuple[float, float]]) -> list[list[Word]]:  # fmt: skip
    """Each user word with its time: the aligned words (Whisper's own word split) are matched to
    the user's words by their characters, so punctuation Whisper glues to a neighbour cannot
    lose or duplicate a word. A word the alignment did not reach gets an even share of what is
    left of its window."""
    out: list[list[Word]] = []
    for words, pieces, (w_start, w_end) in zip(texts, aligned, windows):
        piece_spans, at = [], 0
        for text, start, end in pieces:
            part = text.replace(" ", "")
            piece_spans.append((at, at + len(part), start, end))
            at += len(part)
        timed: list[tuple[float, float] | None] = []
        offset = 0  # user spans in the compact text (spaces removed)
        for w in words:
            a, b = offset, offset + len(w)
            offset = b
            hits = [(s, e) for pa, pb, s, e in piece_spans if pa < b and pb > a]
            timed.append((min(s for s, _ in hits), max(e for _, e in hits)) if hits else None)
        # Words with no time: evenly between their timed neighbours (or the window's edges).
        i = 0
        while i < len(timed):
            if timed[i] is not None:
                i += 1
                continue
            j = i
            while j < len(timed) and timed[j] is None:
                j += 1
            left = timed[i - 1][1] if i > 0 and timed[i - 1] else w_start  # type: ignore[index]
            right = timed[j][0] if j < len(timed) and timed[j] else w_end  # type: ignore[index]
            right = max(right, left)
            step = (right - left) / (j - i)
            for k in range(i, j):
                timed[k] = (left + (k - i) * step, left + (k - i + 1) * step)
            i = j
        out.append([Word(w, float(t[0]), float(t[1])) for w, t in zip(words, timed) if t is not None])  # type: ignore[index]
    return out


@dataclass(frozen=True)
class AlignedLyrics:
    """The stage's result: the language and one list of timed words per lyrics line."""

    language: str | None
    lines: list[list[Word]]

    @property
    def no_vocals(self) -> bool:  # the stage runner's "nothing found" rule
        return not any(self.lines)


def align_lyrics(engine: Any, audio: Any, lyrics: Lyrics, progress: Any, *, language: str | None,
                 sample_rate: int) -> AlignedLyrics:  # fmt: skip
    """The lyrics timed on ``audio`` (mono, ``sample_rate``), one list of words per lyrics line."""
    if getattr(engine, "align", None) is None:
        raise LyricsError(f"the {engine.settings.backend} backend cannot align lyrics",
                          hint="use --whisper-backend openai-whisper or faster-whisper with --lyrics")  # fmt: skip
    duration = len(audio) / sample_rate
    user = lyrics.words
    most_words, most_lines = int(MAX_WORDS_PER_S * duration) + 40, int(duration / MIN_LINE_S) + 10
    if len(user) > most_words or len(lyrics.lines) > most_lines:
        raise LyricsError(f"{lyrics.path}: {len(user)} words on {len(lyrics.lines)} lines for a song of {duration:.0f} s, "
                          f"more than a voice sings (at most {most_words} words, {most_lines} lines)",
                          hint="give this song's lyrics only, one sung line per line")  # fmt: skip
    line_of = [i for i, line in enumerate(lyrics.lines) for _ in line.words]
    if lyrics.timed:
        windows = line_windows(lyrics, duration)
        texts = [list(line.words) for line in lyrics.lines]
        language, aligned = engine.align(audio, windows, [" ".join(t) for t in texts], language=language, progress=progress)
        return AlignedLyrics(language, lyrics.sung_by(timed_words(texts, aligned, windows)))
    transcript = engine.run(audio, lambda f, t: progress(0.5 * f, t), language=language)
    language = language or transcript.language
    heard = [w for seg in transcript.segments for w in seg.words if w.text.strip()]
    timed: list[Word | None] = [None] * len(user)
    matches = match_heard(user, heard)
    for i, j in matches.items():
        timed[i] = Word(user[i], heard[j].start_s, heard[j].end_s)
    chunks = list(transcript.chunks) or [(0.0, duration)]
    # The words between two matches, timed in the stretch between their neighbours: those of the
    # line before's last matched word follow it, those of the line after's first precede it, at
    # the song's own pace; whole lines Whisper missed are aligned in what is left.
    pace = _pace([w for w in timed if w is not None])
    # Whisper gives every frame to a word: where it skipped a stretch of the song, the word after
    # the stretch takes its frames and starts far too early, lasting many times a sung word (and
    # long enough to hold the words it did not hear at the song's pace), and the words it heard
    # next follow straight on from its end. After words it did not hear (SKIPPED_WORDS or more in
    # a row: one alone is a mishearing), such a word is no anchor: its start is found with
    # theirs. A long word with no room for them, or followed by a rest, is a held note and stays.
    long_s = LONG_WORD * _median_word_s(heard)
    for i, j in sorted(matches.items()):
        word = heard[j]
        missed = 0
        while missed < i and timed[i - missed - 1] is None:
            missed += 1
        room = word.end_s - word.start_s - long_s
        held_them = room >= pace * sum(_syllable_count(user[k]) for k in range(i - missed, i))
        followed = j + 1 < len(heard) and heard[j + 1].start_s - word.end_s < PAUSE_S
        if missed >= SKIPPED_WORDS and room > 0 and held_them and followed:
            timed[i] = None
    to_align: list[tuple[list[int], tuple[float, float]]] = []
    for first, last in _unmatched_runs(timed):
        before = timed[first - 1] if first > 0 else None
        after = timed[last + 1] if last + 1 < len(user) else None
        low = before.end_s if before else _voice_start(chunks, after.start_s if after else duration)
        high = after.start_s if after else _voice_end(chunks, before.end_s if before else 0.0, duration)
        indices = list(range(first, last + 1))
        if high - low < ALIGN_MIN_S:  # Whisper ran them into their neighbours: they share the neighbours' time
            together = ([first - 1] if before else []) + indices + ([last + 1] if after else [])
            start = before.start_s if before else max(0.0, high - ALIGN_MIN_S)
            _share(timed, user, together, start, after.end_s if after else min(duration, start + ALIGN_MIN_S))
            continue
        head = [k for k in indices if before and line_of[k] == line_of[first - 1]]
        tail = [k for k in indices if after and line_of[k] == line_of[last + 1] and k not in head]
        if head:
            end = min(high, low + pace * sum(_syllable_count(user[k]) for k in head))
            _share(timed, user, head, low, end)
            low = end
        if tail:
            start = max(low, high - pace * sum(_syllable_count(user[k]) for k in tail))
            _share(timed, user, tail, start, high)
            high = start
        middle = [k for k in indices if k not in head and k not in tail]
        if middle and high - low < ALIGN_MIN_S:
            _share(timed, user, middle, low, max(low, high))
        elif middle:
            to_align += _windows(low, high, middle, chunks)
    if to_align:
        windows = [window for _, window in to_align]
        texts = [[user[k] for k in indices] for indices, _ in to_align]
        language, aligned = engine.align(audio, windows, [" ".join(t) for t in texts], language=language,
                                         progress=lambda f, t: progress(0.5 + 0.5 * f, t))  # fmt: skip
        for (indices, _), words in zip(to_align, timed_words(texts, aligned, windows)):
            for k, word in zip(indices, words):
                timed[k] = word
    progress(1.0, duration)
    flat = unsqueeze([w for w in timed if w is not None], duration)
    # Back to the user's lines: a line's first word starts a phrase.
    lines: list[list[Word]] = [[] for _ in lyrics.lines]
    for word, line in zip(flat, line_of):
        lines[line].append(word)
    return AlignedLyrics(language, [line for line in lyrics.sung_by(lines) if line])


def _unmatched_runs(timed: list[Word | None]) -> list[tuple[int, int]]:
    """(first, last) index of each run of words with no time yet."""
    runs, first = [], None
    for k, word in enumerate(timed + [Word("", 0, 0)]):
        if word is None and first is None:
            first = k
        elif word is not None and first is not None:
            runs.append((first, k - 1))
            first = None
    return runs


def _median_word_s(words: list[Word]) -> float:
    """The median length of the words Whisper heard (0.3 s where it heard none)."""
    lengths = sorted(w.end_s - w.start_s for w in words)
    return float(lengths[len(lengths) // 2]) if lengths else 0.3


def _pace(words: list[Word]) -> float:
    """The song's pace: the median time per syllable of the words Whisper heard (within
    :data:`MIN_SYLLABLE_S` and a second)."""
    per = [(w.end_s - w.start_s) / _syllable_count(w.text) for w in words if w.end_s > w.start_s]
    return float(min(1.0, max(MIN_SYLLABLE_S, sorted(per)[len(per) // 2]))) if per else 0.3


def _share(timed: list[Word | None], user: list[str], indices: list[int], low: float, high: float) -> None:
    """The words at ``indices`` share [low, high] by their letters."""
    bounds = share_by_letters(low, high, [user[k] for k in indices])
    for n, k in enumerate(indices):
        timed[k] = Word(user[k], float(bounds[n]), float(bounds[n + 1]))


def _voice_start(chunks: list[tuple[float, float]], before: float) -> float:
    """Where the voice starts, in reach before ``before`` (for words before the first match)."""
    starts = [s for s, _ in chunks if s < before]
    return max(starts[0] if starts else 0.0, before - MAX_WINDOW_S)


def _voice_end(chunks: list[tuple[float, float]], after: float, duration: float) -> float:
    """Where the voice ends, in reach after ``after`` (for words after the last match)."""
    ends = [e for _, e in chunks if e > after]
    return min(ends[-1] if ends else duration, after + MAX_WINDOW_S, duration)


def _windows(low: float, high: float, indices: list[int],
             chunks: list[tuple[float, float]]) -> list[tuple[list[int], tuple[float, float]]]:  # fmt: skip
    """The stretch [low, high] as Whisper windows (at most :data:`MAX_WINDOW_S` each) with the
    words each is given: a longer stretch is cut to the voiced chunks inside it, which share the
    words by their voiced time."""
    if high - low <= MAX_WINDOW_S:
        return [(indices, (low, high))]
    pieces: list[tuple[float, float]] = []
    for s, e in chunks:
        s, e = max(s, low), min(e, high)
        while e - s > MAX_WINDOW_S:
            pieces.append((s, s + MAX_WINDOW_S))
            s += MAX_WINDOW_S
        if e - s > ALIGN_MIN_S:
            pieces.append((s, e))
    if not pieces:
        return [(indices, (low, low + MAX_WINDOW_S))]
    total = sum(e - s for s, e in pieces)
    out, done, at = [], 0, 0.0
    for n, (s, e) in enumerate(pieces):
        at += e - s
        upto = len(indices) if n == len(pieces) - 1 else round(len(indices) * at / total)
        if upto > done:
            out.append((indices[done:upto], (s, e)))
            done = upto
    return out
