"""What a run is asked to do: the options every way of converting songs passes to the pipeline
(the CLI, a batch, ``--gpus`` workers, Ray actors, the server's workers). Given once, never changed
on the way."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ultrasinger_gpu_cli.errors import InvalidSettingError
from ultrasinger_gpu_cli.run.diagnostics import Rehearsal
from ultrasinger_gpu_cli.song.lyrics import Lyrics, load_lyrics
from ultrasinger_gpu_cli.song.timings import Timings, load_timings
from ultrasinger_gpu_cli.song.ultrastar import ChartFiles


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
    overlap: bool = True  # a batch's host work (decode, tempo, files) runs while the engines run its neighbours
    video: bool = True  # a video source goes into the song folder too, named by #VIDEO


#: Writes the chart's text, given the names of the files beside it.
ChartText = Callable[[ChartFiles], str]


@dataclass(frozen=True)
class SongInputs:
    """The files every song of a run shares, read once: ``--timings`` and ``--lyrics``."""

    timings: Timings | None = None
    lyrics: Lyrics | None = None


def read_inputs(options: RunOptions) -> SongInputs:
    """Read (and so check) a run's ``--timings`` and ``--lyrics``, once, before any model loads;
    a file that cannot be used stops the run, naming the file and what is wrong."""
    if options.lyrics is not None and options.timings is not None:
        raise InvalidSettingError("--lyrics and --timings both give the words: use one of them")
    return SongInputs(load_timings(options.timings) if options.timings is not None else None,
                      load_lyrics(options.lyrics) if options.lyrics is not None else None)  # fmt: skip
