"""What a run is asked to do: the options every way of converting songs passes to the pipeline
(the CLI, a batch, ``--gpus`` workers, Ray actors, the server's workers). Given once, never changed
on the way."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ultrasinger_gpu_cli.run.diagnostics import Rehearsal


@dataclass
class RunOptions:
    out_dir: Path
    language: str | None = None
    separate: bool = True
    timings: Path | None = None
    format_version: str | None = None  # None: 1.1.0, or a --timings chart's own
    fallback: bool = True
    models_dir: Path | None = None
    cache_dir: Path | None = None
    rehearsal: Rehearsal | None = None
    fetch_missing: bool = False  # download missing weights on first use
    overwrite: bool = False  # convert a song again that its folder already holds
    rap: bool = False  # words with no stable pitch become rap notes (R)
    lyrics: Path | None = None  # the user's words (plain text or LRC) instead of speech recognition
    max_minutes: float | None = None  # the longest song decoded (None: UGPU_MAX_MINUTES, else 120)
    singers: tuple[str, str] | None = None  # a duet's singers' names (None: "Singer 1", "Singer 2")
    preview: bool = True  # draw preview.png, the chart as a piano roll, into the song folder


#: Writes the chart's text, given the names of the song's audio, vocals and instrumental files.
ChartText = Callable[[str, "str | None", "str | None"], str]
