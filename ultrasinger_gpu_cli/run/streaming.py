"""A song read in blocks, for songs of any length in bounded memory: the first pass (its level for
Demucs' normalisation, the mix for the tempo, the vocals at 16 kHz where the input is them) and
Demucs over the streamed song, its stems written block by block."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ultrasinger_gpu_cli.song import audio as audio_io
from ultrasinger_gpu_cli.song import stream as streams


WRITES_AHEAD = 2  # finished stretches of the stems waiting for the writer thread, at most


@dataclass(frozen=True)
class Scan:
    """What the first pass over a song found."""

    samples: int  # at 44.1 kHz
    mean: float  # of the mono reference
    std: float
    silent: bool
    mono22: np.ndarray  # the mix, mono, 22.05 kHz (tempo)
    mono16: np.ndarray  # the mix, mono, 16 kHz (the vocals when the input is vocals); empty otherwise
    samples16: int  # the length of any 16 kHz version of the song

    @property
    def duration_s(self) -> float:
        return self.samples / audio_io.DEMUCS_RATE


@dataclass(frozen=True)
class StreamedSeparation:
    """Demucs' result over a streamed song: the stems are on disk; the vocals at 16 kHz mono here."""

    vocals16: np.ndarray
    silent: bool


def scan(stream: streams.AudioStream, vocals: bool) -> Scan:
    """The first pass over the song: the mono reference's mean and standard deviation (Demucs
    normalises with them), the mix at 22.05 kHz for the tempo, and at 16 kHz when it is the vocals
    (``vocals``: the input is a vocals track, not separated)."""
    s1 = s2 = 0.0
    n = 0
    r22 = streams.Resampler(audio_io.DEMUCS_RATE, 22_050)
    r16 = streams.Resampler(audio_io.DEMUCS_RATE, audio_io.WHISPER_RATE) if vocals else None
    mono22, mono16 = streams.SampleBuffer(), streams.SampleBuffer()
    for block in stream:
        mono = block.mean(axis=0, dtype=np.float32)
        s1 += float(mono.sum(dtype=np.float64))
        s2 += float(np.square(mono, dtype=np.float64).sum())
        n += len(mono)
        mono22.append(r22.push(mono))
        if r16 is not None:
            mono16.append(r16.push(mono))
        del block, mono
    mono22.append(r22.finish())
    if r16 is not None:
        mono16.append(r16.finish())
    mean = s1 / n
    std = float(np.sqrt(max(0.0, (s2 - n * mean * mean) / (n - 1)))) if n > 1 else 0.0
    silent = n < 2 or not np.isfinite(std) or std < 1e-8
    samples16 = -(-n * audio_io.WHISPER_RATE // audio_io.DEMUCS_RATE)
    return Scan(n, mean, std, silent, mono22.array(), mono16.array(), samples16)

def separate(engine: Any, stream: streams.AudioStream, scan: Scan, stems: tuple[Path, Path],
             progress: Callable[[float, float], None]) -> StreamedSeparation:  # fmt: skip
    """Demucs over the streamed song; the stems are written block by block, the vocals kept at 16 kHz mono.

    Each finished stretch is written (both stems, and the vocals resampled to 16 kHz) on a writer
    thread while the engine separates the next chunks: on a GPU the card no longer waits for the
    host's ~0.24 s a minute of song of resampling and writing. One thread, in order, at most
    :data:`WRITES_AHEAD` stretches behind: the files and the 16 kHz vocals are those of writing
    each stretch as it comes, and memory stays bounded. A write that fails stops the song there."""
    rate = audio_io.DEMUCS_RATE
    vocals_out, instrumental_out = streams.StemWriter(stems[0], rate, 2), streams.StemWriter(stems[1], rate, 2)
    r16 = streams.Resampler(rate, audio_io.WHISPER_RATE)
    parts16: list[np.ndarray] = []
    writer = ThreadPoolExecutor(1, thread_name_prefix="ugpu-stems")
    pending: deque[Future[None]] = deque()

    def write(mix: np.ndarray, vocals: np.ndarray) -> None:
        vocals_out.write(vocals)
        instrumental_out.write(mix - vocals)
        parts16.append(r16.push(vocals.mean(axis=0)))

    def emit(mix: np.ndarray, vocals: np.ndarray) -> None:
        while len(pending) >= WRITES_AHEAD:
            pending.popleft().result()  # the writer's error, if any, raised here
        pending.append(writer.submit(write, mix, vocals))

    try:
        if scan.silent:  # nothing to separate: no vocals, the instrumental is the mix
            for block in stream:
                emit(block, np.zeros_like(block))
            progress(1.0, scan.samples / rate)
        else:
            engine.separate_stream(iter(stream), scan.mean, scan.std, emit, progress, total_samples=scan.samples)
        while pending:
            pending.popleft().result()
        parts16.append(r16.finish())
        vocals_out.close()
        instrumental_out.close()
    except BaseException:
        writer.shutdown(wait=True, cancel_futures=True)  # nothing writes while the files are removed
        vocals_out.abort()
        instrumental_out.abort()
        raise
    finally:
        writer.shutdown(wait=True)
    return StreamedSeparation(np.concatenate(parts16), scan.silent)
