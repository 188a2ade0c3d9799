"""Audio in and out. Decoding goes through ffmpeg once, to float32 at the rate an engine needs.

* :func:`decode` runs ffmpeg (soxr resampler where the build has it) and returns an
  :class:`Audio` of shape ``(channels, samples)``. Without ffmpeg, WAV, FLAC, AIFF and Ogg
  files are still read (through soundfile/libsndfile); other formats need ffmpeg. Every way an
  input can be unusable becomes one :class:`~ultrasinger_gpu_cli.errors.AudioError` naming
  the file and the reason.
* :func:`resample` is a polyphase (Kaiser-windowed) resampler for in-memory rate changes, so a
  song decoded once at 44.1 kHz feeds Whisper and CREPE at 16 kHz without a second decode.
* Every file is written to a temporary name beside the target and renamed into place, so a
  truncated output never looks finished (:func:`atomic_path`).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np

from ultrasinger_gpu_cli.errors import AudioError

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
SOUNDFILE_SUFFIXES = (".wav", ".flac", ".aif", ".aiff", ".ogg")


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
    if not os.access(path, os.R_OK):
        raise AudioError(f"{path}: permission denied")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: the file is empty (0 bytes)")


def _ffmpeg_reason(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    text = " ".join(lines).lower()
    if "does not contain any stream" in text or "matches no streams" in text or "no audio" in text:
        return "it has no audio track"
    if "invalid data found" in text or "could not find codec" in text or "invalid argument" in text:
        return "it is not an audio or video file ffmpeg can read"
    if "permission denied" in text:
        return "permission denied"
    return lines[-1] if lines else "ffmpeg could not decode it"


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
    # An explicit file: URL with only the file protocol allowed: a name like "pipe:0",
    # "concat:a|b" or "http:x" is a file name here, never an instruction to ffmpeg.
    cmd = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-protocol_whitelist", "file",
           "-i", file_url(path), "-vn", "-sn", "-dn",
           "-map", "0:a:0", "-ac", str(channels)]  # fmt: skip
    if _has_soxr(ffmpeg):
        cmd += ["-af", f"aresample={sample_rate}:resampler=soxr:precision=28"]
    cmd += ["-ar", str(sample_rate), "-f", "f32le", "-acodec", "pcm_f32le", "pipe:1"]
    try:
        proc = subprocess.run(cmd, capture_output=True, check=False)
    except OSError as exc:
        raise AudioError(f"{path}: could not run ffmpeg: {exc}") from exc
    if proc.returncode != 0:
        raise AudioError(f"{path}: cannot decode: {_ffmpeg_reason(proc.stderr.decode('utf-8', 'replace'))}")
    data = np.frombuffer(proc.stdout, dtype="<f4")
    usable = data.size - data.size % channels
    if usable == 0:
        raise AudioError(f"{path}: the audio is zero-length (no samples)")
    samples = data[:usable].reshape(-1, channels).T.copy()  # writable, (channels, n)
    return finite(Audio(samples, sample_rate, path))


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
    x = data.T  # (file channels, n)
    if channels == 1 and x.shape[0] == 2:
        x = (x[:1] + x[1:]) * np.float32(np.sqrt(0.5))  # as ffmpeg's -ac 1 mixes stereo: each channel at -3 dB
    elif channels == 1:
        x = x.mean(axis=0, keepdims=True)
    elif x.shape[0] == 1:
        x = np.repeat(x, channels, axis=0)
    elif x.shape[0] != channels:  # more channels than wanted: each output channel averages its share
        x = np.stack([x[k::channels].mean(axis=0) for k in range(channels)])
    bad = ~np.isfinite(x)
    count = int(bad.sum())
    x[bad] = 0.0  # before resampling, so one bad sample can't smear over its neighbours
    return Audio(np.ascontiguousarray(resample(x, int(rate), sample_rate)), sample_rate, path, count)


def resample(x: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Polyphase resampling along the last axis (scipy's Kaiser-windowed FIR)."""
    if from_rate == to_rate:
        return np.asarray(x, dtype=np.float32)
    from scipy.signal import resample_poly

    g = gcd(from_rate, to_rate)
    return resample_poly(x, to_rate // g, from_rate // g, axis=-1).astype(np.float32)


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it into place only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(target: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="\n")
    return Path(target)


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


def read_tags(path: str | os.PathLike[str]) -> dict[str, str]:
    """Artist and title from the file's tags (ffprobe); empty where there are none."""
    import json

    ffprobe = shutil.which("ffprobe")
    if ffprobe is None:
        return {}
    try:
        out = subprocess.run(
            [ffprobe, "-v", "error", "-protocol_whitelist", "file", "-show_entries", "format_tags=artist,title", "-of",
             "json", file_url(Path(path))],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        tags = json.loads(out.stdout or "{}").get("format", {}).get("tags", {})
    except (OSError, subprocess.SubprocessError, ValueError):
        return {}
    return {k.lower(): str(v).strip() for k, v in tags.items() if str(v).strip()}
