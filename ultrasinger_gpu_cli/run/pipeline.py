"""The whole song: decode once -> Demucs -> Whisper -> CREPE -> notes -> UltraStar folder.

Core code (no Typer, no rich): the CLI's ``ugpu run`` renders the events this emits; a batch
runner or an HTTP API can drive it the same way.

* Models load once per :class:`Pipeline` and serve every song of the call.
* Each stage runs under its fallback ladder (:mod:`.fallback`); every step is recorded.
* Stage results are cached by (audio content hash, backend, stage settings), so a run that was
  interrupted and started again skips what finished and produces the same result.
* Every output file is written to a temporary name and renamed.
* The live state (song, stage, progress, speed) is in the database while it runs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ultrasinger_gpu_cli.components.whisper import LYRICS_VERSION, WORDS_VERSION, check_model_language
from ultrasinger_gpu_cli.song import audio as audio_io
from ultrasinger_gpu_cli.song import midi, notes, preview, ultrastar
from ultrasinger_gpu_cli.song import stream as streams
from ultrasinger_gpu_cli.engines.base import Progress
from ultrasinger_gpu_cli.errors import OutputError, UgpuError
from ultrasinger_gpu_cli.run.events import (Notice, OnEvent, SongAhead, SongFinished, SongReport, SongStarted,
                                            StageFinished)  # fmt: skip
from ultrasinger_gpu_cli.failures import FallbackEvent
from ultrasinger_gpu_cli.run.events import StageRun, ignore, serialized
from ultrasinger_gpu_cli.files import atomic_path, sha256_of, write_text
from ultrasinger_gpu_cli.plan.resolver import Plan
from ultrasinger_gpu_cli.run.recorder import Recorder
from ultrasinger_gpu_cli.run.runner import GaveWay, RunnerOptions, StageRunner, stage_seed
from ultrasinger_gpu_cli.song.paths import refuse_overwriting_inputs
from ultrasinger_gpu_cli.song.pitch import PitchTrack
from ultrasinger_gpu_cli.run.options import ChartText, RunOptions, SongInputs, read_inputs
from ultrasinger_gpu_cli.run.songfolders import BUSY, Claim, SongAlreadyDone, SongBusy, claim, listed_files, remove_claimed, remove_listed
from ultrasinger_gpu_cli.run.streaming import scan as scan_stream
from ultrasinger_gpu_cli.run.streaming import separate as separate_stream
from ultrasinger_gpu_cli.run.stagecache import (StageCache, cache_key, cached_segments, checked_words, run_cache_dir,
                                                 words_data, words_from_segments)
from ultrasinger_gpu_cli.store.db import Store
from ultrasinger_gpu_cli.song.lyrics import align_lyrics
from ultrasinger_gpu_cli.song.onsets import SEARCH_S
from ultrasinger_gpu_cli.song.spoken import as_sung
from ultrasinger_gpu_cli.song.tags import COVER_SUFFIX, SongTags, song_tags, write_cover
from ultrasinger_gpu_cli.song.tempo import Tempo, detect_tempo
from ultrasinger_gpu_cli.run.streaming import Scan

T = TypeVar("T")
R = TypeVar("R")


#: Room kept free on a disk beyond what a song writes there (the chart, MIDI, report, cache entries).
SPARE_BYTES = 16 * 2**20


def _stems_bytes(samples: int) -> int:
    """Two 16-bit stereo WAV stems of ``samples`` frames."""
    return 2 * samples * 2 * 2 + 2 * 4096


def _copies_audio(source: Path) -> bool:
    """Whether the song folder's audio is the song's file itself (an audio file), not its audio
    track streamed into a FLAC (a video, or any other container)."""
    return source.suffix.lower() in audio_io.AUDIO_SUFFIXES


def _stems_match(stems: tuple[Path, Path], cached: dict[str, np.ndarray]) -> bool:
    """The cached stems are the ones the entry was made with (present and unchanged)."""
    try:
        return [sha256_of(p) for p in stems] == [str(x) for x in cached["stems_sha256"]]
    except OSError:
        return False


def _close(held: Claim, *, failed: bool) -> None:
    """Let go of a song's folder; a song that failed in a folder made for it leaves none behind
    (the folder is free for the next run)."""
    if failed and held.fresh:
        remove_claimed(held.folder)
    held.release()


class _Stopped(Exception):
    """A separation started ahead, stopped because the batch stopped."""


@dataclass
class SongWork:
    """One song on its way through a pipeline: its folder held and its audio read (host work),
    then what the engines made of it, then its files (host work again)."""

    source: Path
    held: Claim
    name: str  # the song's file names in its folder, before the suffixes
    content: str  # the audio file's sha256
    tags: SongTags  # artist, title, year, genre and cover, as the file names them
    language: str | None
    started: float  # perf_counter when the song was opened
    stream: streams.AudioStream
    scan: Scan
    tempo: Future[Tempo] | None  # the chart's grid, worked out on the host worker (None: a given chart's)
    stages: list[StageRun] = field(default_factory=list)
    fallbacks: list[FallbackEvent] = field(default_factory=list)
    stems: tuple[Path, Path] | None = None
    separated: Future[None] | None = None  # its separation, started ahead beside the song before
    vocals16: np.ndarray | None = None  # the vocals Whisper and the pitch tracker hear (16 kHz mono)
    vocals_key: str = ""  # the cache key the later stages' keys build on (the separation's, or the audio's)
    units: list[Any] = field(default_factory=list)  # the timed words or syllables
    are_syllables: bool = False
    track: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # the pitch: times, frequency, confidence

    @property
    def artist(self) -> str:
        return self.tags.artist

    @property
    def title(self) -> str:
        return self.tags.title

    def close(self, *, failed: bool) -> None:
        _close(self.held, failed=failed)


class Pipeline:
    """Converts songs with one set of loaded engines, through the one stage runner."""

    def __init__(self, plan: Plan, options: RunOptions, store: Store | None = None, on_event: OnEvent = ignore,
                 inputs: SongInputs | None = None) -> None:  # fmt: skip
        """``inputs``: the run's ``--timings`` and ``--lyrics`` as the caller read them (else read here)."""
        self.plan = plan
        self.options = options
        self.inputs = inputs if inputs is not None else read_inputs(options)
        self.store = store
        self.recorder = Recorder(store, on_event)  # the run's rows, then the caller's display
        self.emit: OnEvent = serialized(self.recorder)  # the host worker emits too
        self.runner = StageRunner(plan, RunnerOptions(options.fallback, options.models_dir, options.rehearsal,
                                                      options.fetch_missing), self.emit)  # fmt: skip
        folder = run_cache_dir(options, store)
        self.cache = StageCache(folder, lambda message: self.emit(Notice(None, message)))
        self._work_dir: Path | None = None
        self._host: ThreadPoolExecutor | None = None

    @property
    def run_id(self) -> str:
        return self.runner.run_id

    def components_needed(self) -> list[str]:
        """The stages these options run: Demucs unless the input is vocals, Whisper unless timings are given."""
        needed = ["demucs"] if self.options.separate else []
        needed += [] if self.options.timings else ["whisper"]
        return [*needed, "crepe"]

    def check_models(self) -> None:
        """Every needed stage's weights are here, or fetched (converted) now, or a clear error
        says how to get them: before any song."""
        for component in self.components_needed():
            self.runner.check_models(component)

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self, kind: str = "run") -> None:
        self.runner.start(kind)

    def finish(self, status: str, report: dict[str, Any] | None = None) -> None:
        if self._host is not None:
            self._host.shutdown(wait=True)
            self._host = None
        self.runner.finish(status, report)
        if self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)

    def _cached(self, component: str, key: str, song: str, audio_s: float) -> StageRun:
        """Report a stage whose result came from the resume cache."""
        run = StageRun(component, "-", "-", "cache", 0.0, audio_s, cached=True, cache_key=key)
        self.emit(StageFinished(song, run, self.run_id))
        return run

    # -- cache ----------------------------------------------------------------------------------------
    def _demucs_key(self, content: str) -> str:
        """The separation's cache key: the audio's sha256 and the settings that change its stems."""
        d = self.plan.components["demucs"].typed()
        return cache_key(content, "demucs", d.backend, d.model, d.chunk_size, d.overlap)  # type: ignore[attr-defined]

    def _whisper_key(self, vocals_key: str, language: str | None) -> str:
        """The words' cache key: the vocals' key, the model and what else changes the words."""
        w, lyrics = self.plan.components["whisper"], self.inputs.lyrics
        return cache_key(vocals_key, "whisper", w.value("backend"), w.model, language, w.value("beam_size"),
                         (sha256_of(lyrics.path), LYRICS_VERSION) if lyrics else None, WORDS_VERSION)  # fmt: skip

    def _first_engine(self, content: str, language: str | None) -> str | None:
        """The stage whose engine a song needs first, where its result is not in the resume cache:
        Demucs, else Whisper (None where the first stage is CREPE, whose key needs the words)."""
        if self.options.separate:
            return "demucs" if not self.cache.path(self._demucs_key(content), ".npz").exists() else None
        if self.inputs.timings is None:
            return "whisper" if not self.cache.path(self._whisper_key(content, language), ".json").exists() else None
        return None

    def _as_planned(self, component: str, stage: StageRun) -> bool:
        """Cache a result only when it came from the planned model: after a fallback to the CPU's
        smaller model, a later run should try the plan again rather than reuse the stand-in."""
        return stage.settings is not None and stage.settings.model == self.plan.components[component].model

    def _stage(self, component: str, key: str, song: str, duration: float, *, load: Callable[[], T | None],
               compute: Callable[[Any, Progress], R], keep: Callable[[R], T], save: Callable[[T], None],
               stages: list[StageRun], fallbacks: list[FallbackEvent], beside: bool = False) -> T:  # fmt: skip
        """One stage of one song, from the resume cache where it holds the result (``load``),
        else computed through the stage runner (``compute``, kept as ``keep`` gives it) and saved
        when it came from the planned model; the stage's run and fallbacks are appended.
        ``beside``: run beside another song's stages (:meth:`separate_ahead`)."""
        hit = load()
        if hit is not None:
            stages.append(self._cached(component, key, song, duration))
            return hit
        result, stage, events = self.runner.run(component, song, duration, compute, seed=stage_seed(key), beside=beside)
        kept = keep(result)
        if self._as_planned(component, stage):
            save(kept)
        stages.append(stage)
        fallbacks += events
        return kept

    # -- one song -------------------------------------------------------------------------------------
    def run_song(self, source: Path, *, out_dir: Path | None = None, language: str | None = None) -> SongReport:
        """One song into its folder under ``out_dir`` (default: the run's), in ``language``
        (default: the run's, else detected): its audio read, its engines run, its files written."""
        work = self.open_song(source, out_dir=out_dir, language=language)
        self.run_engines(work)
        return self.finish_song(work)

    def host(self) -> ThreadPoolExecutor:
        """This pipeline's host worker: one thread for the work that needs no engine (the tempo,
        a batch's next song's audio and the last song's files) while the engines run."""
        if self._host is None:
            self._host = ThreadPoolExecutor(1, thread_name_prefix="ugpu-host")
        return self._host

    def open_song(self, source: Path, *, out_dir: Path | None = None, language: str | None = None) -> SongWork:
        """A song's first host work: checked, its folder claimed, its audio decoded and scanned,
        its tempo started on the host worker. Emits nothing: a batch opens the next song while
        the engines run the current one."""
        started = time.perf_counter()
        source = Path(source)
        check_model_language(self.plan.components["whisper"].model, language or self.options.language)
        audio_io.check_input(source)
        tags = song_tags(source)
        content = sha256_of(source)
        out_dir = Path(out_dir if out_dir is not None else self.options.out_dir).resolve()
        held, name = self._song_folder(source, out_dir, ultrastar.safe_name(f"{tags.artist} - {tags.title}"), content)
        try:
            self._refuse_inputs(source, held.folder, name)
            first = self._first_engine(content, language or self.options.language)
            if first is not None:  # a run's first engine loads while the song is read (no-op once one is loaded)
                self.runner.load_ahead(first)
            # The song streams through in blocks: memory stays flat however long it is.
            stream = streams.AudioStream(source, audio_io.DEMUCS_RATE, 2, limit_s=audio_io.max_seconds(self.options.max_minutes))
            scan = scan_stream(stream, not self.options.separate)
            self._check_room(held.folder, scan.samples, source, tags)
            tempo = None
            if self.inputs.timings is None or self.inputs.timings.chart is None:  # a given chart keeps its own grid
                tempo = self.host().submit(detect_tempo, scan.mono22, 22_050)
        except BaseException:
            _close(held, failed=True)
            raise
        return SongWork(source, held, name, content, tags, language or self.options.language, started, stream,
                        scan, tempo)  # fmt: skip

    @property
    def separates_ahead(self) -> bool:
        """A batch separates its next song while the current one's later stages run: where the
        song is separated, songs overlap (not ``--no-overlap``) and the plan's VRAM holds both
        (:attr:`~ultrasinger_gpu_cli.plan.resolver.Plan.ahead`)."""
        return self.options.separate and self.options.overlap and self.plan.ahead.enabled

    def run_engines(self, work: SongWork, *, separated: Callable[[], None] | None = None) -> None:
        """The song's engines, one after another on this thread: Demucs (unless it ran ahead:
        :meth:`separate_ahead`), Whisper (or the given timings), CREPE; their results kept on
        ``work``. ``separated``: called once the song's separation is done (a batch then starts
        the next song's)."""
        try:
            self._engines(work, separated)
        except BaseException:
            work.close(failed=True)
            raise

    def separate_ahead(self, work: SongWork, stop: threading.Event) -> None:
        """The song's separation on this thread, beside the song before's later stages (a
        batch's ahead worker). Where the card runs out of memory while both work, it gives way:
        :meth:`run_engines` separates the song later, alone, to the same result. ``stop`` set
        (the batch stopped early): it stops between blocks."""

        def watched(progress: Progress) -> Progress:
            def report(fraction: float, seconds: float) -> None:
                if stop.is_set():
                    raise _Stopped
                progress(fraction, seconds)

            return report

        self.emit(SongAhead(work.source.name, work.held.folder))
        try:
            self._separate(work, beside=True, watch=watched)
        except GaveWay as exc:
            self.emit(Notice(work.source.name, f"{exc}: it runs again once the card is free"))
        except _Stopped:
            pass

    def _begin(self, work: SongWork) -> None:
        """Say the song started: its turn on the engines' thread (its separation may have run
        ahead, :class:`SongAhead`)."""
        song = work.source.name
        self.emit(SongStarted(song, work.held.folder))
        for warning in self.inputs.timings.warnings if self.inputs.timings else ():
            self.emit(Notice(song, warning))
        if work.stream.notice:  # said when the song starts, not when a batch opens it ahead
            self.emit(Notice(song, work.stream.notice))

    def _separate(self, work: SongWork, *, beside: bool = False,
                  watch: Callable[[Progress], Progress] = lambda p: p) -> None:  # fmt: skip
        """1. Demucs: vocals and instrumental stems written as they come, the vocals kept as
        16 kHz mono (on ``work``); without separation, the song's own audio."""
        song, stream, scan = work.source.name, work.stream, work.scan
        if not self.options.separate:
            work.vocals_key, work.vocals16 = work.content, scan.mono16
            return
        dkey = self._demucs_key(work.content)
        work.stems = sep_stems = self._stem_paths(dkey, scan.samples)

        def cached_vocals() -> np.ndarray | None:
            cached = self.cache.load_arrays(dkey, "vocals16", "stems_sha256")
            if cached is not None and not (len(cached["vocals16"]) == scan.samples16 and _stems_match(sep_stems, cached)):
                self.cache.drop(self.cache.path(dkey, ".npz"))  # the stems it was made with are gone or changed
                return None
            return cached["vocals16"] if cached is not None else None

        work.vocals16 = self._stage(
            "demucs", dkey, song, scan.duration_s, load=cached_vocals,
            compute=lambda e, p: separate_stream(e, stream, scan, sep_stems, watch(p)), keep=lambda sep: sep.vocals16,
            save=lambda v: self.cache.save_arrays(dkey, vocals16=v, stems_sha256=np.array([sha256_of(p) for p in sep_stems])),
            stages=work.stages, fallbacks=work.fallbacks, beside=beside)  # fmt: skip
        work.vocals_key = dkey

    def _engines(self, work: SongWork, separated: Callable[[], None] | None = None) -> None:
        song, source, scan = work.source.name, work.source, work.scan
        self._begin(work)
        if work.separated is not None:  # ahead: its result, or what stopped it, is this song's
            work.separated.result()
        if work.vocals16 is None:
            self._separate(work)
        if separated is not None:
            separated()
        timings, lyrics = self.inputs.timings, self.inputs.lyrics
        duration = scan.duration_s
        stages, fallbacks = work.stages, work.fallbacks
        plan = self.plan.components
        language = work.language
        dkey, vocals16 = work.vocals_key, work.vocals16

        # 2. Whisper (or the given timings)
        if timings is not None:
            units, are_syllables = timings.words, timings.are_syllables
            language = language or timings.language
        else:
            wkey = self._whisper_key(dkey, language)
            if lyrics is not None:  # the user's words, timed on the vocals by the same model
                def transcribe(e: Any, p: Progress) -> Any:
                    return align_lyrics(e, vocals16, lyrics, p, language=language, sample_rate=audio_io.WHISPER_RATE)

                def words_of(aligned: Any) -> dict[str, Any]:
                    return words_data(aligned.language, [list(line) for line in aligned.lines])
            else:
                def transcribe(e: Any, p: Progress) -> Any:
                    return e.run(vocals16, p, language=language)

                def words_of(transcript: Any) -> dict[str, Any]:
                    return words_data(transcript.language, [list(s.words) for s in transcript.segments])

            data = self._stage("whisper", wkey, song, duration, load=lambda: checked_words(self.cache.load_json(wkey)),
                               compute=transcribe, keep=words_of, save=lambda d: self.cache.save_json(wkey, d),
                               stages=stages, fallbacks=fallbacks)  # fmt: skip
            language = data["language"]
            units = words_from_segments(cached_segments(data) or [])
            if lyrics is None:  # recognised words: lines where Whisper wrote them, written as they are sung
                units = as_sung(notes.capitals_start_lines(units, language), language)
            are_syllables = False

        if not units:
            self.emit(Notice(song, f"no vocals found in {source}: the UltraStar file will have no notes"))

        # 3. CREPE where there are words (and, for recognised words, where their onsets may be: onsets.py)
        before = SEARCH_S if timings is None else 0.0
        regions = [(max(0.0, u.start_s - 0.05 - before), u.end_s + 0.05) for u in units]
        c = plan["crepe"].typed()
        ckey = cache_key(dkey, "crepe", c.backend, c.model, c.step_size, regions)  # type: ignore[attr-defined]

        def cached_track() -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
            cached = self.cache.load_arrays(ckey, "times", "frequency", "confidence")
            return (cached["times"], cached["frequency"], cached["confidence"]) if cached is not None else None

        work.track = self._stage(
            "crepe", ckey, song, duration, load=cached_track, compute=lambda e, p: e.run(vocals16, p, regions=regions),
            keep=lambda track: (track.times, track.frequency, track.confidence),
            save=lambda t: self.cache.save_arrays(ckey, times=t[0], frequency=t[1], confidence=t[2]),
            stages=stages, fallbacks=fallbacks)  # fmt: skip
        work.units, work.are_syllables, work.language = units, are_syllables, language

    def finish_song(self, work: SongWork) -> SongReport:
        """The song's last host work, after its engines: notes, files, pictures and report; the
        folder released. A batch runs it on the host worker while the next song's engines run."""
        try:
            report = self._finish(work)
        except BaseException:
            work.close(failed=True)
            raise
        work.close(failed=False)
        self.emit(SongFinished(work.source.name, report))
        return report

    def _finish(self, work: SongWork) -> SongReport:
        song, source, folder, name = work.source.name, work.source, work.held.folder, work.name
        artist, title, language, timings = work.artist, work.title, work.language, self.inputs.timings
        assert work.track is not None, "finish_song before run_engines"
        times, freq, conf = work.track
        # 4. Notes and files: a given chart keeps its grid and changes its pitches only
        chart = timings.chart if timings is not None else None
        if chart is not None:
            midi = notes.repitch_parts(chart, times, freq, conf)
            song_notes = ultrastar.chart_song(chart, midi, title=title, artist=artist, language=language)

            def render(f: ultrastar.ChartFiles) -> str:
                return ultrastar.repitch(chart, midi, audio=f.audio, vocals=f.vocals, instrumental=f.instrumental,
                                         cover=f.cover, video=f.video, version=self.options.format_version)  # fmt: skip

        else:
            assert work.tempo is not None
            song_notes = notes.build_song(work.units, times, freq, conf, tempo=work.tempo.result(), title=title,
                                          artist=artist, language=language, split_syllables=not work.are_syllables,
                                          rap=self.options.rap, refine_onsets=timings is None)  # fmt: skip
            if song_notes.duet:
                song_notes.singers = self.options.singers or ultrastar.DEFAULT_SINGERS
            elif self.options.singers:
                self.emit(Notice(song, "--singers names a duet's singers: the lyrics have no P1:/P2: tags, "
                                       "so the chart is not a duet"))  # fmt: skip

            song_notes.year, song_notes.genre = work.tags.year, work.tags.genre

            def render(f: ultrastar.ChartFiles) -> str:
                return ultrastar.to_ultrastar(song_notes, audio=f.audio, vocals=f.vocals, instrumental=f.instrumental,
                                              cover=f.cover, video=f.video,
                                              version=self.options.format_version or "1.1.0")  # fmt: skip

        bpm = song_notes.bpm
        files = self._write_files(source, folder, name, song_notes, render, work.stems, work.tags)
        files.update(self._write_pictures(song, folder, name, files["ultrastar"], (times, freq, conf), f"{artist} - {title}"))
        report = SongReport(source, folder, files, title, artist, bpm, language, len(song_notes.notes), work.stages,
                            work.fallbacks, time.perf_counter() - work.started)  # fmt: skip
        files["report"] = write_text(folder / f"{name}.report.json",
                                     json.dumps({**report.to_dict(), "run_id": self.run_id}, indent=2))  # fmt: skip
        return report

    def _write_pictures(self, song: str, folder: Path, name: str, chart_path: Path,
                        track: tuple[np.ndarray, np.ndarray, np.ndarray], title: str) -> dict[str, Path]:  # fmt: skip
        """The pitch track beside the chart, and the chart drawn as ``preview.png`` (unless
        ``--no-preview``): a preview that cannot be drawn is said, never the song's failure."""
        pitch_path = folder / f"{name}{preview.PITCH_SUFFIX}"
        heard = PitchTrack(*track)
        heard.save(pitch_path)
        files = {"pitch": pitch_path}
        if not self.options.preview:
            return files
        try:
            chart = ultrastar.read_chart(chart_path.read_text(encoding="utf-8"))
            pages = preview.render(chart, folder / preview.PREVIEW_NAME, pitch=heard, title=title)
        except ImportError as exc:
            missing = "Pillow" if (exc.name or "PIL").split(".")[0] == "PIL" else exc.name
            self.emit(Notice(song, f"no preview.png: {missing} is not installed "
                                   "(pip install 'ultrasinger-gpu-cli[preview]')"))  # fmt: skip
            return files
        except (UgpuError, OSError, ValueError) as exc:
            self.emit(Notice(song, f"no preview.png: {exc}"))
            return files
        for k, page in enumerate(pages):
            files["preview" if k == 0 else f"preview-{k + 1}"] = page.path
        return files

    def _song_folder(self, source: Path, out_dir: Path, name: str, content: str) -> tuple[Claim, str]:
        """The folder for this song, claimed atomically (:mod:`songfolders`), never a different
        song's: ``Artist - Title``, else the first free ``Artist - Title (2)``, ``(3)``... The same
        song again: resumed when unfinished; when finished, skipped unless ``overwrite``; while
        another process converts it, refused."""
        out_dir.mkdir(parents=True, exist_ok=True)
        for number in range(1, 1000):
            candidate = name if number == 1 else ultrastar.safe_name(f"{name} ({number})")
            folder = (out_dir / candidate).resolve()
            if folder.parent != out_dir:  # never a path outside -o
                raise UgpuError(f"{source}: the song name {candidate!r} would leave the output folder")
            held = claim(folder, content, source.name)
            if held == BUSY:
                raise SongBusy(f"{source}: another ugpu process is converting this song into {folder} right now",
                               hint="wait for it to finish; its result will be there")  # fmt: skip
            if not isinstance(held, Claim):
                continue  # another song's folder, or something not ugpu's: never touched
            report = folder / f"{candidate}.report.json"
            if held.fresh or not report.is_file():
                return held, candidate  # new, or this song unfinished: finish it
            if not self.options.overwrite:
                held.release()
                raise SongAlreadyDone(f"{source}: already converted in {folder}", hint="--overwrite converts it again")
            try:
                self._refuse_inputs(source, folder, candidate, listed_in=report)
            except BaseException:
                held.release()
                raise
            remove_listed(folder, report)
            return held, candidate
        raise UgpuError(f"{source}: 999 folders named {name!r} already exist in {out_dir}")

    def _refuse_inputs(self, source: Path, folder: Path, name: str, listed_in: Path | None = None) -> None:
        """No file this song writes (or removes, on ``--overwrite``) is one of its inputs: the
        song, ``--timings`` (a chart re-pitched where it lies), ``--lyrics``."""
        outputs = [folder / f"{name}{suffix}" for suffix in (source.suffix.lower(), ".flac", " [Vocals].wav",
                                                            " [Instrumental].wav", ".mid", ".txt", ".report.json",
                                                            preview.PITCH_SUFFIX, f"{COVER_SUFFIX}.jpg",
                                                            f"{COVER_SUFFIX}.png")]  # fmt: skip
        outputs.append(folder / preview.PREVIEW_NAME)
        if listed_in is not None:
            outputs += [*listed_files(listed_in).values(), listed_in]
        inputs = [p for p in (source, self.options.timings, self.options.lyrics) if p is not None]
        refuse_overwriting_inputs(outputs, inputs, hint="give -o another folder, or copy the input elsewhere first")

    def _stem_paths(self, key: str, samples: int = 0) -> tuple[Path, Path]:
        """Where Demucs' stems go while the song is made (and stay, for a resume): the cache, or a
        work folder in the output when the cache can't be written or hasn't room for them (the
        cache is a convenience: a full cache disk costs resuming, never the song)."""
        folder = self.cache.folder
        needed = _stems_bytes(samples)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if not os.access(folder, os.W_OK):
                raise PermissionError
            if needed and shutil.disk_usage(folder).free < needed + SPARE_BYTES:
                self.emit(Notice(None, f"the resume cache's disk ({folder}) has no room for this song's stems "
                                       f"({needed / 2**20:.0f} MB): they are made in the output folder instead"))  # fmt: skip
                raise PermissionError
        except OSError:
            if self._work_dir is None:
                self._work_dir = Path(tempfile.mkdtemp(prefix=".ugpu-work-", dir=self.options.out_dir))
            folder = self._work_dir
        return folder / f"{key}.vocals.wav", folder / f"{key}.instrumental.wav"

    def _keeps_video(self, source: Path, tags: SongTags) -> bool:
        """Whether the song's file is a video that goes into its folder (``#VIDEO``)."""
        return self.options.video and tags.video and not _copies_audio(source)

    def _check_room(self, folder: Path, samples: int, source: Path, tags: SongTags) -> None:
        """Before any compute: the output's disk holds what this song writes there (the stems, the
        audio, twice the stems while they are made there), or an :class:`OutputError` naming it."""
        stems = _stems_bytes(samples) if self.options.separate else 0
        size = source.stat().st_size
        audio = size if _copies_audio(source) else _stems_bytes(samples) // 2  # a video's: its audio as FLAC
        video = size if self._keeps_video(source, tags) else 0
        needed = stems + audio + video + SPARE_BYTES
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            return
        if free < needed:
            raise OutputError(f"the disk holding {folder} has {free / 2**20:.0f} MB free; this song needs about "
                              f"{needed / 2**20:.0f} MB there", hint="free space on it, or give -o another disk")  # fmt: skip

    def _write_files(self, source: Path, folder: Path, name: str, song: ultrastar.Song, render: ChartText,
                     stems: tuple[Path, Path] | None, tags: SongTags) -> dict[str, Path]:  # fmt: skip
        folder.mkdir(parents=True, exist_ok=True)
        files: dict[str, Path] = {}
        if _copies_audio(source):
            audio_name = f"{name}{source.suffix.lower()}"
            with atomic_path(folder / audio_name) as tmp:
                shutil.copyfile(source, tmp)
        else:  # a video: keep its audio track, streamed into a FLAC
            audio_name = f"{name}.flac"
            writer = streams.StemWriter(folder / audio_name, audio_io.DEMUCS_RATE, 2)
            try:
                for block in streams.AudioStream(source, audio_io.DEMUCS_RATE, 2):
                    writer.write(block)
                writer.close()
            except BaseException:
                writer.abort()
                raise
        files["audio"] = folder / audio_name
        vocals_name = instrumental_name = None
        if stems is not None:
            vocals_name, instrumental_name = f"{name} [Vocals].wav", f"{name} [Instrumental].wav"
            for key, stem, target in (("vocals", stems[0], vocals_name), ("instrumental", stems[1], instrumental_name)):
                with atomic_path(folder / target) as tmp:
                    shutil.copyfile(stem, tmp)
                files[key] = folder / target
        with atomic_path(folder / f"{name}.mid") as tmp:
            tmp.write_bytes(midi.to_midi(song))
        files["midi"] = folder / f"{name}.mid"
        cover = write_cover(source, tags.cover, folder / f"{name}{COVER_SUFFIX}{tags.cover.suffix}") if tags.cover else None
        if cover:  # the picture the file carries, as UltraStar shows a song's cover
            files["cover"] = cover
        video = None
        if self._keeps_video(source, tags):  # a music video: UltraStar plays it behind the lyrics
            video = folder / f"{name}{source.suffix.lower()}"
            with atomic_path(video) as tmp:
                shutil.copyfile(source, tmp)
            files["video"] = video
        text = render(ultrastar.ChartFiles(audio_name, vocals_name, instrumental_name, cover.name if cover else None,
                                           video.name if video else None))  # fmt: skip
        files["ultrastar"] = write_text(folder / f"{name}.txt", text)
        return files
