"""The one word type, from Whisper (or a timings file) to the notes of the chart, and what Whisper
hears: its segments of words and a song's transcript."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Word:
    """A word, or a syllable of one, with its time in seconds.

    Whisper's words keep their leading space in ``text`` (its tokenizer's way); the note
    builder strips it. A syllable that is not the last of its word has ``word_end=False``.
    """

    text: str
    start_s: float
    end_s: float
    probability: float | None = None
    word_end: bool = True
    phrase_start: bool = False
    singer: int = 0  # a duet's singer (ultrastar.P1, P2, BOTH); 0: the one singer

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def stripped(self) -> Word:
        return replace(self, text=self.text.strip())

    def to_dict(self) -> dict[str, Any]:
        """The words JSON layout (``ugpu whisper`` writes it, ``--timings`` reads it)."""
        out: dict[str, Any] = {"word": self.text, "start": self.start_s, "end": self.end_s}
        if self.probability is not None:
            out["probability"] = round(self.probability, 4)
        if self.singer:
            out["singer"] = self.singer
        return out


def sung(text: str) -> bool:
    """Whether a word's text is sung: it holds a letter or a digit (of any script). A mark alone
    ("...", "-", "—", "♪") is punctuation, or Whisper's way of hearing music."""
    return any(ch.isalnum() for ch in text)


def marks_joined(tokens: Sequence[str]) -> tuple[str, ...]:
    """Words from whitespace-separated tokens, a token of marks alone ("Hey — you", "I - I - I",
    "here ...") joined to the word before it (the first word: the one after), as punctuation is:
    it is written, not sung (:func:`sung`). Tokens of marks alone only: no words."""
    words: list[str] = []
    leading: list[str] = []
    for token in tokens:
        if sung(token):
            words.append(" ".join([*leading, token]))
            leading = []
        elif words:
            words[-1] = f"{words[-1]} {token}"
        else:
            leading.append(token)
    return tuple(words)


def without_marks(words: Sequence[Word]) -> list[Word]:
    """The sung words (:func:`sung`): a word of marks alone is left out (Whisper writes " . . ."
    over an instrumental stretch; a timings file may hold a "-"), the line it started passing
    to the word after it, the word it ended (a syllable's) ending with the syllable before."""
    out: list[Word] = []
    line_start = False
    for w in words:
        if not sung(w.text):
            line_start = line_start or w.phrase_start
            if w.word_end and out and not out[-1].word_end and out[-1].singer == w.singer:
                out[-1] = replace(out[-1], word_end=True)
            continue
        out.append(replace(w, phrase_start=True) if line_start and not w.phrase_start else w)
        line_start = False
    return out


@dataclass
class Segment:
    start: float
    end: float
    text: str
    words: list[Word] = field(default_factory=list)
    avg_logprob: float | None = None
    no_speech_prob: float | None = None
    temperature: float = 0.0

    def within(self, start_s: float, end_s: float, heard_until_s: float = float("-inf"),
               repeats: int | None = None) -> Segment | None:  # fmt: skip
        """The part of a segment heard in an overlapping window that belongs to its own chunk:
        the words that start in ``[start_s, end_s)`` and whose middle lies after
        ``heard_until_s`` (the end of the words already kept from the window before: one voice
        sings one word at a time). With ``repeats``, only that many of the first words whose
        middle lies before it are taken for words heard already (a word the window before
        stretched over the cut can hold the next word's whole time). None where no word is left."""
        own = [w for w in self.words if start_s <= w.start_s < end_s]
        again = {id(w) for w in [w for w in own if (w.start_s + w.end_s) / 2 < heard_until_s][:repeats]}
        kept = [w for w in own if id(w) not in again]
        if len(kept) == len(self.words):
            return self
        if not kept:
            return None
        return replace(self, start=min(max(self.start, start_s), kept[0].start_s),
                       end=max(min(self.end, end_s), kept[-1].end_s), text="".join(w.text for w in kept).strip(),
                       words=kept)  # fmt: skip

    def extended(self, words: Sequence[Word]) -> Segment:
        """The segment with ``words`` (later than its own) added at its end."""
        kept = [*self.words, *words]
        return replace(self, end=max(self.end, kept[-1].end_s), text="".join(w.text for w in kept).strip(), words=kept)

    def without_last(self, count: int) -> Segment | None:
        """The segment less its last ``count`` words (None where none is left)."""
        kept = self.words[: len(self.words) - count]
        if not kept:
            return None
        return replace(self, end=kept[-1].end_s, text="".join(w.text for w in kept).strip(), words=kept)

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "text": self.text,
            "words": [w.to_dict() for w in self.words],
            "avg_logprob": self.avg_logprob,
            "no_speech_prob": self.no_speech_prob,
            "temperature": self.temperature,
        }


@dataclass
class Transcript:
    language: str | None
    segments: list[Segment]
    chunks: list[tuple[float, float]] = field(default_factory=list)

    @property
    def words(self) -> list[Word]:
        return [w for s in self.segments for w in s.words]

    @property
    def no_vocals(self) -> bool:
        return not self.chunks

    def to_dict(self) -> dict[str, Any]:
        return {
            "language": self.language,
            "segments": [s.to_dict() for s in self.segments],
            "chunks": [list(c) for c in self.chunks],
            "no_vocals_found": self.no_vocals,
        }
