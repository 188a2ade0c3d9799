"""The chart as a picture: a piano roll (``ugpu preview``, ``preview.png`` in every song folder,
the web page's job view, ``ugpu eval --overlay``).

Notes are bars on a semitone grid with their syllables, in seconds; golden, freestyle and rap
notes are drawn apart, a duet's singers in their own colours; dotted lines mark where a line
(phrase) starts. Under the notes, the pitch track the run heard (``NAME.pitch.npz``, which
``ugpu run`` writes beside the chart); over them, another chart in another colour (a hand chart,
or the previous run), moved by whole octaves onto the chart's own (hand charts write the melody
in an octave of the charter's choosing: :func:`.evaluation.chart_octave`). A song is drawn
:data:`ROW_S` seconds to a row, :data:`ROWS_PER_PAGE` rows to an image; a longer song gets more
pages (``NAME-2.png``...).

Each PNG carries its layout (where each row's time axis lies, as shares of the image) in a text
chunk, :data:`LAYOUT_KEY`, so a player can move a cursor over the notes (:func:`read_layout`).

Drawn with matplotlib's object API (no pyplot, no GUI backend, thread-safe), imported only here.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ultrasinger_gpu_cli.errors import UgpuError
from ultrasinger_gpu_cli.song.pitch import PitchTrack
from ultrasinger_gpu_cli.song.ultrastar import BOTH, P1, P2, PITCHED, Chart, ChartNote

ROW_S = 20.0  # seconds of song per row
ROWS_PER_PAGE = 15  # five minutes an image at 20 s a row
CHAR_PX = 4.0  # the width of a syllable's letter, in pixels
WIDTH_IN, ROW_IN, HEAD_IN, DPI = 16.0, 1.55, 0.75, 100
LAYOUT_KEY = "ugpu-layout"
PREVIEW_NAME = "preview.png"  # what ``ugpu run`` writes into each song folder
PITCH_SUFFIX = ".pitch.npz"  # the pitch track beside the chart: ``NAME.pitch.npz``
_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
_SINGER_COLOURS = {P1: "#2563eb", P2: "#dc2626", BOTH: "#7c3aed"}
NOTE_COLOUR, GOLDEN_COLOUR, REFERENCE_COLOUR = "#2563eb", "#f5b700", "#16a34a"
_RAP, _FREE, _TRACK = "#9333ea", "#9ca3af", "#374151"


class PreviewError(UgpuError):
    """A chart that cannot be drawn, or a file that cannot be written."""

    exit_code = 2


@dataclass(frozen=True)
class RowLayout:
    """One row of a page: the song's time from ``start_s`` to ``end_s`` runs from ``left`` to
    ``right``, pitch from ``high_midi`` at ``top`` down to ``low_midi`` at ``bottom`` (shares of
    the image's width and height, from its top left)."""

    start_s: float
    end_s: float
    left: float
    right: float
    top: float
    bottom: float
    low_midi: float
    high_midi: float


@dataclass(frozen=True)
class Page:
    path: Path
    rows: tuple[RowLayout, ...]
    width_px: int
    height_px: int

    def to_dict(self) -> dict[str, Any]:
        return {"width_px": self.width_px, "height_px": self.height_px, "rows": [asdict(r) for r in self.rows]}


def pitch_track_of(chart_path: Path) -> PitchTrack | None:
    """The pitch track written beside a chart (``NAME.pitch.npz`` for ``NAME.txt``), if there is one."""
    path = chart_path.with_name(chart_path.stem + PITCH_SUFFIX)
    return PitchTrack.load(path) if path.is_file() else None


def _voiced_midi(pitch: PitchTrack) -> tuple[np.ndarray, np.ndarray]:
    """(times, MIDI) of the frames the notes were made from (the voiced ones), NaN elsewhere."""
    from ultrasinger_gpu_cli.song.notes import PitchTrackView

    view = PitchTrackView(np.asarray(pitch.times, float), np.asarray(pitch.frequency, float),
                          np.asarray(pitch.confidence, float))  # fmt: skip
    return view.times, np.where(view.voiced, view.midi, np.nan)


def page_paths(target: Path, pages: int) -> list[Path]:
    """``preview.png``, then ``preview-2.png``, ``preview-3.png``..."""
    return [target if k == 0 else target.with_name(f"{target.stem}-{k + 1}{target.suffix}") for k in range(pages)]


def _song_end(chart: Chart, reference: Chart | None, heard: tuple[np.ndarray, np.ndarray] | None) -> float:
    ends = [n.end_s for n in chart.notes] + [n.end_s for n in (reference.notes if reference else ())]
    if heard is not None and np.isfinite(heard[1]).any():
        ends.append(float(heard[0][np.isfinite(heard[1])][-1]))
    return max(ends or [1.0])


def _colour(note: ChartNote, duet: bool) -> tuple[str, str, str | None, str]:
    """(face, edge, hatch, line style) of a note."""
    base = _SINGER_COLOURS.get(note.singer, NOTE_COLOUR) if duet else NOTE_COLOUR
    if note.kind in ("*", "G"):
        return GOLDEN_COLOUR, "#92400e", None, "solid"
    if note.kind == "R":
        return _RAP, "#581c87", "////", "solid"
    if note.kind == "F":
        return "none", _FREE, "xx", "dashed"
    return base, "#1e293b", None, "solid"


def _box(start_s: float, end_s: float, y: float, half: float) -> list[tuple[float, float]]:
    return [(start_s, y - half), (end_s, y - half), (end_s, y + half), (start_s, y + half)]


def _bars(notes: list[ChartNote], start_s: float, end_s: float) -> list[ChartNote]:
    return [n for n in notes if n.end_s > start_s and n.start_s < end_s]


def _draw_row(ax: Any, start_s: float, stop_s: float, mine: list[ChartNote], theirs: list[ChartNote], *, shift: int,
              heard: tuple[np.ndarray, np.ndarray] | None, overall: tuple[int, int], duet: bool) -> tuple[float, float]:  # fmt: skip
    """One row: its grid, the pitch heard, the reference's notes, the chart's notes with their
    syllables, the line starts. Returns the row's pitch span (low, high)."""
    from matplotlib.collections import PolyCollection

    row_s = stop_s - start_s
    here = [n.pitch + 60 for n in mine if n.kind in PITCHED] + [n.pitch + 60 - shift for n in theirs]
    low, high = (min(here), max(here)) if here else overall
    low, high = low - 2, max(high + 3, low + 12)
    ax.set_xlim(start_s, stop_s)
    ax.set_ylim(low, high)
    octaves = [p for p in range(int(np.ceil(low)), int(high) + 1) if p % 12 in (0, 7)]
    ax.set_yticks(octaves, [f"{_NAMES[p % 12]}{p // 12 - 1}" for p in octaves], fontsize=7)
    ax.set_xticks(np.arange(start_s, stop_s + 1e-6, 5.0))
    ax.tick_params(axis="x", labelsize=7, pad=1.5)
    ax.tick_params(axis="y", length=0)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    # The grid as two collections (a semitone a line; every 5 s), not as ticks: far cheaper to draw.
    ax.hlines(np.arange(int(np.ceil(low)), int(high) + 1), start_s, stop_s, colors="#e5e7eb", linewidths=0.5,
              zorder=0)  # fmt: skip
    ax.vlines(np.arange(start_s + 5.0, stop_s, 5.0), low, high, colors="#e5e7eb", linewidths=0.6, zorder=0)
    if heard is not None:
        inside = (heard[0] >= start_s) & (heard[0] < stop_s)
        ax.plot(heard[0][inside], heard[1][inside], ".", markersize=1.5, color=_TRACK, alpha=0.6,
                zorder=1, rasterized=True)  # fmt: skip
    if theirs:
        ax.add_collection(PolyCollection([_box(n.start_s, n.end_s, n.pitch + 60 - shift, 0.42) for n in theirs],
                                         facecolors=REFERENCE_COLOUR, edgecolors=REFERENCE_COLOUR, alpha=0.35,
                                         linewidths=0.8, zorder=2))  # fmt: skip
    groups: dict[tuple[str | None, str], tuple[list[Any], list[str], list[str]]] = {}
    starts = []
    seconds_per_char = row_s / (WIDTH_IN * DPI * 0.95) * CHAR_PX
    ends = [start_s - 1.0, start_s - 1.0]  # where the last label above and below a bar ends
    for n in mine:
        y = n.pitch + 60 if n.kind in PITCHED or n.kind == "R" else low + 1
        face, edge, hatch, style = _colour(n, duet)
        verts, faces, edges = groups.setdefault((hatch, style), ([], [], []))
        verts.append(_box(n.start_s, n.end_s, y, 0.4))
        faces.append(face)
        edges.append(edge)
        if n.phrase_start and n.start_s >= start_s:
            starts.append(n.start_s)
        text = n.text.strip()
        if text and text != "~":  # above the bar, or below it where the last label above is still running
            at = max(n.start_s, start_s)
            slot = 0 if at >= ends[0] else 1 if at >= ends[1] else int(ends[1] < ends[0])
            ends[slot] = at + len(text) * seconds_per_char
            ax.text(at, y + 0.55 if slot == 0 else y - 0.55, text, fontsize=6.5, ha="left",
                    va="bottom" if slot == 0 else "top", clip_on=True, zorder=4, color="#111827")  # fmt: skip
    for (hatch, style), (verts, faces, edges) in groups.items():
        ax.add_collection(PolyCollection(verts, facecolors=faces, edgecolors=edges, hatch=hatch, linestyles=style,
                                         linewidths=0.6, alpha=0.9, zorder=3))  # fmt: skip
    if starts:
        ax.vlines(starts, low, high, colors="#64748b", linestyles=":", linewidths=0.8, zorder=0)
    return low, high


def render(chart: Chart, target: Path, *, pitch: PitchTrack | None = None, reference: Chart | None = None,
           title: str | None = None, reference_label: str = "reference", row_s: float = ROW_S) -> list[Page]:  # fmt: skip
    """Draw ``chart`` into ``target`` (``.png`` or ``.svg``; more pages beside it for a long
    song) and return the pages written."""
    suffix = target.suffix.lower()
    if suffix not in (".png", ".svg"):
        raise PreviewError(f"{target}: a preview is a .png or an .svg file", hint="-o preview.png or -o preview.svg")
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    from ultrasinger_gpu_cli.song.evaluation import chart_octave
    from ultrasinger_gpu_cli.files import atomic_path

    notes = sorted(chart.notes, key=lambda n: n.start_s)
    shift = 0
    ref_notes: list[ChartNote] = []
    if reference is not None:
        shift = -12 * chart_octave(chart, reference)  # the reference moved onto the chart's octave
        ref_notes = sorted((n for n in reference.notes if n.kind in PITCHED), key=lambda n: n.start_s)
    heard = _voiced_midi(pitch) if pitch is not None else None
    end = _song_end(chart, reference, heard)
    rows = max(1, math.ceil(end / row_s))
    sung = [n.pitch + 60 for n in notes if n.kind in PITCHED] + [n.pitch + 60 - shift for n in ref_notes]
    overall = (min(sung), max(sung)) if sung else (55, 72)
    duet = chart.duet
    pages = []
    paths = page_paths(target, math.ceil(rows / ROWS_PER_PAGE))
    for page_number, path in enumerate(paths):
        first = page_number * ROWS_PER_PAGE
        count = min(ROWS_PER_PAGE, rows - first)
        height = HEAD_IN + count * ROW_IN
        fig = Figure(figsize=(WIDTH_IN, height), dpi=DPI)
        top_share = 1 - HEAD_IN / height
        axes = fig.subplots(count, 1, squeeze=False)[:, 0]
        fig.subplots_adjust(left=0.045, right=0.995, top=top_share, bottom=0.35 / height, hspace=0.38)
        layout = []
        for k, ax in enumerate(axes):
            start_s = (first + k) * row_s
            stop_s = start_s + row_s
            low, high = _draw_row(ax, start_s, stop_s, _bars(notes, start_s, stop_s), _bars(ref_notes, start_s, stop_s),
                                  shift=shift, heard=heard, overall=overall, duet=duet)  # fmt: skip
            box = ax.get_position()
            layout.append(RowLayout(start_s, stop_s, float(box.x0), float(box.x1), float(1 - box.y1), float(1 - box.y0),
                                    float(low), float(high)))  # fmt: skip
        axes[-1].set_xlabel("seconds", fontsize=7, labelpad=1)
        handles = [Patch(facecolor=NOTE_COLOUR, edgecolor="#1e293b", label="note")] if not duet else [
            Patch(facecolor=_SINGER_COLOURS[s], label=name)
            for s, name in ((P1, chart.singers[0]), (P2, chart.singers[1]), (BOTH, "both"))]  # fmt: skip
        handles += [Patch(facecolor=GOLDEN_COLOUR, edgecolor="#92400e", label="golden"),
                    Patch(facecolor=_RAP, hatch="////", edgecolor="#581c87", label="rap"),
                    Patch(facecolor="none", hatch="xx", edgecolor=_FREE, linestyle="dashed", label="freestyle"),
                    Line2D([], [], color="#64748b", linestyle=":", label="line starts")]  # fmt: skip
        if pitch is not None:
            handles.append(Line2D([], [], color=_TRACK, marker=".", linestyle="none", label="pitch heard"))
        if reference is not None:
            moved = f" ({-shift // 12:+d} octave)" if shift else ""
            handles.append(Patch(facecolor=REFERENCE_COLOUR, alpha=0.35, edgecolor=REFERENCE_COLOUR, label=reference_label + moved))
        fig.legend(handles=handles, loc="upper right", ncol=len(handles), fontsize=7.5, frameon=False,
                   bbox_to_anchor=(0.995, 1 - 0.38 / height))  # fmt: skip
        head = title or f"{chart.headers.get('ARTIST', '?')} - {chart.headers.get('TITLE', '?')}"
        counts = f"#BPM {chart.bpm:g} · {sum(n.kind in PITCHED for n in chart.notes)} sung notes"
        pages_note = f" · page {page_number + 1} of {len(paths)}" if len(paths) > 1 else ""
        fig.text(0.045, 1 - 0.3 / height, f"{head}   ({counts}{pages_note})", fontsize=10, weight="bold", va="center")
        width_px, height_px = int(round(WIDTH_IN * DPI)), int(round(height * DPI))
        page = Page(path, tuple(layout), width_px, height_px)
        metadata = {LAYOUT_KEY: json.dumps(page.to_dict()), "Software": "ugpu"} if suffix == ".png" else None
        try:
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as fh:
                    fig.savefig(fh, format=suffix[1:], metadata=metadata)
        except OSError as exc:
            raise PreviewError(f"{path}: cannot write the preview ({exc.strerror})") from exc
        pages.append(page)
    return pages


def read_layout(path: Path) -> dict[str, Any] | None:
    """A preview PNG's layout (:meth:`Page.to_dict`), from its text chunk; None when it has none."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    at = 8
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        body = data[at + 8 : at + 8 + length]
        if kind == b"tEXt" and body.startswith(LAYOUT_KEY.encode() + b"\0"):
            try:
                return json.loads(body[len(LAYOUT_KEY) + 1 :].decode("latin-1"))
            except ValueError:
                return None
        if kind == b"IDAT":
            return None
        at += 12 + length
    return None
