"""The chart's melody as a standard MIDI file (the ``.mid`` beside the chart)."""

from __future__ import annotations

import struct

from ultrasinger_gpu_cli.song.ultrastar import Song


def _varlen(value: int) -> bytes:
    if value < 0:
        raise ValueError(f"a MIDI delta time cannot be negative ({value})")
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def to_midi(song: Song, ticks_per_quarter: int = 480) -> bytes:
    """A type-0 standard MIDI file of the melody at the song's tempo; at 120 BPM where the song's
    does not fit MIDI's fields (a tempo of at most 2^24 µs per quarter, deltas of 28 bits)."""
    quarter_s = 60.0 / song.bpm
    last_s = max([end for _, end in song.note_times()] or [0.0])
    if quarter_s * 1_000_000 > 0xFFFFFF or last_s / quarter_s * ticks_per_quarter > 0x0FFFFFFF:
        quarter_s = 0.5
    tempo = int(round(quarter_s * 1_000_000))
    events = [(0, bytes([0xFF, 0x51, 0x03]) + tempo.to_bytes(3, "big"))]
    for (start, end), note in zip(song.note_times(), song.notes):
        pitch = max(0, min(127, note.midi))
        on = max(0, int(round(start / quarter_s * ticks_per_quarter)))
        off = max(on + 1, int(round(end / quarter_s * ticks_per_quarter)))
        events.append((on, bytes([0x90, pitch, 96])))
        events.append((off, bytes([0x80, pitch, 0])))
    events.sort(key=lambda e: (e[0], e[1][0] == 0x90))
    track = b""
    now = 0
    for tick, data in events:
        track += _varlen(tick - now) + data
        now = tick
    track += b"\x00\xff\x2f\x00"
    header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, ticks_per_quarter)
    return header + b"MTrk" + struct.pack(">I", len(track)) + track
