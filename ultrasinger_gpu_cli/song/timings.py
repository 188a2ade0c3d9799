"""``--timings``: word timings from an UltraStar ``.txt`` (syllables) or a words JSON.

Read the way the games read charts: UTF-8 with or without a BOM, UTF-16 with a BOM, and
otherwise cp1252 with a warning. A file of the wrong shape is refused naming the element that is
wrong (``segments[2].words[5].start``), a bad note naming its line; nothing in a timings file can
make ugpu loop or crash.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ultrasinger_gpu_cli.song import ultrastar
from ultrasinger_gpu_cli.errors import TimingsError
from ultrasinger_gpu_cli.song.words import Word, without_marks

MAX_BYTES = 20 * 2**20  # a chart or a words file is kilobytes; refuse to read a video by mistake


@dataclass(frozen=True)
class Timings:
    words: list[Word]
    are_syllables: bool  # an UltraStar chart's syllables, not whole words
    language: str | None
    warnings: tuple[str, ...] = field(default_factory=tuple)
    chart: ultrastar.Chart | None = None  # an UltraStar chart: re-pitched in place, its grid kept


def decode_text(path: Path) -> tuple[str, str | None]:
    """The file's text and a warning when it had to be read as cp1252."""
    from ultrasinger_gpu_cli.song.textfiles import read_text

    return read_text(path, cap_bytes=MAX_BYTES, what="timings file", error=TimingsError, cp1252=True,
                     hint="give an UltraStar .txt or a words JSON")  # fmt: skip


def _number(value: Any, where: str, path: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TimingsError(f"{path}: {where} must be a number of seconds, not {json.dumps(value)[:40]}")
    if not 0 <= value <= ultrastar.MAX_SONG_S:
        raise TimingsError(f"{path}: {where} = {value} is outside the song (0 to {ultrastar.MAX_SONG_S:.0f} s)")
    return float(value)


def _word(item: Any, where: str, path: Path, first: bool) -> Word | None:
    if not isinstance(item, dict):
        raise TimingsError(f"{path}: {where} must be an object with word, start and end, not {json.dumps(item)[:40]}")
    for key in ("word", "start", "end"):
        if key not in item:
            raise TimingsError(f"{path}: {where} has no {key!r} (every word needs word, start and end)")
    if not isinstance(item["word"], str):
        raise TimingsError(f"{path}: {where}.word must be text, not {json.dumps(item['word'])[:40]}")
    start, end = _number(item["start"], f"{where}.start", path), _number(item["end"], f"{where}.end", path)
    if end < start:
        raise TimingsError(f"{path}: {where} ends ({end} s) before it starts ({start} s)")
    text = item["word"].strip()
    return Word(text, start, end, phrase_start=first) if text else None


def _from_json(text: str, path: Path) -> tuple[list[Word], str | None]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise TimingsError(f"{path}: not JSON and not an UltraStar .txt ({exc})") from exc
    words: list[Word | None] = []
    language = None
    if isinstance(data, dict):
        segments = data.get("segments")
        if not isinstance(segments, list):
            raise TimingsError(f"{path}: 'segments' must be a list of segments with words (ugpu whisper's .words.json)")
        language = data.get("language") if isinstance(data.get("language"), str) else None
        for i, seg in enumerate(segments):
            seg_words = seg.get("words") if isinstance(seg, dict) else seg if isinstance(seg, list) else None
            if not isinstance(seg_words, list):
                raise TimingsError(f"{path}: segments[{i}] must have a list of words")
            words += [_word(w, f"segments[{i}].words[{k}]", path, k == 0) for k, w in enumerate(seg_words)]
    elif isinstance(data, list):
        words = [_word(w, f"[{k}]", path, False) for k, w in enumerate(data)]
    else:
        raise TimingsError(f"{path}: a words JSON is a list of words or an object with 'segments', not {type(data).__name__}")
    return without_marks([w for w in words if w is not None]), language


def load_timings(path: Path) -> Timings:
    """Word timings from ``path``; :class:`TimingsError` names the file and what is wrong."""
    text, warning = decode_text(path)
    warnings = (warning,) if warning else ()
    if path.suffix.lower() == ".txt":
        try:
            chart = ultrastar.read_chart(text)
        except ValueError as exc:
            raise TimingsError(f"{path}: not a usable UltraStar file: {exc}") from exc
        units = chart.words()
        if not units:
            raise TimingsError(f"{path}: the UltraStar file has no notes")
        return Timings(units, True, None, warnings, chart)
    words, language = _from_json(text, path)
    return Timings(words, False, language, warnings)
