"""``--lyrics``: the user's own words instead of speech recognition, timed on the vocals.

* **Plain text**: one line per sung line (the breaks become phrase hints). Whisper transcribes
  the vocals as usual; the user's words are mapped onto the transcribed words (a sequence
  alignment on the normalised words), which tells each voiced chunk its own part of the text;
  then the same Whisper model aligns that text to the chunk's audio word by word (its
  cross-attention alignment, the one that times transcribed words: no extra weights).
* **LRC** (``[mm:ss.xx] line``): the line times say where each line is sung, so no
  transcription is needed; each line is aligned in the audio from its time to the next line's.

Every word of the file reaches the chart exactly once, in order. Pure core: the engine does
the model work (:meth:`WhisperEngine.align`).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ultrasinger_gpu_cli.errors import UgpuError
from ultrasinger_gpu_cli.words import Word

MAX_BYTES = 1 * 2**20  # lyrics are kilobytes
MAX_WINDOW_S = 30.0  # one Whisper window
_LRC_TIME = re.compile(r"\[(\d{1,3}):(\d{1,2}(?:[.:]\d{1,3})?)\]")
_LRC_TAG = re.compile(r"^\[[a-zA-Z#]+:[^\]]*\]$")  # [ar:...], [ti:...], [offset:...]
_WORD_TIME = re.compile(r"<\d{1,3}:\d{1,2}(?:[.:]\d{1,3})?>")  # enhanced LRC word times


class LyricsError(UgpuError):
    """A ``--lyrics`` file that cannot be used."""

    exit_code = 2


@dataclass(frozen=True)
class LyricsLine:
    words: tuple[str, ...]
    time_s: float | None = None  # LRC: when the line starts


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


def load_lyrics(path: Path) -> Lyrics:
    """Read a lyrics file (plain text or LRC); :class:`LyricsError` says what is wrong and how to fix it."""
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise LyricsError(f"{path}: {size / 2**20:.1f} MB is not a lyrics file", hint="give a .txt or .lrc file of the song's words")
        data = path.read_bytes()
    except OSError as exc:
        raise LyricsError(f"{path}: cannot read the lyrics file: {exc.strerror}") from exc
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise LyricsError(f"{path}: starts like UTF-16 but is not ({exc.reason})", hint="save the lyrics as UTF-8") from exc
    elif b"\x00" in data:
        raise LyricsError(f"{path}: a binary file, not lyrics", hint="give a plain-text .txt or .lrc file, saved as UTF-8")
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise LyricsError(f"{path}: not UTF-8 (byte {exc.start} is {data[exc.start]:#04x})",
                              hint="save the lyrics as UTF-8 (in most editors: Save as, Encoding: UTF-8)") from exc  # fmt: skip
    lines = _parse(text)
    if not any(line.words for line in lines):
        raise LyricsError(f"{path}: the lyrics file has no words", hint="one sung line per line of text")
    return Lyrics(path, tuple(line for line in lines if line.words))


def _seconds(minutes: str, seconds: str) -> float:
    return int(minutes) * 60 + float(seconds.replace(":", "."))


def _parse(text: str) -> list[LyricsLine]:
    timed: list[LyricsLine] = []
    plain: list[LyricsLine] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or _LRC_TAG.match(line):
            continue
        times = [_seconds(m, s) for m, s in _LRC_TIME.findall(line)]
        words = tuple(_WORD_TIME.sub(" ", _LRC_TIME.sub(" ", line)).split())
        if times:
            timed += [LyricsLine(words, t) for t in times]  # a line sung more than once has more than one time
        else:
            plain.append(LyricsLine(words))
    if timed and not plain:
        return sorted(timed, key=lambda line: line.time_s or 0.0)
    return plain + [LyricsLine(line.words) for line in timed]  # mixed: the times are not trusted


def _norm(word: str) -> str:
    return re.sub(r"[^\w]", "", word.casefold())


def assign_to_chunks(user: list[str], heard: list[tuple[str, int]], n_chunks: int,
                     chunks: list[tuple[float, float]]) -> list[int]:  # fmt: skip
    """The chunk of each user word: from the transcribed word it maps onto (``heard`` = (word,
    chunk)); a word that maps onto none goes with the word before it (the first ones: after).
    Without any transcribed word, the words are shared out by the chunks' lengths."""
    if not user:
        return []
    if not heard:
        total = sum(e - s for s, e in chunks) or 1.0
        out, edge, k = [], 0.0, 0
        for i in range(len(user)):
            position = (i + 0.5) / len(user) * total
            while k < n_chunks - 1 and position > edge + (chunks[k][1] - chunks[k][0]):
                edge += chunks[k][1] - chunks[k][0]
                k += 1
            out.append(k)
        return out
    matcher = difflib.SequenceMatcher(None, [_norm(w) for w in user], [_norm(w) for w, _ in heard], autojunk=False)
    found: list[int | None] = [None] * len(user)
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            found[block.a + k] = heard[block.b + k][1]
    # An unmatched word stays with the words before it (the first ones: with the first match).
    out: list[int] = []
    previous = next((c for c in found if c is not None), 0)
    for chunk in found:
        previous = previous if chunk is None else chunk
        out.append(previous)
    return _monotone(out)


def _monotone(chunks: list[int]) -> list[int]:
    """Lyrics are sung in order: a word never goes to an earlier chunk than the word before it."""
    out, high = [], 0
    for c in chunks:
        high = max(high, c)
        out.append(high)
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
    line_of = [i for i, line in enumerate(lyrics.lines) for _ in line.words]
    if lyrics.timed:
        windows = line_windows(lyrics, duration)
        texts = [list(line.words) for line in lyrics.lines]
        language, aligned = engine.align(audio, windows, [" ".join(t) for t in texts], language=language, progress=progress)
        return AlignedLyrics(language, timed_words(texts, aligned, windows))
    transcript = engine.run(audio, lambda f, t: progress(0.5 * f, t), language=language)
    language = language or transcript.language
    chunks = list(transcript.chunks)
    if not chunks:  # no voice found: the whole song is one stretch per 30 s
        chunks = [(s, min(duration, s + MAX_WINDOW_S)) for s in range(0, max(1, int(duration)), int(MAX_WINDOW_S))]
    heard = [(w.text.strip(), _chunk_of(w.start_s, chunks)) for s in transcript.segments for w in s.words]
    where = assign_to_chunks(user, heard, len(chunks), chunks)
    texts = [[w for w, c in zip(user, where) if c == k] for k in range(len(chunks))]
    language, aligned = engine.align(audio, chunks, [" ".join(t) for t in texts], language=language,
                                     progress=lambda f, t: progress(0.5 + 0.5 * f, t))  # fmt: skip
    flat = [w for words in timed_words(texts, aligned, chunks) for w in words]
    # Back to the user's lines: a line's first word starts a phrase.
    lines: list[list[Word]] = [[] for _ in lyrics.lines]
    for word, line in zip(flat, line_of):
        lines[line].append(word)
    return AlignedLyrics(language, [line for line in lines if line])


def _chunk_of(t: float, chunks: list[tuple[float, float]]) -> int:
    for k, (s, e) in enumerate(chunks):
        if t < e:
            return k
    return len(chunks) - 1
