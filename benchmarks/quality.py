"""``make quality``: the chart-quality numbers of issue 11, measured on synthesised songs.

* tempo: ``#BPM`` error against the true tempo (or its double or half) on drum patterns at
  72, 90, 120, 140 and 174 BPM, and where the grid's first beat falls against the true beats;
* notes follow the voice: the share of written note time inside the sung notes, through the
  real pipeline (the no-GPU plan's pitch backend with its real weights) with Whisper-like word timings that run on
  into the silence around each note, on three melodies;
* re-pitch: a hand-made chart through ``--timings``, diffed line by line with the output.

Prints a Markdown section (for BENCHMARKS.md) on stdout.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.audio_factory import drum_song, melody, write_wav  # noqa: E402

# Three melodies (start s, length s, MIDI): short notes at 140 BPM, legato with long notes,
# repeated notes with 60 ms gaps.
MELODIES = {
    "short notes, 140 BPM": [(1.0 + k * 0.2143, 0.17, 60 + (k * 5) % 12) for k in range(24)],
    "legato, long notes": [(1.0, 1.2, 57), (2.25, 0.9, 60), (3.2, 1.6, 64), (4.85, 0.8, 62), (5.7, 2.0, 67),
                           (7.8, 1.1, 65), (9.0, 1.5, 64)],
    "repeated notes, 60 ms gaps": [(1.0 + k * 0.41, 0.35, 64 if k % 4 else 67) for k in range(20)],
}  # fmt: skip


def tempo_rows() -> list[str]:
    from ultrasinger_gpu_cli.song.tempo import detect_tempo

    rows = ["| true BPM | pattern | #BPM tempo | error (to tempo, x2 or /2) | first beat off the true grid |",
            "|---|---|---|---|---|"]  # fmt: skip
    for bpm in (72, 90, 120, 140, 174):
        for pattern in ("kick-clap", "kick", "clap"):
            offset = 0.37
            tempo = detect_tempo(drum_song(bpm, 20.0, pattern=pattern, offset_s=offset), 22_050)
            error = min(abs(tempo.bpm / bpm - r) / r for r in (0.5, 1.0, 2.0))
            period = 60 / bpm
            phase = (tempo.first_beat_s - offset) % period
            rows.append(f"| {bpm} | {pattern} | {tempo.bpm:.2f} | {100 * error:.2f}% | {1000 * min(phase, period - phase):.0f} ms |")
    return rows


def _padded_words(notes: list[tuple[float, float, int]]) -> list[dict]:
    """Whisper-like words: each runs on to the middle of the silence around it."""
    edges = [max(0.0, notes[0][0] - 0.3)]
    edges += [(a[0] + a[1] + b[0]) / 2 for a, b in zip(notes, notes[1:])]
    edges.append(notes[-1][0] + notes[-1][1] + 0.3)
    return [{"word": f" la{k}", "start": edges[k], "end": edges[k + 1]} for k in range(len(notes))]


def voice_rows(work: Path) -> list[str]:
    from typer.testing import CliRunner

    from ultrasinger_gpu_cli.cli import app
    from ultrasinger_gpu_cli.song.ultrastar import read_chart

    rows = ["| melody | notes | #BPM | note time inside the sung notes | words padded (before) |", "|---|---|---|---|---|"]
    for name, notes in MELODIES.items():
        folder = work / name.split(",")[0].replace(" ", "-")
        folder.mkdir()
        end = notes[-1][0] + notes[-1][1] + 1.0
        vocals = write_wav(folder / "Test - Song.wav", melody(notes, end, 44_100)[None], 44_100)
        words = _padded_words(notes)
        (folder / "words.json").write_text(json.dumps(words))
        result = CliRunner().invoke(app, ["run", str(vocals), "--no-separation", "--timings", str(folder / "words.json"),
                                          "-o", str(folder / "out"), "--json"], catch_exceptions=False)  # fmt: skip
        report = json.loads(result.stdout)["songs"][0]
        chart = read_chart(Path(report["files"]["ultrastar"]).read_text(encoding="utf-8"))
        truth = np.zeros(int(end * 1000) + 10, dtype=bool)
        for s, n, _ in notes:
            truth[int(s * 1000) : int((s + n) * 1000)] = True
        inside = total = 0
        for n in chart.notes:
            ms = np.arange(int(n.start_s * 1000), int(n.end_s * 1000))
            inside, total = inside + int(truth[ms].sum()), total + len(ms)
        padded = sum(int(truth[int(w["start"] * 1000) : int(w["end"] * 1000)].sum()) for w in words)
        padded_total = sum(int(w["end"] * 1000) - int(w["start"] * 1000) for w in words)
        rows.append(f"| {name} | {len(chart.notes)} | {chart.bpm:g} | **{100 * inside / total:.1f}%** "
                    f"| {100 * padded / padded_total:.1f}% |")  # fmt: skip
    return rows


def repitch_rows(work: Path) -> list[str]:
    from typer.testing import CliRunner

    from ultrasinger_gpu_cli.cli import app

    notes = MELODIES["repeated notes, 60 ms gaps"]
    folder = work / "repitch"
    folder.mkdir()
    vocals = write_wav(folder / "Test - Song.wav", melody(notes, 10.5, 44_100)[None], 44_100)
    lines = ["#VERSION:1.1.0", "#TITLE:Song", "#ARTIST:Test", "#MP3:old.mp3", "#COVER:c.jpg", "#BPM:300", "#GAP:1000"]
    for k, (s, n, _) in enumerate(notes):
        lines.append(f": {round((s - 1.0) / 0.05)} {round(n / 0.05)} 0 la{k} ")
        if k % 8 == 7:
            lines.append(f"- {round((s + n - 1.0) / 0.05) + 1}")
    chart = folder / "chart.txt"
    chart.write_text("\n".join(lines + ["E"]) + "\n")
    result = CliRunner().invoke(app, ["run", str(vocals), "--no-separation", "--timings", str(chart), "-o",
                                      str(folder / "out"), "--json"], catch_exceptions=False)  # fmt: skip
    out = Path(json.loads(result.stdout)["songs"][0]["files"]["ultrastar"]).read_text(encoding="utf-8").splitlines()
    before = chart.read_text().splitlines()
    audio = ("#MP3:", "#AUDIO:", "#VOCALS:", "#INSTRUMENTAL:")
    a = [x for x in before if not x.startswith(audio)]
    b = [x for x in out if not x.startswith(audio)]
    pitch_only = sum(1 for x, y in zip(a, b) if x != y and x.split(" ")[:3] == y.split(" ")[:3] and x.split(" ")[4:] == y.split(" ")[4:])
    other = sum(1 for x, y in zip(a, b) if x != y) - pitch_only
    right = sum(1 for y, (_, _, m) in zip([x for x in b if x.startswith(": ")], notes) if int(y.split(" ")[3]) + 60 == m)
    return [f"Re-pitch of a hand-made chart ({len(notes)} notes, #BPM 300, 60 ms gaps, phrase ends, a #COVER): "
            f"{len(a)} lines apart from the audio headers, of which {pitch_only} changed only their pitch, "
            f"{other} changed anything else, length {'equal' if len(a) == len(b) else 'DIFFERENT'}; "
            f"{right} of {len(notes)} pitches right."]  # fmt: skip


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="ugpu-quality-"))
    os.environ.setdefault("UGPU_DB", str(work / "ugpu.db"))
    os.environ.setdefault("UGPU_OFFLINE", "1")
    lines = ["### Chart quality (`make quality`, issue 11)", "", "Tempo and beat grid, 20 s drum patterns with a melody:", ""]
    lines += tempo_rows()
    from ultrasinger_gpu_cli.plan.resolver import PlanTarget, resolve

    pitch = resolve(PlanTarget("CPU")).components["crepe"]
    lines += ["", f"Notes follow the voice (the real pipeline, the no-GPU plan's pitch: {pitch.value('backend')} "
              f"{pitch.value('model')}; word timings padded into the silence):", ""]
    lines += voice_rows(work)
    lines += ["", *repitch_rows(work)]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
