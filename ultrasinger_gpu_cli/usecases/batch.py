"""``ugpu run``'s batch: every song through one pipeline; a song that fails never stops the rest."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ultrasinger_gpu_cli.crashlog import describe, write_crash_log
from ultrasinger_gpu_cli.errors import ModelDamagedError, ModelMissingError, UgpuError, from_os_error
from ultrasinger_gpu_cli.song.paths import check_output_dir, sweep_partials
from ultrasinger_gpu_cli.song.lyrics import load_lyrics
from ultrasinger_gpu_cli.song.timings import load_timings
from ultrasinger_gpu_cli.run.events import Notice, OnEvent, SongFailed, SongReport, ignore
from ultrasinger_gpu_cli.run.pipeline import Pipeline
from ultrasinger_gpu_cli.run.options import RunOptions
from ultrasinger_gpu_cli.run.songfolders import SongAlreadyDone
from ultrasinger_gpu_cli.plan.resolver import Plan
from ultrasinger_gpu_cli.run.stagecache import resume_cache_dir
from ultrasinger_gpu_cli.store.db import Store


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

    def raise_for_failures(self) -> None:
        """The batch's exit: one error listing every song that failed; exit code 1, or 2 when every
        failure was a usage error (a song over the length limit, say)."""
        if self.failures:
            listing = "; ".join(f"{f.song}: {f.error}" for f in self.failures)
            error = UgpuError(f"{len(self.failures)} of {self.songs} song(s) failed: {listing}")
            if all(f.exit_code == 2 for f in self.failures):
                error.exit_code = 2
            raise error


def prepare(options: RunOptions) -> None:
    """What every batch checks before any model loads: the output folder, the timings and lyrics
    files; and what a killed run left half-written is swept."""
    check_output_dir(options.out_dir)  # before any model loads
    if options.timings is not None:
        load_timings(options.timings)  # a bad timings file stops at once, naming what is wrong
    if options.lyrics is not None:
        load_lyrics(options.lyrics)  # so does a bad lyrics file


def sweep(options: RunOptions, store: Store | None) -> None:
    """What a killed run left half-written, in the output folder and the resume cache."""
    cache = resume_cache_dir(options.cache_dir, store.path if store is not None else None, options.out_dir)
    for folder in (options.out_dir, cache):
        if Path(folder).is_dir():
            sweep_partials(folder)


@dataclass(frozen=True)
class SongOutcome:
    """One song's end: its report, or why it failed, or that it was converted before."""

    path: Path
    report: SongReport | None = None
    failure: SongFailure | None = None
    already_done: SongFailure | None = None

    def add_to(self, result: BatchResult) -> None:
        if self.report is not None:
            result.reports.append(self.report)
        elif self.failure is not None:
            result.failures.append(self.failure)
        elif self.already_done is not None:
            result.already_done.append(self.already_done)


def convert_one(pipeline: Pipeline, path: Path, on_event: OnEvent = ignore) -> SongOutcome:
    """One song through a started pipeline; any failure is the song's, never the batch's (except
    missing or damaged weights, the same for every song: raised, with the fix)."""
    try:
        return SongOutcome(path, report=pipeline.run_song(path))
    except (ModelMissingError, ModelDamagedError):
        raise
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
                   else f"cannot write {exc.filename or pipeline.options.out_dir}: {exc.strerror or exc}")  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - one song's bug never stops the others
        log = write_crash_log(exc)
        message = f"unexpected error ({describe(exc)}); details in {log}"
        on_event(SongFailed(str(path), message))
        return SongOutcome(path, failure=SongFailure(path, message, log))
    on_event(SongFailed(str(path), message))
    return SongOutcome(path, failure=SongFailure(path, message))


def convert_songs(paths: list[Path], plan: Plan, options: RunOptions, store: Store | None,
                  on_event: OnEvent = ignore) -> BatchResult:
    """Convert ``paths`` with one set of loaded engines. A song that fails, for any reason, is
    recorded and the next one runs; Ctrl-C marks the run interrupted."""
    prepare(options)
    pipeline = Pipeline(plan, options, store, on_event=on_event)
    sweep(options, store)
    pipeline.check_models()  # fetched on first use, or a clear error before any song
    result = BatchResult(pipeline.run_id, plan.mode)
    pipeline.start()
    try:
        for path in paths:
            convert_one(pipeline, path, on_event).add_to(result)
    except KeyboardInterrupt:
        pipeline.finish("interrupted")
        raise
    pipeline.finish("failed" if result.failures else "done", result.to_dict())
    return result
