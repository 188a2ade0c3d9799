"""Audio in and out. Decoding goes through ffmpeg once, to float32 at the rate an engine needs.

* :func:`decode` runs ffmpeg (soxr resampler where the build has it) and returns an
  :class:`Audio` of shape ``(channels, samples)``. Without ffmpeg, WAV, FLAC, AIFF and Ogg
  files are still read (through soundfile/libsndfile); other formats need ffmpeg. Every way an
  input can be unusable becomes one :class:`~ultrasinger_gpu_cli.errors.AudioError` naming
  the file and the reason.
* :func:`resample` is a polyphase (Kaiser-windowed) resampler for in-memory rate changes, so a
  song decoded once at 44.1 kHz feeds Whisper and CREPE at 16 kHz without a second decode.
* Long songs are read in blocks by :mod:`.stream`. Every file is written to a temporary name
  beside the target and renamed into place, so a truncated output never looks finished (:func:`.files.atomic_path`).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ultrasinger_gpu_cli.errors import AudioError
from ultrasinger_gpu_cli.files import atomic_path
from ultrasinger_gpu_cli.song.polyphase import resample_poly

#: The longest song ugpu decodes, in minutes (``UGPU_MAX_MINUTES`` or ``--max-minutes`` change it):
#: memory and disk grow with the length (the stems, the mono copies), and a small file can
#: decode to hours (a FLAC of silence compresses 2 hours into 1 MB).
DEFAULT_MAX_MINUTES = 120.0
ENV_MAX_MINUTES = "UGPU_MAX_MINUTES"

WHISPER_RATE = 16_000
DEMUCS_RATE = 44_100
INSTALL_FFMPEG = "install ffmpeg: `sudo apt-get install ffmpeg` (Debian/Ubuntu), `brew install ffmpeg` (macOS), `winget install ffmpeg` (Windows)"


@dataclass(frozen=True)
class Audio:
    samples: np.ndarray  # float32, (channels, n)
    sample_rate: int
    source: Path | None = None
    replaced_samples: int = 0  # NaN or infinite samples the file held, replaced by silence

    @property
    def notice(self) -> str | None:
        """What a person should know about the decode (non-finite samples replaced), or None."""
        if not self.replaced_samples:
            return None
        return (f"{self.source}: {self.replaced_samples} samples were not numbers (NaN or infinite) "
                "and were replaced by silence")  # fmt: skip

    @property
    def channels(self) -> int:
        return int(self.samples.shape[0])

    @property
    def duration_s(self) -> float:
        return self.samples.shape[-1] / self.sample_rate

    def mono(self) -> np.ndarray:
        return self.samples.mean(axis=0, dtype=np.float32) if self.channels > 1 else self.samples[0]


#: What libsndfile reads without ffmpeg.
#: Audio files a song folder takes as they are (anything else is re-encoded there).
AUDIO_SUFFIXES = {".mp3", ".ogg", ".m4a", ".opus", ".flac", ".wav", ".aac"}
#: The files a folder of songs gives ``ugpu run``: audio and video, by their suffix.
MEDIA_SUFFIXES = frozenset(AUDIO_SUFFIXES | {".wma", ".aif", ".aiff", ".aifc", ".mka", ".wv", ".ape", ".mp2", ".ac3",
                                             ".mp4", ".m4v", ".mkv", ".webm", ".mov", ".avi", ".flv", ".mpg", ".mpeg",
                                             ".ts", ".3gp", ".wmv", ".ogv"})  # fmt: skip
SOUNDFILE_SUFFIXES = (".wav", ".flac", ".aif", ".aiff", ".ogg")


class AudioTooLongError(AudioError):
    """A song longer than the limit ugpu decodes (a usage error: the limit can be raised)."""

    exit_code = 2


def max_seconds(minutes: float | None = None) -> float:
    """The decode limit in seconds: ``minutes`` if given, else ``UGPU_MAX_MINUTES``, else the default."""
    if minutes is None:
        try:
            minutes = float(os.environ.get(ENV_MAX_MINUTES, "") or DEFAULT_MAX_MINUTES)
        except ValueError:
            minutes = DEFAULT_MAX_MINUTES
    if not minutes > 0 or minutes != minutes:
        minutes = DEFAULT_MAX_MINUTES
    return min(float(minutes), 24 * 60.0) * 60.0


def too_long(path: Path, limit_s: float) -> AudioTooLongError:
    return AudioTooLongError(f"{path.name}: longer than {limit_s / 60:g} min, the longest song ugpu converts",
                             hint=f"cut the song, or raise the limit with --max-minutes or {ENV_MAX_MINUTES}")  # fmt: skip


def ffmpeg_path() -> str | None:
    return shutil.which("ffmpeg")


@functools.lru_cache(maxsize=None)
def _has_soxr(ffmpeg: str) -> bool:
    try:
        out = subprocess.run([ffmpeg, "-hide_banner", "-version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return "--enable-libsoxr" in out.stdout


def check_input(path: Path) -> None:
    """Refuse a missing file, a directory, an unreadable or empty file, naming it."""
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, not an audio file")
    import stat

    from ultrasinger_gpu_cli.song.textfiles import kind_of

    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        raise AudioError(f"{path}: {kind_of(mode)}, not an audio file", hint="give the song's file itself")
    if not os.access(path, os.R_OK):
        raise AudioError(f"{path}: permission denied")
    if path.stat().st_size == 0:
        if str(path.resolve()).startswith(("/proc/", "/sys/")):
            raise AudioError(f"{path}: a file of the kernel's ({path.resolve().parts[1]}), not an audio file")
        raise AudioError(f"{path}: the file is empty (0 bytes)")


def ffmpeg_reason(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    text = " ".join(lines).lower()
    if "does not contain any stream" in text or "matches no streams" in text or "no audio" in text:
        return "it has no audio track"
    if "invalid data found" in text or "could not find codec" in text or "invalid argument" in text:
        return "it is not an audio or video file ffmpeg can read"
    if "permission denied" in text:
        return "permission denied"
    return lines[-1] if lines else "ffmpeg could not decode it"


def probe(path: Path, limit_s: float | None = None) -> None:
    """Refuse a file ffmpeg cannot decode an audio track from (it decodes the first half second),
    or whose container says it is longer than ``limit_s``, naming the file and why; cheap enough
    to run on every upload. (A container can lie about its length: decoding stops at the limit too.)"""
    import re

    check_input(path)
    limit_s = max_seconds() if limit_s is None else limit_s
    ffmpeg = ffmpeg_path()
    if ffmpeg is None:
        import soundfile

        if path.suffix.lower() not in SOUNDFILE_SUFFIXES:
            decode(path)  # refuses with the install hint
        try:
            if soundfile.info(str(path)).duration > limit_s:
                raise too_long(path, limit_s)
        except (soundfile.LibsndfileError, RuntimeError) as exc:
            raise AudioError(f"{path.name}: cannot decode: {exc}", hint="upload an audio or video file") from exc
        return
    result = subprocess.run([ffmpeg, "-nostdin", "-hide_banner", "-v", "info", "-protocol_whitelist", "file",
                             "-i", file_url(path), "-map", "0:a:0", "-t", "0.5", "-f", "null", "-"],
                            capture_output=True, text=True, errors="replace", timeout=60)  # fmt: skip
    if result.returncode != 0:
        raise AudioError(f"{path.name}: {ffmpeg_reason(result.stderr)}", hint="upload an audio or video file")
    found = re.search(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", result.stderr)
    if found and int(found.group(1)) * 3600 + int(found.group(2)) * 60 + float(found.group(3)) > limit_s:
        raise too_long(path, limit_s)


def decode(path: str | os.PathLike[str], sample_rate: int = DEMUCS_RATE, channels: int = 2) -> Audio:
    """Decode any file ffmpeg reads (mp3, m4a, ogg, opus, flac, wav, a video's audio track)."""
    path = Path(path)
    check_input(path)
    ffmpeg = ffmpeg_path()
    if ffmpeg is None:
        if path.suffix.lower() in SOUNDFILE_SUFFIXES:
            return _decode_soundfile(path, sample_rate, channels)
        raise AudioError(
            f"{path}: ffmpeg is not installed, and without it ugpu reads only "
            f"{', '.join(s.lstrip('.').upper() for s in SOUNDFILE_SUFFIXES)} files",
            hint=INSTALL_FFMPEG + "; or convert the file to WAV or FLAC",
        )
    limit_s = max_seconds()
    command = ffmpeg_command(ffmpeg, path, sample_rate, channels)
    command[-1:-1] = ["-t", f"{limit_s + 1:.0f}"]
    try:
        proc = subprocess.run(command, capture_output=True, check=False)
    except OSError as exc:
        raise AudioError(f"{path}: could not run ffmpeg: {exc}") from exc
    if proc.returncode != 0:
        raise AudioError(f"{path}: cannot decode: {ffmpeg_reason(proc.stderr.decode('utf-8', 'replace'))}")
    data = np.frombuffer(proc.stdout, dtype="<f4")
    usable = data.size - data.size % channels
    if usable == 0:
        raise AudioError(f"{path}: the audio is zero-length (no samples)")
    if usable // channels > limit_s * sample_rate:
        raise too_long(path, limit_s)
    samples = data[:usable].reshape(-1, channels).T.copy()  # writable, (channels, n)
    return finite(Audio(samples, sample_rate, path))


def ffmpeg_command(ffmpeg: str, path: Path, sample_rate: int, channels: int) -> list[str]:
    """ffmpeg decoding the first audio track to float32 on stdout. An explicit file: URL with only
    the file protocol allowed: a name like "pipe:0", "concat:a|b" or "http:x" is a file name
    here, never an instruction to ffmpeg."""
    cmd = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-protocol_whitelist", "file",
           "-i", file_url(path), "-vn", "-sn", "-dn", "-map", "0:a:0", "-ac", str(channels)]  # fmt: skip
    resampler = ":resampler=soxr:precision=28" if _has_soxr(ffmpeg) else ""
    # Mono as the models' own loaders hear it (openai-whisper's ``ffmpeg -f s16le -ac 1``,
    # faster-whisper's s16 PyAV resampler): the down-mix normalised to full scale
    # (``rematrix_maxval=1``: stereo is the mean of the two channels), not float output's -3 dB
    # per channel, which is 3 dB louder and peaks above 1. The filter does the down-mix ``-ac``
    # asks for (no layout option, whose name differs between ffmpeg 4 and 7).
    maxval = ":rematrix_maxval=1" if channels == 1 else ""
    if resampler or maxval:
        cmd += ["-af", f"aresample={sample_rate}{resampler}{maxval}"]
    return cmd + ["-ar", str(sample_rate), "-f", "f32le", "-acodec", "pcm_f32le", "pipe:1"]


def file_url(path: Path) -> str:
    """``file:`` and the absolute path, as ffmpeg takes it (no URL escaping: ffmpeg reads it raw)."""
    return "file:" + str(Path(path).absolute())


def finite(audio: Audio) -> Audio:
    """Replace NaN and infinite samples by silence before any model sees them, and count them."""
    bad = ~np.isfinite(audio.samples)
    count = int(bad.sum())
    if count:
        audio.samples[bad] = 0.0
    return Audio(audio.samples, audio.sample_rate, audio.source, count)


def _decode_soundfile(path: Path, sample_rate: int, channels: int) -> Audio:
    """WAV/FLAC/AIFF/Ogg through libsndfile: the channels mixed as ffmpeg's ``-ac`` would for
    mono and stereo, resampled with :func:`resample`."""
    import soundfile

    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, ValueError) as exc:
        raise AudioError(f"{path}: cannot decode: {exc}") from exc
    if data.shape[0] == 0:
        raise AudioError(f"{path}: the audio is zero-length (no samples)")
    x = mix_channels(data.T, channels)
    bad = ~np.isfinite(x)
    count = int(bad.sum())
    x[bad] = 0.0  # before resampling, so one bad sample can't smear over its neighbours
    return Audio(np.ascontiguousarray(resample(x, int(rate), sample_rate)), sample_rate, path, count)


def resample(x: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Polyphase resampling along the last axis (scipy's Kaiser-windowed FIR, :mod:`.polyphase`)."""
    if from_rate == to_rate:
        return np.asarray(x, dtype=np.float32)
    return resample_poly(x, to_rate, from_rate).astype(np.float32)  # the ratio reduced there


def write_audio(target: str | os.PathLike[str], samples: np.ndarray, sample_rate: int) -> Path:
    """Write ``(channels, n)`` float audio as 16-bit WAV or FLAC (by the target's suffix)."""
    import soundfile

    target = Path(target)
    fmt = {".wav": "WAV", ".flac": "FLAC"}.get(target.suffix.lower())
    if fmt is None:
        raise AudioError(f"{target}: can only write .wav or .flac")
    data = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    with atomic_path(target) as tmp:
        soundfile.write(str(tmp), data.T if data.ndim == 2 else data, sample_rate, subtype="PCM_16", format=fmt)
    return target


def mix_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """(file channels, n) -> (channels, n) as :func:`ffmpeg_command` mixes mono and stereo (mono:
    the channels' mean, the models' own loaders' level); more channels than wanted: each output
    channel averages its share."""
    if channels == 1:
        return x.mean(axis=0, keepdims=True)
    if x.shape[0] == 1:
        return np.repeat(x, channels, axis=0)
    if x.shape[0] != channels:
        return np.stack([x[k::channels].mean(axis=0) for k in range(channels)])
    return x.copy()
