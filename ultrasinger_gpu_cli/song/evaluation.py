"""``ugpu eval``: how close generated charts come to hand-made ones.

Per song, against the reference chart:

* **words**: the two charts' words are matched by a monotonic alignment of their text (case and
  punctuation ignored, near spellings allowed), so a word counts where it is sung, not where it
  falls in the list; over the matched words, the median and mean **onset error**; the share of
  the reference's words matched, and the share whose onset lies within 100 ms, 300 ms and 1 s;
* **notes**: precision, recall and F1 of the generated sung notes against the reference's, one
  to one, onset within :data:`ONSET_TOLERANCE_S`, the same pitch class (``note_f1``) and the same
  pitch once the chart's octave is allowed for (``note_f1_octave``); ``note_f1_onset`` by onset
  alone. **The chart's octave**: a hand chart writes the melody in an octave of the charter's
  choosing, so the octave offset between the charts (the whole octaves that make most of the
  sung time agree) is found first and reported (``octave_offset``);
* **pitch**: over the reference's sung time that a generated note also covers, the share where
  the pitches agree (the octave offset applied) and where their pitch classes agree; over the
  onset-matched notes, exact, within a semitone and the same pitch class (for a re-pitched
  chart, where every note is matched, this is the re-pitch accuracy);
* **coverage**: the share of the reference's sung time that generated notes cover;
* **lyric similarity**: the matching share of the two word sequences, from 0 to 1;
* **the grid**: both charts' ``#BPM`` and lines per minute;
* **lines**: of the reference's line starts (its first word aside), the share where the
  generated chart starts a line at the same word (recall), and of the generated chart's, the
  share that start one in the reference (precision); words matched as above.

Charts are matched by file name (the stem, case ignored) when folders are given. A duet (either
chart) is scored per singer: each singer's part against the same singer's part. Pure core: no
CLI imports.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from ultrasinger_gpu_cli.errors import UgpuError
from ultrasinger_gpu_cli.song.timings import MAX_BYTES as MAX_CHART_BYTES
from ultrasinger_gpu_cli.song.timings import decode_text
from ultrasinger_gpu_cli.song.ultrastar import P1, P2, PITCHED, Chart, ChartNote, read_chart
from ultrasinger_gpu_cli.song.wordmatch import match, normalise, ratio
from ultrasinger_gpu_cli.song.words import Word

ONSET_TOLERANCE_S = 0.1
FRAME_S = 0.01  # time resolution of pitch accuracy and coverage
WITHIN_S = (0.1, 0.3, 1.0)  # word onset shares reported


class EvaluationError(UgpuError):
    """A chart or folder that ``ugpu eval`` cannot compare."""

    exit_code = 2


@dataclass(frozen=True)
class WordOnsets:
    """Word onsets of a generated word list against the reference's (times in ms, shares 0-1)."""

    reference_words: int
    generated_words: int
    words_matched: float  # share of the reference's words
    median_error_ms: float | None
    mean_error_ms: float | None
    #: The chart's timing offset: the median of the signed errors (generated minus reference) over
    #: the words matched within 1 s; positive: the generated words come late (move ``#GAP`` by minus it).
    offset_ms: float | None
    within_100ms: float  # shares of the reference's words
    within_300ms: float
    within_1s: float


@dataclass(frozen=True)
class ChartScore:
    name: str
    generated: str
    reference: str
    reference_notes: int
    generated_notes: int
    note_match_rate: float  # recall at the same pitch, the chart's octave allowed for
    median_onset_error_ms: float | None  # notes matched by onset
    pitch_accuracy: float | None  # sung time, the chart's octave allowed for
    pitch_accuracy_any_octave: float | None
    coverage: float
    lyric_similarity: float
    octave_offset: int  # whole octaves the generated chart sits above the reference
    note_precision: float
    note_recall: float
    note_f1: float  # onset and pitch class
    note_f1_octave: float  # onset and pitch (octave offset applied)
    note_f1_onset: float  # onset alone
    notes_matched: int  # by onset
    pitch_exact: float | None  # over onset-matched notes
    pitch_within_1: float | None
    pitch_class: float | None
    reference_words: int
    words_matched: float
    word_onset_median_ms: float | None
    word_onset_mean_ms: float | None
    word_onset_offset_ms: float | None  # the timing offset (:attr:`WordOnsets.offset_ms`): + late
    words_within_100ms: float
    words_within_300ms: float
    words_within_1s: float
    bpm: float
    reference_bpm: float
    lines_per_minute: float
    reference_lines_per_minute: float
    line_starts_recall: float | None  # the reference's line starts the generated chart starts a line at too
    line_starts_precision: float | None  # the generated chart's line starts the reference has too
    singer: str | None = None  # a duet's singer (P1, P2) this score is for; None: the whole chart

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


#: The fields averaged over songs.
MEAN_FIELDS = tuple(f.name for f in fields(ChartScore) if f.name not in ("name", "generated", "reference", "singer"))


@dataclass(frozen=True)
class Evaluation:
    scores: tuple[ChartScore, ...]
    unmatched_generated: tuple[str, ...]
    unmatched_reference: tuple[str, ...]

    def mean(self, field: str) -> float | None:
        values = [getattr(s, field) for s in self.scores if getattr(s, field) is not None]
        return float(np.mean(values)) if values else None

    def to_dict(self) -> dict[str, object]:
        return {"songs": [s.to_dict() for s in self.scores], "mean": {f: self.mean(f) for f in MEAN_FIELDS},
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


# -- words ---------------------------------------------------------------------------------------------
Pairs = list[tuple[int, int]]


def word_pairs(generated: Sequence[Word], reference: Sequence[Word]) -> Pairs:
    """(generated index, reference index) of the words matched in order by their text
    (:func:`.wordmatch.match`; the nearer of two equal candidates)."""
    return match([w.text for w in generated], [w.text for w in reference], times_a=[w.start_s for w in generated],
                 times_b=[w.start_s for w in reference])  # fmt: skip


def word_onsets(generated: Sequence[Word], reference: Sequence[Word], pairs: Pairs | None = None) -> WordOnsets:
    """Onset errors of generated words against the reference's, matched by :func:`word_pairs`
    (given, where the caller has them already)."""
    pairs = word_pairs(generated, reference) if pairs is None else pairs
    signed = np.array([generated[g].start_s - reference[r].start_s for g, r in pairs])
    errors = np.abs(signed)
    near = signed[errors <= WITHIN_S[2] + 1e-9]
    n = len(reference)

    def share(limit: float) -> float:
        return float((errors <= limit + 1e-9).sum() / n) if n else 0.0

    return WordOnsets(
        reference_words=n, generated_words=len(generated), words_matched=len(pairs) / n if n else 0.0,
        median_error_ms=float(np.median(errors) * 1000) if len(errors) else None,
        mean_error_ms=float(np.mean(errors) * 1000) if len(errors) else None,
        offset_ms=float(np.median(near) * 1000) if len(near) else None,
        within_100ms=share(WITHIN_S[0]), within_300ms=share(WITHIN_S[1]), within_1s=share(WITHIN_S[2]),
    )  # fmt: skip


def _lyric_words(chart: Chart) -> tuple[list[str], list[float]]:
    words = [(normalise(w.text), w.start_s) for w in chart.lyric_words()]
    return [w for w, _ in words if w], [t for w, t in words if w]


# -- notes -----------------------------------------------------------------------------------------------
def _sung(chart: Chart) -> list[ChartNote]:
    return [n for n in chart.notes if n.kind in PITCHED]


def _frames(notes: list[ChartNote], n_frames: int) -> np.ndarray:
    """A pitch per frame (half-steps from C4), NaN where no note sounds."""
    out = np.full(n_frames, np.nan)
    for n in notes:
        out[int(round(n.start_s / FRAME_S)) : int(round(n.end_s / FRAME_S))] = n.pitch
    return out


def octave_offset(differences: np.ndarray) -> int:
    """The whole octaves that make most of the differences (half-steps) zero (0 on a tie or
    when none is a whole octave)."""
    octaves = differences[differences % 12 == 0] // 12
    if len(octaves) == 0:
        return 0
    values, counts = np.unique(octaves, return_counts=True)
    best = counts.max()
    return int(min(values[counts == best], key=abs))


def match_notes(generated: Sequence[ChartNote], reference: Sequence[ChartNote],
                same: object = None) -> list[tuple[int, int]]:  # fmt: skip
    """One-to-one (generated, reference) pairs with onsets within :data:`ONSET_TOLERANCE_S`,
    nearest first; ``same(g, r)``, where given, must hold too."""
    starts = np.array([n.start_s for n in generated])
    candidates = []
    for j, r in enumerate(reference):
        lo, hi = np.searchsorted(starts, [r.start_s - ONSET_TOLERANCE_S - 1e-9, r.start_s + ONSET_TOLERANCE_S + 1e-9])
        for i in range(lo, hi):
            if same is None or same(generated[i], r):  # type: ignore[operator]
                candidates.append((abs(generated[i].start_s - r.start_s), i, j))
    used_g: set[int] = set()
    used_r: set[int] = set()
    pairs = []
    for _, i, j in sorted(candidates):
        if i not in used_g and j not in used_r:
            used_g.add(i)
            used_r.add(j)
            pairs.append((i, j))
    return pairs


def chart_octave(generated: Chart, reference: Chart) -> int:
    """The whole octaves the generated chart's melody sits above the reference's: from the notes
    matched by onset where there are any, else from the sung time both cover."""
    ref = sorted(_sung(reference), key=lambda n: n.start_s)
    gen = sorted(_sung(generated), key=lambda n: n.start_s)
    pairs = match_notes(gen, ref)
    if pairs:
        return octave_offset(np.array([gen[i].pitch - ref[j].pitch for i, j in pairs]))
    end = max([n.end_s for n in ref + gen] or [0.0])
    n_frames = int(np.ceil(end / FRAME_S)) + 1
    ref_pitch, gen_pitch = _frames(ref, n_frames), _frames(gen, n_frames)
    both = ~np.isnan(ref_pitch) & ~np.isnan(gen_pitch)
    return octave_offset(np.round(gen_pitch[both] - ref_pitch[both]).astype(int))


def _f1(matched: int, n_generated: int, n_reference: int) -> tuple[float, float, float]:
    precision = matched / n_generated if n_generated else 0.0
    recall = matched / n_reference if n_reference else 0.0
    return precision, recall, (2 * precision * recall / (precision + recall) if precision + recall else 0.0)


def _lines_per_minute(chart: Chart) -> float:
    sung = list(chart.notes)
    if not sung:
        return 0.0
    lines = 1 + sum(1 for n in sung[1:] if n.phrase_start)
    span = max(sung[-1].end_s - sung[0].start_s, 1.0)
    return lines / span * 60


def line_starts(generated: Sequence[Word], reference: Sequence[Word],
                pairs: Pairs | None = None) -> tuple[float | None, float | None]:  # fmt: skip
    """(recall, precision) of the generated words' line starts against the reference's, the words
    matched by :func:`word_pairs` (given, where the caller has them already); the first word of
    each, which always starts a line, aside. None where a side has no line start after its first word."""
    pairs = word_pairs(generated, reference) if pairs is None else pairs
    theirs = {j for j, w in enumerate(reference) if w.phrase_start and j > 0}
    ours = {i for i, w in enumerate(generated) if w.phrase_start and i > 0}
    both = sum(1 for i, j in pairs if i in ours and j in theirs)
    return (both / len(theirs) if theirs else None), (both / len(ours) if ours else None)


def score(generated: Chart, reference: Chart, *, name: str = "", generated_path: str = "",
          reference_path: str = "") -> ChartScore:  # fmt: skip
    ref = sorted(_sung(reference), key=lambda n: n.start_s)
    gen = sorted(_sung(generated), key=lambda n: n.start_s)
    end = max([n.end_s for n in reference.notes + generated.notes] or [0.0])
    n_frames = int(np.ceil(end / FRAME_S)) + 1
    ref_pitch, gen_pitch = _frames(ref, n_frames), _frames(gen, n_frames)
    gen_any = np.zeros(n_frames, dtype=bool)
    for n in generated.notes:
        gen_any[int(round(n.start_s / FRAME_S)) : int(round(n.end_s / FRAME_S))] = True
    ref_sung = ~np.isnan(ref_pitch)
    both = ref_sung & ~np.isnan(gen_pitch)
    difference = np.round(gen_pitch[both] - ref_pitch[both]).astype(int)
    onset_pairs = match_notes(gen, ref)
    offset = chart_octave(generated, reference)
    shift = 12 * offset
    note_diffs = np.array([gen[i].pitch - shift - ref[j].pitch for i, j in onset_pairs])
    by_class = match_notes(gen, ref, lambda g, r: (g.pitch - r.pitch) % 12 == 0)
    by_pitch = match_notes(gen, ref, lambda g, r: g.pitch - shift == r.pitch)
    precision, recall, f1 = _f1(len(by_class), len(gen), len(ref))
    ours, theirs = generated.lyric_words(), reference.lyric_words()
    pairs = word_pairs(ours, theirs)  # matched once: onsets and line starts both count on them
    words = word_onsets(ours, theirs, pairs)
    (gen_words, gen_times), (ref_words, ref_times) = _lyric_words(generated), _lyric_words(reference)
    line_recall, line_precision = line_starts(ours, theirs, pairs)
    return ChartScore(
        name=name, generated=generated_path, reference=reference_path,
        reference_notes=len(ref), generated_notes=len(gen),
        note_match_rate=len(by_pitch) / len(ref) if ref else 0.0,
        median_onset_error_ms=float(np.median([abs(gen[i].start_s - ref[j].start_s) for i, j in onset_pairs]) * 1000)
        if onset_pairs else None,
        pitch_accuracy=float(np.mean(difference - shift == 0)) if both.any() else None,
        pitch_accuracy_any_octave=float(np.mean(difference % 12 == 0)) if both.any() else None,
        coverage=float((ref_sung & gen_any).sum() / ref_sung.sum()) if ref_sung.any() else 0.0,
        lyric_similarity=ratio(gen_words, ref_words, gen_times, ref_times),
        octave_offset=offset,
        note_precision=precision, note_recall=recall, note_f1=f1,
        note_f1_octave=_f1(len(by_pitch), len(gen), len(ref))[2],
        note_f1_onset=_f1(len(onset_pairs), len(gen), len(ref))[2],
        notes_matched=len(onset_pairs),
        pitch_exact=float(np.mean(note_diffs == 0)) if len(note_diffs) else None,
        pitch_within_1=float(np.mean(np.abs(note_diffs) <= 1)) if len(note_diffs) else None,
        pitch_class=float(np.mean(note_diffs % 12 == 0)) if len(note_diffs) else None,
        reference_words=words.reference_words, words_matched=words.words_matched,
        word_onset_median_ms=words.median_error_ms, word_onset_mean_ms=words.mean_error_ms,
        word_onset_offset_ms=words.offset_ms,
        words_within_100ms=words.within_100ms, words_within_300ms=words.within_300ms, words_within_1s=words.within_1s,
        bpm=generated.bpm, reference_bpm=reference.bpm,
        lines_per_minute=_lines_per_minute(generated), reference_lines_per_minute=_lines_per_minute(reference),
        line_starts_recall=line_recall, line_starts_precision=line_precision,
    )  # fmt: skip


def chart_files(folder: Path, *, recursive: bool = True) -> list[Path]:
    """The UltraStar charts in a folder (``.txt`` files whose head has ``#BPM``), in name order."""
    found = []
    for candidate in sorted(folder.rglob("*.txt") if recursive else folder.glob("*.txt")):
        head = _head(candidate)
        if b"#BPM" in head.upper() or b"#\x00B\x00P\x00M" in head.upper():
            found.append(candidate)
    return found


def _charts_in(path: Path) -> list[Path]:
    """The UltraStar charts under a folder; a file: itself."""
    return [path] if path.is_file() else chart_files(path)


def name_key(text: str) -> str:
    """A song's name as two charts of it are matched: case, spaces and punctuation ignored
    ("Mr. Fancy Pants" and "Mr Fancy Pants" are one song)."""
    return re.sub(r"[\W_]+", "", unicodedata.normalize("NFKC", text).casefold())


def _headers_name(path: Path) -> str:
    """"Artist - Title" from a chart's own headers ("" where it has neither)."""
    try:
        headers = load_chart(path).headers
    except EvaluationError:
        return ""
    artist, title = headers.get("ARTIST", "").strip(), headers.get("TITLE", "").strip()
    return f"{artist} - {title}" if artist or title else ""


def pair_charts(generated: Sequence[Path], reference: Sequence[Path]) -> tuple[list[tuple[str, Path, Path]], list[Path], list[Path]]:
    """Generated and reference charts of one song, as (name, generated, reference), and those
    of either side left alone. A chart is paired by its file name (case ignored), else by its
    name with punctuation and spaces ignored (:func:`name_key`), else by its ``#ARTIST`` and
    ``#TITLE``; a name several charts of one side share (a library of ``song.txt`` files, one a
    folder) pairs none of them by it."""
    left_g, left_r = list(generated), list(reference)
    headers: dict[Path, str] = {}

    def by_headers(p: Path) -> str:
        if p not in headers:
            headers[p] = name_key(_headers_name(p))
        return headers[p]

    pairs: list[tuple[Path, Path]] = []
    for key in (lambda p: p.stem.casefold(), lambda p: name_key(p.stem), by_headers):
        sides = []
        for side in (left_g, left_r):
            keyed: dict[str, list[Path]] = {}
            for p in side:
                keyed.setdefault(key(p), []).append(p)
            sides.append({k: ps[0] for k, ps in keyed.items() if k and len(ps) == 1})
        for k in sorted(sides[0].keys() & sides[1].keys()):
            g, r = sides[0][k], sides[1][k]
            pairs.append((g, r))
            left_g.remove(g)
            left_r.remove(r)
    stems = [p.stem.casefold() for p in reference]
    named = [((r.stem if stems.count(r.stem.casefold()) == 1 else _headers_name(r) or r.stem), g, r) for g, r in pairs]
    return sorted(named, key=lambda t: t[0].casefold()), left_g, left_r


def _head(path: Path) -> bytes:
    """A chart candidate's first 4 KB: regular files only, never blocking (a FIFO, a link to a
    device, a huge sparse file are not charts)."""
    import os
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return b""
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_CHART_BYTES:
            return b""
        return os.read(fd, 4096)
    except OSError:
        return b""
    finally:
        os.close(fd)


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
        pairs, gen_left, ref_left = pair_charts(_charts_in(generated), _charts_in(reference))
        gen_only, ref_only = sorted(map(str, gen_left)), sorted(map(str, ref_left))
        if not pairs:
            raise EvaluationError(f"no chart in {generated} is of a song charted in {reference}",
                                  hint="charts are matched by file name ('Artist - Title.txt'), punctuation and case "
                                       "aside, else by their #ARTIST and #TITLE")  # fmt: skip
    scores = tuple(s for name, g, r in pairs for s in score_song(load_chart(g), load_chart(r), name=name,
                                                                   generated_path=str(g), reference_path=str(r)))  # fmt: skip
    return Evaluation(scores, tuple(gen_only), tuple(ref_only))


def score_song(generated: Chart, reference: Chart, *, name: str = "", generated_path: str = "",
               reference_path: str = "") -> list[ChartScore]:  # fmt: skip
    """One score per chart; where either chart is a duet, one per singer (each singer's part of
    both charts: a solo chart is compared with each part of a duet)."""
    if not (generated.duet or reference.duet):
        return [score(generated, reference, name=name, generated_path=generated_path, reference_path=reference_path)]
    return [replace(score(generated.part(section), reference.part(section), name=f"{name} [{label}]",
                          generated_path=generated_path, reference_path=reference_path), singer=label)
            for section, label in ((P1, "P1"), (P2, "P2"))]  # fmt: skip
