"""Audio in and out. Decoding goes through ffmpeg once, to float32 at the rate an engine needs.

* :func:`decode` runs ffmpeg (soxr resampler where the build has it) and returns an
  :class:`Audio` of shape ``(channels, samples)``. Without ffmpeg, WAV, FLAC, AIFF and Ogg
  files are still read (through soundfile/libsndfile); other formats need ffmpeg. Every way an
  input can be unusable becomes one :class:`~ultrasinger_gpu_cli.errors.AudioError` naming
  the file and the reason.
* :func:`resample` is a polyphase (Kaiser-windowed) resampler for in-memory rate changes, so a
  song decoded once at 44.1 kHz feeds Whisper and CREPE at 16 kHz without a second decode.
* Every file is written to a temporary name beside the target and renamed into place, so a
  truncated output never looks finished (:func:`.files.atomic_path`).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np

from ultrasinger_gpu_cli.errors import AudioError
from ultrasinger_gpu_cli.files import atomic_path

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
        raise AudioError(f"{path.name}: {_ffmpeg_reason(result.stderr)}", hint="upload an audio or video file")
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
    command = _ffmpeg_command(ffmpeg, path, sample_rate, channels)
    command[-1:-1] = ["-t", f"{limit_s + 1:.0f}"]
    try:
        proc = subprocess.run(command, capture_output=True, check=False)
    except OSError as exc:
        raise AudioError(f"{path}: could not run ffmpeg: {exc}") from exc
    if proc.returncode != 0:
        raise AudioError(f"{path}: cannot decode: {_ffmpeg_reason(proc.stderr.decode('utf-8', 'replace'))}")
    data = np.frombuffer(proc.stdout, dtype="<f4")
    usable = data.size - data.size % channels
    if usable == 0:
        raise AudioError(f"{path}: the audio is zero-length (no samples)")
    if usable // channels > limit_s * sample_rate:
        raise too_long(path, limit_s)
    samples = data[:usable].reshape(-1, channels).T.copy()  # writable, (channels, n)
    return finite(Audio(samples, sample_rate, path))


def _ffmpeg_command(ffmpeg: str, path: Path, sample_rate: int, channels: int) -> list[str]:
    """ffmpeg decoding the first audio track to float32 on stdout. An explicit file: URL with only
    the file protocol allowed: a name like "pipe:0", "concat:a|b" or "http:x" is a file name
    here, never an instruction to ffmpeg."""
    cmd = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-protocol_whitelist", "file",
           "-i", file_url(path), "-vn", "-sn", "-dn", "-map", "0:a:0", "-ac", str(channels)]  # fmt: skip
    if _has_soxr(ffmpeg):
        cmd += ["-af", f"aresample={sample_rate}:resampler=soxr:precision=28"]
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
    x = _mix_channels(data.T, channels)
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


# -- long audio in bounded memory ----------------------------------------------------------------------
BLOCK_S = 30.0  # seconds per block when a song is streamed


class Resampler:
    """:func:`resample` in blocks, with the same result as on the whole signal (to rounding):
    each block is resampled with a margin of real signal on both sides and trimmed back, the
    block boundaries falling on whole periods of the rate ratio."""

    def __init__(self, from_rate: int, to_rate: int) -> None:
        g = gcd(from_rate, to_rate)
        self.up, self.down = to_rate // g, from_rate // g
        self.margin = self.down * max(1, -(-4096 // self.down))  # well past the filter's half-length
        self.history = np.zeros(0, dtype=np.float32)
        self.pending = np.zeros(0, dtype=np.float32)

    def _resample(self, seg: np.ndarray) -> np.ndarray:
        if self.up == self.down:
            return seg.astype(np.float32)
        from scipy.signal import resample_poly

        return resample_poly(seg, self.up, self.down).astype(np.float32)

    def push(self, block: np.ndarray) -> np.ndarray:
        self.pending = np.concatenate([self.pending, np.asarray(block, dtype=np.float32)])
        ready = (len(self.pending) - self.margin) // self.down * self.down
        if ready <= 0:
            return np.zeros(0, dtype=np.float32)
        seg = np.concatenate([self.history, self.pending[: ready + self.margin]])
        start = len(self.history) * self.up // self.down
        out = self._resample(seg)[start : start + ready * self.up // self.down]
        emitted = np.concatenate([self.history, self.pending[:ready]])
        self.history = emitted[-self.margin :] if len(emitted) > self.margin else emitted
        self.pending = self.pending[ready:]
        return out

    def finish(self) -> np.ndarray:
        seg = np.concatenate([self.history, self.pending])
        start = len(self.history) * self.up // self.down
        count = -(-len(self.pending) * self.up // self.down)
        out = self._resample(seg)[start : start + count] if len(seg) else np.zeros(0, dtype=np.float32)
        self.history = self.pending = np.zeros(0, dtype=np.float32)
        return out


class SampleBuffer:
    """Mono samples appended block by block, for a whole song kept in memory once.

    Blocks go into segments of :attr:`SEGMENT` samples, each big enough to be its own memory map,
    and :meth:`array` copies them out segment by segment, unmapping each as it goes: the song is
    resident about once (a list of 30-second blocks and their concatenation held it twice, and
    the allocator kept the freed blocks: a two-hour song took 3.3 GB where 1.1 GB is the data)."""

    SEGMENT = 1 << 24  # 16 Mi samples, 64 MB of float32: above any allocator's heap threshold

    def __init__(self) -> None:
        self._full: list[np.ndarray] = []
        self._segment = np.empty(0, dtype=np.float32)
        self._used = 0

    def append(self, block: np.ndarray) -> None:
        block = np.asarray(block, dtype=np.float32).reshape(-1)
        while len(block):
            if self._used == len(self._segment):
                if len(self._segment):
                    self._full.append(self._segment)
                self._segment, self._used = np.empty(self.SEGMENT, dtype=np.float32), 0
            take = min(len(block), len(self._segment) - self._used)
            self._segment[self._used : self._used + take] = block[:take]
            self._used += take
            block = block[take:]

    def array(self) -> np.ndarray:
        """All the samples, as one array (the buffer is empty afterwards)."""
        parts = [*self._full, self._segment[: self._used]]
        self._full, self._segment, self._used = [], np.empty(0, dtype=np.float32), 0
        out = np.empty(sum(len(p) for p in parts), dtype=np.float32)
        at = 0
        parts.reverse()
        while parts:
            part = parts.pop()
            out[at : at + len(part)] = part
            at += len(part)
            del part  # the segment is unmapped here, before the next is copied
        return out


class AudioStream:
    """A file decoded in blocks ``(channels, n)`` at ``sample_rate``: what :func:`decode` gives, in
    bounded memory. Non-finite samples become silence (counted in ``replaced_samples``)."""

    def __init__(self, path: str | os.PathLike[str], sample_rate: int = DEMUCS_RATE, channels: int = 2,
                 block_s: float = BLOCK_S, limit_s: float | None = None) -> None:  # fmt: skip
        self.path = Path(path)
        self.limit_s = max_seconds() if limit_s is None else limit_s
        self.sample_rate = sample_rate
        self.channels = channels
        self.block = max(1, int(block_s * sample_rate))
        self.replaced_samples = 0
        self.samples = 0
        check_input(self.path)

    @property
    def notice(self) -> str | None:
        return Audio(np.zeros((1, 0), np.float32), self.sample_rate, self.path, self.replaced_samples).notice

    def _clean(self, block: np.ndarray) -> np.ndarray:
        bad = ~np.isfinite(block)
        if bad.any():
            self.replaced_samples += int(bad.sum())
            block[bad] = 0.0
        self.samples += block.shape[1]
        if self.samples > self.limit_s * self.sample_rate:
            raise too_long(self.path, self.limit_s)
        return block

    def __iter__(self) -> Iterator[np.ndarray]:
        self.replaced_samples = self.samples = 0
        ffmpeg = ffmpeg_path()
        if ffmpeg is None:
            yield from self._soundfile_blocks()
        else:
            yield from self._ffmpeg_blocks(ffmpeg)
        if self.samples == 0:
            raise AudioError(f"{self.path}: the audio is zero-length (no samples)")

    def _ffmpeg_blocks(self, ffmpeg: str) -> Iterator[np.ndarray]:
        try:
            command = _ffmpeg_command(ffmpeg, self.path, self.sample_rate, self.channels)
            command[-1:-1] = ["-t", f"{self.limit_s + 1:.0f}"]  # ffmpeg itself stops past the limit
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as exc:
            raise AudioError(f"{self.path}: could not run ffmpeg: {exc}") from exc
        frame = 4 * self.channels
        rest = b""
        try:
            assert proc.stdout is not None
            while True:
                data = proc.stdout.read(self.block * frame)
                if not data:
                    break
                data = rest + data
                usable = len(data) - len(data) % frame
                rest = data[usable:]
                if usable:
                    yield self._clean(np.frombuffer(data[:usable], dtype="<f4").reshape(-1, self.channels).T.copy())
        finally:
            if proc.poll() is None:
                proc.kill()
            stderr = proc.stderr.read().decode("utf-8", "replace") if proc.stderr else ""
            proc.wait()
        if proc.returncode not in (0, None) and not (proc.returncode < 0 and self.samples):
            raise AudioError(f"{self.path}: cannot decode: {_ffmpeg_reason(stderr)}")

    def _soundfile_blocks(self) -> Iterator[np.ndarray]:
        if self.path.suffix.lower() not in SOUNDFILE_SUFFIXES:
            decode(self.path, self.sample_rate, self.channels)  # raises the clear "needs ffmpeg" error
        import soundfile

        try:
            info = soundfile.info(str(self.path))
            resamplers = [Resampler(int(info.samplerate), self.sample_rate) for _ in range(self.channels)]
            for data in soundfile.blocks(str(self.path), blocksize=self.block, dtype="float32", always_2d=True):
                x = _mix_channels(data.T, self.channels)
                x[~np.isfinite(x)] = 0.0
                yield self._clean(np.stack([r.push(ch) for r, ch in zip(resamplers, x)]))
            yield self._clean(np.stack([r.finish() for r in resamplers]))
        except (soundfile.LibsndfileError, RuntimeError, ValueError) as exc:
            raise AudioError(f"{self.path}: cannot decode: {exc}") from exc


def _mix_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """(file channels, n) -> (channels, n) as ffmpeg's ``-ac`` mixes mono and stereo; more channels
    than wanted: each output channel averages its share."""
    if channels == 1 and x.shape[0] == 2:
        return (x[:1] + x[1:]) * np.float32(np.sqrt(0.5))  # each channel at -3 dB
    if channels == 1:
        return x.mean(axis=0, keepdims=True)
    if x.shape[0] == 1:
        return np.repeat(x, channels, axis=0)
    if x.shape[0] != channels:
        return np.stack([x[k::channels].mean(axis=0) for k in range(channels)])
    return x.copy()


class StemWriter:
    """A WAV (or FLAC) written block by block under a temporary name, renamed when closed."""

    def __init__(self, target: str | os.PathLike[str], sample_rate: int, channels: int) -> None:
        import soundfile

        self.target = Path(target)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.target.with_name(f".{self.target.name}.partial-{os.getpid()}")
        fmt = {".wav": "WAV", ".flac": "FLAC"}[self.target.suffix.lower()]
        self._file = soundfile.SoundFile(str(self.tmp), "w", sample_rate, channels, subtype="PCM_16", format=fmt)

    def write(self, block: np.ndarray) -> None:
        self._file.write(np.clip(np.asarray(block, dtype=np.float32), -1.0, 1.0).T)

    def close(self) -> Path:
        self._file.close()
        os.replace(self.tmp, self.target)
        return self.target

    def abort(self) -> None:
        self._file.close()
        self.tmp.unlink(missing_ok=True)
