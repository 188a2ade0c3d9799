"""Notes and the UltraStar file: syllables, pitch, beats, headers, MIDI (pure functions)."""

from __future__ import annotations

import numpy as np
import pytest

from ultrasinger_gpu_cli.song.notes import build_song
from ultrasinger_gpu_cli.song.syllables import rule_syllables, syllables
from ultrasinger_gpu_cli.song.midi import to_midi
from ultrasinger_gpu_cli.song.ultrastar import Note, Song, read_chart, safe_name, to_ultrastar
from ultrasinger_gpu_cli.song.words import Word


@pytest.mark.parametrize(
    ("word", "parts"),
    [("hello", ["hel", "lo"]), ("wonderful", ["won", "der", "ful"]), ("make", ["make"]), ("la", ["la"]),
     ("yesterday", ["yes", "ter", "day"]), ("singing,", ["sin", "ging,"])],
)  # fmt: skip
def test_syllables_follow_the_vowel_group_rule(word, parts):
    assert syllables(word) == parts  # no language: the rule
    assert "".join(syllables(word)) == word


def test_german_final_e_is_a_syllable_by_the_rule():
    assert rule_syllables("Liebe", "de") == ["Lie", "be"]


@pytest.mark.parametrize(
    ("word", "language", "parts"),
    [("Schmetterling", "de", ["Schmet", "ter", "ling"]), ("Sonnenschein", "de", ["Son", "nen", "schein"]),
     ("beautiful", "en", ["beau", "ti", "ful"]), ("chanson,", "fr", ["chan", "son,"]), ("la", "en", ["la"])],
)  # fmt: skip
def test_syllables_use_the_languages_hyphenation_dictionary(word, language, parts):
    assert syllables(word, language) == parts


def test_a_language_without_a_dictionary_uses_the_rule():
    assert syllables("wonderful", "xx") == rule_syllables("wonderful")


def _track(segments: list[tuple[float, float, float]], duration: float = 8.0):
    times = np.arange(0, duration, 0.01)
    freq = np.zeros_like(times)
    for start, end, hz in segments:
        freq[(times >= start) & (times < end)] = hz
    return times, freq, (freq > 0).astype(float)


def test_notes_pitch_beats_phrases_and_continuations():
    words = [Word("hello", 1.0, 1.6), Word("world", 1.7, 2.5), Word("again", 4.0, 5.0)]
    times, freq, conf = _track([(1.0, 2.5, 261.63), (4.0, 4.5, 329.63), (4.5, 5.0, 392.0)])
    song = build_song(words, times, freq, conf, tempo=120, title="T", artist="A", language="en")
    assert song.gap_ms == 1000 and song.bpm % 120 == 0  # a beat of the grid; a multiple of the tempo
    texts = [n.text for n in song.notes]
    assert texts == ["hel", "lo ", "world ", "a", "gain", "~ "]
    assert [n.midi for n in song.notes] == [60, 60, 60, 64, 64, 67]
    assert song.phrase_ends and song.phrase_ends[0] <= song.notes[3].start_beat
    for a, b in zip(song.notes, song.notes[1:]):
        assert a.end_beat <= b.start_beat and a.length_beats >= 1


def test_file_format_v1_and_v03():
    song = Song(title="Tïtle", artist="Ärtist", bpm=200.5, gap_ms=500, language="de",
                notes=[Note(0, 4, 69, "la"), Note(4, 4, 69, "la "), Note(20, 4, 57, "la"), Note(24, 4, 57, "la ", "F")],
                phrase_ends=[10])  # fmt: skip
    text = to_ultrastar(song, audio="s.mp3", vocals="s [Vocals].wav", instrumental="s [Instrumental].wav")
    lines = text.splitlines()
    assert lines[0] == "#VERSION:1.1.0" and lines[-1] == "E"
    assert {"#MP3:s.mp3", "#AUDIO:s.mp3", "#VOCALS:s [Vocals].wav", "#INSTRUMENTAL:s [Instrumental].wav",
            "#BPM:200.5", "#GAP:500", "#LANGUAGE:German", "#CREATOR:ugpu", "#TITLE:Tïtle"} <= set(lines)  # fmt: skip
    assert ": 0 4 9 la" in text and "F 24 4 -3 la " in text  # A4 = MIDI 69 -> 9 half-steps above C4
    assert "- 10" in lines and lines.index("- 10") == lines.index(": 20 4 -3 la") - 1
    assert not text.encode("utf-8").startswith(b"\xef\xbb\xbf")
    old = to_ultrastar(song, audio="s.mp3", version="0.3.0").splitlines()
    assert "#BPM:200,5" in old and not any(line.startswith("#AUDIO") for line in old)


def test_parse_round_trip_gives_the_times_back():
    words = [Word("hello", 1.0, 1.6), Word("world", 1.7, 2.5)]
    times, freq, conf = _track([(1.0, 2.5, 261.63)])
    song = build_song(words, times, freq, conf, tempo=120, title="T", artist="A")
    chart = read_chart(to_ultrastar(song, audio="a.mp3"))
    headers, units = chart.headers, chart.words()
    assert float(headers["BPM"]) % 120 == 0 and [u.text for u in units] == ["hel", "lo", "world"]
    assert units[0].start_s == pytest.approx(1.0, abs=0.07) and units[-1].end_s == pytest.approx(2.5, abs=0.07)
    assert [u.word_end for u in units] == [False, True, True]


def test_midi_file_is_well_formed():
    words = [Word("la", 0.5, 1.0)]
    times, freq, conf = _track([(0.5, 1.0, 440.0)])
    data = to_midi(build_song(words, times, freq, conf, tempo=120, title="T", artist="A"))
    assert data[:4] == b"MThd" and data[14:18] == b"MTrk" and bytes([0x90, 69]) in data and data.endswith(b"\xff\x2f\x00")


@pytest.mark.parametrize("name", ["../../etc - x", "a/b\\c:d*e?f", "CON", " .. ", "x" * 300, "Я" * 300,
                                  "a\nb\u2028c\x00d\x7fe"])
def test_safe_names_never_leave_the_folder_and_fit_the_file_system(name):
    cleaned = safe_name(name)
    assert "/" not in cleaned and "\\" not in cleaned and cleaned not in ("", ".", "..")
    assert len(cleaned.encode("utf-8")) + len(" [Instrumental].flac".encode()) + len(".partial-4194304-4194304") + 1 <= 255
    assert cleaned.upper() != "CON" and not any(ord(ch) < 32 or ch in "\x7f\u2028" for ch in cleaned)


def test_long_names_are_cut_on_a_character_boundary_and_stay_unique():
    from ultrasinger_gpu_cli.song.paths import NAME_MAX_BYTES, SUFFIX_RESERVE_BYTES

    a, b = safe_name("Я" * 300 + "a"), safe_name("Я" * 300 + "b")
    assert a != b
    head, _, digest = a.rpartition("~")
    limit = NAME_MAX_BYTES - SUFFIX_RESERVE_BYTES
    # Whole two-byte characters only, as many as fit before "~" and the 8-digit hash: an odd byte
    # budget leaves the half character out (never a replacement character, never a byte too many).
    assert head == "Я" * ((limit - 9) // 2) and len(digest) == 8 and len(a.encode("utf-8")) <= limit
