"""Duets (issue 24, part 2): ``--lyrics`` tagged ``P1:``/``P2:``/``P1&P2:`` (or ``[P1]`` headers)
give a duet chart; ``--timings`` re-pitches a duet keeping both sections; ``ugpu eval`` scores
each singer. Every chart ugpu writes passes a strict reader written here from the format's
rules (not ugpu's own reader)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.audio_factory import melody, write_wav
from ultrasinger_gpu_cli.cli import app
from ultrasinger_gpu_cli.song.lyrics import _parse, singer_tag
from ultrasinger_gpu_cli.song.notes import build_song, lyrics_text
from ultrasinger_gpu_cli.song.ultrastar import BOTH, P1, P2, SOLO, read_chart, to_ultrastar
from ultrasinger_gpu_cli.song.words import Word


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


# -- a strict reader, from the format's rules ---------------------------------------------------------
_NOTE = re.compile(r"^([:*FRG]) (-?\d+) (\d+) (-?\d+) (.+)$")
_BREAK = re.compile(r"^- (-?\d+)( -?\d+)?$")


def strict_read(text: str) -> dict[str, object]:
    """Headers, then (for a duet) ``P1`` and ``P2`` sections, then ``E``: each section's notes in
    order, none overlapping, at least a beat long, phrase ends between two notes and never first;
    a 1.x duet names its singers in ``#P1``/``#P2``, a 0.x one in ``#DUETSINGERP1``/``P2``."""
    assert text.endswith("\nE\n") and "\r" not in text, "the file ends with E and uses LF"
    lines = text[: -len("E\n")].rstrip("\n").split("\n")
    headers: dict[str, str] = {}
    while lines and lines[0].startswith("#"):
        key, _, value = lines.pop(0)[1:].partition(":")
        assert key and key == key.upper() and value.strip(), f"header {key!r} has a value"
        assert key not in headers, f"header {key} once"
        headers[key] = value
    for key in ("TITLE", "ARTIST", "BPM", "MP3"):
        assert key in headers, f"#{key} is required"
    sections: dict[str, list[tuple[str, int, int, int, str]]] = {}
    current = None
    last_end = None
    pending_break = False
    for line in lines:
        if line in ("P1", "P2"):
            assert line not in sections, f"{line} once"
            assert (line == "P1") == (not sections), "P1 comes first"
            assert not pending_break, "a section does not end on a phrase end"
            current, last_end = line, None
            sections[current] = []
            continue
        if current is None:
            current = "solo"
            sections[current] = []
        note = _NOTE.match(line)
        if note:
            kind, start, length, pitch, syllable = note.groups()
            start, length = int(start), int(length)
            assert start >= 0 and length >= 1, f"{line!r}: a note lies after #GAP and lasts a beat or more"
            assert last_end is None or start >= last_end, f"{line!r} overlaps the note before it in {current}"
            sections[current].append((kind, start, length, int(pitch), syllable))
            last_end = start + length
            pending_break = False
            continue
        brk = _BREAK.match(line)
        assert brk, f"not a note, a phrase end or a section: {line!r}"
        assert sections[current] and not pending_break, f"{line!r}: a phrase end follows a note"
        assert int(brk.group(1)) >= sections[current][-1][1], f"{line!r} lies before the note it ends"
        pending_break = True
    assert not pending_break, "the last line of a section is a note"
    duet = "P1" in sections
    if duet:
        assert set(sections) == {"P1", "P2"} and all(sections.values()), "a duet has both sections, with notes"
        old, new = ("DUETSINGERP1", "DUETSINGERP2"), ("P1", "P2")
        allowed = [old, new] if "VERSION" not in headers else [old] if headers["VERSION"].startswith("0") else [new]
        assert any(all(k in headers for k in names) for names in allowed), f"the singers are named in {allowed}"
    return {"headers": headers, "sections": sections}


# -- lyrics tags --------------------------------------------------------------------------------------
@pytest.mark.parametrize("line, singer, rest", [
    ("P1: I sing", P1, "I sing"), ("p2:you sing", P2, "you sing"), ("P1&P2: we sing", BOTH, "we sing"),
    ("P1 & P2 : we", BOTH, "we"), ("[P1]", P1, ""), ("[ p2 ]", P2, ""), ("[P1&P2]", BOTH, ""), ("P3: both", BOTH, "both"),
    ("Pete: not a tag", None, "Pete: not a tag"), ("[Chorus]", None, "[Chorus]"), ("P12: no", None, "P12: no"),
])  # fmt: skip
def test_singer_tags(line, singer, rest):
    assert singer_tag(line) == (singer, rest)


def test_a_tag_holds_until_the_next_and_untagged_lines_before_the_first_are_sung_by_both():
    lines = _parse("Intro we sing\n[P1]\nfirst line\nsecond line\nP2: your line\n\n[P1 & P2]\nall of us\n"
                   "[00:12.00] P1: timed but mixed\n")  # fmt: skip
    assert [(line.words, line.singer) for line in lines] == [
        (("Intro", "we", "sing"), BOTH), (("first", "line"), P1), (("second", "line"), P1), (("your", "line"), P2),
        (("all", "of", "us"), BOTH), (("timed", "but", "mixed"), P1)]  # fmt: skip
    assert all(line.singer == SOLO for line in _parse("no tags here\nat all\n"))
    lrc = _parse("[00:01.00]P1: one\n[00:03.00]P2: two\n")
    assert [(line.time_s, line.singer) for line in lrc] == [(1.0, P1), (3.0, P2)]


# -- the chart ------------------------------------------------------------------------------------------
def _words(spec: list[tuple[str, int]], step: float = 0.5) -> list[Word]:
    """One word per syllable, each line starting a phrase: [(line text, singer)]."""
    out, t = [], 0.5
    for text, singer in spec:
        for k, w in enumerate(text.split()):
            out.append(Word(w, t, t + 0.4, phrase_start=k == 0, singer=singer))
            t += step
        t += 0.5
    return out


def _track(words: list[Word], midi_of) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    times = np.arange(0, words[-1].end_s + 1, 0.01)
    freq = np.zeros_like(times)
    for w in words:
        freq[(times >= w.start_s) & (times < w.end_s)] = 440 * 2 ** ((midi_of(w) - 69) / 12)
    return times, freq, (freq > 0).astype(float)


DUET = [("one two three", P1), ("four five six", P2), ("all sing now", BOTH), ("seven eight", P1)]


@pytest.mark.parametrize("version", ["1.1.0", "0.3.0"])
def test_a_duet_chart_has_each_singer_s_lines_in_their_section_on_one_grid(version):
    words = _words(DUET)
    times, freq, conf = _track(words, lambda w: 48 if w.singer == P1 else 72 if w.singer == P2 else 60)
    song = build_song(words, times, freq, conf, tempo=120.0, title="T", artist="A", split_syllables=False)
    song.singers = ("Ann", "Bob")
    text = to_ultrastar(song, audio="a.mp3", version=version)
    parsed = strict_read(text)
    sections = parsed["sections"]
    assert [n[4].strip() for n in sections["P1"]] == "one two three all sing now seven eight".split()
    assert [n[4].strip() for n in sections["P2"]] == "four five six all sing now".split()
    assert parsed["headers"]["P1" if version == "1.1.0" else "DUETSINGERP1"] == "Ann"
    assert parsed["headers"]["P2" if version == "1.1.0" else "DUETSINGERP2"] == "Bob"
    # One grid: a line both sing has the same beats in both sections; each singer keeps their own octave.
    both1 = [n for n in sections["P1"] if n[4].strip() in ("all", "sing", "now")]
    both2 = [n for n in sections["P2"] if n[4].strip() in ("all", "sing", "now")]
    assert both1 == both2
    assert {n[3] for n in sections["P1"] if n not in both1} == {48 - 60}
    assert {n[3] for n in sections["P2"] if n not in both2} == {72 - 60}
    chart = read_chart(text)
    assert chart.duet and chart.singers == ("Ann", "Bob")
    assert [w.text for w in chart.part(P2).lyric_words()] == "four five six all sing now".split()
    assert [w.text for w in chart.lyric_words()] == "one two three four five six all all sing sing now now seven eight".split()


def test_p3_sections_are_read_as_sung_by_both():
    text = "#TITLE:T\n#ARTIST:A\n#MP3:a.mp3\n#BPM:300\n#GAP:0\nP1\n: 0 4 0 a \nP2\n: 8 4 2 b \nP3\n: 16 4 4 c \nE\n"
    chart = read_chart(text)
    assert [(n.singer, n.text.strip()) for n in chart.notes] == [(P1, "a"), (P2, "b"), (BOTH, "c")]
    assert [n.text.strip() for n in chart.part(P1).notes] == ["a", "c"]
    assert [w.text for w in chart.words()] == ["a", "b", "c"]  # a P3 line once


# -- end to end -------------------------------------------------------------------------------------------
DUET_LYRICS = "[P1]\nHello little star\nP2: how I wonder\nP1&P2: what you are\nP1: up above\n"


def _duet_audio(tmp_path: Path) -> Path:
    notes = [(0.5 + 0.45 * k, 0.35, 55 + (k % 3) if k < 3 or k > 8 else 67 + (k % 3)) for k in range(13)]
    return write_wav(tmp_path / "Star - Duet.wav", melody(notes, 7.0, 44_100)[None], 44_100)


def test_run_with_duet_lyrics_writes_a_duet_that_eval_scores_per_singer(env, fast_whisper, tmp_path):
    lyrics = tmp_path / "lyrics.txt"
    lyrics.write_text(DUET_LYRICS, encoding="utf-8")
    result = invoke("run", str(_duet_audio(tmp_path)), "--no-separation", "--lyrics", str(lyrics), "--singers",
                    "Ann, Bob", "-o", str(tmp_path / "out"), "--language", "en", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    chart_path = Path(json.loads(result.stdout)["songs"][0]["files"]["ultrastar"])
    parsed = strict_read(chart_path.read_text(encoding="utf-8"))
    assert parsed["headers"]["P1"] == "Ann" and parsed["headers"]["P2"] == "Bob"
    chart = read_chart(chart_path.read_text(encoding="utf-8"))
    assert lyrics_text(chart.part(P1).notes).split() == "Hello little star what you are up above".split()
    assert lyrics_text(chart.part(P2).notes).split() == "how I wonder what you are".split()
    assert (chart_path.parent / "preview.png").is_file()
    scored = invoke("eval", str(chart_path), str(chart_path), "--json")
    songs = json.loads(scored.stdout)["songs"]
    assert [(s["singer"], s["note_f1"]) for s in songs] == [("P1", 1.0), ("P2", 1.0)]
    assert songs[1]["reference_notes"] == len([n for n in chart.part(P2).notes if n.kind != "F"])


def test_timings_re_pitches_a_duet_chart_keeping_both_sections(env, tmp_path):
    source = _duet_audio(tmp_path)
    beats = lambda s: int(round(s / 0.05))  # noqa: E731  #BPM 300: a beat is 50 ms
    lines = ["#TITLE:Duet", "#ARTIST:Star", "#MP3:x.mp3", "#BPM:300", "#GAP:0", "#P1:Ann", "#P2:Bob", "P1"]
    for k in range(13):
        if k == 3:
            lines.append("P2")
        start = 0.5 + 0.45 * k
        lines.append(f": {beats(start)} {beats(0.35)} 0 w{k} ")
    chart = tmp_path / "duet.txt"
    chart.write_text("\n".join(lines + ["E"]) + "\n", encoding="utf-8")
    result = invoke("run", str(source), "--no-separation", "--timings", str(chart), "-o", str(tmp_path / "out"),
                    "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    out = Path(json.loads(result.stdout)["songs"][0]["files"]["ultrastar"]).read_text(encoding="utf-8")
    strict_read(out)
    sung = read_chart(out)
    assert [n.singer for n in sung.notes] == [P1] * 3 + [P2] * 10
    expected = [55 + (k % 3) if k < 3 or k > 8 else 67 + (k % 3) for k in range(13)]
    assert [n.pitch + 60 for n in sung.notes] == expected
    assert [line for line in out.split("\n") if not line.startswith((":", "#"))] == ["P1", "P2", "E", ""]


def test_format_version_converts_a_duet_s_singer_headers():
    from ultrasinger_gpu_cli.song.ultrastar import repitch

    text = "#VERSION:1.1.0\n#TITLE:T\n#ARTIST:A\n#MP3:a.mp3\n#BPM:300.5\n#GAP:0\n#P1:Ann\n#P2:Bob\nP1\n: 0 4 0 a \nP2\n: 8 4 2 b \nE\n"
    chart = read_chart(text)
    old = repitch(chart, [None, None], audio="a.mp3", version="0.3.0")
    strict_read(old)
    assert "#DUETSINGERP1:Ann" in old and "#DUETSINGERP2:Bob" in old and "#P1:" not in old and "#BPM:300,5" in old
    back = repitch(read_chart(old), [None, None], audio="a.mp3", version="1.1.0")
    strict_read(back)
    assert "#P1:Ann" in back and "#P2:Bob" in back and "DUETSINGER" not in back


def test_bad_singers_are_refused(env, tmp_path):
    result = invoke("run", str(tmp_path / "x.wav"), "--singers", "Ann", "-o", str(tmp_path))
    assert result.exit_code == 2 and "--singers 'Ann'" in result.output
