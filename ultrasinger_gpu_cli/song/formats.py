"""Text formats for lyrics: SRT and LRC from Whisper's segments, a sung line each (pure functions)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ultrasinger_gpu_cli.song.notes import capitals_start_lines
from ultrasinger_gpu_cli.song.onsets import PHRASE_PAUSE_S
from ultrasinger_gpu_cli.song.words import Segment, Word, without_marks


class _Segment(Protocol):
    start: float
    end: float
    text: str


def _srt_time(seconds: float) -> str:
    ms = max(0, int(round(seconds * 1000)))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def _lrc_time(seconds: float) -> str:
    cs = max(0, int(round(seconds * 100)))
    m, rest = divmod(cs, 6000)
    s, cs = divmod(rest, 100)
    return f"{m:02d}:{s:02d}.{cs:02d}"


def sung_lines(segments: Sequence[Segment], language: str | None = None) -> list[Segment]:
    """Whisper's segments as the lines a lyrics file holds: a segment is a window of up to 30 s,
    and its words start a new line where Whisper wrote a capital letter (it writes sung lyrics as
    lyric sheets do, :func:`.notes.capitals_start_lines`) or after a phrase's pause
    (:data:`.onsets.PHRASE_PAUSE_S`); each line timed by its words. Marks alone are no words
    (:func:`.words.without_marks`); a segment without words stays as it is."""
    out: list[Segment] = []
    for seg in segments:
        if not seg.words:
            out.append(seg)
            continue
        words = without_marks(capitals_start_lines(seg.words, language))
        lines: list[list[Word]] = []
        for k, w in enumerate(words):
            if not lines or w.phrase_start or w.start_s - words[k - 1].end_s >= PHRASE_PAUSE_S:
                lines.append([])
            lines[-1].append(w)
        out += [Segment(line[0].start_s, line[-1].end_s, "".join(w.text for w in line).strip(), line) for line in lines]
    return out


def to_srt(segments: Sequence[_Segment]) -> str:
    blocks = []
    for number, seg in enumerate((s for s in segments if s.text.strip()), start=1):
        blocks.append(f"{number}\n{_srt_time(seg.start)} --> {_srt_time(seg.end)}\n{seg.text.strip()}\n")
    return "\n".join(blocks)


def to_lrc(segments: Sequence[_Segment], *, title: str | None = None, artist: str | None = None) -> str:
    lines = []
    if title:
        lines.append(f"[ti:{title}]")
    if artist:
        lines.append(f"[ar:{artist}]")
    lines += [f"[{_lrc_time(s.start)}]{s.text.strip()}" for s in segments if s.text.strip()]
    return "\n".join(lines) + ("\n" if lines else "")
