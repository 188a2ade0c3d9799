"""Long audio in bounded memory: a file decoded in blocks (:class:`AudioStream`), resampled block
by block with the whole signal's result (:class:`Resampler`), gathered in segments
(:class:`SampleBuffer`) and stems written as they are separated (:class:`StemWriter`)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from math import gcd
from pathlib import Path

import numpy as np

from ultrasinger_gpu_cli.errors import AudioError
from ultrasinger_gpu_cli.files import partial_path
from ultrasinger_gpu_cli.song.audio import (DEMUCS_RATE, SOUNDFILE_SUFFIXES, Audio, check_input, decode, ffmpeg_command,
                                            ffmpeg_path, ffmpeg_reason, max_seconds, mix_channels, too_long)
from ultrasinger_gpu_cli.song.polyphase import resample_poly

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
            command = ffmpeg_command(ffmpeg, self.path, self.sample_rate, self.channels)
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
            raise AudioError(f"{self.path}: cannot decode: {ffmpeg_reason(stderr)}")

    def _soundfile_blocks(self) -> Iterator[np.ndarray]:
        if self.path.suffix.lower() not in SOUNDFILE_SUFFIXES:
            decode(self.path, self.sample_rate, self.channels)  # raises the clear "needs ffmpeg" error
        import soundfile

        try:
            info = soundfile.info(str(self.path))
            resamplers = [Resampler(int(info.samplerate), self.sample_rate) for _ in range(self.channels)]
            for data in soundfile.blocks(str(self.path), blocksize=self.block, dtype="float32", always_2d=True):
                x = mix_channels(data.T, self.channels)
                x[~np.isfinite(x)] = 0.0
                yield self._clean(np.stack([r.push(ch) for r, ch in zip(resamplers, x)]))
            yield self._clean(np.stack([r.finish() for r in resamplers]))
        except (soundfile.LibsndfileError, RuntimeError, ValueError) as exc:
            raise AudioError(f"{self.path}: cannot decode: {exc}") from exc


class StemWriter:
    """A WAV (or FLAC) written block by block under a temporary name, renamed when closed."""

    def __init__(self, target: str | os.PathLike[str], sample_rate: int, channels: int) -> None:
        import soundfile

        self.target = Path(target)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = partial_path(self.target)
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
