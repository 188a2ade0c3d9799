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
from ultrasinger_gpu_cli.song.notes import MIN_CHART_BPM, build_song, grid_multiple, lyrics_text, phrase_starts
from ultrasinger_gpu_cli.song.tempo import Tempo, detect_tempo
from ultrasinger_gpu_cli.song.ultrastar import read_chart, repitch
from ultrasinger_gpu_cli.song.words import Word

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


@pytest.mark.parametrize(("bpm", "pattern"), [(72, "kick"), (90, "kick-clap"), (128, "clap"), (174, "kick"), (200, "clap")])
def test_tempo_and_beats_are_librosa_s_own_without_librosa(bpm, pattern, monkeypatch):
    # tempo.py computes librosa 0.11's beat_track (tempo from the mean tempogram, Ellis' dynamic
    # programme, trimming) in numpy: the same tempo and the same beat frames, also when the
    # tempogram is read in blocks that do not divide the song.
    import librosa

    from ultrasinger_gpu_cli.song import tempo as tempo_module

    monkeypatch.setattr(tempo_module, "BLOCK_FRAMES", 333)
    envelope = np.concatenate([[0.0], tempo_module.onset_flux(drum_song(bpm, 20.0, pattern=pattern, offset_s=0.37))])
    reference_bpm = float(librosa.feature.tempo(onset_envelope=envelope, sr=22_050, hop_length=512, start_bpm=120.0)[0])
    _, reference = librosa.beat.beat_track(onset_envelope=envelope, sr=22_050, hop_length=512, start_bpm=120.0, trim=True)
    found_bpm = tempo_module.tempo_of(tempo_module.mean_tempogram(envelope, 22_050), 22_050)
    assert found_bpm == reference_bpm
    assert tempo_module.track_beats(envelope, found_bpm, 22_050).tolist() == reference.tolist()


def test_the_tempogram_s_fft_length_is_scipy_s_without_scipy():
    import scipy.fft

    from ultrasinger_gpu_cli.song.tempo import next_fast_len

    assert [next_fast_len(n) for n in range(1, 5_000)] == [scipy.fft.next_fast_len(n, real=True) for n in range(1, 5_000)]
    assert next_fast_len(2 * 344 - 1) == scipy.fft.next_fast_len(687, real=True) == 720  # an 8-s tempogram window


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_small_median_is_numpy_s_bit_for_bit(dtype):
    """Charts are made with :func:`~ultrasinger_gpu_cli.song.median.median` where they were made
    with ``np.median``: the same value for arrays and lists of either precision, odd and even
    lengths (float32's two middles averaged in float32), NaN, and what it hands to numpy."""
    from ultrasinger_gpu_cli.song.median import median

    rng = np.random.default_rng(7)
    for trial in range(3_000):
        n = int(rng.integers(1, 80))
        x = (rng.normal(60, 5, n) * 10.0 ** rng.integers(-3, 4)).astype(dtype)
        if trial % 5 == 0:
            x = np.round(x, 1)  # ties
        if trial % 50 == 0:
            x[rng.integers(0, n)] = np.nan
        for values in (x, list(x), x.tolist()):
            want, got = float(np.median(values)), median(values)
            assert got == want or (np.isnan(want) and np.isnan(got)), (dtype, n, values)
    assert median(np.array([1, 2])) == 1.5 and median(np.ones((2, 2))) == 1.0  # not floats, not 1-D: numpy's
    assert median(np.array(2.5)) == 2.5  # a 0-d array too


def test_a_real_voice_gets_librosa_s_beats_too():
    import librosa

    from ultrasinger_gpu_cli.song import audio as audio_io
    from ultrasinger_gpu_cli.song import tempo as tempo_module

    voice = Path(__file__).resolve().parents[2] / "shared" / "real" / "torchcrepe-test" / "test.wav"
    if not voice.is_file():
        pytest.skip("../shared/real is not beside this checkout")
    decoded = audio_io.decode(voice, 22_050, 1)
    mono = np.asarray(getattr(decoded, "samples", decoded), dtype=np.float32).reshape(-1)
    envelope = np.concatenate([[0.0], tempo_module.onset_flux(mono)])
    reference_bpm, reference = librosa.beat.beat_track(onset_envelope=envelope, sr=22_050, hop_length=512, trim=True)
    found_bpm = tempo_module.tempo_of(tempo_module.mean_tempogram(envelope, 22_050), 22_050)
    assert found_bpm == float(np.atleast_1d(reference_bpm)[0])
    assert tempo_module.track_beats(envelope, found_bpm, 22_050).tolist() == reference.tolist()


def test_tempo_compiles_nothing_and_its_memory_does_not_grow_with_the_song():
    # librosa's numba kernels compiled in every new process (~2.5 s of a cold run) and its
    # tempogram held 344 values per envelope frame (~35 MB per song minute, several copies).
    import subprocess
    import sys

    code = ("import sys, tracemalloc, numpy as np\n"
            "from ultrasinger_gpu_cli.song import tempo\n"
            "peaks = []\n"
            "for frames in (13_000, 52_000):  # 5 and 20 minutes of envelope\n"
            "    envelope = np.abs(np.random.default_rng(3).standard_normal(frames)) + (np.arange(frames) % 23 == 0) * 4.0\n"
            "    tracemalloc.start()\n"
            "    tempo.mean_tempogram(envelope, 22_050)\n"
            "    peaks.append(tracemalloc.get_traced_memory()[1] / 1e6)\n"
            "    tracemalloc.stop()\n"
            "tempo.detect_tempo(np.sin(np.arange(22_050 * 6) / 7).astype(np.float32), 22_050)\n"
            "print(round(peaks[1] - peaks[0], 1), 'numba' in sys.modules, 'librosa' in sys.modules)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    growth_mb, numba, librosa = done.stdout.split()
    assert done.returncode == 0 and (numba, librosa) == ("False", "False")
    assert float(growth_mb) < 5  # the whole tempogram: 15 more minutes, 39,000 x 344 x 8 bytes = 107 MB more


def test_the_grid_is_a_hand_chart_s_and_gap_is_a_beat():
    # Short notes at 140 BPM: a 16th is 107 ms, the notes are 170 ms with 60 ms gaps.
    starts = [1.0 + k * 0.23 for k in range(12)]
    words = [Word(f"la{k} ", s, s + 0.17) for k, s in enumerate(starts)]
    times, freq, conf = track_of([(s, s + 0.17, 261.63) for s in starts])
    tempo = Tempo(140.0, first_beat_s=0.2)
    song = build_song(words, times, freq, conf, tempo=tempo, title="T", artist="A", split_syllables=False)
    assert song.bpm == 280.0  # the coarsest multiple of the tempo at 200 or more, as hand charts
    assert (song.gap_ms / 1000 - 0.2) % tempo.beat_s == pytest.approx(0, abs=1e-3) or \
        (song.gap_ms / 1000 - 0.2) % tempo.beat_s == pytest.approx(tempo.beat_s, abs=1e-3)  # fmt: skip
    for n in song.notes:  # every note at least a beat; a beat is at most half a 170 ms note here
        assert n.length_beats >= 2
    for (a_start, a_end), (b_start, _) in zip(song.note_times(), song.note_times()[1:]):
        assert b_start >= a_end  # no overlap


def test_the_grid_goes_finer_only_where_notes_would_lose_their_start_on_it():
    from ultrasinger_gpu_cli.song.notes import on_grid

    tempo = Tempo(100.0)  # x2 = 200: beats of 75 ms
    assert MIN_CHART_BPM == 200
    long_notes = [(k * 0.5, k * 0.5 + 0.3) for k in range(20)]
    assert grid_multiple(tempo, 0.0, long_notes) == 2
    # 50 ms notes with room after them: written a beat long, each where it is sung.
    spaced = [(k * 0.2, k * 0.2 + 0.05) for k in range(20)]
    assert grid_multiple(tempo, 0.0, spaced) == 2
    assert [start for start, _ in on_grid(spaced, 0.0, 0.075)] == [int(k * 0.2 / 0.075 + 1e-9) for k in range(20)]
    # 40 ms notes every 50 ms: at 75 ms beats every third note shares a beat with the one before and
    # moves a beat later; 37.5 ms beats (x4) hold every start.
    dense = [(k * 0.05, k * 0.05 + 0.04) for k in range(20)]
    placed = on_grid(dense, 0.0, 0.075)
    assert sum(start != int(k * 0.05 / 0.075 + 1e-9) for k, (start, _) in enumerate(placed)) > 0.1 * len(dense)
    assert all(b[0] >= a[0] + a[1] for a, b in zip(placed, placed[1:]))  # never overlapping
    assert grid_multiple(tempo, 0.0, dense) == 4
    one_fragment = long_notes + [(11.0, 11.02)]  # one tracker fragment in 21 notes does not make the grid finer
    assert grid_multiple(tempo, 0.0, one_fragment) == 2


def test_two_notes_of_a_line_never_touch_as_hand_charts_write_them():
    """Hand charts leave a beat between two notes (the consonant between two vowels; 5% and 0% of
    the two shared hand charts' neighbours touch, a melisma's ``~`` notes included); notes sung
    legato end a beat before the next starts, where the first is longer than a beat. The starts
    stay where the voice starts; a one-beat note before another keeps its beat."""
    from ultrasinger_gpu_cli.song.notes import on_grid

    beat = 0.1
    legato = [(0.0, 0.6), (0.6, 1.2), (1.2, 1.5), (1.5, 1.6), (1.6, 2.0)]
    assert on_grid(legato, 0.0, beat) == [(0, 5), (6, 5), (12, 2), (15, 1), (16, 4)]
    apart = [(0.0, 0.4), (0.6, 1.0)]  # a rest between them already
    assert on_grid(apart, 0.0, beat) == [(0, 4), (6, 4)]


def test_a_note_starts_on_the_beat_its_voice_is_first_heard_in():
    """Charters start a note on the first beat in which its vowel is audible (not the nearest
    beat): a voice starting 0.7 of a beat into beat 3 is sung in beat 3. Its end stays on the
    nearest beat. A melisma's new pitch splits a re-pitched note on the beat the change falls in."""
    from ultrasinger_gpu_cli.song.notes import on_grid, repitch_parts, start_beat

    beat = 0.1
    assert start_beat(0.37, 0.0, beat) == 3 and start_beat(0.30, 0.0, beat) == 3 and start_beat(0.299, 0.0, beat) == 2
    assert start_beat(0.05, 0.1, beat) == 0  # never before #GAP
    assert on_grid([(0.37, 0.86), (1.08, 1.5)], 0.0, beat) == [(3, 6), (10, 5)]
    # A ten-beat note whose voice moves from C4 to E4 0.7 into beat 4: split there, not at beat 5.
    chart = read_chart("#TITLE:T\n#ARTIST:A\n#BPM:150\n#GAP:0\n: 0 10 0 la\nE\n")  # beats of 0.1 s
    times = np.arange(0, 1.0, 0.01)
    assert repitch_parts(chart, times, np.where(times < 0.47, 261.63, 329.63), np.ones_like(times)) == [
        ((0, 4, 60), (4, 6, 64))]  # fmt: skip


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


def test_a_syllable_the_tracker_hears_for_a_moment_is_a_sung_syllable_long():
    """A note is trimmed to its voiced frames, but a voice heard for less than a sung syllable
    lasts (0.1 s) inside a longer syllable is the tracker's fragment of it (a fast syllable on a
    mix: hand charts write these 80-250 ms long where ugpu wrote 40 ms, one beat); the note keeps
    0.1 s of its syllable, never more than the syllable's own time."""
    from ultrasinger_gpu_cli.song.notes import PitchTrackView, listen, sung_long

    times, freq, conf = track_of([(1.00, 1.04, midi_to_hz(64)), (2.0, 2.5, midi_to_hz(67))])
    track = PitchTrackView(times, freq, conf)
    fragment = listen(Word(" fan", 1.0, 1.3), track)
    assert round(fragment.end_s - fragment.start_s, 3) == 0.04  # as heard
    assert [(s, round(e, 3), m) for s, e, m in sung_long(fragment)] == [(1.0, 1.1, 64)]
    assert round(sung_long(listen(Word(" cy", 1.0, 1.06), track))[0][1], 3) == 1.06  # a shorter syllable: all of it
    held = listen(Word(" held", 1.9, 2.7), track)
    assert sung_long(held) == held.parts and round(held.end_s, 3) == 2.5  # voiced longer: trimmed to the voice
    words = [Word(" a", 1.0, 1.3), Word(" b", 1.3, 1.6), Word(" c", 1.6, 1.9), Word(" d", 2.0, 2.5), Word(" e", 2.6, 2.9)]
    times, freq, conf = track_of([(1.0, 1.04, midi_to_hz(64)), (1.3, 1.34, midi_to_hz(65)), (1.6, 1.64, midi_to_hz(67)),
                                  (2.0, 2.5, midi_to_hz(67)), (2.6, 2.9, midi_to_hz(65))])  # fmt: skip
    song = build_song(words, times, freq, conf, tempo=150, title="T", artist="A", split_syllables=False)
    assert all(e - s >= 0.1 - 1e-6 for s, e in song.note_times())


def test_no_word_is_dropped_zero_length_words_included():
    words = [Word(" I", 1.0, 1.0), Word(" can", 1.0, 1.3), Word(" see", 1.3, 1.3), Word(" it", 1.3, 1.3),
             Word(" now.", 1.35, 1.8), Word(" Yes", 2.0, 2.0)]  # fmt: skip
    times, freq, conf = track_of([(1.0, 2.2, 220.0)])
    song = build_song(words, times, freq, conf, tempo=100, title="T", artist="A", language="en")
    assert lyrics_text(song.notes).split() == [w.text.strip() for w in words]


# -- phrases ---------------------------------------------------------------------------------------
def _voices(words):
    from ultrasinger_gpu_cli.song.notes import PitchTrackView, listen
    from ultrasinger_gpu_cli.song.syllables import split_words

    times, freq, conf = track_of([(0.0, 60.0, 220.0)], duration=60.0)
    return [listen(u, PitchTrackView(times, freq, conf)) for u in split_words(words)]


def _lines(voices):
    starts = [*phrase_starts(voices), len(voices)]
    return [voices[a:b] for a, b in zip(starts, starts[1:])]


def test_a_verse_without_pauses_is_broken_into_readable_lines():
    # 40 one-syllable words, 0.35 s each with 50 ms gaps (a breath of 300 ms before word 17): no pause of 0.8 s.
    def verse(breath_at=None, longer_at=None, comma_after=None):
        words, t = [], 0.5
        for k in range(40):
            words.append(Word(f" la{k}{',' if k == comma_after else ''}", t, t + 0.35))
            t += 0.4 + (0.25 if k + 1 == breath_at else 0.1 if k + 1 == longer_at else 0.0)
        return [[v.unit.text for v in line] for line in _lines(_voices(words))]

    lines = verse(breath_at=17)
    assert len(lines) >= 4 and all(2 <= len(line) <= 12 for line in lines)
    assert any(line[0] == "la17" for line in lines)  # the singer's breath is used
    # Without a breath, a gap a little longer than the others is no reason to cut off-centre:
    # the long line breaks in its middle, lines of about even length (a singer's line reads whole) ...
    assert [len(line) for line in verse(longer_at=17)] == [10, 10, 10, 10]
    # ... unless Whisper wrote a clause mark there.
    assert any(line[0] == "la17" for line in verse(longer_at=5, comma_after=16))


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
    from ultrasinger_gpu_cli.song.ultrastar import to_ultrastar

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
    assert same["line_starts_recall"] is None  # one line: no line start after its first word
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


def test_eval_pairs_a_library_s_charts_as_people_name_them(tmp_path):
    """A user's hand charts are named as they were downloaded: "Mr Fancy Pants" where ugpu wrote
    "Mr. Fancy Pants" (case and punctuation aside), or every one ``song.txt`` in its own folder
    (then by ``#ARTIST`` and ``#TITLE``); a name several charts share pairs none of them by it."""
    from ultrasinger_gpu_cli.song.evaluation import pair_charts

    def chart(path: Path, artist: str, title: str) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"#TITLE:{title}\n#ARTIST:{artist}\n#BPM:300\n#GAP:0\n: 0 4 0 la\nE\n", encoding="utf-8")
        return path

    gen = [chart(tmp_path / "gen" / "Jonathan Coulton - Mr. Fancy Pants.txt", "Jonathan Coulton", "Mr. Fancy Pants"),
           chart(tmp_path / "gen" / "Joshua Morin - On The Run.txt", "Joshua Morin", "On The Run"),
           chart(tmp_path / "gen" / "Band - Other.txt", "Band", "Other")]
    ref = [chart(tmp_path / "ref" / "Jonathan Coulton - Mr Fancy Pants.txt", "Jonathan Coulton", "Mr Fancy Pants"),
           chart(tmp_path / "ref" / "on-the-run" / "song.txt", "Joshua Morin", "On the run"),
           chart(tmp_path / "ref" / "elsewhere" / "song.txt", "Someone", "Else")]  # fmt: skip
    pairs, gen_only, ref_only = pair_charts(gen, ref)
    assert pairs == [("Jonathan Coulton - Mr Fancy Pants", gen[0], ref[0]), ("Joshua Morin - On the run", gen[1], ref[1])]
    assert gen_only == [gen[2]] and ref_only == [ref[2]]
    result = invoke("eval", str(tmp_path / "gen"), str(tmp_path / "ref"), "--json")
    assert result.exit_code == 0, result.output
    assert [s["name"] for s in json.loads(result.stdout)["songs"]] == [name for name, _, _ in pairs]


def test_eval_scores_line_starts_by_the_words_that_start_them():
    from ultrasinger_gpu_cli.song.evaluation import line_starts

    def sung(text: str) -> list[Word]:  # "/" starts a line
        out = []
        for k, token in enumerate(text.split()):
            out.append(Word(token.strip("/"), k * 0.5, k * 0.5 + 0.4, phrase_start=k == 0 or token.startswith("/")))
        return out

    hand = sung("so far away from home /so far away that I /don't know /where my home is")
    assert line_starts(hand, hand) == (1.0, 1.0)
    # Two of the hand chart's three line starts, and one of its own two that the hand chart has not.
    assert line_starts(sung("so far away /from home /so far away that I don't know /where my home is"), hand) == (2 / 3, 2 / 3)
    assert line_starts(sung("so far away from home"), hand) == (0.0, None)  # one line: no start after the first word


def test_lyric_similarity_counts_every_word_matched_in_order_when_a_chorus_returns():
    import random

    from ultrasinger_gpu_cli.song.wordmatch import common_words, ratio

    def lcs(a: list[str], b: list[str]) -> int:  # the plain dynamic programme
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i, x in enumerate(a):
            for j, y in enumerate(b):
                table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
        return table[-1][-1]

    # A verse, the chorus, another verse, the chorus again; the recogniser misheard a few words.
    # Taking the longest common block first (difflib) pairs the second chorus wrongly: 0.4.
    words = dict(zip("abcdefghijklmnopqrstuvwxyz", "on the run down a one way street road beneath my feet "
                     "so far away from home twenty two to see you soon yeah well".split()))  # fmt: skip
    heard, hand = ([words[c] for c in text] for text in ("ejkvaccqboppaccab", "jjkgaccaboppoaccab"))
    assert common_words(heard, hand) == lcs(heard, hand) == 14
    assert ratio(heard, hand, [0.0] * len(heard), [0.0] * len(hand)) == pytest.approx(2 * 14 / 35)
    rng = random.Random(7)
    for _ in range(200):
        a = [rng.choice("abcdef") for _ in range(rng.randrange(0, 30))]
        b = [rng.choice("abcdef") for _ in range(rng.randrange(1, 30))]
        assert common_words(a, b) == lcs(a, b)


def test_whisper_s_capitals_start_lines():
    from ultrasinger_gpu_cli.song.notes import capitals_start_lines

    heard = [Word(f" {t}", k * 0.5, k * 0.5 + 0.4) for k, t in enumerate(
        "So far away from home So far away that I don't know Where my home is for Mister Fancy Pants I'm "
        '"Hey you'.split())]  # fmt: skip
    starts = [w.text.strip() for w in capitals_start_lines(heard, "en") if w.phrase_start]
    assert starts == ["So", "So", "Where", "Mister", '"Hey']  # not "I", "I'm", nor "Fancy Pants" after "Mister"
    titled = [Word(f" {t}", k * 0.5, k * 0.5 + 0.4) for k, t in enumerate("Say a little prayer for Mr. Fancy Pants".split())]
    assert [w.text.strip() for w in capitals_start_lines(titled, "en") if w.phrase_start] == ["Say"]  # not "Mr.", "Fancy"
    acronyms = [Word(f" {t}", k * 0.5, k * 0.5 + 0.4) for k, t in enumerate("turn on the TV and the DJ".split())]
    assert not any(w.phrase_start for w in capitals_start_lines(acronyms, "en"))
    assert not any(w.phrase_start for w in capitals_start_lines(heard, "de"))  # German: every noun has a capital
    marked = [Word(" so", 0.0, 0.4, phrase_start=True), Word(" Far", 0.5, 0.9)]
    assert [w.phrase_start for w in capitals_start_lines(marked, "en")] == [True, True]
    assert capitals_start_lines(marked, "en")[0] is marked[0]  # a start Whisper gave stays as it is


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


@pytest.mark.parametrize("kind", ["txt", "lrc", "srt"])
def test_lyrics_every_word_once_in_order_with_line_breaks_as_phrases(env, fast_whisper, tmp_path, kind):
    source = _lyric_song(tmp_path)
    if kind == "txt":
        lyrics = tmp_path / "lyrics.txt"
        lyrics.write_text(LYRICS, encoding="utf-8")
    elif kind == "srt":  # subtitles (ugpu whisper's .srt, corrected): cue numbers and times are not sung
        lyrics = tmp_path / "lyrics.srt"
        lyrics.write_text("1\n00:00:00,400 --> 00:00:01,600\nHello, little star\n\n2\n00:00:01,700 --> 00:00:04,700\n"
                          "<i>how I wonder - what</i>\nyou are\n\n3\n00:00:04,800 --> 00:00:08,000\nUp above the world so high\n",
                          encoding="utf-8")  # fmt: skip
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


def _heard(spec: str, start: float = 0.0, step: float = 0.5) -> list[Word]:
    return [Word(f" {w}", start + k * step, start + k * step + 0.4) for k, w in enumerate(spec.split())]


def test_lyrics_match_the_heard_words_in_order_and_keep_the_song_s_order():
    from ultrasinger_gpu_cli.song.lyrics import match_heard

    user = "one two three four five six".split()
    heard = _heard("one too three four fife six")
    assert match_heard(user, heard) == {0: 0, 2: 2, 3: 3, 4: 4, 5: 5}  # "fife" is near "five", "too" not "two"
    # A chorus sung three times, written once before the verse that follows it: the lyrics keep
    # their order; the repeats before the verse are skipped as one stretch, not word by word.
    chorus, verse = "la la land is where we go", "then the night came down"
    heard = _heard(f"{chorus} {chorus} {verse} {chorus}", step=0.5)
    matched = match_heard(f"{chorus} {verse}".split(), heard)
    verse_at = [k for k, w in enumerate(heard) if w.text.strip() == "then"][0]
    assert [matched[k] for k in range(7, 12)] == list(range(verse_at, verse_at + 5))
    assert all(matched[k] < verse_at for k in range(7))
    # Written once where it is sung three times at the end: it goes to the first occurrence.
    matched = match_heard(f"{verse} {chorus}".split(), _heard(f"{verse} {chorus} {chorus} {chorus}"))
    assert [matched[k] for k in range(5, 12)] == list(range(5, 12))
    # The chorus heard only in part the first time, in full when it returns (the verse between
    # not heard at all): a longest-block match puts the first chorus on its return and crams the
    # rest after it; in order and in time, the first chorus keeps the part heard where it is sung.
    first = "la la land is".split()
    heard = _heard(" ".join(first) + " mumble", step=0.5) + _heard(chorus, start=30.0)
    matched = match_heard(f"{chorus} {verse} {chorus}".split(), heard)
    assert [matched[k] for k in range(4)] == [0, 1, 2, 3]  # the first chorus where it was first sung
    assert [matched[k] for k in range(12, 19)] == list(range(5, 12))  # the return on the return
    # A word that is not alike never pairs, even to save a skip ("soon" is not "22").
    assert match_heard(["you", "soon", "to"], _heard("you 22 to")) == {0: 0, 2: 2}


def test_a_lone_common_word_heard_early_does_not_pull_the_lyrics_before_it():
    from ultrasinger_gpu_cli.song.lyrics import match_heard

    # Whisper misheard most of a line ("you have to go and be back I need"): its "to" is 4 s
    # early for the lyrics' "To". Pairing the two would cram "he had ... same" (9 words) into the
    # 1.5 s before it and leave six heard words unpaired after it; the misheard words stand for
    # the sung ones instead, and the lyrics keep the time between "all" and "you".
    user = "It's all he had but don't feel bad he'd do the same to you".split()
    heard = _heard("It's all you have to go and be back I need you", step=0.6)
    assert match_heard(user, heard) == {0: 0, 1: 1, 13: 11}
    # A near spelling ("They" for "the") is no more of an anchor than an equal word.
    user = "only clothes and deep inside he's sad hey mister fancy pants they make the big announcement".split()
    heard = _heard("all the way down to be the best I've ever seen to make the big announcement", step=0.6)
    assert match_heard(user, heard) == {12: 12, 13: 13, 14: 14, 15: 15}
    # One heard word too many and one sung word missed around a match: the match stays.
    assert match_heard("so far away from my home".split(), _heard("so far oh away home")) == {0: 0, 1: 1, 2: 3, 5: 4}


class _Heard:
    """A Whisper engine's two answers: the words it heard (as tiny.en heard them), and, asked to
    align a window's words, those words spread over the window."""

    def __init__(self, heard: list[tuple[str, float, float]]) -> None:
        self.heard = heard

    def run(self, audio, progress, language=None):
        from ultrasinger_gpu_cli.song.words import Segment, Transcript

        words = [Word(t, s, e) for t, s, e in self.heard]
        return Transcript("en", [Segment(words[0].start_s, words[-1].end_s, "".join(t for t, _, _ in self.heard), words)],
                          [(0.0, 240.0)])  # fmt: skip

    def align(self, audio, windows, texts, language=None, progress=None):
        out = []
        for (low, high), text in zip(windows, texts):
            words = text.split()
            step = (high - low) / len(words)
            out.append([(w, low + k * step, low + (k + 1) * step) for k, w in enumerate(words)])
        return language, out


def test_lyrics_whisper_did_not_hear_are_not_squeezed_before_the_word_it_stretched_over_them(tmp_path):
    """Whisper gives every frame to a word: four lines it did not hear went to the next word it
    did ("make", 8 s long, starting where they start). Taken as an anchor, it squeezed those
    lines and "They" into the 7 s before its false start (each word of "Hey Mister Fancy Pants
    They" 6 s early). After words Whisper did not hear (two or more: one is a mishearing), a
    word that long is no anchor: its start is found with theirs, and the lines take the stretch
    up to the next word heard."""
    from ultrasinger_gpu_cli.song.lyrics import align_lyrics, load_lyrics

    def aligned(lyrics: str, heard: list[tuple[str, float, float]]):
        path = tmp_path / "lyrics.txt"
        path.write_text(lyrics, encoding="utf-8")
        return align_lyrics(_Heard(heard), np.zeros(240 * 16_000, dtype=np.float32), load_lyrics(path), lambda f, t: None,
                            language="en", sample_rate=16_000)  # fmt: skip

    # Mr. Fancy Pants sped up 1.12x: tiny.en skips four sung lines (33.8-41.7 s) and stretches the
    # next word it hears, "make", over them (33.97-42.09 s).
    fancy = aligned("You have to have the world's best pants\nIt's only clothes\nAnd deep inside\nHe's sad\n"
                    "Hey Mister Fancy Pants\nThey make the big announcement\n",
                    [(" You", 25.0, 25.1), (" have", 25.1, 25.2), (" to", 25.2, 25.4), (" have", 25.4, 25.5),
                     (" the", 25.5, 25.6), (" world's", 25.6, 26.1), (" best", 26.1, 26.2), (" pants.", 26.2, 26.5),
                     (" To", 33.61, 33.97), (" make", 33.97, 42.09), (" a", 42.09, 42.27), (" big", 42.27, 42.45),
                     (" announcement", 42.45, 42.79)])  # fmt: skip
    words = [w for line in fancy.lines for w in line]
    at = {w.text: w.start_s for w in words}
    assert [w.text for w in words] == "You have to have the world's best pants It's only clothes And deep inside He's sad Hey Mister Fancy Pants They make the big announcement".split()
    assert all(b.start_s >= a.start_s for a, b in zip(words, words[1:]))
    assert at["make"] > 41.0 and at["They"] > 40.5  # sung at 41.84 / 42.0: not at Whisper's 33.97
    assert at["Pants"] > 38.0 and at["It's"] < 30.0  # the four lines spread over the stretch, not 34-35 s
    assert at["big"] == pytest.approx(42.27, abs=0.05)  # heard words Whisper timed well stay anchors
    # On the run: held notes Whisper heard after words it did not hear stay anchors. "I" (1.2 s)
    # after three misheard words ("about the past" heard as "a long life") has no room for them
    # at the song's pace; "Coming" (1.4 s) follows one missed word ("I'm", a held line of its
    # own): a mishearing, not a skipped stretch.
    held = aligned("I have been thinking about the past\nI can't remember where I am\nI'm\nComing home\n",
                   [(" I", 185.0, 185.3), (" have", 185.3, 185.6), (" been", 185.6, 185.8),
                    (" thinking", 185.8, 186.1), (" a", 186.1, 186.5), (" long", 186.5, 187.0),
                    (" life", 187.0, 187.75), (" I", 187.75, 188.95), (" can't", 188.95, 189.9),
                    (" remember", 189.9, 190.3), (" where", 191.33, 191.89), (" I", 191.89, 192.55),
                    (" am", 192.55, 193.59), (" Coming", 199.87, 201.27), (" home", 201.27, 211.27)])  # fmt: skip
    starts = [(w.text, w.start_s) for line in held.lines for w in line]
    assert starts[7] == ("I", pytest.approx(187.75)) and ("Coming", pytest.approx(199.87)) in starts


def test_no_lyrics_word_is_squeezed_below_a_sung_syllable():
    from ultrasinger_gpu_cli.song.lyrics import MIN_SYLLABLE_S, unsqueeze

    crowded = [Word("a", 1.0, 1.01), Word("wonderful", 1.01, 1.02), Word("day", 1.02, 1.03), Word("then", 3.0, 3.4)]
    out = unsqueeze(crowded, 10.0)
    assert [w.text for w in out] == ["a", "wonderful", "day", "then"]
    for w, syllables in zip(out, (1, 3, 1, 1)):
        assert w.end_s - w.start_s >= syllables * MIN_SYLLABLE_S - 1e-9
    assert all(b.start_s >= a.end_s - 1e-9 for a, b in zip(out, out[1:]))
    assert out[0].start_s == 1.0 and out[-1].start_s == 3.0  # only the crowded ones moved
    at_the_end = unsqueeze([Word("last", 9.99, 10.0), Word("words", 10.0, 10.0)], 10.0)
    assert at_the_end[-1].end_s <= 10.0 and at_the_end[0].end_s - at_the_end[0].start_s >= MIN_SYLLABLE_S - 1e-9


def test_lyrics_as_lyric_sites_write_them_are_read_as_sung():
    """Section headers are not sung; a header alone that names an earlier section stands for its
    lines; "(x2)" and "[Chorus x2]" write the repeats out; a bracketed note is not sung; duet tags,
    LRC tags and timed lines keep their meaning (a timed line is never repeated)."""
    from ultrasinger_gpu_cli.song.lyrics import _parse, section_header, sung_lines

    text = """[Intro]
Oh-oh
[Verse 1: Joshua Morin]
So far away from home (x2)
So far away, that I don't know [?]

[Chorus: Joshua Morin & Band]
On the run
Down a one way street
[Verse 2]
Twenty-two x2
Repeat chorus
[Bridge x2]
Coming home
(x3)
[Chorus]
"""
    assert sung_lines(text) == ["Oh-oh", "So far away from home", "So far away from home",
                                "So far away, that I don't know [?]", "On the run", "Down a one way street",
                                "Twenty-two", "Twenty-two", "On the run", "Down a one way street", "Coming home",
                                "Coming home", "On the run", "Down a one way street"]  # fmt: skip
    assert [" ".join(line.words) for line in _parse(text)][3] == "So far away, that I don't know"
    assert section_header("[P1]") is None and section_header("Hook me up") is None
    assert section_header("[Pre-Chorus x3]") == ("pre-chorus", 3) and section_header("Verse 2:") == ("verse 2", 1)
    assert section_header("[Chorus - x2]") == ("chorus", 2) and section_header("Chorus x2:") == ("chorus", 2)
    assert section_header("[ar:Star]") is None and section_header("[00:12.50]On the run") is None
    lrc = "[ar:Star]\n[Chorus]\n[00:01.00]On the run (x2)\n[00:03.00]Down a one way street\n"
    assert [(line.time_s, line.words) for line in _parse(lrc)] == [(1.0, ("On", "the", "run")),
                                                                   (3.0, ("Down", "a", "one", "way", "street"))]
    duet = _parse("[Chorus]\n[P1]\nOn the run\n[P2] Down a one way street\n")
    assert [(line.singer, line.words[0]) for line in duet] == [(1, "On"), (2, "Down")]


def test_subtitles_are_lyrics_with_each_cue_s_time():
    """A SubRip or WebVTT file (ugpu whisper's own .srt with its words corrected, a video's
    captions) given as lyrics: each cue is a line sung from its start time; its number, timing
    line, tags, the WEBVTT header and a NOTE block are not sung (they were, as words: "1",
    "00:00:13,820 -->")."""
    from ultrasinger_gpu_cli.song.lyrics import _parse

    srt = ("1\n00:00:13,820 --> 00:00:15,980\nSo far away from home\n\n2\n00:00:16,100 --> 00:00:18,000\n"
           "<i>So far away</i>\nthat I don't know\n\n3\n01:02:03,5 --> 01:02:05,000\n<font color=red>Where</font> my home is\n")
    assert [(line.time_s, " ".join(line.words)) for line in _parse(srt)] == [
        (13.82, "So far away from home"), (16.1, "So far away that I don't know"), (3723.5, "Where my home is")]
    vtt = ("WEBVTT\nKind: captions\n\nNOTE made by hand\n\nintro\n00:13.820 --> 00:15.980 align:start position:0%\n"
           "So far <00:14.500>away from home\n\n00:00:16.100 --> 00:00:18.000\n<v Singer>So far away</v>\n")
    assert [(line.time_s, " ".join(line.words)) for line in _parse(vtt)] == [(13.82, "So far away from home"),
                                                                               (16.1, "So far away")]  # fmt: skip

def test_ugpu_whisper_s_lyrics_files_hold_a_sung_line_each():
    """ugpu whisper's .lrc and .srt held one entry per Whisper segment: a window of up to 30 s
    ("So far away from home So far away that I don't know Where my home is anymore ..." at one
    time). Now a line starts where Whisper wrote a capital letter or after a phrase's pause, timed
    by its own words; a segment without words stays whole, marks alone are no line."""
    from ultrasinger_gpu_cli.song.formats import sung_lines, to_lrc, to_srt
    from ultrasinger_gpu_cli.song.words import Segment

    heard = [Word(f" {t}", 10.5 + 0.4 * k, 10.8 + 0.4 * k) for k, t in enumerate("So far away from home So far away".split())]
    heard += [Word(" soon", 15.0, 15.6), Word(" .", 16.0, 20.0)]  # after a 1.9-s pause; a mark over the music
    segments = [Segment(10.5, 20.0, "".join(w.text for w in heard).strip(), heard), Segment(40.0, 42.0, "Whole line")]
    lines = sung_lines(segments, "en")
    assert [(line.start, round(line.end, 2), line.text) for line in lines] == [
        (10.5, 12.4, "So far away from home"), (12.5, 13.6, "So far away"), (15.0, 15.6, "soon"), (40.0, 42.0, "Whole line")]
    assert to_lrc(lines).splitlines()[:2] == ["[00:10.50]So far away from home", "[00:12.50]So far away"]
    assert to_srt(lines).split("\n\n")[1] == "2\n00:00:12,500 --> 00:00:13,600\nSo far away"

def test_what_a_lyric_site_s_page_adds_is_not_sung():
    """Lyrics copied or scraped from a lyric site's page (Genius's) carry the page's own text: its
    title line (a description up to "Read More", the first header glued on), "You might also like"
    between two lines, a concert advert, "Embed" glued to the last line. None of it is sung; the
    same words sung in a line, or not glued as the page glues them, are."""
    from ultrasinger_gpu_cli.song.lyrics import sung_lines

    clean = "[Verse 1]\nHey Mister Fancy Pants\n[Chorus]\nSay a little prayer\nFor Mister Fancy Pants\n[Chorus]\n"
    page = ("27 ContributorsTranslationsEspañolMr. Fancy Pants Lyrics“Mr. Fancy Pants” is a song about pants. "
            "Read More [Verse 1]\nHey Mister Fancy Pants\nYou might also like[Chorus]\nSay a little prayer\n"
            "See Jonathan Coulton LiveGet tickets as low as $35You might also like\nFor Mister Fancy Pants\n[Chorus]42Embed")
    chorus = ["Say a little prayer", "For Mister Fancy Pants"]
    assert sung_lines(page) == sung_lines(clean) == ["Hey Mister Fancy Pants", *chorus, *chorus]
    sung = "Lyrics of love\nYou might also like me\nI embed\nEmbed the moment"
    assert sung_lines(sung) == sung.splitlines()
    assert sung_lines("3 ContributorsLove Lyrics\nHold me\nOh Embed") == ["Hold me", "Oh Embed"]
    musixmatch = "Hold me\nOh, hold me\n\n******* This Lyrics is NOT for Commercial use *******\n(1409622245678)\n"
    assert sung_lines(musixmatch) == ["Hold me", "Oh, hold me"]


def test_a_chord_sheet_s_chords_are_not_sung():
    """Lyrics copied from a chord sheet (a guitar site's page) carry a line of chords above each
    line of words ("C  G  Am  F"); the chords were sung, one note each. A line of chord symbols
    alone is left out, as a section header is; ChordPro's inline "[Am]" was already an annotation.
    Words that look like chords inside a sung line, and the one-letter line "A", are sung."""
    from ultrasinger_gpu_cli.song.lyrics import _parse, sung_lines

    sheet = ("[Intro]\nC  G  Am  F  x2\n\n[Verse 1]\nC            G\nSo far away from home\nAm7    F/C   Gsus4\n"
             "So far away that I\nEm7 | D/F# | Bb(add9) | N.C.\nDon't know\n[Chorus]\nF#m7b5  E\nA\nBe a one way street\n")
    assert sung_lines(sheet) == ["So far away from home", "So far away that I", "Don't know", "A", "Be a one way street"]
    assert [line.words for line in _parse("[Am]So far [G]away\n")] == [("So", "far", "away")]
    assert sung_lines("Add it up\nBad\nA E\nDo re mi\n") == ["Add it up", "Bad", "Do re mi"]

@pytest.mark.parametrize(("content", "words"), [(b"", "no words"), (b"\n  \n[ar:x]\n", "no words"),
                                                ("...\n—\n".encode(), "no words"), (b"\x00\x01PK\x03\x04", "binary"), ("Grüße\n".encode("latin-1"), "not UTF-8")])
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
    result), none dropped, none added (digits and titles written as they are sung)."""
    from ultrasinger_gpu_cli.song.spoken import as_sung

    source = _lyric_song(tmp_path)
    result = invoke("run", str(source), "--no-separation", "-o", str(tmp_path / "out"), "--language", "en", "--json")
    assert result.exit_code == 0, result.output
    chart = read_chart(Path(json.loads(result.stdout)["songs"][0]["files"]["ultrastar"]).read_text(encoding="utf-8"))
    import os

    cached = [json.loads(p.read_text()) for p in Path(os.environ["UGPU_DB"]).parent.rglob("*.json")]
    (heard,) = [c["data"] for c in cached if isinstance(c, dict) and "segments" in c.get("data", {})]
    words = [w.text.strip() for w in as_sung([Word(w["word"], 0.0, 1.0) for seg in heard["segments"] for w in seg], "en")
             if w.text.strip()]  # fmt: skip
    assert words, "the random Whisper heard nothing: nothing to check"
    assert lyrics_text(chart.notes).split() == " ".join(words).split()


# -- numbers and compounds as they are sung -----------------------------------------------------------
def test_numbers_are_spelled_as_they_are_sung():
    from ultrasinger_gpu_cli.song.spoken import spell_numbers

    heard = [Word(t, k, k + 0.5) for k, t in enumerate([" 22,", " 1999", " 3rd", " 1,000", " (2005)", " MP3", " 4ever",
                                                        " 3.5", " 80s", " 100%", " $5", " 12345678", " words"])]  # fmt: skip
    spelled = spell_numbers(heard, "en")
    assert [w.text for w in spelled] == [" twenty-two,", " nineteen ninety-nine", " third", " one thousand",
                                         " (two thousand and five)", " MP3", " 4ever", " 3.5", " 80s", " 100%",
                                         " $5", " 12345678", " words"]  # fmt: skip
    assert [(w.start_s, w.end_s) for w in spelled] == [(w.start_s, w.end_s) for w in heard]  # the times are Whisper's
    german = [w.text for w in spell_numbers(heard[:4], "de")]
    assert german == [" zweiundzwanzig,", " neunzehnhundertneunundneunzig", " 3rd", " 1,000"]  # no English forms
    assert [w.text for w in spell_numbers(heard[:2], "ja")] == [" 二十二,", " 千九百九十九"]  # years as numbers there
    assert spell_numbers(heard, "xx") == heard and spell_numbers(heard, None) == heard  # a language it cannot say


def test_titles_are_written_as_sung_and_end_no_sentence():
    from ultrasinger_gpu_cli.song.notes import phrase_starts, listen_all, PitchTrackView, sentence_end
    from ultrasinger_gpu_cli.song.spoken import as_sung

    heard = [Word(f" {t}", k * 0.5, k * 0.5 + 0.4) for k, t in enumerate("for Mr. Fancy Pants, mrs. Dr. St. Sra. 2nd".split())]
    assert [w.text.strip() for w in as_sung(heard, "en")] == ["for", "Mister", "Fancy", "Pants,", "missus", "Doctor", "St.",
                                                             "Sra.", "second"]  # fmt: skip
    assert [w.text for w in as_sung(heard, "es")] == [w.text for w in heard]  # English titles only
    assert not any(sentence_end(t) for t in ("Mr.", "St.", "Sra.", '"Dr."')) and sentence_end("Pants.")
    # "for Mr. Fancy Pants": one line, where Whisper's full stop after "Mr." used to end it.
    times, freq, conf = track_of([(0.0, 4.0, midi_to_hz(60))])
    voices, _ = listen_all([Word(f" {t}", k * 0.5, k * 0.5 + 0.4) for k, t in enumerate("say a prayer for Mr. Fancy Pants".split())],
                           PitchTrackView(times, freq, conf))  # fmt: skip
    assert phrase_starts(voices) == [0]


def test_a_word_of_marks_alone_is_not_sung():
    """Whisper writes " . . ." over an instrumental stretch: those were notes whose text was "."
    (a chart of nothing but dots for an instrumental). Marks alone are no sung word: not from
    Whisper, not from a words JSON, and a lyrics file's "—" or "..." stays punctuation on its word."""
    from ultrasinger_gpu_cli.song.lyrics import _parse
    from ultrasinger_gpu_cli.song.spoken import as_sung
    from ultrasinger_gpu_cli.song.timings import _from_json

    assert as_sung([Word(" .", 13.8, 15.2, phrase_start=True), Word(" .", 15.2, 19.9), Word(" .", 19.9, 19.9)], "en") == []
    heard = [Word(" So", 1.0, 1.3, phrase_start=True), Word(" far", 1.3, 1.8), Word(" ...", 2.0, 6.0),
             Word(" ♪", 6.0, 7.0, phrase_start=True), Word(" Hey", 7.0, 7.4), Word(" 23", 7.4, 8.0), Word(" 你好", 8.0, 8.5)]
    sung = as_sung(heard, "en")
    assert [(w.text.strip(), w.phrase_start) for w in sung] == [("So", True), ("far", False), ("Hey", True),
                                                                 ("twenty-three", False), ("你好", False)]  # fmt: skip
    # A words JSON (ugpu whisper's, or a user's): a segment opened by a mark starts its line at its first word.
    words, _ = _from_json(json.dumps({"segments": [{"words": [{"word": "-", "start": 0.0, "end": 0.2},
                                                              {"word": "Hey", "start": 0.2, "end": 0.6}]}]}), Path("w.json"))
    assert [(w.text, w.phrase_start) for w in words] == [("Hey", True)]
    lines = [line.words for line in _parse("Hey — you, come here ...\n...\nI - I - I will\n— So far\n")]
    assert lines == [("Hey —", "you,", "come", "here ..."), (), ("I -", "I -", "I", "will"), ("— So", "far")]
    # Built into a chart: every note has a letter, and every written mark is still there.
    times, freq, conf = track_of([(0.0, 6.0, midi_to_hz(60))])
    units = [Word(t, k * 0.5, k * 0.5 + 0.4) for k, t in enumerate(("Hey —", "you,", "I -", "I"))]
    song = build_song(units, times, freq, conf, tempo=120.0, title="t", artist="a", language="en")
    assert all(any(ch.isalnum() for ch in n.text) for n in song.notes)
    assert lyrics_text(song.notes).split() == ["Hey", "—", "you,", "I", "-", "I"]


def test_hyphenated_words_split_at_their_hyphens():
    from ultrasinger_gpu_cli.song.syllables import split_words

    def sung(text: str) -> list[str]:
        return [u.text for u in split_words([Word(text, 0.0, 1.0)], "en")]

    assert sung(" twenty-two,") == ["twen", "ty-", "two,"]  # not "ty-t", "wo,"
    assert sung(" one-way") == ["one-", "way"]
    assert sung(" -way") == ["-way"]  # a hyphen with no word before it is no compound


# -- onsets: Whisper's starts moved onto the voice (issue 21) ----------------------------------------
def test_a_recognised_word_starts_where_the_voice_does():
    from ultrasinger_gpu_cli.song.onsets import SEARCH_S, refine_starts, voice_onsets

    # Sung: 1.00-1.60 at C4, legato into 1.60-2.20 at E4; a pause; 3.00-3.50 at G4.
    times, freq, conf = track_of([(1.0, 1.6, midi_to_hz(60)), (1.6, 2.2, midi_to_hz(64)), (3.0, 3.5, midi_to_hz(67))])
    onsets = voice_onsets(times, freq, conf > 0.5)
    assert list(np.round(onsets.voicing, 2)) == [1.0, 3.0] and list(np.round(onsets.levels, 2)) == [1.0, 1.6, 3.0]
    # Whisper's marks, late and early by a few of its frames, and one word with no onset in reach
    # (it keeps its start).
    heard = [Word(" one", 1.1, 1.6), Word(" two", 1.52, 2.2), Word(" three", 3.12, 3.5), Word(" hum", 5.0, 5.4)]
    moved = refine_starts(heard, onsets)
    assert [round(w.start_s, 2) for w in moved] == [1.0, 1.6, 3.0, 5.0]
    assert all(a.end_s <= b.start_s for a, b in zip(moved, moved[1:]))
    # Never further than the search reaches, either way, nor onto the word before.
    for start in (3.0 + SEARCH_S + 0.05, 3.0 - SEARCH_S - 0.05):
        assert refine_starts([Word(" far", start, 3.5)], onsets)[0].start_s == pytest.approx(start)
    crowded = refine_starts([Word(" a", 0.98, 1.05), Word(" b", 1.1, 1.5)], onsets)
    assert crowded[1].start_s >= crowded[0].start_s + 0.06


def test_a_word_whisper_heard_short_does_not_take_its_neighbours_onset():
    from ultrasinger_gpu_cli.song.onsets import refine_starts, voice_onsets

    # Legato: C4 from 0.5 s, E4 from 1.0 s, G4 from 1.3 s; one word on each note.
    times, freq, conf = track_of([(0.5, 1.0, midi_to_hz(60)), (1.0, 1.3, midi_to_hz(64)), (1.3, 1.8, midi_to_hz(67))])
    onsets = voice_onsets(times, freq, conf > 0.5)
    assert list(np.round(onsets.levels, 2)) == [0.5, 1.0, 1.3]
    # Whisper heard the second word short and late: the onset nearest its start is the third word's.
    heard = [Word(" x", 0.6, 1.0), Word(" a", 1.18, 1.4), Word(" b", 1.42, 1.8)]
    assert [round(w.start_s, 2) for w in refine_starts(heard, onsets)] == [0.5, 1.0, 1.3]



def test_a_long_word_that_took_a_rest_starts_where_the_voice_comes_back():
    from ultrasinger_gpu_cli.song.onsets import PAUSE_S, after_rests, refine_starts, voice_onsets

    # Sung: "so far a-" 1.0-2.0, a held "way" 2.0-3.4; an instrumental bar (no voice) 3.4-5.0;
    # "home" 5.0-5.4; a breath; "is" 5.6-5.9 (a rest shorter than PAUSE_S); "you" 6.5-6.8, a
    # rest, and a moment of voice at 7.4-7.6 (the next line's pickup, or an instrument).
    times, freq, conf = track_of([(1.0, 1.3, midi_to_hz(60)), (1.3, 1.6, midi_to_hz(62)), (1.6, 2.0, midi_to_hz(64)),
                                  (2.0, 3.4, midi_to_hz(65)), (5.0, 5.4, midi_to_hz(67)), (5.6, 5.9, midi_to_hz(65)),
                                  (6.5, 6.8, midi_to_hz(64)), (7.4, 7.6, midi_to_hz(62))])  # fmt: skip
    onsets = voice_onsets(times, freq, conf > 0.5)
    assert list(np.round(onsets.voicing, 2)) == [1.0, 5.0, 5.6, 6.5, 7.4]
    # Whisper's alignment gave the bar to "home" (it starts where "way" ended, no voice near):
    # it starts where the voice comes back. "way" is as long but sung through; "is" follows a
    # breath, not a rest; "you" took the rest after it, but the voice starts at its start.
    heard = [Word(" so", 1.0, 1.3), Word(" far", 1.3, 1.6), Word(" a", 1.6, 2.0), Word("way", 2.0, 3.4),
             Word(" home", 3.4, 5.4), Word(" is", 5.4, 5.9), Word(" you", 6.5, 7.6)]
    rested = after_rests(heard, onsets)
    assert [round(w.start_s, 2) for w in rested] == [1.0, 1.3, 1.6, 2.0, 5.0, 5.4, 6.5]
    assert [round(w.start_s, 2) for w in refine_starts(heard, onsets)] == [1.0, 1.3, 1.6, 2.0, 5.0, 5.6, 6.5]
    assert 5.6 - 5.4 < PAUSE_S < 7.4 - 6.8
    # No voice after the rest inside the word (the tracker lost it): Whisper's start stays.
    silent = [*heard[:4], Word(" home", 3.4, 4.9)]
    assert after_rests(silent, onsets)[4].start_s == 3.4


def test_a_word_holding_a_phrase_long_rest_starts_after_it_unless_it_ends_its_line():
    from dataclasses import replace

    from ultrasinger_gpu_cli.song.onsets import PHRASE_PAUSE_S, after_rests, voice_onsets

    # Sung: "you" 0.5-0.8, a held "soon" 1.0-2.5 and its last moment (or the band) 2.7-3.0, an
    # instrumental break, "twenty-three" from 4.5 s, "to be-lieve" 5.2-6.1. Whisper's alignment
    # gave the break to "twenty-three", which starts where a voice starts (2.7 s): the held end.
    def starts(break_end: float, line_after: bool) -> list[float]:
        times, freq, conf = track_of([(0.5, 0.8, midi_to_hz(64)), (1.0, 2.5, midi_to_hz(67)), (2.7, 3.0, midi_to_hz(67)),
                                      (break_end, 5.2, midi_to_hz(62)), (5.2, 5.5, midi_to_hz(64)),
                                      (5.5, 5.8, midi_to_hz(65)), (5.8, 6.1, midi_to_hz(64))])  # fmt: skip
        onsets = voice_onsets(times, freq, conf > 0.5)
        heard = [Word(" you", 0.5, 0.8), Word(" soon", 1.0, 2.7), Word(" twenty-three", 2.7, 5.2), Word(" to", 5.2, 5.5),
                 Word(" be", 5.5, 5.8), Word("lieve", 5.8, 6.1)]  # fmt: skip
        if line_after:  # "to" starts the next line: "twenty-three" ends its own
            heard[3] = replace(heard[3], phrase_start=True)
        return [round(w.start_s, 2) for w in after_rests(heard, onsets)]

    assert 4.5 - 3.0 >= PHRASE_PAUSE_S > 3.6 - 3.0
    assert starts(4.5, line_after=False) == [0.5, 1.0, 4.5, 5.2, 5.5, 5.8]  # after the break: where it is sung
    assert starts(3.6, line_after=False)[2] == 2.7  # a rest shorter than a phrase's pause: a held note may hold it
    assert starts(4.5, line_after=True)[2] == 2.7  # a line's last word: the break after it is its end


def test_the_pipeline_moves_recognised_words_only():
    words = [Word(" la", 1.1, 1.6), Word(" lo", 3.12, 3.5)]
    times, freq, conf = track_of([(1.0, 1.6, midi_to_hz(60)), (3.0, 3.5, midi_to_hz(67))])
    for refine, first in ((True, 1.0), (False, 1.1)):
        song = build_song(words, times, freq, conf, tempo=Tempo(150.0, 0.0), title="T", artist="A", refine_onsets=refine)
        assert song.note_times()[0][0] == pytest.approx(first, abs=song.beat_s / 2 + 1e-9)


# -- pitch per note: held frames, confidence, the voice's range (issue 21) ---------------------------
def test_a_note_s_pitch_is_the_held_one_not_the_median_of_a_scoop():
    from ultrasinger_gpu_cli.song.notes import note_pitch

    scoop = np.linspace(60.0, 63.6, 16)  # sliding up into the note: 24 semitones a second (10 ms frames)
    held = 64 + 0.2 * np.sin(np.arange(10) / 2)  # then holding E4 with a little vibrato
    midi = np.concatenate([scoop, held])
    assert round(float(np.median(midi))) == 63  # a plain median lands a semitone flat
    assert round(note_pitch(midi, step_s=0.01)) == 64
    # Unsure frames count less: a confident E4 beats as many doubtful F#4 frames.
    assert round(note_pitch(np.r_[np.full(8, 64.0), np.full(8, 66.0)], np.r_[np.full(8, 0.95), np.full(8, 0.55)])) == 64


def test_a_voice_rising_into_its_note_all_through_it_is_written_at_the_pitch_it_reaches():
    """A slow scoop (under the 20 semitones a second the held frames allow) that lasts the whole
    note: the voice dwells low and arrives at the note late, and a person charting it writes the
    note it reaches for (On the run's "one," held at A3 +40 cents rising to B3: hand B3; 14 and 20
    such notes on the two real songs, re-pitch exact +0.8 and +2.1 points). A fall is a release:
    the held pitch stays; a rise of less than a semitone is intonation."""
    from ultrasinger_gpu_cli.song.notes import note_pitch

    rising = np.r_[np.full(14, 61.0), np.linspace(61.0, 62.9, 12), np.full(4, 63.0)]  # 10 ms frames: 16 st/s
    assert round(note_pitch(rising, step_s=0.01)) == 63
    assert round(note_pitch(rising, np.r_[np.full(18, 0.95), np.full(12, 0.55)], step_s=0.01)) == 61  # unsure up there
    assert round(note_pitch(rising[::-1], step_s=0.01)) == 61  # falling off the note: the held pitch
    slight = np.r_[np.full(14, 62.0), np.linspace(62.0, 62.6, 12), np.full(4, 62.6)]
    assert round(note_pitch(slight, step_s=0.01)) == 62
    wobble = np.r_[np.full(10, 61.0), np.full(10, 63.0), np.full(10, 61.0), np.full(2, 63.0)]  # up and down: no rise
    assert round(note_pitch(wobble, step_s=0.01)) == 61

def test_a_bass_line_the_tracker_followed_does_not_make_the_note():
    # Eight sung notes around A3; inside the sixth, the tracker follows a bass line two octaves
    # and a third down for most of the note, the voice's own frames only at its end.
    notes = [(1.0 + k * 0.5, 0.4, 57 + (k % 3)) for k in range(8)]
    times, freq, conf = track_of([(s, s + n, midi_to_hz(m)) for s, n, m in notes])
    s6 = notes[5][0]
    freq[(times >= s6) & (times < s6 + 0.3)] = midi_to_hz(33)
    words = [Word(f" la{k}", s, s + n) for k, (s, n, _) in enumerate(notes)]
    song = build_song(words, times, freq, conf, tempo=120, title="T", artist="A", split_syllables=False)
    assert [n.midi for n in song.notes] == [m for _, _, m in notes]


# -- re-pitch keeps a melisma on the chart's own grid (issue 21) ------------------------------------
def test_repitch_splits_a_sung_melisma_on_the_chart_s_grid():
    from ultrasinger_gpu_cli.song.notes import repitch_parts
    from ultrasinger_gpu_cli.song.ultrastar import chart_song

    # 14 syllables; six of them carry two pitches each (0.5 s + 0.5 s): 20 sung pitches.
    sung, lines, t = [], ["#VERSION:1.1.0", "#TITLE:M", "#ARTIST:A", "#MP3:a.mp3", "#BPM:300", "#GAP:1000"], 1.0
    for k in range(14):
        pitches = [60 + (k * 3) % 12, 62 + (k * 3) % 12] if k % 7 in (1, 3, 5) else [60 + (k * 5) % 12]
        length = 0.5 * len(pitches)
        sung += [(t + 0.5 * j, 0.5, p) for j, p in enumerate(pitches)]
        lines.append(f": {round((t - 1.0) / 0.05)} {round(length / 0.05)} 0 la{k} ")
        t += length + 0.1
    chart = read_chart("\n".join(lines + ["E"]) + "\n")
    times, freq, conf = track_of([(s, s + n - 0.01, midi_to_hz(m)) for s, n, m in sung], duration=t + 1)
    parts = repitch_parts(chart, times, freq, conf)
    out = read_chart(repitch(chart, parts, audio="a.mp3"))
    assert [n.pitch + 60 for n in out.notes] == [m for _, _, m in sung]  # 20 of 20, in order
    assert sum(n.text.strip() == "~" for n in out.notes) == 6 and out.notes[-1].text == "la13 "
    assert all(n.length_beats >= 1 for n in out.notes)
    # The parts cover each syllable's beats exactly: a "~" starts where its syllable's first part ends.
    assert all(a.end_beat == b.start_beat for a, b in zip(out.notes, out.notes[1:]) if b.text.strip() == "~")
    assert out.notes[-1].end_beat == chart.notes[-1].end_beat
    assert len(chart_song(chart, parts, title="M", artist="A", language=None).notes) == 20


# -- eval: the chart's octave, both word spacings, word onsets (issue 21) ---------------------------
def test_eval_finds_the_chart_s_octave_and_reads_both_word_spacings():
    from ultrasinger_gpu_cli.song.evaluation import score

    head = "#VERSION:1.1.0\n#TITLE:T\n#ARTIST:A\n#BPM:300\n#GAP:1000\n"
    # The hand chart writes a word's space before its syllable, and a melisma's letters on "~n".
    hand = read_chart(head + ": 0 4 7 Hel\n: 4 4 9 lo\n: 10 4 7  my\n: 16 4 5  dar\n: 20 4 4 ling\n: 24 2 4 ~s\n- 30\n"
                      ": 32 4 2 Yes\nE\n")  # fmt: skip
    assert [w.text for w in hand.lyric_words()] == ["Hello", "my", "darlings", "Yes"]
    # The same melody an octave up, the space after each word, 50 ms late, no note for "~s".
    gen = read_chart(head + ": 1 4 19 Hel\n: 5 4 21 lo \n: 11 4 19 my \n: 17 4 17 dar\n: 21 6 16 lings \n- 30\n"
                     ": 33 4 14 Yes \nE\n")  # fmt: skip
    s = score(gen, hand)
    assert s.octave_offset == 1 and s.pitch_exact == 1.0 and s.note_f1 == s.note_f1_octave
    assert s.note_precision == 1.0 and s.note_recall == pytest.approx(6 / 7)
    assert s.words_matched == 1.0 and s.word_onset_median_ms == pytest.approx(50, abs=1) and s.words_within_100ms == 1.0
    assert s.word_onset_offset_ms == pytest.approx(50, abs=1)  # late: the timing offset is signed
    assert score(hand, gen).word_onset_offset_ms == pytest.approx(-50, abs=1)
    assert s.lyric_similarity == 1.0 and s.bpm == s.reference_bpm == 300


# -- the song's key (keys.py) ------------------------------------------------------------------------
C_MAJOR_TUNE = [60, 62, 64, 65, 67, 69, 71, 72, 71, 69, 67, 65, 64, 62]  # up and down the C major scale


def _keyed_song(pitches: list[float]) -> list[int]:
    starts = [1.0 + 0.5 * k for k in range(len(pitches))]
    times, freq, conf = track_of([(s, s + 0.4, midi_to_hz(p)) for s, p in zip(starts, pitches)], duration=2 + 0.5 * len(pitches))
    words = [Word(f" la{k}", s, s + 0.4) for k, s in enumerate(starts)]
    song = build_song(words, times, freq, conf, tempo=120, title="T", artist="A", split_syllables=False)
    return [n.midi for n in song.notes]


def test_a_note_sung_between_two_tones_is_written_as_the_key_s_tone_it_leans_to():
    flat = list(map(float, C_MAJOR_TUNE))
    flat[2] = 63.4  # E4 sung 60 cents flat: the nearest semitone is D#4, outside C major
    flat[9] = 68.4  # A4 sung 60 cents flat: nearest G#4
    assert _keyed_song(flat) == C_MAJOR_TUNE
    # No key, no change: the same two notes in a chromatic run stay where the voice put them.
    chromatic = [60.0, 61.0, 62.0, 63.4, 64.0, 65.0, 66.0, 67.0, 68.4, 69.0, 70.0, 71.0]
    assert _keyed_song(chromatic) == [60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 71]


def _song_of(segments_per_note: list[list[tuple[float, float, float]]], gap_s: float = 0.1) -> list[int]:
    """A chart's pitches from notes 0.4 s long, ``gap_s`` apart, each tracked as its (start
    fraction, end fraction, MIDI) segments say."""
    starts = [1.0 + (0.4 + gap_s) * k for k in range(len(segments_per_note))]
    segments = [(s + 0.4 * a, s + 0.4 * b, midi_to_hz(m)) for s, parts in zip(starts, segments_per_note) for a, b, m in parts]
    times, freq, conf = track_of(segments, duration=2 + (0.4 + gap_s) * len(starts))
    words = [Word(f" la{k}", s, s + 0.4) for k, s in enumerate(starts)]
    return [n.midi for n in build_song(words, times, freq, conf, tempo=120, title="T", artist="A", split_syllables=False).notes]


def test_a_note_that_leaps_away_and_straight_back_is_heard_again_in_its_phrase():
    """Hand charts have no note that leaps 7 semitones or more from both its neighbours on one
    side (none in 589 notes of the two real charts); ugpu wrote 5 and 14 of them on the real songs,
    the tracker's octave flips and a mix's chord tones. Such a note is heard again from its frames
    near its neighbours, else folded by an octave; a real leap, one that does not come straight
    back or across a breath, stays."""
    tune = [[(0.0, 1.0, m)] for m in C_MAJOR_TUNE]
    flipped = [list(n) for n in tune]
    flipped[5] = [(0.0, 1.0, 57.0)]  # A4 tracked an octave down, all of it
    assert _song_of(flipped) == C_MAJOR_TUNE
    chord = [list(n) for n in tune]
    chord[5] = [(0.0, 0.7, 59.0), (0.7, 1.0, 69.0)]  # a chord tone of the mix for most of A4
    assert _song_of(chord) == C_MAJOR_TUNE
    assert _song_of(flipped, gap_s=0.9)[5] == 57  # between breaths each note is heard alone
    leap = [[(0.0, 1.0, m)] for m in (64, 65, 67, 76, 77, 76, 74, 72)]  # up a sixth and on from there
    assert _song_of(leap) == [64, 65, 67, 76, 77, 76, 74, 72]

def test_a_tone_outside_the_key_sung_in_tune_is_meant_and_kept():
    tune = list(map(float, C_MAJOR_TUNE))
    tune[4] = 66.0  # a sharp fourth, sung squarely
    assert _keyed_song(tune) == [*C_MAJOR_TUNE[:4], 66, *C_MAJOR_TUNE[5:]]


def test_a_song_that_changes_key_is_read_in_each_stretch_s_own_key():
    from ultrasinger_gpu_cli.song.keys import KEY_WINDOW_S, SungKey

    c_major = [(2.0 * k, 2.0 * k + 1.5, C_MAJOR_TUNE[k % len(C_MAJOR_TUNE)]) for k in range(40)]
    d_flat = [(100.0 + 2.0 * k, 101.5 + 2.0 * k, C_MAJOR_TUNE[k % len(C_MAJOR_TUNE)] + 1) for k in range(40)]
    key = SungKey.of(c_major + d_flat)
    assert key.write(61.3, 20.0) == 62  # C#/Db sung sharp in C major: D
    assert key.write(61.3, 100.0 + KEY_WINDOW_S + 10) == 61  # in D-flat major, Db itself
    assert key.write(62.4, 100.0 + KEY_WINDOW_S + 10) == 63  # D is outside it: Eb, where the voice leans
    assert SungKey.of([]).write(61.4, 1.0) == 61  # no notes, no key: the nearest semitone
