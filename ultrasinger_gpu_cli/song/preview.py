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

Drawn with Pillow (PNG) or written as SVG text, both through one small canvas: no plotting
library. matplotlib drew it before, at a second of every run (its import, its first figure and
some 600 text artists on a 4-minute song); the same picture now costs a tenth of that.
"""

from __future__ import annotations

import json
import math
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np

from ultrasinger_gpu_cli.errors import UgpuError
from ultrasinger_gpu_cli.song.pitch import PitchTrack
from ultrasinger_gpu_cli.song.ultrastar import BOTH, P1, P2, PITCHED, Chart, ChartNote

ROW_S = 20.0  # seconds of song per row
ROWS_PER_PAGE = 15  # five minutes an image at 20 s a row
CHAR_PX = 4.0  # the width of a syllable's letter, in pixels
WIDTH_IN, ROW_IN, HEAD_IN, DPI = 16.0, 1.55, 0.75, 100
ROW_GAP = 0.38  # the space between two rows, in rows
LEFT, RIGHT = 0.045, 0.995  # where the rows' time axes lie, as shares of the page's width
HATCH_PX = 6  # the spacing of a hatch's lines, in pixels
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


def _rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def _px(points: float) -> float:
    """A size in points, in pixels at :data:`DPI`."""
    return points * DPI / 72


@dataclass(frozen=True)
class _Style:
    """How a box is drawn: its face (None: none) and edge, their opacity, a hatch (``"/"`` or
    ``"x"``), a dashed edge."""

    face: str | None
    edge: str
    alpha: float = 1.0
    hatch: str | None = None
    dashed: bool = False


_NOTE_EDGE = "#1e293b"
_GOLDEN = _Style(GOLDEN_COLOUR, "#92400e", 0.9)
_RAP_NOTE = _Style(_RAP, "#581c87", 0.9, hatch="/")
_FREE_NOTE = _Style(None, _FREE, 0.9, hatch="x", dashed=True)
_REFERENCE = _Style(REFERENCE_COLOUR, REFERENCE_COLOUR, 0.35)
_HATCHED_EDGES = (_RAP_NOTE.edge, _FREE_NOTE.edge)  # the colours hatches are drawn in (SVG patterns)


def _note_style(note: ChartNote, duet: bool) -> _Style:
    if note.kind in ("*", "G"):
        return _GOLDEN
    if note.kind == "R":
        return _RAP_NOTE
    if note.kind == "F":
        return _FREE_NOTE
    return _Style(_SINGER_COLOURS.get(note.singer, NOTE_COLOUR) if duet else NOTE_COLOUR, _NOTE_EDGE, 0.9)


# -- the canvases: one drawing, as pixels or as SVG ------------------------------------------------
_FONTS = threading.local()  # a FreeType face is not for two threads at once: previews are drawn on host threads


def _font(size_px: int) -> Any:
    """Pillow's own scalable font (nothing to find on the system), one per size and thread."""
    from PIL import ImageFont

    fonts = _FONTS.__dict__.setdefault("by_size", {})
    if size_px not in fonts:
        fonts[size_px] = ImageFont.load_default(size=size_px)
    return fonts[size_px]


_ANCHORS = {("left", "bottom"): "ld", ("left", "top"): "la", ("left", "center"): "lm", ("right", "center"): "rm",
            ("center", "top"): "ma", ("center", "bottom"): "md", ("right", "top"): "ra"}  # fmt: skip


class _PngCanvas:
    """Pixels (Pillow), drawn with alpha over what is there."""

    def __init__(self, width: int, height: int) -> None:
        from PIL import Image, ImageDraw

        self.image = Image.new("RGB", (width, height), "white")
        self.draw = ImageDraw.Draw(self.image, "RGBA")

    @contextmanager
    def region(self, x: float, y: float, width: float, height: float) -> Iterator[_PngCanvas]:
        """A part of the canvas with its own origin; what is drawn outside it is cut off."""
        left, top = int(round(x)), int(round(y))
        part = _PngCanvas(max(1, int(round(x + width)) - left), max(1, int(round(y + height)) - top))
        yield part
        self.image.paste(part.image, (left, top))

    def box(self, x0: float, y0: float, x1: float, y1: float, style: _Style) -> None:
        a = int(round(255 * style.alpha))
        box = (int(round(x0)), int(round(y0)), max(int(round(x0)), int(round(x1)) - 1), max(int(round(y0)), int(round(y1)) - 1))
        if style.face is not None:
            self.draw.rectangle(box, fill=(*_rgb(style.face), a))
        if style.hatch is not None:
            self._hatch(box, style.edge, a, style.hatch)
        if style.dashed:
            x0, y0, x1, y1 = box
            for edge in (((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)), ((x0, y1), (x1, y1)), ((x0, y0), (x0, y1))):
                self._dashes(*edge[0], *edge[1], (*_rgb(style.edge), a), 4, 3)
        else:
            self.draw.rectangle(box, outline=(*_rgb(style.edge), a), width=1)

    def _hatch(self, box: tuple[int, int, int, int], colour: str, alpha: int, kind: str) -> None:
        from PIL import Image

        x0, y0, x1, y1 = box
        xx, yy = np.meshgrid(np.arange(x0, x1 + 1), np.arange(y0, y1 + 1))
        lines = (xx + yy) % HATCH_PX == 0
        if kind == "x":
            lines |= (xx - yy) % HATCH_PX == 0
        self.image.paste(_rgb(colour), (x0, y0, x1 + 1, y1 + 1), Image.fromarray((lines * alpha).astype(np.uint8), "L"))

    def _dashes(self, x0: float, y0: float, x1: float, y1: float, fill: tuple[int, ...], on: float, off: float) -> None:
        length = math.hypot(x1 - x0, y1 - y0)
        at = 0.0
        while at < length:
            end = min(length, at + on)
            f0, f1 = at / length, end / length
            self.draw.line([(x0 + (x1 - x0) * f0, y0 + (y1 - y0) * f0), (x0 + (x1 - x0) * f1, y0 + (y1 - y0) * f1)],
                           fill=fill, width=1)  # fmt: skip
            at += on + off

    def line(self, x0: float, y0: float, x1: float, y1: float, colour: str, *, dotted: bool = False) -> None:
        if dotted:  # fine dots, half-tone: a line start is a hint, not a bar
            self._dashes(x0, y0, x1, y1, (*_rgb(colour), 160), 1.5, 2.5)
        else:
            self.draw.line([(x0, y0), (x1, y1)], fill=_rgb(colour), width=1)

    def dots(self, xs: np.ndarray, ys: np.ndarray, colour: str, alpha: float) -> None:
        xs, ys = np.round(xs).astype(int), np.round(ys).astype(int)
        fill = (*_rgb(colour), int(round(255 * alpha)))
        for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):  # a dot two pixels wide
            self.draw.point(list(zip((xs + dx).tolist(), (ys + dy).tolist())), fill=fill)

    def text(self, x: float, y: float, text: str, size_pt: float, colour: str = "#000000", *, h: str = "left",
             v: str = "bottom", bold: bool = False) -> None:  # fmt: skip
        self.draw.text((x, y), text, font=_font(int(round(_px(size_pt)))), fill=_rgb(colour), anchor=_ANCHORS[(h, v)],
                       stroke_width=0.4 if bold else 0, stroke_fill=_rgb(colour))  # fmt: skip

    def width(self, text: str, size_pt: float) -> float:
        return float(_font(int(round(_px(size_pt)))).getlength(text))

    def save(self, path: Path, layout: str) -> None:
        from PIL import PngImagePlugin

        info = PngImagePlugin.PngInfo()
        info.add_text(LAYOUT_KEY, layout)
        info.add_text("Software", "ugpu")
        with open(path, "wb") as fh:
            self.image.save(fh, format="PNG", pnginfo=info, compress_level=6)


class _SvgCanvas:
    """SVG elements, in the same coordinates (pixels at :data:`DPI`)."""

    def __init__(self, width: int, height: int) -> None:
        self.width_px, self.height_px = width, height
        self.parts: list[str] = []

    @contextmanager
    def region(self, x: float, y: float, width: float, height: float) -> Iterator[_SvgCanvas]:
        self.parts.append(f'<svg x="{x:.2f}" y="{y:.2f}" width="{width:.2f}" height="{height:.2f}" overflow="hidden">')
        yield self
        self.parts.append("</svg>")

    def box(self, x0: float, y0: float, x1: float, y1: float, style: _Style) -> None:
        face = "none" if style.face is None else style.face
        shape = f'x="{x0:.2f}" y="{y0:.2f}" width="{max(0.0, x1 - x0):.2f}" height="{max(0.0, y1 - y0):.2f}"'
        dash = ' stroke-dasharray="4 3"' if style.dashed else ""
        self.parts.append(f'<rect {shape} fill="{face}" fill-opacity="{style.alpha}" stroke="{style.edge}" '
                          f'stroke-opacity="{style.alpha}" stroke-width="1"{dash}/>')  # fmt: skip
        if style.hatch is not None:
            self.parts.append(f'<rect {shape} fill="url(#hatch-{"x" if style.hatch == "x" else "slash"}-{style.edge[1:]})" '
                              f'fill-opacity="{style.alpha}" stroke="none"/>')  # fmt: skip

    def line(self, x0: float, y0: float, x1: float, y1: float, colour: str, *, dotted: bool = False) -> None:
        dash = ' stroke-dasharray="1.5 2.5"' if dotted else ""
        self.parts.append(f'<line x1="{x0:.2f}" y1="{y0:.2f}" x2="{x1:.2f}" y2="{y1:.2f}" stroke="{colour}" '
                          f'stroke-width="1"{dash}/>')  # fmt: skip

    def dots(self, xs: np.ndarray, ys: np.ndarray, colour: str, alpha: float) -> None:
        if len(xs):
            path = "".join(f"M{x:.1f} {y:.1f}h2v2h-2z" for x, y in zip(xs.tolist(), ys.tolist()))
            self.parts.append(f'<path d="{path}" fill="{colour}" fill-opacity="{alpha}"/>')

    def text(self, x: float, y: float, text: str, size_pt: float, colour: str = "#000000", *, h: str = "left",
             v: str = "bottom", bold: bool = False) -> None:  # fmt: skip
        anchor = {"left": "start", "center": "middle", "right": "end"}[h]
        size = _px(size_pt)
        baseline = y + {"bottom": -0.22, "top": 0.8, "center": 0.3}[v] * size  # on the alphabetic baseline: every viewer
        weight = ' font-weight="bold"' if bold else ""
        self.parts.append(f'<text x="{x:.2f}" y="{baseline:.2f}" font-size="{size:.1f}" fill="{colour}" '
                          f'text-anchor="{anchor}"{weight}>{escape(text)}</text>')  # fmt: skip

    def width(self, text: str, size_pt: float) -> float:
        return len(text) * _px(size_pt) * 0.55

    def save(self, path: Path, layout: str) -> None:
        patterns = []
        for colour in _HATCHED_EDGES:
            for kind, shape in (("slash", f"M0 {HATCH_PX}L{HATCH_PX} 0"), ("x", f"M0 {HATCH_PX}L{HATCH_PX} 0M0 0L{HATCH_PX} {HATCH_PX}")):
                patterns.append(f'<pattern id="hatch-{kind}-{colour[1:]}" patternUnits="userSpaceOnUse" width="{HATCH_PX}" '
                                f'height="{HATCH_PX}"><path d="{shape}" stroke="{colour}" stroke-width="1"/></pattern>')  # fmt: skip
        head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width_px}" height="{self.height_px}" '
                f'viewBox="0 0 {self.width_px} {self.height_px}" font-family="DejaVu Sans, Arial, sans-serif">'
                f"<metadata>{escape(layout)}</metadata><defs>{''.join(patterns)}</defs>"
                f'<rect width="100%" height="100%" fill="white"/>')  # fmt: skip
        path.write_text(head + "".join(self.parts) + "</svg>\n", encoding="utf-8")


# -- the drawing -------------------------------------------------------------------------------------
def _bars(notes: list[ChartNote], start_s: float, end_s: float) -> list[ChartNote]:
    return [n for n in notes if n.end_s > start_s and n.start_s < end_s]


def _row_span(mine: list[ChartNote], theirs: list[ChartNote], shift: int, overall: tuple[int, int]) -> tuple[int, int]:
    """A row's pitch span (low, high): its notes with room for their labels, at least an octave."""
    here = [n.pitch + 60 for n in mine if n.kind in PITCHED] + [n.pitch + 60 - shift for n in theirs]
    low, high = (min(here), max(here)) if here else overall
    return low - 2, max(high + 3, low + 12)


def _draw_row(row: Any, box: RowLayout, width: float, height: float, mine: list[ChartNote], theirs: list[ChartNote], *,
              shift: int, heard: tuple[np.ndarray, np.ndarray] | None, duet: bool) -> None:  # fmt: skip
    """One row, in its own region (``width`` x ``height`` pixels): its grid, the line starts,
    the pitch heard, the reference's notes, the chart's notes with their syllables."""
    start_s, stop_s, low, high = box.start_s, box.end_s, box.low_midi, box.high_midi

    def x(t: Any) -> Any:
        return (np.asarray(t) - start_s) / (stop_s - start_s) * width

    def y(m: Any) -> Any:
        return (high - np.asarray(m)) / (high - low) * height

    for p in range(int(math.ceil(low)), int(high) + 1):
        row.line(0, float(y(p)), width, float(y(p)), "#e5e7eb")
    for t in np.arange(start_s + 5.0, stop_s - 1e-6, 5.0):
        row.line(float(x(t)), 0, float(x(t)), height, "#e5e7eb")
    for n in mine:
        if n.phrase_start and n.start_s >= start_s:
            row.line(float(x(n.start_s)), 0, float(x(n.start_s)), height, "#64748b", dotted=True)
    if heard is not None:
        inside = (heard[0] >= start_s) & (heard[0] < stop_s) & np.isfinite(heard[1])
        row.dots(x(heard[0][inside]) - 1, y(heard[1][inside]) - 1, _TRACK, 0.6)
    for n in theirs:
        row.box(float(x(n.start_s)), float(y(n.pitch + 60 - shift + 0.42)), float(x(n.end_s)),
                float(y(n.pitch + 60 - shift - 0.42)), _REFERENCE)  # fmt: skip
    labels = []
    seconds_per_char = (stop_s - start_s) / (WIDTH_IN * DPI * 0.95) * CHAR_PX
    ends = [start_s - 1.0, start_s - 1.0]  # where the last label above and below a bar ends
    for n in mine:
        at_midi = n.pitch + 60 if n.kind in PITCHED or n.kind == "R" else low + 1
        row.box(float(x(n.start_s)), float(y(at_midi + 0.4)), float(x(n.end_s)), float(y(at_midi - 0.4)),
                _note_style(n, duet))  # fmt: skip
        text = n.text.strip()
        if text and text != "~":  # above the bar, or below it where the last label above is still running
            at = max(n.start_s, start_s)
            slot = 0 if at >= ends[0] else 1 if at >= ends[1] else int(ends[1] < ends[0])
            ends[slot] = at + len(text) * seconds_per_char
            labels.append((float(x(at)), float(y(at_midi + 0.55 if slot == 0 else at_midi - 0.55)), text, slot))
    for left, top, text, slot in labels:  # over every bar
        row.text(left, top, text, 6.5, "#111827", v="bottom" if slot == 0 else "top")


def _row_boxes(count: int, height_in: float) -> list[tuple[float, float]]:
    """Each row's (top, bottom) as shares of the page's height from its top: the rows fill the
    page below its head, :data:`ROW_GAP` of a row's height apart."""
    top, bottom = HEAD_IN / height_in, 1 - 0.35 / height_in
    row = (bottom - top) / (count + ROW_GAP * (count - 1))
    return [(top + k * row * (1 + ROW_GAP), top + k * row * (1 + ROW_GAP) + row) for k in range(count)]


def _legend(page: Any, chart: Chart, *, pitch: bool, reference: str | None, y_px: float) -> None:
    """The key, in one line at the page's top right."""
    duet = chart.duet
    keys: list[tuple[str, _Style | str]] = [("note", _Style(NOTE_COLOUR, _NOTE_EDGE))] if not duet else [
        (name, _Style(_SINGER_COLOURS[s], _SINGER_COLOURS[s]))
        for s, name in ((P1, chart.singers[0]), (P2, chart.singers[1]), (BOTH, "both"))]  # fmt: skip
    keys += [("golden", _GOLDEN), ("rap", _RAP_NOTE), ("freestyle", _FREE_NOTE), ("line starts", "dotted")]
    if pitch:
        keys.append(("pitch heard", "dot"))
    if reference is not None:
        keys.append((reference, _REFERENCE))
    size, swatch, gap = 7.5, 20.0, 14.0
    right = RIGHT * WIDTH_IN * DPI
    at = right - sum(swatch + 5 + page.width(label, size) + gap for label, _ in keys) + gap
    for label, key in keys:
        if key == "dotted":
            page.line(at, y_px, at + swatch, y_px, "#64748b", dotted=True)
        elif key == "dot":
            page.dots(np.array([at + swatch / 2 - 1]), np.array([y_px - 1]), _TRACK, 1.0)
        else:
            assert isinstance(key, _Style)
            page.box(at, y_px - 5, at + swatch, y_px + 5, key)
        at += swatch + 5
        page.text(at, y_px, label, size, v="center")
        at += page.width(label, size) + gap


def render(chart: Chart, target: Path, *, pitch: PitchTrack | None = None, reference: Chart | None = None,
           title: str | None = None, reference_label: str = "reference", row_s: float = ROW_S) -> list[Page]:  # fmt: skip
    """Draw ``chart`` into ``target`` (``.png`` or ``.svg``; more pages beside it for a long
    song) and return the pages written."""
    suffix = target.suffix.lower()
    if suffix not in (".png", ".svg"):
        raise PreviewError(f"{target}: a preview is a .png or an .svg file", hint="-o preview.png or -o preview.svg")
    from ultrasinger_gpu_cli.song.evaluation import chart_octave
    from ultrasinger_gpu_cli.files import atomic_path

    canvas_type = _PngCanvas if suffix == ".png" else _SvgCanvas
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
    pages = []
    paths = page_paths(target, math.ceil(rows / ROWS_PER_PAGE))
    for page_number, path in enumerate(paths):
        first = page_number * ROWS_PER_PAGE
        count = min(ROWS_PER_PAGE, rows - first)
        height_in = HEAD_IN + count * ROW_IN
        width_px, height_px = int(round(WIDTH_IN * DPI)), int(round(height_in * DPI))
        page = canvas_type(width_px, height_px)
        left, right = LEFT * width_px, RIGHT * width_px
        layout = []
        for k, (top, bottom) in enumerate(_row_boxes(count, height_in)):
            start_s = (first + k) * row_s
            stop_s = start_s + row_s
            mine, theirs = _bars(notes, start_s, stop_s), _bars(ref_notes, start_s, stop_s)
            low, high = _row_span(mine, theirs, shift, overall)
            box = RowLayout(start_s, stop_s, LEFT, RIGHT, top, bottom, float(low), float(high))
            layout.append(box)
            y0, y1 = top * height_px, bottom * height_px
            with page.region(left, y0, right - left, y1 - y0) as row:
                _draw_row(row, box, right - left, y1 - y0, mine, theirs, shift=shift, heard=heard, duet=chart.duet)
            page.line(left, y0, left, y1, "#000000")  # the axes: pitch names on the left, seconds below
            page.line(left, y1, right, y1, "#000000")
            for p in range(int(math.ceil(low)), int(high) + 1):
                if p % 12 in (0, 7):
                    at = y0 + (high - p) / (high - low) * (y1 - y0)
                    page.text(left - 4, at, f"{_NAMES[p % 12]}{p // 12 - 1}", 7, h="right", v="center")
            for t in np.arange(start_s, stop_s + 1e-6, 5.0):
                at = left + (t - start_s) / row_s * (right - left)
                page.line(at, y1, at, y1 + 4, "#000000")
                page.text(at, y1 + 6, f"{t:g}", 7, h="center", v="top")
        page.text((left + right) / 2, height_px - 2, "seconds", 7, h="center", v="bottom")
        _legend(page, chart, pitch=pitch is not None, y_px=0.38 * DPI,
                reference=None if reference is None else reference_label + (f" ({-shift // 12:+d} octave)" if shift else ""))  # fmt: skip
        head = title or f"{chart.headers.get('ARTIST', '?')} - {chart.headers.get('TITLE', '?')}"
        counts = f"#BPM {chart.bpm:g} · {sum(n.kind in PITCHED for n in chart.notes)} sung notes"
        pages_note = f" · page {page_number + 1} of {len(paths)}" if len(paths) > 1 else ""
        page.text(left, 0.3 * DPI, f"{head}   ({counts}{pages_note})", 10, "#000000", v="center", bold=True)
        drawn = Page(path, tuple(layout), width_px, height_px)
        try:
            with atomic_path(path) as tmp:
                page.save(tmp, json.dumps(drawn.to_dict()))
        except OSError as exc:
            raise PreviewError(f"{path}: cannot write the preview ({exc.strerror})") from exc
        pages.append(drawn)
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
