"""Text formats for lyrics: SRT and LRC from Whisper segments (pure functions)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


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
