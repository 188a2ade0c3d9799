"""The whole song: decode once -> Demucs -> Whisper -> CREPE -> notes -> UltraStar folder.

Core code (no Typer, no rich): the CLI's ``ugpu run`` renders the events this emits; a batch
runner or an HTTP API can drive it the same way.

* Models load once per :class:`Pipeline` and serve every song of the call.
* Each stage runs under its fallback ladder (:mod:`.fallback`); every step is recorded.
* Stage results are cached by (audio content hash, stage settings), so a run that was
  interrupted and started again skips what finished and produces the same result.
* Every output file is written to a temporary name and renamed.
* The live state (song, stage, progress, speed) is in the database while it runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ultrasinger_gpu_cli import audio as audio_io
from ultrasinger_gpu_cli import ultrastar
from ultrasinger_gpu_cli.engines import Engine, EngineRun, create
from ultrasinger_gpu_cli.errors import UgpuError
from ultrasinger_gpu_cli.fallback import FallbackEvent, ladder, run_with_fallback
from ultrasinger_gpu_cli.models import sha256_of
from ultrasinger_gpu_cli.resolver import Plan, PlanTarget, resolve
from ultrasinger_gpu_cli.sampler import NvmlSampler
from ultrasinger_gpu_cli.stages import record_run
from ultrasinger_gpu_cli.store import Store

AUDIO_SUFFIXES = {".mp3", ".ogg", ".m4a", ".opus", ".flac", ".wav", ".aac"}
Event = dict[str, Any]


@dataclass
class RunOptions:
    out_dir: Path
    language: str | None = None
    separate: bool = True
    timings: Path | None = None
    format_version: str = "1.1.0"
    fallback: bool = True
    models_dir: Path | None = None
    cache_dir: Path | None = None


@dataclass
class StageResult:
    stage: str
    device: str
    model: str
    settings: dict[str, Any]
    wall_seconds: float
    audio_seconds: float
    peak_vram_mb: int | None = None
    cached: bool = False

    @property
    def speed_x(self) -> float | None:
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "device": self.device, "model": self.model, "settings": self.settings,
                "wall_seconds": round(self.wall_seconds, 3), "audio_seconds": round(self.audio_seconds, 3),
                "speed_x": None if self.speed_x is None else round(self.speed_x, 3),
                "peak_vram_mb": self.peak_vram_mb, "cached": self.cached}  # fmt: skip


@dataclass
class SongReport:
    source: Path
    folder: Path
    files: dict[str, Path]
    title: str
    artist: str
    bpm: float
    language: str | None
    notes: int
    stages: list[StageResult] = field(default_factory=list)
    fallbacks: list[FallbackEvent] = field(default_factory=list)
    wall_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": str(self.source), "folder": str(self.folder),
            "files": {k: str(v) for k, v in self.files.items()}, "title": self.title, "artist": self.artist,
            "bpm": self.bpm, "language": self.language, "notes": self.notes,
            "stages": [s.to_dict() for s in self.stages], "fallbacks": [f.to_dict() for f in self.fallbacks],
            "wall_seconds": round(self.wall_seconds, 3),
        }  # fmt: skip


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def song_identity(path: Path) -> tuple[str, str]:
    """(artist, title) from the tags, else from an "Artist - Title" file name, else the name."""
    tags = audio_io.read_tags(path)
    if tags.get("artist") and tags.get("title"):
        return tags["artist"], tags["title"]
    stem = path.stem
    if " - " in stem:
        artist, title = stem.split(" - ", 1)
        return artist.strip() or "Unknown Artist", title.strip() or stem
    return tags.get("artist", "Unknown Artist"), tags.get("title", stem)


def load_timings(path: Path) -> tuple[list[ultrastar.TimedText], bool, str | None]:
    """Word timings from an UltraStar ``.txt`` (syllables) or a words JSON; (units, are_syllables, language)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise UgpuError(f"{path}: cannot read the timings file: {exc.strerror}") from exc
    if path.suffix.lower() == ".txt":
        try:
            _, units = ultrastar.parse_ultrastar(text)
        except ValueError as exc:
            raise UgpuError(f"{path}: not a usable UltraStar file: {exc}") from exc
        return units, True, None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UgpuError(f"{path}: not JSON and not an UltraStar .txt: {exc}") from exc
    if isinstance(data, dict):
        segments = data.get("segments", [])
        words = [(w, i == 0) for seg in segments for i, w in enumerate(seg.get("words", []))]
        language = data.get("language")
    else:
        words, language = [(w, False) for w in data], None
    units = []
    for w, first in words:
        try:
            units.append(ultrastar.TimedText(str(w["word"]).strip(), float(w["start"]), float(w["end"]), True, first))
        except (KeyError, TypeError, ValueError) as exc:
            raise UgpuError(f"{path}: every word needs word, start and end ({exc})") from exc
    return [u for u in units if u.text], False, language


class Pipeline:
    """Converts songs with one set of loaded engines."""

    def __init__(self, plan: Plan, options: RunOptions, store: Store | None = None,
                 on_event: Callable[[Event], None] = lambda e: None) -> None:  # fmt: skip
        self.plan = plan
        self.options = options
        self.store = store
        self.emit = on_event
        self.run_id = uuid.uuid4().hex
        self.cpu_plan = resolve(PlanTarget("CPU"), plan.mode)
        self._engines: dict[tuple, Engine] = {}
        self._last_live = 0.0
        if options.cache_dir is None:
            base = store.path.parent if store is not None else options.out_dir
            options.cache_dir = base / "cache"

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        if self.store is not None:
            self.store.start_run(self.run_id, mode=self.plan.mode, gpu_id=self.plan.target.gpu_id, pid=os.getpid())
        self._enforce_vram_budget()

    def finish(self, status: str, report: dict[str, Any] | None = None) -> None:
        if self.store is not None:
            self.store.finish_run(self.run_id, status, report)
        for engine in self._engines.values():
            engine.unload()
        self._engines.clear()

    def _enforce_vram_budget(self) -> None:
        """Never take more VRAM than the plan's budget (and ``--vram-limit``)."""
        fraction = self.plan.memory_fraction
        if not fraction or not any(c.device == "cuda" for c in self.plan.components.values()):
            return
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_per_process_memory_fraction(fraction, self.plan.target.gpu_index or 0)

    # -- engines ------------------------------------------------------------------------------------
    def _engine(self, component: str, settings: dict[str, Any]) -> Engine:
        key = (component, settings.get("model") or settings.get("model_capacity"), settings.get("device"))
        engine = self._engines.get(key)
        if engine is None:
            for other_key in [k for k in self._engines if k[0] == component and k[2] != key[2]]:
                self._engines.pop(other_key).unload()  # moving to the CPU frees the GPU copy
            engine = create(component, settings, self.options.models_dir)
            engine.ensure_loaded()
            self._engines[key] = engine
        engine.settings.update(settings)
        return engine

    def _stage(self, component: str, song: str, audio_s: float, run: Callable[[Engine, Callable], Any]) -> tuple[Any, StageResult, list[FallbackEvent]]:
        """One stage under its fallback ladder, with the NVML sampler and the performance log."""
        plan_settings = self.plan.components[component].values()
        rungs = ladder(component, plan_settings, self.cpu_plan.components[component].values())
        events: list[FallbackEvent] = []

        def on_fallback(event: FallbackEvent) -> None:
            events.append(event)
            if self.store is not None:
                self.store.record_fallback(run_id=self.run_id, song=song, stage=component, from_setting=event.from_setting,
                                           to_setting=event.to_setting, reason=event.reason)  # fmt: skip
            self.emit({"type": "fallback", "song": song, **event.to_dict()})

        def attempt(settings: dict[str, Any]):
            engine = self._engine(component, settings)
            started = time.perf_counter()

            def progress(fraction: float, seconds: float) -> None:
                elapsed = time.perf_counter() - started
                speed = seconds / elapsed if elapsed > 0 and seconds > 0 else None
                self.emit({"type": "progress", "song": song, "stage": component, "fraction": fraction, "speed_x": speed})
                self._live(song, component, fraction, speed)

            with NvmlSampler(self.plan.target.gpu_index if settings.get("device") == "cuda" else None) as sampler:
                result = run(engine, progress)
            return result, sampler.summary, engine.model_name

        self.emit({"type": "stage_start", "song": song, "stage": component})
        if self.store is not None:
            self.store.update_run(self.run_id, song=song, stage=component, progress=0.0, speed=None,
                                  audio_seconds=audio_s, stage_started_at=time.time())  # fmt: skip
        (result, gpu, model), used = run_with_fallback(component, rungs, attempt, enabled=self.options.fallback,
                                                       on_event=on_fallback, song=song)  # fmt: skip
        stats: EngineRun = result.run
        stage = StageResult(component, stats.device, model, dict(used), stats.wall_seconds, audio_s, stats.peak_vram_mb)
        record_run(self.store, component, stats, gpu, self.plan.target, song=song, run_id=self.run_id)
        self.emit({"type": "stage_end", "song": song, **stage.to_dict()})
        return result, stage, events

    def _live(self, song: str, stage: str, fraction: float, speed: float | None) -> None:
        now = time.monotonic()
        if self.store is None or (now - self._last_live < 0.5 and fraction < 1.0):
            return
        self._last_live = now
        self.store.update_run(self.run_id, song=song, stage=stage, progress=fraction, speed=speed)

    def _cached(self, component: str, key: str, song: str, audio_s: float) -> StageResult:
        """Report a stage whose result came from the resume cache."""
        self.emit({"type": "stage_end", "song": song, "stage": component, "cached": True})
        return StageResult(component, "cache", "-", {"cache_key": key}, 0.0, audio_s, cached=True)

    # -- cache ----------------------------------------------------------------------------------------
    def _as_planned(self, component: str, stage: StageResult) -> bool:
        """Cache a result only when it came from the planned model: after a fallback to the CPU's
        smaller model, a later run should try the plan again rather than reuse the stand-in."""
        key = "model_capacity" if component == "crepe" else "model"
        return stage.settings.get(key) == self.plan.components[component].value(key)

    def _cache_path(self, key: str, suffix: str) -> Path:
        assert self.options.cache_dir is not None
        return self.options.cache_dir / f"{key}{suffix}"

    def _save_arrays(self, key: str, **arrays: np.ndarray) -> None:
        with audio_io.atomic_path(self._cache_path(key, ".npz")) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)

    def _load_arrays(self, key: str) -> dict[str, np.ndarray] | None:
        path = self._cache_path(key, ".npz")
        if not path.exists():
            return None
        try:
            with np.load(path) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError):
            return None  # a damaged cache entry is computed again

    # -- one song -------------------------------------------------------------------------------------
    def run_song(self, source: Path) -> SongReport:
        started = time.perf_counter()
        source = Path(source)
        audio_io.check_input(source)
        artist, title = song_identity(source)
        name = ultrastar.safe_name(f"{artist} - {title}")
        out_dir = self.options.out_dir.resolve()
        folder = (out_dir / name).resolve()
        if folder.parent != out_dir:  # never a path outside -o
            raise UgpuError(f"{source}: the song name {name!r} would leave the output folder")
        song = source.name
        self.emit({"type": "song_start", "song": song, "folder": str(folder)})
        timings = load_timings(self.options.timings) if self.options.timings else None

        mix = audio_io.decode(source, audio_io.DEMUCS_RATE, 2)
        duration = mix.duration_s
        stages: list[StageResult] = []
        fallbacks: list[FallbackEvent] = []
        content = sha256_of(source)

        # 1. Demucs
        if self.options.separate:
            d = self.plan.components["demucs"].values()
            dkey = _key(content, "demucs", d["model"], d["chunk_size"], d["overlap"])
            cached = self._load_arrays(dkey)
            if cached is not None:
                vocals = cached["vocals"]
                stages.append(self._cached("demucs", dkey, song, duration))
            else:
                sep, stage, events = self._stage("demucs", song, duration, lambda e, p: e.run(mix.samples, p))
                vocals = sep.vocals
                if self._as_planned("demucs", stage):
                    self._save_arrays(dkey, vocals=vocals)
                stages.append(stage)
                fallbacks += events
            instrumental = (mix.samples - vocals).astype(np.float32)
        else:
            dkey, vocals, instrumental = content, mix.samples, None
        vocals16 = audio_io.resample(vocals.mean(axis=0), audio_io.DEMUCS_RATE, audio_io.WHISPER_RATE)

        # 2. Whisper (or the given timings)
        language = self.options.language
        if timings is not None:
            units, are_syllables, timing_language = timings
            language = language or timing_language
        else:
            w = self.plan.components["whisper"].values()
            wkey = _key(dkey, "whisper", w["model"], language)
            cached_json = self._cache_path(wkey, ".json")
            if cached_json.exists():
                data = json.loads(cached_json.read_text(encoding="utf-8"))
                stages.append(self._cached("whisper", wkey, song, duration))
            else:
                tr, stage, events = self._stage("whisper", song, duration,
                                                lambda e, p: e.run(vocals16, p, language=language))  # fmt: skip
                data = {"language": tr.language,
                        "segments": [[w_.to_dict() for w_ in s.words] for s in tr.segments]}  # fmt: skip
                if self._as_planned("whisper", stage):
                    audio_io.write_text(cached_json, json.dumps(data))
                stages.append(stage)
                fallbacks += events
            language = data["language"]
            units = [ultrastar.TimedText(w_["word"].strip(), w_["start"], w_["end"], True, i == 0)
                     for seg in data["segments"] for i, w_ in enumerate(seg) if w_["word"].strip()]  # fmt: skip
            are_syllables = False

        if not units:
            self.emit({"type": "warning", "song": song,
                       "message": f"no vocals found in {source}: the UltraStar file will have no notes"})  # fmt: skip

        # 3. CREPE where there are words
        regions = [(max(0.0, u.start - 0.05), u.end + 0.05) for u in units]
        c = self.plan.components["crepe"].values()
        ckey = _key(dkey, "crepe", c["model_capacity"], c["step_size"], regions)
        cached = self._load_arrays(ckey)
        if cached is not None:
            times, freq, conf = cached["times"], cached["frequency"], cached["confidence"]
            stages.append(self._cached("crepe", ckey, song, duration))
        else:
            track, stage, events = self._stage("crepe", song, duration, lambda e, p: e.run(vocals16, p, regions=regions))
            times, freq, conf = track.times, track.frequency, track.confidence
            if self._as_planned("crepe", stage):
                self._save_arrays(ckey, times=times, frequency=freq, confidence=conf)
            stages.append(stage)
            fallbacks += events

        # 4. Notes and files
        from ultrasinger_gpu_cli.tempo import detect_bpm

        bpm = detect_bpm(audio_io.resample(mix.mono(), audio_io.DEMUCS_RATE, 22_050), 22_050)
        song_notes = ultrastar.build_song(units, times, freq, conf, bpm=bpm, title=title, artist=artist,
                                          language=language, split_syllables=not are_syllables)  # fmt: skip
        files = self._write_files(source, folder, name, song_notes, vocals, instrumental, mix.sample_rate)
        report = SongReport(source, folder, files, title, artist, bpm, language, len(song_notes.notes), stages, fallbacks,
                            time.perf_counter() - started)  # fmt: skip
        files["report"] = audio_io.write_text(folder / f"{name}.report.json",
                                              json.dumps({**report.to_dict(), "run_id": self.run_id}, indent=2))  # fmt: skip
        self.emit({"type": "song_end", "song": song, "report": report.to_dict()})
        return report

    def _write_files(self, source: Path, folder: Path, name: str, song: ultrastar.Song, vocals: np.ndarray,
                     instrumental: np.ndarray | None, rate: int) -> dict[str, Path]:  # fmt: skip
        folder.mkdir(parents=True, exist_ok=True)
        files: dict[str, Path] = {}
        if source.suffix.lower() in AUDIO_SUFFIXES:
            audio_name = f"{name}{source.suffix.lower()}"
            with audio_io.atomic_path(folder / audio_name) as tmp:
                shutil.copyfile(source, tmp)
        else:  # a video: keep its audio track
            audio_name = f"{name}.flac"
            audio_io.write_audio(folder / audio_name, vocals if instrumental is None else vocals + instrumental, rate)
        files["audio"] = folder / audio_name
        vocals_name = instrumental_name = None
        if instrumental is not None:
            vocals_name, instrumental_name = f"{name} [Vocals].wav", f"{name} [Instrumental].wav"
            files["vocals"] = audio_io.write_audio(folder / vocals_name, vocals, rate)
            files["instrumental"] = audio_io.write_audio(folder / instrumental_name, instrumental, rate)
        with audio_io.atomic_path(folder / f"{name}.mid") as tmp:
            tmp.write_bytes(ultrastar.to_midi(song))
        files["midi"] = folder / f"{name}.mid"
        text = ultrastar.to_ultrastar(song, audio=audio_name, vocals=vocals_name, instrumental=instrumental_name,
                                      version=self.options.format_version)  # fmt: skip
        files["ultrastar"] = audio_io.write_text(folder / f"{name}.txt", text)
        return files
