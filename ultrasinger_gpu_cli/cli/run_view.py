"""What a run shows while it works and when it ends: the progress display fed by the run's typed
events, a stage's line, the songs' summary table."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from ultrasinger_gpu_cli.failures import FallbackEvent
from ultrasinger_gpu_cli.run import events as ev

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console
    from rich.progress import Progress

    from ultrasinger_gpu_cli.run.events import SongReport
    from ultrasinger_gpu_cli.usecases.stages import StageOutcome

def progress_bar(console: Console) -> Progress:
    """The progress bar of every engine run: stage, bar, percent, x real time, elapsed."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
                    TextColumn("{task.fields[speed]}"), TimeElapsedColumn(), console=console)  # fmt: skip


def _speed(speed_x: float | None) -> str:
    return f"{speed_x:.2f}x real time" if speed_x else ""


def run_line(run: ev.StageRun) -> str:
    """``whisper small on cpu: 12.0 s of audio in 3.1 s (3.87x real time, peak VRAM 900 MB)``."""
    vram = f", peak VRAM {run.peak_vram_mb} MB" if run.peak_vram_mb is not None else ""
    where = run.cuda_device or run.device
    return (f"{run.stage} {run.model} on {where}: {run.audio_seconds:.1f} s of audio in {run.wall_seconds:.1f} s "
            f"({_speed(run.speed_x) or 'n/a'}{vram})")  # fmt: skip


class RunDisplay:
    """Renders the typed events of a run: a live progress display on a terminal, plain lines otherwise."""

    def __init__(self, console: Console, *, stage_lines: bool = True) -> None:
        self.console = console
        self.stage_lines = stage_lines  # a line per finished stage (a stage command prints its own summary)
        self.live = console.is_terminal
        self.progress: Progress | None = None
        self.tasks: dict[tuple[str, str], Any] = {}  # (song, stage) -> its bar
        self.song: str | None = None  # the song started last (a batch's next song may be separated ahead)
        self.ahead: set[str] = set()  # songs separated ahead, their turn not come yet
        self.download_task: Any = None
        self.download_started: tuple[float, int] | None = None

    def __enter__(self) -> RunDisplay:
        if self.live:
            self.progress = progress_bar(self.console)
            self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.__exit__(None, None, None)

    def print(self, text: str, style: str | None = None) -> None:
        (self.progress.console if self.progress else self.console).print(text, style=style, highlight=False)

    def _fetch(self, event: ev.ModelFetch) -> None:
        """A download line: megabytes, speed and time left (the size and time estimate)."""
        import time

        if event.finished:
            if self.progress is not None and self.download_task is not None:
                self.progress.update(self.download_task, completed=1.0)
            self.download_task = None
            downloaded, self.download_started = self.download_started is not None, None
            done = "downloaded, checksum checked" if downloaded or not event.converted else ""
            if event.converted:
                done = f"{done}, then converted" if done else "converted from the weights already here"
            self.print(f"  {event.component} {event.model}: {done}", style="green")
            return
        if self.download_started is None:
            self.download_started = (time.monotonic(), event.done_bytes)
            size = f"{event.total_bytes / 2**20:.0f} MB" if event.total_bytes else "size unknown"
            self.print(f"{event.component} {event.model} is not on this machine: downloading it once ({size})")
            if self.progress is not None:
                self.download_task = self.progress.add_task(f"  download {event.component}", total=1.0, speed="")
        if self.progress is None or self.download_task is None:
            return
        start, first = self.download_started
        rate = (event.done_bytes - first) / max(1e-6, time.monotonic() - start)
        total = event.total_bytes
        left = f", ~{(total - event.done_bytes) / rate:.0f} s left" if total and rate > 0 else ""
        shown = f"{event.done_bytes / 2**20:.0f}/{total / 2**20:.0f} MB" if total else f"{event.done_bytes / 2**20:.0f} MB"
        self.progress.update(self.download_task, completed=event.done_bytes / total if total else 0.0,
                             speed=f"{shown}, {rate / 2**20:.1f} MB/s{left}")  # fmt: skip

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.ModelFetch):
            self._fetch(event)
        elif isinstance(event, ev.SongAhead):
            self.ahead.add(event.song)
        elif isinstance(event, ev.SongStarted):
            self.song = event.song
            self.ahead.discard(event.song)
            self.print(f"[bold]{event.song}[/] -> {event.folder}" if event.folder else f"[bold]{event.song}[/]")
        elif isinstance(event, ev.StageStarted):
            if self.progress is not None:
                self._drop_bar(event.song, event.stage)  # a stage that gave way, started again
                self.tasks[event.song, event.stage] = self.progress.add_task(
                    f"  {self._label(event.song, event.stage)}", total=1.0, speed="")  # fmt: skip
        elif isinstance(event, ev.StageProgress):
            task = self.tasks.get((event.song, event.stage))
            if self.progress is not None and task is not None:
                self.progress.update(task, completed=min(1.0, event.fraction), speed=_speed(event.speed_x))
        elif isinstance(event, ev.StageFinished):
            self._stage_done(event.song, event.run)
        elif isinstance(event, ev.Notice):
            self.print(f"  [yellow]{event.message}[/]")
        elif isinstance(event, FallbackEvent):
            self.print(f"  fallback: {event.stage} {event.from_setting} -> {event.to_setting} ({event.reason})",
                       style="yellow")  # fmt: skip
        elif isinstance(event, ev.SongFailed):
            self.print(f"[bold red]failed:[/] {event.error}")

    def _label(self, song: str, stage: str) -> str:
        """A stage's name; with its song's where another song started since (songs converted at
        once: CPU lanes, ``--gpus`` workers), and said so where a batch's next song is separated
        ahead before its turn."""
        if song in self.ahead:
            return f"{stage} ({song}, ahead)"
        return f"{stage} ({song})" if self.song is not None and song != self.song else stage

    def _drop_bar(self, song: str, stage: str) -> None:
        task = self.tasks.pop((song, stage), None)
        if self.progress is not None and task is not None:
            self.progress.remove_task(task)

    def _stage_done(self, song: str, run: ev.StageRun) -> None:
        label = self._label(song, run.stage)
        if run.cached:
            self.print(f"  {label}: done earlier (resumed from the cache)", style="dim")
            return
        task = self.tasks.pop((song, run.stage), None)
        if self.progress is not None and task is not None:
            self.progress.update(task, completed=1.0)
        if not self.stage_lines:
            return
        vram = f", peak VRAM {run.peak_vram_mb} MB" if run.peak_vram_mb is not None else ""
        if vram and run.shared_card:
            vram += " (two songs' stages on the card at once)"
        where = run.cuda_device or run.device
        self.print(f"  {label}: {where}, {run.wall_seconds:.1f} s, {_speed(run.speed_x) or 'n/a'}{vram}")


def stage_display(console: Console) -> RunDisplay:
    """One stage command's display: a progress bar on a terminal, fallbacks as they happen."""
    return RunDisplay(console, stage_lines=False)


def stage_summary(outcome: StageOutcome) -> RenderableType:
    lines = [Text(run_line(outcome.run))]
    lines += [Text(f"  {kind}: {path}") for kind, path in outcome.files.items()]
    return Group(*lines)


def summary_table(reports: list[SongReport]) -> Table:
    table = Table(title="Summary", title_justify="left")
    for col in ("song", "stage", "device", "seconds", "x real time", "peak VRAM", "notes"):
        table.add_column(col)
    for report in reports:
        first = True
        for stage in report.stages:
            table.add_row(
                report.source.name if first else "", stage.stage, stage.cuda_device or stage.device,
                f"{stage.wall_seconds:.1f}",
                "cached" if stage.cached else (f"{stage.speed_x:.2f}x" if stage.speed_x else "n/a"),
                f"{stage.peak_vram_mb} MB" if stage.peak_vram_mb is not None else "n/a",
                str(report.notes) if first else "",
            )  # fmt: skip
            first = False
        for event in report.fallbacks:
            table.add_row("", f"[yellow]fallback[/] {event.stage}", f"{event.from_setting} -> {event.to_setting}", "", "",
                          "", event.reason)  # fmt: skip
    return table
