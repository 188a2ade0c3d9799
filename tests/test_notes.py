"""How notes are made (issue 11): the chart's grid kept on re-pitch, a real tempo and beat grid,
notes that follow the voice, phrases a singer can read, octave-robust pitch, rap notes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.audio_factory import drum_song, melody, midi_to_hz, write_wav
from ultrasinger_gpu_cli.cli import app
from ultrasinger_gpu_cli.notes import KEEP_LENGTH, build_song, lyrics_text, phrase_starts
from ultrasinger_gpu_cli.tempo import Tempo, detect_tempo
from ultrasinger_gpu_cli.ultrastar import read_chart, repitch
from ultrasinger_gpu_cli.words import Word

# (start s, length s, MIDI): one syllable each; gaps of 60 ms between repeated notes.
MELODY = [(1.0, 0.6, 57), (1.8, 0.5, 60), (2.5, 0.8, 64), (3.35, 0.5, 64), (4.2, 0.9, 67), (6.0, 0.6, 65),
          (6.8, 0.5, 64), (7.5, 1.0, 60), (9.0, 0.5, 69), (9.7, 0.5, 71), (10.4, 0.8, 72), (11.5, 0.6, 67)]  # fmt: skip


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def track_of(segments: list[tuple[float, float, float]], duration: float = 14.0, step: float = 0.01):
    times = np.arange(0, duration, step)
    freq = np.zeros_like(times)
    for start, end, hz in segments:
        freq[(times >= start) & (times < end)] = hz
    return times, freq, (freq > 0).astype(float)


# -- re-pitch keeps the chart's grid ---------------------------------------------------------------
def _chart(path: Path, newline: str = "\n") -> Path:
    """A hand-made chart of MELODY with every pitch wrong (0), a golden and a freestyle note,
    phrase ends and headers ugpu has no business touching."""
    lines = ["#VERSION:1.1.0", "#TITLE:Known", "#ARTIST:Melody", "#MP3:original.mp3", "#COVER:cover.jpg",
             "#GENRE:Pop", "#EDITION:Test", "#CREATOR:Someone", "#BPM:300", "#GAP:1000"]  # fmt: skip
    for i, (start, length, _) in enumerate(MELODY):
        beat, beats = round((start - 1.0) / 0.05), round(length / 0.05)
        kind = "*" if i == 2 else "F" if i == 5 else ":"
        lines.append(f"{kind} {beat} {beats} 0 {'la' if i % 2 else 'Lo'}{' ' if i % 3 == 2 else ''}")
        if i in (4, 8):
            lines.append(f"- {beat + beats + 2}")
    lines.append("E")
    path.write_text(newline.join(lines) + newline, encoding="utf-8", newline="")
    return path


def test_repitch_keeps_the_grid_and_changes_only_pitches_and_audio_headers(env, tmp_path):
    vocals = write_wav(tmp_path / "Known - Melody.wav", melody(MELODY, 13.0, 44_100)[None], 44_100)
    chart = _chart(tmp_path / "chart.txt")
    result = invoke("run", str(vocals), "--no-separation", "--timings", str(chart), "-o", str(tmp_path / "out"), "--json")
    assert result.exit_code == 0, result.output
    out = Path(json.loads(result.stdout)["songs"][0]["files"]["ultrastar"])
    audio = ("#MP3:", "#AUDIO:", "#VOCALS:", "#INSTRUMENTAL:")
    written = out.read_text(encoding="utf-8").splitlines()
    assert [h for h in written if h.startswith(audio)] == ["#MP3:Known - Melody.wav", "#AUDIO:Known - Melody.wav"]
    before = [line for line in chart.read_text().splitlines() if not line.startswith(audio)]
    after = [line for line in written if not line.startswith(audio)]
    assert len(before) == len(after)
    changed_pitches = 0
    for old, new in zip(before, after):
        if old[:1] in ":*F" and old[1:2] == " ":
            o, n = old.split(" ", 4), new.split(" ", 4)
            assert o[:3] == n[:3] and o[4:] == n[4:], (old, new)  # type, start, length, syllable
            changed_pitches += o[3] != n[3]
            if old[0] == "F":
                assert n[3] == o[3]  # a freestyle note keeps its pitch
        else:
            assert new == old  # headers, phrase ends, E
    assert changed_pitches == sum(m != 60 for i, (_, _, m) in enumerate(MELODY) if i != 5)  # 0 was C4 = 60
    sung = [int(line.split(" ")[3]) + 60 for line in after if line[:2] in (": ", "* ")]
    assert sung == [m for i, (_, _, m) in enumerate(MELODY) if i != 5]


def test_repitch_keeps_crlf_relative_beats_and_adds_the_stem_headers():
    text = "#VERSION:1.0.0\r\n#MP3:a.mp3\r\n#BPM:100\r\n#GAP:0\r\n#RELATIVE:yes\r\n: 0 4 0 la\r\n- 6 8\r\n: 0 4 0 li\r\nE\r\n"
    chart = read_chart(text)
    assert [n.start_beat for n in chart.notes] == [0, 8]
    out = repitch(chart, [62, None], audio="b.mp3", vocals="v.wav", instrumental="i.wav")
    assert out.split("\n")[:4] == ["#VERSION:1.0.0\r", "#MP3:b.mp3\r", "#AUDIO:b.mp3\r", "#VOCALS:v.wav\r"]
    assert ": 0 4 2 la\r" in out and ": 0 4 0 li\r" in out and "- 6 8\r" in out and out.endswith("E\r\n")


# -- tempo and the beat grid -----------------------------------------------------------------------
@pytest.mark.parametrize("bpm", [72, 90, 120, 140, 174])
@pytest.mark.parametrize("pattern", ["kick-clap", "kick", "clap"])
def test_tempo_is_within_two_percent_and_the_grid_starts_at_a_beat(bpm, pattern):
    offset = 0.37
    tempo = detect_tempo(drum_song(bpm, 20.0, pattern=pattern, offset_s=offset), 22_050)
    error = min(abs(tempo.bpm / bpm - r) / r for r in (0.5, 1.0, 2.0))
    assert error <= 0.02, (bpm, tempo.bpm)
    period = 60 / bpm
    # The grid's first beat lies on one of the song's beats (within 15 ms).
    phase = (tempo.first_beat_s - offset) % period
    assert min(phase, period - phase) <= 0.015, (tempo.first_beat_s, offset, period)


def test_the_grid_multiple_keeps_the_shortest_note_and_gap_is_a_beat():
    # Short notes at 140 BPM: a 16th is 107 ms, the notes are 170 ms with 60 ms gaps.
    starts = [1.0 + k * 0.23 for k in range(12)]
    words = [Word(f"la{k} ", s, s + 0.17) for k, s in enumerate(starts)]
    times, freq, conf = track_of([(s, s + 0.17, 261.63) for s in starts])
    tempo = Tempo(140.0, first_beat_s=0.2)
    song = build_song(words, times, freq, conf, tempo=tempo, title="T", artist="A", split_syllables=False)
    assert song.bpm in (280.0, 560.0, 1120.0)  # a multiple of the tempo
    assert (song.gap_ms / 1000 - 0.2) % tempo.beat_s == pytest.approx(0, abs=1e-3) or \
        (song.gap_ms / 1000 - 0.2) % tempo.beat_s == pytest.approx(tempo.beat_s, abs=1e-3)  # fmt: skip
    for n in song.notes:
        assert n.length_beats * song.beat_s >= KEEP_LENGTH * 0.17
    for a, b in zip(song.notes, song.notes[1:]):
        assert b.start_beat > a.end_beat  # the 60 ms gaps survive


# -- notes follow the voice ------------------------------------------------------------------------
def test_notes_are_trimmed_to_the_voice_and_unvoiced_syllables_are_freestyle():
    # Whisper-like words: each one runs on to the middle of the silence around it (the worst case
    # for covering silence); a spoken word with no voice sits in the pause after the fifth note.
    sung = MELODY[:6]
    edges = [sung[0][0] - 0.3] + [(a[0] + a[1] + b[0]) / 2 for a, b in zip(sung, sung[1:])] + [sung[-1][0] + sung[-1][1] + 0.3]
    words = [Word(f" w{k}", edges[k], edges[k + 1]) for k in range(len(sung))]
    words[4] = Word(" w4", edges[4], 5.3)
    words[5] = Word(" w5", 5.7, edges[6])
    words.insert(5, Word(" spoken", 5.3, 5.7))
    times, freq, conf = track_of([(s, s + n, midi_to_hz(m)) for s, n, m in sung])
    song = build_song(words, times, freq, conf, tempo=120, title="T", artist="A", split_syllables=False)
    assert [n.text.strip() for n in song.notes] == [w.text.strip() for w in words]
    free = [n for n in song.notes if n.kind == "F"]
    assert [n.text.strip() for n in free] == ["spoken"]
    voiced = np.zeros(1500, dtype=bool)  # 10 ms bins of the truth
    for s, n, _ in sung:
        voiced[int(round(s * 100)) : int(round((s + n) * 100))] = True
    inside = total = 0.0
    for (start, end), n in zip(song.note_times(), song.notes):
        if n.kind == "F":
            continue
        bins = np.arange(int(round(start * 100)), int(round(end * 100)))
        inside, total = inside + voiced[bins].sum(), total + len(bins)
    assert inside / total >= 0.9, inside / total
    assert [n.midi for n in song.notes if n.kind == ":"] == [m for _, _, m in sung]


def test_no_word_is_dropped_zero_length_words_included():
    words = [Word(" I", 1.0, 1.0), Word(" can", 1.0, 1.3), Word(" see", 1.3, 1.3), Word(" it", 1.3, 1.3),
             Word(" now.", 1.35, 1.8), Word(" Yes", 2.0, 2.0)]  # fmt: skip
    times, freq, conf = track_of([(1.0, 2.2, 220.0)])
    song = build_song(words, times, freq, conf, tempo=100, title="T", artist="A", language="en")
    assert lyrics_text(song.notes).split() == [w.text.strip() for w in words]


# -- phrases ---------------------------------------------------------------------------------------
def _voices(words):
    from ultrasinger_gpu_cli.notes import PitchTrackView, listen, split_words

    times, freq, conf = track_of([(0.0, 60.0, 220.0)], duration=60.0)
    return [listen(u, PitchTrackView(times, freq, conf)) for u in split_words(words)]


def _lines(voices):
    starts = [*phrase_starts(voices), len(voices)]
    return [voices[a:b] for a, b in zip(starts, starts[1:])]


def test_a_verse_without_pauses_is_broken_into_readable_lines():
    # 40 one-syllable words, 0.35 s each with 50 ms gaps (one 150 ms gap at word 17): no pause of 0.8 s.
    words, t = [], 0.5
    for k in range(40):
        words.append(Word(f" la{k}", t, t + 0.35))
        t += 0.4 + (0.1 if k == 16 else 0.0)
    lines = _lines(_voices(words))
    assert len(lines) >= 4
    for line in lines:
        assert 2 <= len(line) <= 12 and line[-1].end_s - line[0].start_s <= 8.0
    assert any(line[0].unit.text == "la17" for line in lines)  # the largest gap is used


def test_lines_break_at_segment_starts_and_sentence_ends_but_never_leave_one_syllable():
    words = [Word(" We", 0.5, 0.8), Word(" sing.", 0.85, 1.2), Word(" And", 1.25, 1.5), Word(" then", 1.55, 1.8),
             Word(" go", 1.85, 2.1, phrase_start=True), Word(" home", 2.15, 2.4), Word(" Oh.", 2.45, 2.7)]  # fmt: skip
    lines = [[v.unit.text for v in line] for line in _lines(_voices(words))]
    assert lines == [["We", "sing."], ["And", "then"], ["go", "home", "Oh."]]
    assert _lines(_voices([Word(" one", 0.5, 1.0)])) and len(_lines(_voices([Word(" one", 0.5, 1.0)]))) == 1


# -- octave-robust pitch ---------------------------------------------------------------------------
def test_an_octave_flip_inside_a_long_low_note_stays_one_note():
    hz = midi_to_hz(43)  # G2, a low male note of 1.6 s; the tracker jumps an octave up for 0.3 s
    times, freq, conf = track_of([(1.0, 2.6, hz)])
    freq[(times >= 1.8) & (times < 2.1)] = 2 * hz
    song = build_song([Word(" low", 1.0, 2.6)], times, freq, conf, tempo=120, title="T", artist="A")
    assert [(n.midi, n.text) for n in song.notes] == [(43, "low ")]


def test_a_real_pitch_change_still_splits_into_a_continuation():
    times, freq, conf = track_of([(1.0, 1.8, midi_to_hz(60)), (1.8, 2.6, midi_to_hz(64))])
    song = build_song([Word(" glide", 1.0, 2.6)], times, freq, conf, tempo=120, title="T", artist="A")
    assert [(n.midi, n.text) for n in song.notes] == [(60, "glide"), (64, "~ ")]


# -- rap -------------------------------------------------------------------------------------------
def test_rap_writes_r_for_unstable_pitch_and_freestyle_stays_f(tmp_path):
    times = np.arange(0, 6.0, 0.01)
    freq = np.zeros_like(times)
    sung = (times >= 1.0) & (times < 1.5)
    freq[sung] = 220.0
    spoken = (times >= 2.0) & (times < 2.5)  # speech: pitch all over the place
    freq[spoken] = 150.0 * 2 ** (np.sin(np.arange(spoken.sum()) * 1.7) * 0.6)
    conf = (freq > 0).astype(float)
    words = [Word(" sing", 1.0, 1.5), Word(" talk", 2.0, 2.5), Word(" breath", 3.0, 3.4)]
    plain = build_song(words, times, freq, conf, tempo=120, title="T", artist="A", split_syllables=False)
    rap = build_song(words, times, freq, conf, tempo=120, title="T", artist="A", split_syllables=False, rap=True)
    assert [n.kind for n in plain.notes] == [":", ":", "F"]
    assert [n.kind for n in rap.notes] == [":", "R", "F"]
    from ultrasinger_gpu_cli.ultrastar import to_ultrastar

    text = to_ultrastar(rap, audio="a.mp3")
    assert "\nR " in text and "\nF " in text
    assert [n.kind for n in read_chart(text).notes] == [":", "R", "F"]


# -- ugpu eval -------------------------------------------------------------------------------------
def _reference_chart(path: Path, *, shift_beats: int = 0, pitch_offset: int = 0, words: str = "la") -> Path:
    lines = ["#VERSION:1.1.0", "#TITLE:Known", "#ARTIST:Melody", "#MP3:a.mp3", "#BPM:300", "#GAP:1000"]
    for i, (start, length, midi) in enumerate(MELODY):
        beat, beats = round((start - 1.0) / 0.05) + shift_beats, round(length / 0.05)
        lines.append(f": {beat} {beats} {midi - 60 + (pitch_offset if i % 2 else 0)} {words}{i} ")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines + ["E"]) + "\n", encoding="utf-8")
    return path


def test_eval_scores_a_generated_chart_against_a_hand_made_one(tmp_path):
    reference = _reference_chart(tmp_path / "ref" / "Known - Melody.txt")
    perfect = invoke("eval", str(reference), str(reference), "--json")
    assert perfect.exit_code == 0, perfect.output
    (same,) = json.loads(perfect.stdout)["songs"]
    assert same["note_match_rate"] == 1.0 and same["median_onset_error_ms"] == 0.0 and same["coverage"] == 1.0
    assert same["pitch_accuracy"] == 1.0 and same["lyric_similarity"] == 1.0
    # Late by one beat (50 ms), every other note an octave up, other words.
    _reference_chart(tmp_path / "gen" / "Known - Melody" / "Known - Melody.txt", shift_beats=1, pitch_offset=12, words="lo")
    _reference_chart(tmp_path / "gen" / "Extra.txt")
    result = invoke("eval", str(tmp_path / "gen"), str(tmp_path / "ref"), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    (song,) = data["songs"]
    assert song["name"] == "Known - Melody" and song["note_match_rate"] == 0.5
    assert song["median_onset_error_ms"] == pytest.approx(50, abs=1)
    assert song["pitch_accuracy"] < 0.6 and song["pitch_accuracy_any_octave"] == 1.0
    assert 0.9 < song["coverage"] < 1.0 and song["lyric_similarity"] == 0.0
    assert data["unmatched_generated"] == [str(tmp_path / "gen" / "Extra.txt")]
    human = invoke("eval", str(tmp_path / "gen"), str(tmp_path / "ref"))
    assert "Known" in human.stderr and "50.0%" in human.stderr and human.stdout == ""


def test_eval_refuses_what_it_cannot_compare(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("#BPM:abc\n: 0 1 0 la\nE\n")
    ref = _reference_chart(tmp_path / "ref.txt")
    for args, words in (((str(tmp_path / "nope.txt"), str(ref)), "no such generated"),
                        ((str(bad), str(ref)), "not a usable UltraStar chart"),
                        ((str(tmp_path), str(tmp_path / "empty")), "no such reference")):  # fmt: skip
        result = CliRunner().invoke(app, ["eval", *args])
        assert result.exit_code == 2 and words in result.stderr and "Traceback" not in result.output, result.output


# -- the user's own lyrics -------------------------------------------------------------------------
LYRICS = "Hello, little star\nhow I wonder - what you are\n\nUp above the world so high"


def _lyric_song(tmp_path: Path) -> Path:
    notes = [(0.5 + 0.45 * k, 0.35, 60 + (k % 5)) for k in range(16)]  # one sung note per word
    return write_wav(tmp_path / "Star - Song.wav", melody(notes, 8.5, 44_100)[None], 44_100)


@pytest.mark.parametrize("kind", ["txt", "lrc"])
def test_lyrics_every_word_once_in_order_with_line_breaks_as_phrases(env, fast_whisper, tmp_path, kind):
    source = _lyric_song(tmp_path)
    if kind == "txt":
        lyrics = tmp_path / "lyrics.txt"
        lyrics.write_text(LYRICS, encoding="utf-8")
    else:
        lyrics = tmp_path / "lyrics.lrc"
        lyrics.write_text("[ar:Star]\n[ti:Song]\n[00:00.40]Hello, little star\n[00:01.70]how I wonder - what you are\n"
                          "[00:04.80]Up above the world so high\n", encoding="utf-8")  # fmt: skip
    result = invoke("run", str(source), "--no-separation", "--lyrics", str(lyrics), "-o", str(tmp_path / "out"),
                    "--language", "en", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    chart = read_chart(Path(json.loads(result.stdout)["songs"][0]["files"]["ultrastar"]).read_text(encoding="utf-8"))
    assert lyrics_text(chart.notes).split() == LYRICS.split()
    starts = [n.start_s for n in chart.notes]
    assert starts == sorted(starts) and all(0.0 <= s <= 8.5 for s in starts)
    lines = sum(1 for line in chart.lines if line.startswith("- "))
    assert 1 <= lines <= 4  # the three lyrics lines are phrase hints (a one-word line would merge)


def test_lyrics_map_onto_the_heard_words_chunk_by_chunk():
    from ultrasinger_gpu_cli.lyrics import assign_to_chunks

    user = "one two three four five six".split()
    heard = [("one", 0), ("too", 0), ("three", 0), ("four", 1), ("fife", 1), ("six", 1)]
    assert assign_to_chunks(user, heard, 2, [(0, 5), (6, 10)]) == [0, 0, 0, 1, 1, 1]
    # Nothing heard: shared out by the chunks' lengths.
    assert assign_to_chunks(user, [], 2, [(0, 3), (3, 9)]) == [0, 0, 1, 1, 1, 1]


@pytest.mark.parametrize(("content", "words"), [(b"", "no words"), (b"\n  \n[ar:x]\n", "no words"),
                                                (b"\x00\x01PK\x03\x04", "binary"), ("Grüße\n".encode("latin-1"), "not UTF-8")])
def test_bad_lyrics_files_get_a_clear_error(env, tmp_path, content, words):
    lyrics = tmp_path / "lyrics.txt"
    lyrics.write_bytes(content)
    source = _lyric_song(tmp_path)
    result = CliRunner().invoke(app, ["run", str(source), "--no-separation", "--lyrics", str(lyrics), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and words in result.stderr and str(lyrics) in result.stderr, result.output
    assert "Traceback" not in result.output and not (tmp_path / "o" / "Star - Song").exists()
    if words == "not UTF-8":
        assert "UTF-8" in result.stderr and "Save as" in result.stderr


def test_the_chart_sings_whispers_words_in_order(env, fast_whisper, tmp_path):
    """Through ``ugpu run``: the chart's lyrics are exactly the words Whisper heard (its cached
    result), none dropped, none added."""
    source = _lyric_song(tmp_path)
    result = invoke("run", str(source), "--no-separation", "-o", str(tmp_path / "out"), "--language", "en", "--json")
    assert result.exit_code == 0, result.output
    chart = read_chart(Path(json.loads(result.stdout)["songs"][0]["files"]["ultrastar"]).read_text(encoding="utf-8"))
    import os

    cached = [json.loads(p.read_text()) for p in Path(os.environ["UGPU_DB"]).parent.rglob("*.json")]
    (heard,) = [c["data"] for c in cached if isinstance(c, dict) and "segments" in c.get("data", {})]
    words = [w["word"].strip() for seg in heard["segments"] for w in seg if w["word"].strip()]
    assert words, "the random Whisper heard nothing: nothing to check"
    assert lyrics_text(chart.notes).split() == " ".join(words).split()
