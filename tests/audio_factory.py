"""Synthesised test audio: tones, sung-like notes, files in many formats."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np


def midi_to_hz(midi: float) -> float:
    return 440.0 * 2 ** ((midi - 69) / 12)


def sung_note(freq: float, seconds: float, rate: int, vibrato_cents: float = 0.0) -> np.ndarray:
    """A voice-like tone: harmonics, a soft attack and release, optional vibrato."""
    t = np.arange(int(seconds * rate)) / rate
    inst = freq * 2 ** (vibrato_cents / 1200 * np.sin(2 * np.pi * 5.5 * t))
    phase = 2 * np.pi * np.cumsum(inst) / rate
    wave = sum(a * np.sin(k * phase) for k, a in ((1, 1.0), (2, 0.5), (3, 0.25), (4, 0.12)))
    env = np.minimum(1.0, np.minimum(t / 0.03, (seconds - t) / 0.05))
    return (0.25 * wave * np.clip(env, 0, 1)).astype(np.float32)


def melody(notes: list[tuple[float, float, int]], duration: float, rate: int = 16_000) -> np.ndarray:
    """``notes`` = (start s, length s, MIDI); silence elsewhere. Mono float32."""
    out = np.zeros(int(duration * rate), dtype=np.float32)
    for start, length, midi in notes:
        piece = sung_note(midi_to_hz(midi), length, rate)
        i = int(start * rate)
        piece = piece[: max(0, len(out) - i)]
        out[i : i + len(piece)] += piece
    return out


def song(duration: float = 12.0, rate: int = 44_100) -> np.ndarray:
    """Stereo: a melody over a quiet accompaniment, (2, n)."""
    notes = [(1.0, 1.5, 57), (3.0, 1.0, 60), (5.0, 2.0, 64), (8.0, 1.5, 62)]
    voice = melody(notes, duration, rate)
    t = np.arange(len(voice)) / rate
    accompaniment = (0.04 * np.sin(2 * np.pi * 110 * t) + 0.02 * np.sin(2 * np.pi * 165 * t)).astype(np.float32)
    return np.stack([voice + accompaniment, 0.9 * voice + accompaniment])


def write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    import soundfile

    soundfile.write(str(path), samples.T if samples.ndim == 2 else samples, rate, subtype="PCM_16")
    return path


def encode(source: Path, target: Path, *extra: str) -> Path:
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-i", str(source), *extra, str(target)], check=True)
    return target


def drum_song(bpm: float, seconds: float = 20.0, rate: int = 22_050, *, pattern: str = "kick-clap",
              offset_s: float = 0.37, voice: bool = True) -> np.ndarray:  # fmt: skip
    """Mono: a drum pattern at ``bpm`` (kick on beats 1 and 3, clap on 2 and 4; ``"kick"``: a kick
    on every beat; ``"clap"``: claps on every beat) from ``offset_s``, with a sung melody over it."""
    rng = np.random.default_rng(int(bpm * 100))
    out = np.zeros(int(seconds * rate), dtype=np.float32)
    t = np.arange(int(0.25 * rate)) / rate
    kick = (np.sin(2 * np.pi * (50 * t + 60 * (1 - np.exp(-t * 30)) / 30)) * np.exp(-t * 18)).astype(np.float32)
    clap = (rng.standard_normal(len(t)) * np.exp(-t * 40)).astype(np.float32) * 0.5
    period = 60.0 / bpm
    k = 0
    while offset_s + k * period < seconds - 0.3:
        i = int((offset_s + k * period) * rate)
        hit = {"kick": kick, "clap": clap}.get(pattern, kick if k % 2 == 0 else clap)
        out[i : i + len(hit)] += hit[: len(out) - i]
        k += 1
    if voice:  # a melody of notes that start off the beat too
        notes, start, pitches = [], offset_s + period * 0.5, [60, 62, 64, 65, 67, 65, 64, 62]
        while start < seconds - 1.5:
            notes.append((start, period * 1.5, pitches[len(notes) % len(pitches)]))
            start += period * 2
        out += 0.6 * melody(notes, seconds, rate)
    return out
