"""Decoding through ffmpeg, resampling, atomic writes, and every bad input."""

from __future__ import annotations

import math
import os
import subprocess

import numpy as np
import pytest

from pathlib import Path

from tests.audio_factory import encode, song, sung_note, write_wav
from ultrasinger_gpu_cli.song import audio as audio_io
from ultrasinger_gpu_cli.errors import AudioError
from ultrasinger_gpu_cli.files import atomic_path

ROOT = Path(__file__).resolve().parent.parent


def _peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


@pytest.fixture(scope="module")
def tone_wav(tmp_path_factory):
    rate = 48_000
    t = np.arange(rate * 2) / rate
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return write_wav(tmp_path_factory.mktemp("tone") / "tone.wav", np.stack([tone, tone]), rate)


@pytest.mark.parametrize(
    ("suffix", "args"),
    [(".mp3", []), (".m4a", ["-c:a", "aac"]), (".ogg", ["-c:a", "libvorbis"]), (".opus", ["-c:a", "libopus"]),
     (".flac", []), (".wav", [])],
)  # fmt: skip
def test_decodes_common_formats_at_the_rate_asked(tmp_path, tone_wav, suffix, args):
    source = encode(tone_wav, tmp_path / f"tone{suffix}", *args)
    stereo = audio_io.decode(source, 44_100, 2)
    assert stereo.samples.dtype == np.float32 and stereo.samples.shape[0] == 2 and stereo.sample_rate == 44_100
    assert stereo.duration_s == pytest.approx(2.0, abs=0.1)
    mono = audio_io.decode(source, 16_000, 1)
    assert mono.samples.shape[0] == 1
    assert _peak_hz(mono.samples[0], 16_000) == pytest.approx(440, abs=2)


def test_mono_is_the_level_whispers_own_loader_gives(tmp_path):
    """Mono is mixed as openai-whisper's ``ffmpeg -f s16le -ac 1`` and faster-whisper's s16 PyAV
    resampler mix it (the two channels' mean), not float output's -3 dB per channel: Whisper's
    log-mel features are not level-invariant, so ``ugpu whisper song.mp3`` must hear what
    ``whisper song.mp3`` hears. Loud, different channels, so a mix 3 dB hotter would peak above 1."""
    rate = 16_000
    t = np.arange(rate) / rate
    left, right = 0.9 * np.sin(2 * np.pi * 440 * t), 0.9 * np.sin(2 * np.pi * 440 * t + 0.3)
    source = write_wav(tmp_path / "loud.wav", np.stack([left, right]).astype(np.float32), rate)
    mono = audio_io.decode(source, rate, 1).samples[0]
    stereo = audio_io.decode(source, rate, 2).samples
    whisper_loader = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(source), "-ac", "1", "-ar",
                                     str(rate), "-f", "s16le", "-"], capture_output=True, check=True).stdout  # fmt: skip
    reference = np.frombuffer(whisper_loader, "<i2") / 32768.0
    assert len(mono) == len(reference)
    np.testing.assert_allclose(mono, reference, atol=2e-4)
    np.testing.assert_allclose(mono, stereo.mean(axis=0), atol=1e-6)
    assert np.abs(mono).max() < 0.9


def test_decodes_the_audio_track_of_a_video(tmp_path, tone_wav):
    video = tmp_path / "clip.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-f", "lavfi", "-i", "color=c=black:s=64x64:d=2",
                    "-i", str(tone_wav), "-shortest", "-c:v", "libx264", "-c:a", "aac", str(video)], check=True)  # fmt: skip
    decoded = audio_io.decode(video, 16_000, 1)
    assert _peak_hz(decoded.samples[0], 16_000) == pytest.approx(440, abs=2)


@pytest.mark.parametrize(("suffix", "codec"), [(".ogg", "libvorbis"), (".opus", "libopus"), (".mp3", "libmp3lame")])
def test_the_song_s_tags_are_read_where_its_format_keeps_them(tmp_path, tone_wav, suffix, codec):
    """Ogg and Opus keep their tags (Vorbis comments) in the audio stream, MP3 in the file: both
    name the song; a picture stream's own title ("Album cover") never does."""
    from ultrasinger_gpu_cli.song.tags import song_tags

    source = encode(tone_wav, tmp_path / f"file{suffix}", "-c:a", codec, "-metadata", "artist=The Band",
                    "-metadata", "title=The Song", "-metadata", "date=2001-02-03", "-metadata", "genre=Folk")  # fmt: skip
    tags = song_tags(source)
    assert (tags.artist, tags.title, tags.year, tags.genre, tags.cover) == ("The Band", "The Song", "2001", "Folk", None)
    # A title tag that holds both, with no artist tag (as On the run's Ogg has it): split as a file name is.
    both = encode(tone_wav, tmp_path / f"both{suffix}", "-c:a", codec, "-metadata", "title=Joshua Morin - On The Run")
    assert (song_tags(both).artist, song_tags(both).title) == ("Joshua Morin", "On The Run")


@pytest.mark.parametrize(("name", "expected"), [
    ("Rick Astley - Never Gonna Give You Up (Official Music Video) [dQw4w9WgXcQ]", ("Rick Astley", "Never Gonna Give You Up")),
    ("Jonathan Coulton \u2013 Mr. Fancy Pants", ("Jonathan Coulton", "Mr. Fancy Pants")),  # an en dash
    ("Band \u2014 Song (Remastered 2011)", ("Band", "Song (Remastered 2011)")),  # an em dash; a bracket that says something
    ("01 - Queen - Bohemian Rhapsody", ("Queen", "Bohemian Rhapsody")),
    ("311 - Amber", ("311", "Amber")),  # a band's name, no track number
    ("01. Hello", (None, "Hello")), ("07 Yesterday", (None, "Yesterday")),
    ("99 Luftballons", (None, "99 Luftballons")),  # a title's own number
    ("Artist_-_Song_Title", ("Artist", "Song Title")),
    ("Song (feat. Guest) [HD] (Lyrics)", (None, "Song (feat. Guest)")), ("Song (Live)", (None, "Song (Live)")),
    ("Song [abcdefghijk]", (None, "Song")), ("(Official Video)", (None, "(Official Video)")),
])  # fmt: skip
def test_a_song_is_named_as_people_s_files_carry_its_name(name, expected):
    """Artist and title from names as downloads and rips write them: any dash between them, a
    track number before, a video site's additions after ("(Official Music Video)", yt-dlp's
    "[video id]") left out, what says something of the song kept."""
    from ultrasinger_gpu_cli.song.tags import named

    assert named(name) == expected


def test_a_video_site_download_is_named_by_its_title_not_its_channel(tmp_path, tone_wav):
    """yt-dlp tags a download with the uploader's channel as artist and the video's title as
    title, the page in ``purl``/``comment``: the title's "Artist - Title" names the song; without
    one, the channel is the artist (its "VEVO" / " - Topic" left out). A file tagged by a person
    keeps its tags as they are."""
    from ultrasinger_gpu_cli.song.tags import song_tags

    page = ["-metadata", "comment=https://www.youtube.com/watch?v=dQw4w9WgXcQ",
            "-metadata", "purl=https://www.youtube.com/watch?v=dQw4w9WgXcQ"]  # fmt: skip
    video = encode(tone_wav, tmp_path / "Never Gonna [dQw4w9WgXcQ].mp3", "-c:a", "libmp3lame", *page,
                   "-metadata", "artist=RickAstleyVEVO",
                   "-metadata", "title=Rick Astley - Never Gonna Give You Up (Official Music Video)")  # fmt: skip
    assert (song_tags(video).artist, song_tags(video).title) == ("Rick Astley", "Never Gonna Give You Up")
    channel = encode(tone_wav, tmp_path / "b.mp3", "-c:a", "libmp3lame", *page, "-metadata", "artist=Some Band - Topic",
                     "-metadata", "title=Their Song (Official Audio)")  # fmt: skip
    assert (song_tags(channel).artist, song_tags(channel).title) == ("Some Band", "Their Song")
    person = encode(tone_wav, tmp_path / "c.mp3", "-c:a", "libmp3lame", "-metadata", "artist=Beethoven",
                    "-metadata", "title=Symphony No. 5 - I. Allegro con brio")  # fmt: skip
    assert (song_tags(person).artist, song_tags(person).title) == ("Beethoven", "Symphony No. 5 - I. Allegro con brio")
    untagged = encode(tone_wav, tmp_path / "01 - Jonathan Coulton \u2013 Mr. Fancy Pants.wav")
    assert (song_tags(untagged).artist, song_tags(untagged).title) == ("Jonathan Coulton", "Mr. Fancy Pants")


def test_resample_keeps_pitch_and_length():
    rate = 44_100
    t = np.arange(rate) / rate
    x = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    y = audio_io.resample(x, rate, 16_000)
    assert len(y) == 16_000 and y.dtype == np.float32
    assert _peak_hz(y, 16_000) == pytest.approx(1000, abs=2)
    assert np.sqrt(np.mean(y[1000:-1000] ** 2)) == pytest.approx(np.sqrt(0.5), rel=0.01)


@pytest.mark.parametrize(("from_rate", "to_rate"), [(44_100, 16_000), (48_000, 16_000), (22_050, 16_000), (32_000, 16_000),
                                                    (8_000, 16_000), (16_000, 44_100), (48_000, 44_100), (11_025, 16_000),
                                                    (96_000, 16_000), (44_100, 48_000)])  # fmt: skip
def test_resampling_is_scipys_resample_poly_bit_for_bit(from_rate, to_rate):
    """The song's path resamples without importing scipy.signal; the result is still scipy's, to
    the last bit, for signals of any length, in float32 and float64, one channel or two."""
    from scipy.signal import resample_poly as scipys

    from ultrasinger_gpu_cli.song.polyphase import resample_poly

    g = math.gcd(from_rate, to_rate)
    up, down = to_rate // g, from_rate // g
    rng = np.random.default_rng(from_rate + to_rate)
    for n in (1, 5, up + 1, down * 3 + 7, 40_000):
        x = rng.standard_normal(n).astype(np.float32)
        ours, theirs = resample_poly(x, up, down), scipys(x, up, down)
        assert ours.dtype == theirs.dtype == np.float32 and ours.shape == theirs.shape
        assert np.array_equal(ours, theirs), (n, np.max(np.abs(ours - theirs)))
    stereo = rng.standard_normal((2, 9_000))
    ours, theirs = resample_poly(stereo, up, down), scipys(stereo, up, down, axis=-1)
    assert ours.dtype == np.float64 and np.array_equal(ours, theirs)
    for empty in (np.zeros(0, np.float32), np.zeros((2, 0))):  # a stream's block can be empty
        ours, theirs = resample_poly(empty, up, down), scipys(empty, up, down, axis=-1)
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype


def test_the_resampling_filter_is_scipys_design():
    from scipy.signal import firwin

    from ultrasinger_gpu_cli.song.polyphase import lowpass

    for up, down in ((160, 441), (1, 3), (441, 160), (147, 160)):
        rate = max(up, down)
        assert np.array_equal(lowpass(up, down), firwin(20 * rate + 1, 1.0 / rate, window=("kaiser", 5.0)))


def _bad_inputs(tmp_path):
    empty = tmp_path / "empty.mp3"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp3"
    text.write_text("these are not sounds\n" * 50)
    silent_video = tmp_path / "silent.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-f", "lavfi", "-i", "color=c=black:s=64x64:d=1",
                    "-c:v", "libx264", str(silent_video)], check=True)  # fmt: skip
    zero = write_wav(tmp_path / "zero.wav", np.zeros((2, 0), dtype=np.float32), 44_100)
    return {
        "missing": (tmp_path / "nope.mp3", "no such file"),
        "directory": (tmp_path, "is a directory"),
        "empty": (empty, "empty"),
        "not audio": (text, "not an audio"),
        "no audio track": (silent_video, "no audio track"),
        "zero length": (zero, "zero-length"),
    }


def test_every_bad_input_is_one_clear_error_naming_the_file(tmp_path):
    for name, (path, reason) in _bad_inputs(tmp_path).items():
        with pytest.raises(AudioError) as info:
            audio_io.decode(path)
        assert str(path) in str(info.value), name
        assert reason in str(info.value), (name, str(info.value))


def test_missing_ffmpeg_is_a_clear_error(tmp_path, tone_wav, monkeypatch):
    mp3 = encode(tone_wav, tmp_path / "tone.mp3")
    monkeypatch.setattr(audio_io.shutil, "which", lambda name: None)
    with pytest.raises(AudioError, match="ffmpeg is not installed") as info:
        audio_io.decode(mp3)
    assert "apt-get install ffmpeg" in info.value.hint


def test_atomic_writes_leave_nothing_on_failure(tmp_path):
    target = tmp_path / "out" / "vocals.wav"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half a file")
            raise RuntimeError("killed")
    assert not target.exists() and list(target.parent.iterdir()) == []
    audio_io.write_audio(target, np.zeros((2, 100), dtype=np.float32), 44_100)
    assert target.exists() and [p.name for p in target.parent.iterdir()] == ["vocals.wav"]


def test_short_and_silent_inputs_decode(tmp_path):
    short = write_wav(tmp_path / "short.wav", sung_note(220, 0.3, 44_100)[None], 44_100)
    assert audio_io.decode(short, 44_100, 2).duration_s == pytest.approx(0.3, abs=0.01)
    silent = write_wav(tmp_path / "silent.wav", np.zeros((1, 44_100), dtype=np.float32), 44_100)
    assert not audio_io.decode(silent, 16_000, 1).samples.any()


def test_unreadable_file(tmp_path, tone_wav):
    """A file the user may not read: a clear error naming why. As root (how CI runs) the decode
    runs without the capabilities that let root read any file, so the check happens there too."""
    import shlex
    import shutil
    import sys

    locked = tmp_path / "locked.wav"
    locked.write_bytes(tone_wav.read_bytes())
    locked.chmod(0)
    code = ("import sys\nfrom ultrasinger_gpu_cli.song import audio\nfrom ultrasinger_gpu_cli.errors import AudioError\n"
            "try:\n    audio.decode(sys.argv[1])\nexcept AudioError as exc:\n    print('AudioError:', exc)\n")  # fmt: skip
    command = [sys.executable, "-c", code, str(locked)]
    if os.geteuid() == 0:
        capsh = shutil.which("capsh")
        if capsh is None:
            pytest.skip("capsh is needed to make a file root cannot read (make test installs it)")
        command = [capsh, "--drop=cap_dac_override,cap_dac_read_search", "--", "-c", shlex.join(command)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert "AudioError:" in result.stdout and "permission denied" in result.stdout, result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_without_ffmpeg_wav_and_flac_are_read_through_soundfile(tmp_path, monkeypatch):
    """A machine without ffmpeg (the lent GPU machine, some users) still reads WAV and FLAC."""
    import soundfile

    decode = audio_io.decode
    mix = song(3.0)
    wav = write_wav(tmp_path / "a.wav", mix, 44_100)
    flac = tmp_path / "a.flac"
    soundfile.write(str(flac), mix.T, 44_100, subtype="PCM_16")
    mp3 = encode(wav, tmp_path / "a.mp3")
    with_ffmpeg = decode(wav, 16_000, 1)
    empty = tmp_path / "no-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no ffmpeg on the PATH
    for source in (wav, flac):
        mono = decode(source, 16_000, 1)
        assert mono.samples.shape[0] == 1 and abs(mono.samples.shape[1] - with_ffmpeg.samples.shape[1]) <= 1
        n = min(mono.samples.shape[1], with_ffmpeg.samples.shape[1])
        assert np.abs(mono.samples[0, 100 : n - 100] - with_ffmpeg.samples[0, 100 : n - 100]).max() < 0.01
    stereo = decode(wav, 44_100, 2)
    assert stereo.samples.shape == mix.shape and np.abs(stereo.samples - mix).max() < 1e-3
    with pytest.raises(AudioError, match="ffmpeg is not installed.*WAV, FLAC") as info:
        decode(mp3, 16_000, 1)
    assert str(mp3) in str(info.value) and "ffmpeg" in info.value.hint


def test_a_song_kept_in_memory_is_the_blocks_joined(monkeypatch):
    # The scan keeps the whole song (22 kHz and 16 kHz mono) in segments that are unmapped as
    # they are joined: the same samples as concatenating the blocks, across segment boundaries.
    from ultrasinger_gpu_cli.song.stream import SampleBuffer

    monkeypatch.setattr(SampleBuffer, "SEGMENT", 1000)
    rng = np.random.default_rng(5)
    blocks = [rng.standard_normal(int(n)).astype(np.float32) for n in rng.integers(0, 2500, 40)]
    buffer = SampleBuffer()
    for block in blocks:
        buffer.append(block)
    assert np.array_equal(buffer.array(), np.concatenate(blocks))
    assert len(buffer.array()) == 0  # emptied by the first call
    assert SampleBuffer().array().dtype == np.float32


def test_frame_levels_are_measured_a_block_at_a_time(monkeypatch):
    from ultrasinger_gpu_cli.song import vad

    audio = np.random.default_rng(6).standard_normal(16_000 * 7 + 123).astype(np.float32) * 0.1
    whole = vad.frame_db(audio, 16_000)
    monkeypatch.setattr(vad, "BLOCK_FRAMES", 37)
    assert np.array_equal(vad.frame_db(audio, 16_000), whole) and len(whole) == len(audio) // 320
    assert len(vad.frame_db(audio[:100], 16_000)) == 0
