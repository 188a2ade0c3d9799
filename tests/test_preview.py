"""A chart you can look at (issue 24, part 1): ``ugpu preview``, ``preview.png`` beside every
chart ``ugpu run`` writes, ``ugpu eval --overlay``. The pictures are checked by their pixels: a
note is drawn where the layout (which the page's cursor uses) says its time and pitch are."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ultrasinger_gpu_cli.song import preview
from ultrasinger_gpu_cli.cli import app
from ultrasinger_gpu_cli.song.notes import hz_to_midi
from ultrasinger_gpu_cli.song.pitch import PitchTrack
from ultrasinger_gpu_cli.song.ultrastar import Note, Song, read_chart, to_ultrastar

pytest.importorskip("PIL")


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def _song(notes: list[tuple[float, float, int, str, str]], *, bpm: float = 300.0) -> Song:
    """A chart from (start s, length s, MIDI, syllable, kind) at ``bpm``, #GAP 0, a line break after each 4 notes."""
    song = Song("Title", "Artist", bpm, 0)
    beat_s = 60 / (bpm * 4)
    for k, (start, length, midi, text, kind) in enumerate(notes):
        if k and k % 4 == 0:
            song.phrase_ends.append(song.notes[-1].end_beat)
        song.notes.append(Note(int(round(start / beat_s)), max(1, int(round(length / beat_s))), midi, text, kind))
    return song


def _chart(path: Path, song: Song) -> Path:
    path.write_text(to_ultrastar(song, audio="a.mp3"), encoding="utf-8")
    return path


def _pixel(image: np.ndarray, page: dict, t: float, midi: float) -> np.ndarray:
    """The colour drawn at song time ``t`` and pitch ``midi`` (the layout's row for ``t``)."""
    row = next(r for r in page["rows"] if r["start_s"] <= t < r["end_s"])
    x = row["left"] + (t - row["start_s"]) / (row["end_s"] - row["start_s"]) * (row["right"] - row["left"])
    y = row["top"] + (row["high_midi"] - midi) / (row["high_midi"] - row["low_midi"]) * (row["bottom"] - row["top"])
    return image[int(round(y * image.shape[0])), int(round(x * image.shape[1])), :3]


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def _close(colour: np.ndarray, hex_colour: str, alpha: float = 0.9, tolerance: int = 40) -> bool:
    """``colour`` is ``hex_colour`` drawn at ``alpha`` over white."""
    target = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
    expected = alpha * target + (1 - alpha) * 255
    return bool(np.abs(colour - expected).max() <= tolerance)


NOTES = [(1.0, 0.8, 60, "Hel", ":"), (2.0, 0.8, 64, "lo ", "*"), (3.0, 0.8, 67, "rap ", "R"), (4.0, 0.6, 62, "free ", "F"),
         (25.0, 1.0, 65, "la ", ":")]  # fmt: skip


def test_notes_are_drawn_where_the_layout_says_with_kinds_apart(tmp_path):
    chart = read_chart(to_ultrastar(_song(NOTES), audio="a.mp3"))
    (page,) = preview.render(chart, tmp_path / "p.png")
    layout = preview.read_layout(page.path)
    assert layout == json.loads(json.dumps(page.to_dict()))  # the PNG carries its own layout
    assert [(r["start_s"], r["end_s"]) for r in layout["rows"]] == [(0.0, 20.0), (20.0, 40.0)]
    image = _read_png(page.path)
    assert image.shape[1] == 1600 and image.shape[0] == layout["height_px"]
    assert _close(_pixel(image, layout, 1.4, 60), preview.NOTE_COLOUR)  # a normal note
    assert _close(_pixel(image, layout, 2.4, 64), preview.GOLDEN_COLOUR)  # golden: apart
    assert _close(_pixel(image, layout, 25.5, 65), preview.NOTE_COLOUR)  # the second row
    assert not _close(_pixel(image, layout, 3.4, 67), preview.NOTE_COLOUR)  # rap: hatched in its own colour
    assert _close(_pixel(image, layout, 12.0, 64), "#ffffff", alpha=1.0, tolerance=30)  # no note there: background


def test_the_pitch_track_is_drawn_under_the_notes_and_a_reference_over_them_in_its_octave(tmp_path):
    song = _song(NOTES)
    chart_path = _chart(tmp_path / "Artist - Title.txt", song)
    times = np.arange(0, 30, 0.01)
    hz = np.where((times > 8) & (times < 12), 440.0, 0.0)  # a held A4 where the chart has no note
    PitchTrack(times, hz, (hz > 0).astype(float)).save(tmp_path / "Artist - Title.pitch.npz")
    # The hand chart: the same melody an octave lower, and one note of its own at 15 s.
    reference = _song([(s, n, m - 12, t, k) for s, n, m, t, k in NOTES] + [(15.0, 1.0, 57, "ref ", ":")])
    ref_path = _chart(tmp_path / "hand.txt", reference)
    result = invoke("preview", str(chart_path), "--reference", str(ref_path), "-o", str(tmp_path / "o.png"), "--json")
    assert result.exit_code == 0, result.output
    (page,) = json.loads(result.stdout)["pages"]
    image = _read_png(Path(page["path"]))
    near = [_pixel(image, page, 10.6 + dt, 69 + dm) for dt in (-0.02, 0.0, 0.02) for dm in (-0.1, 0.0, 0.1)]
    assert min(c.max() for c in near) < 170  # the track's dots: dark, at A4, where no note is
    assert _pixel(image, page, 10.6, 62.5).min() > 230  # and nothing below them
    assert _close(_pixel(image, page, 15.5, 69), preview.REFERENCE_COLOUR, alpha=0.35)  # moved up its octave
    assert _close(_pixel(image, page, 15.5, 57), "#ffffff", alpha=1.0, tolerance=30)  # not in the hand's octave


def test_a_long_song_gets_pages_and_svg_is_written_too(tmp_path):
    song = _song([(5.0 + 30 * k, 1.0, 60 + k % 5, "la ", ":") for k in range(14)])  # seven minutes
    chart = read_chart(to_ultrastar(song, audio="a.mp3"))
    pages = preview.render(chart, tmp_path / "preview.png")
    assert [p.path.name for p in pages] == ["preview.png", "preview-2.png"]
    first, second = (preview.read_layout(p.path) for p in pages)
    assert first["rows"][-1]["end_s"] == second["rows"][0]["start_s"] == preview.ROW_S * preview.ROWS_PER_PAGE
    assert second["rows"][-1]["end_s"] >= 395.0
    (svg,) = preview.render(read_chart(to_ultrastar(_song(NOTES), audio="a.mp3")), tmp_path / "p.svg")
    text = svg.path.read_text(encoding="utf-8")
    assert "<svg" in text and "Hel" in text


def test_preview_of_a_folder_and_clear_errors(tmp_path):
    folder = tmp_path / "Artist - Title"
    folder.mkdir()
    _chart(folder / "Artist - Title.txt", _song(NOTES))
    result = invoke("preview", str(folder))
    assert result.exit_code == 0, result.output
    assert (folder / "preview.png").stat().st_size > 10_000
    for args, message in (([str(folder), "-o", str(tmp_path / "x.gif")], ".png or an .svg"),
                          ([str(tmp_path / "nothing")], "no such song folder"),
                          ([str(tmp_path)], "holds no UltraStar chart")):  # fmt: skip
        result = invoke("preview", *args)
        assert result.exit_code == 2 and message in result.output, result.output
        assert "Traceback" not in result.output
    _chart(folder / "other.txt", _song(NOTES))
    result = invoke("preview", str(folder))
    assert result.exit_code == 2 and "holds 2 charts" in result.output


def test_eval_writes_an_overlay_per_song(tmp_path):
    generated, hand = tmp_path / "gen", tmp_path / "hand"
    generated.mkdir()
    hand.mkdir()
    _chart(generated / "Artist - Title.txt", _song(NOTES))
    _chart(hand / "Artist - Title.txt", _song([(s + 0.05, n, m, t, k) for s, n, m, t, k in NOTES]))
    result = invoke("eval", str(generated), str(hand), "--overlay", str(tmp_path / "overlays"), "--json")
    assert result.exit_code == 0, result.output
    (image,) = json.loads(result.stdout)["overlays"]
    assert Path(image) == tmp_path / "overlays" / "Artist - Title.png"
    layout = preview.read_layout(Path(image))
    assert _close(_pixel(_read_png(Path(image)), layout, 1.4, 60), preview.NOTE_COLOUR, tolerance=60)


def test_run_writes_the_pitch_track_and_no_preview_when_asked(env, words, tmp_path):
    from tests.audio_factory import melody, write_wav
    from tests.conftest import SHORT_NOTES

    source = write_wav(tmp_path / "Band - Short.wav", melody(SHORT_NOTES, 4.5, 44_100)[None], 44_100)
    for flags, out in (([], "with"), (["--no-preview"], "without")):
        result = invoke("run", str(source), "--no-separation", "--timings", str(words), "-o", str(tmp_path / out),
                        "--json", *flags)  # fmt: skip
        assert result.exit_code == 0, result.output
        files = json.loads(result.stdout)["songs"][0]["files"]
        folder = tmp_path / out / "Band - Short"
        assert Path(files["pitch"]) == folder / "Band - Short.pitch.npz"
        track = PitchTrack.load(Path(files["pitch"]))
        held = (track.times > 1.4) & (track.times < 1.8) & (track.confidence > 0.5)
        assert track is not None and abs(np.median(hz_to_midi(track.frequency[held])) - 64) < 0.5
        assert ("preview" in files) == (out == "with") and (folder / "preview.png").exists() == (out == "with")


def test_a_run_without_pillow_finishes_and_says_so(env, words, tmp_path, monkeypatch):
    """The picture is never the song's failure: without Pillow the chart and its files are all
    there, and the run says what to install."""
    import sys

    from tests.audio_factory import melody, write_wav
    from tests.conftest import SHORT_NOTES

    source = write_wav(tmp_path / "Band - Short.wav", melody(SHORT_NOTES, 4.5, 44_100)[None], 44_100)
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL fails, as where it is not installed
    result = invoke("run", str(source), "--no-separation", "--timings", str(words), "-o", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert "no preview.png: Pillow is not installed" in result.output
    folder = tmp_path / "out" / "Band - Short"
    assert (folder / "Band - Short.txt").is_file() and not (folder / "preview.png").exists()


def test_previews_drawn_on_several_threads_at_once_are_the_serial_ones(tmp_path):
    """Batches and the server draw pictures on their host threads, several at a time: each
    thread has its own fonts, and the pixels are those of the same picture drawn alone."""
    from concurrent.futures import ThreadPoolExecutor

    chart = read_chart(to_ultrastar(_song([(0.5 + 0.3 * k, 0.25, 55 + k % 12, f"la{k} ", ":") for k in range(200)]),
                                    audio="a.mp3"))  # fmt: skip
    (alone,) = preview.render(chart, tmp_path / "alone.png")
    with ThreadPoolExecutor(4) as pool:
        pages = list(pool.map(lambda k: preview.render(chart, tmp_path / f"t{k}.png")[0], range(8)))
    expected = _read_png(alone.path)
    assert all(np.array_equal(_read_png(p.path), expected) for p in pages)
