"""One fleet: every way ugpu converts songs is a :class:`Fleet` — one pipeline in this process
(:class:`LocalFleet`: ``ugpu run``, each ``ugpu serve`` worker), a worker process per GPU
(:class:`~.scale.ProcessFleet`: ``--gpus``), Ray actors (:class:`~.cluster.RayFleet`: ``--ray``,
``ugpu serve --ray``). Each has the same small interface (start, submit, outcomes, close), the
same per-song failure policy (:func:`.batch.convert_one`, wherever the song runs) and builds its
pipelines in one place (:func:`pipeline_for`); :func:`convert` drives any of them.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ultrasinger_gpu_cli.plan.resolver import Plan
from ultrasinger_gpu_cli.run.events import OnEvent, RunIdle, ignore
from ultrasinger_gpu_cli.run.options import RunOptions, SongInputs
from ultrasinger_gpu_cli.run.pipeline import Pipeline, SongWork
from ultrasinger_gpu_cli.run.stagecache import run_cache_dir
from ultrasinger_gpu_cli.store.db import Store
from ultrasinger_gpu_cli.usecases.batch import BatchResult, SongOutcome, attempt, convert_one, outcome, prepare, sweep


@dataclass(frozen=True)
class Song:
    """A song handed to a fleet: its file, and where this song alone goes (a server job's own
    folder and language; None: the run's)."""

    path: Path
    out_dir: Path | None = None
    language: str | None = None


def pipeline_for(plan: Plan, options: RunOptions, store: Store | None = None, on_event: OnEvent = ignore,
                 inputs: SongInputs | None = None) -> Pipeline:  # fmt: skip
    """The one place a pipeline is built: a worker's engines, loaded once, for every song it gets."""
    return Pipeline(plan, options, store, on_event=on_event, inputs=inputs)


def for_workers(options: RunOptions, store: Store | None) -> RunOptions:
    """The options a worker that keeps no database is given (a ``--gpus`` process, a Ray actor):
    the run's resume cache named, as the driver finds it (beside its database)."""
    return replace(options, cache_dir=run_cache_dir(options, store))


def convert_here(pipeline: Pipeline, song: Song, on_event: OnEvent) -> SongOutcome:
    """One song on a started pipeline, under the per-song failure policy."""
    return convert_one(pipeline, song.path, on_event, out_dir=song.out_dir, language=song.language)


More = Callable[[], "Song | None"]


class Fleet(ABC):
    """Workers that convert songs: started once, given songs, their outcomes as they finish."""

    run_id: str
    mode: str

    @abstractmethod
    def start(self) -> None:
        """Check the weights (fetched on first use, or a clear error) and start the workers."""

    @abstractmethod
    def submit(self, song: Song) -> None:
        """Queue a song; a free worker takes it."""

    @abstractmethod
    def outcomes(self, more: More | None = None) -> Iterator[SongOutcome]:
        """The outcome of every song submitted, as each finishes, until none is pending.

        ``more``: where a fleet that overlaps songs may ask for one more while it works (a
        server's queue: the next job, or None); its outcome follows the others'. A fleet that
        does not overlap songs never calls it."""

    @abstractmethod
    def close(self, status: str, report: dict[str, Any] | None = None) -> None:
        """Stop the workers (their engines unloaded) and mark the run ``status``."""

    def idle(self) -> None:
        """Between the songs of a long-lived fleet (a server worker): nothing runs on it now."""


def convert(paths: list[Path], fleet: Fleet) -> BatchResult:
    """Every song through ``fleet``; a song that fails never stops the rest (missing or damaged
    weights, the same for every song, stop the run with the fix). Ctrl-C marks it interrupted.
    The result lists the songs in the order given, whichever worker finished first."""
    fleet.start()
    result = BatchResult(fleet.run_id, fleet.mode)
    try:
        for path in paths:
            fleet.submit(Song(path))
        for done in fleet.outcomes():
            done.add_to(result)
    except KeyboardInterrupt:
        fleet.close("interrupted")
        raise
    except BaseException:
        fleet.close("failed")
        raise
    result.in_order(paths)
    fleet.close("failed" if result.failures else "done", result.to_dict())
    return result


class LocalFleet(Fleet):
    """One pipeline in this process, songs one after another."""

    def __init__(self, plan: Plan, options: RunOptions, store: Store | None, on_event: OnEvent = ignore, *,
                 kind: str = "run", inputs: SongInputs | None = None) -> None:  # fmt: skip
        self.pipeline = pipeline_for(plan, options, store, on_event, inputs)
        self.on_event = on_event
        self.kind = kind
        self.run_id, self.mode = self.pipeline.run_id, plan.mode
        self._pending: deque[Song] = deque()

    @property
    def plan(self) -> Plan:
        return self.pipeline.plan

    def start(self) -> None:
        self.pipeline.check_models()
        self.pipeline.start(self.kind)

    def submit(self, song: Song) -> None:
        self._pending.append(song)

    def outcomes(self, more: More | None = None) -> Iterator[SongOutcome]:
        if self.pipeline.options.overlap and (len(self._pending) > 1 or (more is not None and self._pending)):
            yield from self._overlapped(more)
        while self._pending:
            yield convert_here(self.pipeline, self._pending.popleft(), self.on_event)

    def _next(self, more: More | None) -> Song | None:
        """The next song to open: the next submitted, else one more from ``more``."""
        if self._pending:
            return self._pending.popleft()
        return more() if more is not None else None

    def _overlapped(self, more: More | None) -> Iterator[SongOutcome]:
        """The songs one after another through the engines, while the host worker opens the next
        song (decode, scan, tempo) and finishes the last (notes, files, pictures): the engines
        never wait for host work between songs. Where the plan's VRAM holds it
        (:attr:`Pipeline.separates_ahead`), the next song's Demucs runs too, on an ahead worker,
        beside this song's Whisper and pitch; otherwise the engines run one at a time, as in
        :meth:`Pipeline.run_song`. Each song's chart is the one it gets alone (the same steps on
        the same inputs). The next song is asked for (from ``more`` once the submitted ones are
        taken) as the current one's engines start."""
        pipeline, host, emit = self.pipeline, self.pipeline.host(), self.pipeline.emit
        ahead = ThreadPoolExecutor(1, thread_name_prefix="ugpu-ahead") if pipeline.separates_ahead else None
        stop = threading.Event()

        def opened(song: Song) -> tuple[Song, SongWork | SongOutcome]:
            return song, attempt(song.path, lambda: pipeline.open_song(song.path, out_dir=song.out_dir,
                                                                        language=song.language),
                                 emit, pipeline.options.out_dir)  # fmt: skip

        def separated_ahead(opening: Future[tuple[Song, SongWork | SongOutcome]]) -> None:
            _song, work = opening.result()
            if isinstance(work, SongWork) and not stop.is_set():
                pipeline.separate_ahead(work, stop)

        def finished(song: Song, work: SongWork) -> SongOutcome:
            return outcome(song.path, lambda: pipeline.finish_song(work), emit, pipeline.options.out_dir)

        opening: Future[tuple[Song, SongWork | SongOutcome]] | None = host.submit(opened, self._pending.popleft())
        finishing: Future[SongOutcome] | None = None
        separating: Future[None] | None = None  # the separation of the song ``opening`` holds, started ahead
        try:
            while opening is not None:
                song, work = opening.result()
                if isinstance(work, SongWork):
                    work.separated = separating
                separating = None
                following = self._next(more)
                opening = host.submit(opened, following) if following is not None else None

                def separate_next(after: Future[tuple[Song, SongWork | SongOutcome]] | None = opening) -> None:
                    nonlocal separating
                    if ahead is not None and after is not None:
                        separating = ahead.submit(separated_ahead, after)

                ran = work if isinstance(work, SongOutcome) else attempt(
                    song.path, lambda: pipeline.run_engines(work, separated=separate_next), emit,
                    pipeline.options.out_dir)  # fmt: skip
                if finishing is not None:  # the song before, finished while these engines ran
                    yield finishing.result()
                    finishing = None
                if isinstance(ran, SongOutcome):  # failed on the way in, or in its engines
                    yield ran
                else:
                    finishing = host.submit(finished, song, work)
            if finishing is not None:
                yield finishing.result()
        finally:  # stopped early (Ctrl-C, missing weights): the last song's files are finished, the
            # separation started ahead stops, and the song opened ahead lets go of its folder
            stop.set()
            for future in (finishing, separating, opening):
                try:
                    left = future.result() if future is not None else None
                except Exception:  # noqa: BLE001 - already stopping for another reason
                    continue
                if isinstance(left, tuple) and isinstance(left[1], SongWork):
                    left[1].close(failed=True)
            if ahead is not None:
                ahead.shutdown(wait=True)

    def idle(self) -> None:
        self.pipeline.emit(RunIdle(self.run_id))

    def close(self, status: str, report: dict[str, Any] | None = None) -> None:
        self.pipeline.finish(status, report)


def convert_songs(paths: list[Path], plan: Plan, options: RunOptions, store: Store | None,
                  on_event: OnEvent = ignore) -> BatchResult:  # fmt: skip
    """``ugpu run``: ``paths`` with one set of loaded engines, here."""
    inputs = prepare(options)
    sweep(options, store)
    return convert(paths, LocalFleet(plan, options, store, on_event, inputs=inputs))
