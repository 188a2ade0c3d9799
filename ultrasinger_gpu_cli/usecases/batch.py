"""A batch's outcome and its per-song failure policy: a song that fails never stops the rest
(:func:`convert_one`, applied wherever a song runs: here, in a worker process, on a Ray actor)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ultrasinger_gpu_cli.crashlog import describe, write_crash_log
from ultrasinger_gpu_cli.errors import InvalidSettingError, ModelDamagedError, ModelMissingError, SongCancelled, UgpuError, from_os_error
from ultrasinger_gpu_cli.song.audio import MEDIA_SUFFIXES
from ultrasinger_gpu_cli.song.paths import check_output_dir, sweep_partials
from ultrasinger_gpu_cli.run.events import Notice, OnEvent, SongFailed, SongReport, ignore
from ultrasinger_gpu_cli.run.options import RunOptions, SongInputs, read_inputs
from ultrasinger_gpu_cli.run.songfolders import SongAlreadyDone
from ultrasinger_gpu_cli.run.stagecache import run_cache_dir
from ultrasinger_gpu_cli.store.db import Store

if TYPE_CHECKING:  # pragma: no cover
    from ultrasinger_gpu_cli.run.pipeline import Pipeline


T = TypeVar("T")


@dataclass(frozen=True)
class SongFailure:
    song: Path
    error: str
    log: Path | None = None  # the traceback of an unexpected error
    exit_code: int = 1  # the song's error's: 2 for a usage error (too long, bad lyrics)

    def to_dict(self) -> dict[str, str | None]:
        return {"song": str(self.song), "error": self.error, "log": None if self.log is None else str(self.log)}


@dataclass
class BatchResult:
    run_id: str
    mode: str
    reports: list[SongReport] = field(default_factory=list)
    failures: list[SongFailure] = field(default_factory=list)
    already_done: list[SongFailure] = field(default_factory=list)  # converted before; --overwrite redoes them

    @property
    def songs(self) -> int:
        return len(self.reports) + len(self.failures) + len(self.already_done)

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "mode": self.mode, "songs": [r.to_dict() for r in self.reports],
                "failures": [f.to_dict() for f in self.failures],
                "already_done": [f.to_dict() for f in self.already_done]}  # fmt: skip

    def in_order(self, paths: list[Path]) -> None:
        """Each list in the order of ``paths`` (songs given twice: their first place)."""
        place: dict[Path, int] = {}
        for k, path in enumerate(paths):
            place.setdefault(Path(path).resolve(), k)
        self.reports.sort(key=lambda r: place.get(Path(r.source).resolve(), len(place)))
        for songs in (self.failures, self.already_done):
            songs.sort(key=lambda f: place.get(Path(f.song).resolve(), len(place)))

    def raise_for_failures(self) -> None:
        """The batch's exit: one error listing every song that failed; exit code 1, or 2 when every
        failure was a usage error (a song over the length limit, say)."""
        if self.failures:
            listing = "; ".join(f.error if str(f.song) in f.error else f"{f.song}: {f.error}" for f in self.failures)
            error = UgpuError(f"{len(self.failures)} of {self.songs} song(s) failed: {listing}")
            if all(f.exit_code == 2 for f in self.failures):
                error.exit_code = 2
            raise error


def songs_in(paths: Sequence[Path]) -> list[Path]:
    """The songs ``paths`` give: a file as it is; a folder (a library) the audio and video files
    under it, folder by folder in name order, hidden ones left out, and song folders too: a folder
    holding an UltraStar chart is a song already charted (ugpu's own output among them), its audio
    that chart's. A folder with no song in it is an error naming it."""
    from ultrasinger_gpu_cli.song.evaluation import chart_files

    out: list[Path] = []
    for path in paths:
        if not Path(path).is_dir():
            out.append(Path(path))
            continue
        if chart_files(Path(path), recursive=False):
            raise InvalidSettingError(f"{path}: a song folder (it holds an UltraStar chart), not a folder of songs",
                                      hint="give the songs' folder, or the song's audio file itself")  # fmt: skip
        found = []
        for folder, dirs, files in os.walk(path):
            here = Path(folder)
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not chart_files(here / d, recursive=False))
            found += [here / f for f in sorted(files)
                      if not f.startswith(".") and Path(f).suffix.lower() in MEDIA_SUFFIXES and (here / f).is_file()]  # fmt: skip
        if not found:
            raise InvalidSettingError(f"{path}: no songs in this folder (audio or video files; folders holding a "
                                      "chart are songs already charted)",
                                      hint=f"to chart charted songs again, give their files: find '{path}' -name '*.mp3' "
                                           "| ugpu run -")  # fmt: skip
        out += found
    return out


def prepare(options: RunOptions) -> SongInputs:
    """What every batch checks before any model loads: the output folder; and the timings and
    lyrics files, read here once for every song (a bad one stops at once, naming what is wrong)."""
    check_output_dir(options.out_dir)  # before any model loads
    return read_inputs(options)


def sweep(options: RunOptions, store: Store | None) -> None:
    """What a killed run left half-written, in the output folder and the resume cache."""
    for folder in (options.out_dir, run_cache_dir(options, store)):
        if Path(folder).is_dir():
            sweep_partials(folder)


@dataclass(frozen=True)
class SongOutcome:
    """One song's end: its report, or why it failed, or that it was converted before, or that it
    was cancelled while it ran (nothing of it written)."""

    path: Path
    report: SongReport | None = None
    failure: SongFailure | None = None
    already_done: SongFailure | None = None
    cancelled: bool = False

    def add_to(self, result: BatchResult) -> None:
        if self.report is not None:
            result.reports.append(self.report)
        elif self.failure is not None:
            result.failures.append(self.failure)
        elif self.already_done is not None:
            result.already_done.append(self.already_done)


def convert_one(pipeline: Pipeline, path: Path, on_event: OnEvent = ignore, *, out_dir: Path | None = None,
                language: str | None = None) -> SongOutcome:  # fmt: skip
    """One song through a started pipeline (into ``out_dir``, in ``language``, where this song
    has its own), under the per-song failure policy (:func:`attempt`)."""
    return outcome(path, lambda: pipeline.run_song(path, out_dir=out_dir, language=language), on_event,
                   pipeline.options.out_dir)  # fmt: skip


def outcome(path: Path, finish: Callable[[], SongReport], on_event: OnEvent, out_dir: Path) -> SongOutcome:
    """The outcome of the song at ``path`` whose last step is ``finish`` (its report), under
    :func:`attempt`'s failure policy."""
    report = attempt(path, finish, on_event, out_dir)
    return report if isinstance(report, SongOutcome) else SongOutcome(path, report=report)


def attempt(path: Path, step: Callable[[], T], on_event: OnEvent, out_dir: Path) -> T | SongOutcome:
    """``step`` of the song at ``path`` (the whole song, or one stretch of it), or the song's
    outcome when it failed: any failure is the song's, never the batch's (except missing or
    damaged weights, the same for every song: raised, with the fix). A cancelled song
    (:class:`SongCancelled`) is no failure: its outcome says so and the others go on; Ctrl-C
    still stops the batch."""
    try:
        return step()
    except (ModelMissingError, ModelDamagedError):
        raise
    except SongCancelled:
        return SongOutcome(path, cancelled=True)
    except SongAlreadyDone as exc:
        on_event(Notice(str(path), f"{exc.message} (--overwrite converts it again)"))
        return SongOutcome(path, already_done=SongFailure(path, exc.message))
    except UgpuError as exc:
        message = exc.message + (f" ({exc.hint})" if exc.hint else "")
        on_event(SongFailed(str(path), message))
        return SongOutcome(path, failure=SongFailure(path, message, exit_code=exc.exit_code))
    except OSError as exc:  # writing the song's folder: a full disk, a name the file system refuses
        known = from_os_error(exc)
        message = (known.message + (f" ({known.hint})" if known.hint else "") if known is not None
                   else f"cannot write {exc.filename or out_dir}: {exc.strerror or exc}")  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - one song's bug never stops the others
        log = write_crash_log(exc)
        message = f"unexpected error ({describe(exc)}); details in {log}"
        on_event(SongFailed(str(path), message))
        return SongOutcome(path, failure=SongFailure(path, message, log))
    on_event(SongFailed(str(path), message))
    return SongOutcome(path, failure=SongFailure(path, message))
