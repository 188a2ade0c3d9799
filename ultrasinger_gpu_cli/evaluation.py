"""``ugpu eval``: how close generated charts come to hand-made ones.

Per song, against the reference chart:

* **note match rate**: the share of the reference's sung notes that a generated note matches
  one to one, with its onset within :data:`ONSET_TOLERANCE_S` and the same pitch (semitone);
* **median onset error** (ms) over the notes matched by onset alone;
* **pitch accuracy**, with and without the octave: over the reference's sung time that a
  generated sung note also covers, the share where the two pitches agree;
* **coverage**: the share of the reference's sung time that generated notes cover;
* **lyric similarity**: the matching share of the two charts' word sequences (case and
  punctuation ignored), from 0 to 1.

Charts are matched by file name (the stem, case ignored) when folders are given. Pure core:
no CLI imports.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ultrasinger_gpu_cli.errors import UgpuError
from ultrasinger_gpu_cli.notes import lyrics_text
from ultrasinger_gpu_cli.timings import decode_text
from ultrasinger_gpu_cli.ultrastar import PITCHED, Chart, ChartNote, read_chart

ONSET_TOLERANCE_S = 0.1
FRAME_S = 0.01  # time resolution of pitch accuracy and coverage


class EvaluationError(UgpuError):
    """A chart or folder that ``ugpu eval`` cannot compare."""

    exit_code = 2


@dataclass(frozen=True)
class ChartScore:
    name: str
    generated: str
    reference: str
    reference_notes: int
    generated_notes: int
    note_match_rate: float
    median_onset_error_ms: float | None
    pitch_accuracy: float | None
    pitch_accuracy_any_octave: float | None
    coverage: float
    lyric_similarity: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Evaluation:
    scores: tuple[ChartScore, ...]
    unmatched_generated: tuple[str, ...]
    unmatched_reference: tuple[str, ...]

    def mean(self, field: str) -> float | None:
        values = [getattr(s, field) for s in self.scores if getattr(s, field) is not None]
        return float(np.mean(values)) if values else None

    def to_dict(self) -> dict[str, object]:
        fields = ("note_match_rate", "median_onset_error_ms", "pitch_accuracy", "pitch_accuracy_any_octave",
                  "coverage", "lyric_similarity")  # fmt: skip
        return {"songs": [s.to_dict() for s in self.scores], "mean": {f: self.mean(f) for f in fields},
                "unmatched_generated": list(self.unmatched_generated),
                "unmatched_reference": list(self.unmatched_reference)}  # fmt: skip


def load_chart(path: Path) -> Chart:
    try:
        text, _ = decode_text(path)
        chart = read_chart(text)
    except UgpuError as exc:
        raise EvaluationError(exc.message, hint="give UltraStar .txt charts") from exc
    except ValueError as exc:
        raise EvaluationError(f"{path}: not a usable UltraStar chart: {exc}") from exc
    return chart


def _words(chart: Chart) -> list[str]:
    text = lyrics_text(chart.notes)
    return [w for w in (re.sub(r"[^\w']", "", w.casefold()) for w in text.split()) if w]


def _sung(chart: Chart) -> list[ChartNote]:
    return [n for n in chart.notes if n.kind in PITCHED]


def _frames(notes: list[ChartNote], n_frames: int) -> np.ndarray:
    """A pitch per frame (MIDI), NaN where no note sounds."""
    out = np.full(n_frames, np.nan)
    for n in notes:
        out[int(round(n.start_s / FRAME_S)) : int(round(n.end_s / FRAME_S))] = n.pitch + 60
    return out


def score(generated: Chart, reference: Chart, *, name: str = "", generated_path: str = "",
          reference_path: str = "") -> ChartScore:  # fmt: skip
    ref, gen = _sung(reference), _sung(generated)
    # One-to-one onset matching, nearest first.
    pairs = sorted((abs(g.start_s - r.start_s), i, j) for i, r in enumerate(ref) for j, g in enumerate(gen)
                   if abs(g.start_s - r.start_s) <= ONSET_TOLERANCE_S)  # fmt: skip
    used_r, used_g, matched = set(), set(), []
    for distance, i, j in pairs:
        if i not in used_r and j not in used_g:
            used_r.add(i)
            used_g.add(j)
            matched.append((distance, ref[i], gen[j]))
    same_pitch = sum(1 for _, r, g in matched if r.pitch == g.pitch)
    end = max([n.end_s for n in reference.notes + generated.notes] or [0.0])
    n_frames = int(np.ceil(end / FRAME_S)) + 1
    ref_pitch, gen_pitch = _frames(ref, n_frames), _frames(gen, n_frames)
    gen_any = np.zeros(n_frames, dtype=bool)
    for n in generated.notes:
        gen_any[int(round(n.start_s / FRAME_S)) : int(round(n.end_s / FRAME_S))] = True
    ref_sung = ~np.isnan(ref_pitch)
    both = ref_sung & ~np.isnan(gen_pitch)
    difference = np.round(gen_pitch[both] - ref_pitch[both]).astype(int)
    return ChartScore(
        name=name, generated=generated_path, reference=reference_path,
        reference_notes=len(ref), generated_notes=len(gen),
        note_match_rate=same_pitch / len(ref) if ref else 0.0,
        median_onset_error_ms=float(np.median([d for d, _, _ in matched]) * 1000) if matched else None,
        pitch_accuracy=float(np.mean(difference == 0)) if both.any() else None,
        pitch_accuracy_any_octave=float(np.mean(difference % 12 == 0)) if both.any() else None,
        coverage=float((ref_sung & gen_any).sum() / ref_sung.sum()) if ref_sung.any() else 0.0,
        lyric_similarity=difflib.SequenceMatcher(None, _words(generated), _words(reference), autojunk=False).ratio(),
    )  # fmt: skip


def _charts_in(path: Path) -> dict[str, Path]:
    """The UltraStar charts under a folder, by name (stem, case ignored); a file: itself."""
    if path.is_file():
        return {path.stem.casefold(): path}
    found: dict[str, Path] = {}
    for candidate in sorted(path.rglob("*.txt")):
        head = candidate.read_bytes()[:4096]
        if b"#BPM" in head.upper() or b"#\x00B\x00P\x00M" in head.upper():
            found.setdefault(candidate.stem.casefold(), candidate)
    return found


def evaluate(generated: Path, reference: Path) -> Evaluation:
    """Compare the charts at ``generated`` with those at ``reference`` (files, or folders whose
    charts are matched by name)."""
    for label, path in (("generated", generated), ("reference", reference)):
        if not path.exists():
            raise EvaluationError(f"{path}: no such {label} chart or folder")
    if generated.is_file() and reference.is_file():
        pairs = [(generated.stem, generated, reference)]
        gen_only: list[str] = []
        ref_only: list[str] = []
    else:
        gen, ref = _charts_in(generated), _charts_in(reference)
        pairs = [(ref[k].stem, gen[k], ref[k]) for k in sorted(gen.keys() & ref.keys())]
        gen_only = sorted(str(gen[k]) for k in gen.keys() - ref.keys())
        ref_only = sorted(str(ref[k]) for k in ref.keys() - gen.keys())
        if not pairs:
            raise EvaluationError(f"no chart in {generated} has the name of a chart in {reference}",
                                  hint="charts are matched by file name: 'Artist - Title.txt' in both")  # fmt: skip
    scores = tuple(score(load_chart(g), load_chart(r), name=name, generated_path=str(g), reference_path=str(r))
                   for name, g, r in pairs)  # fmt: skip
    return Evaluation(scores, tuple(gen_only), tuple(ref_only))
