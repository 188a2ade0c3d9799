"""Demucs: vocals and instrumental, the fast way.

* Only the sub-models that contribute to the vocals run. htdemucs_ft is four models with
  one-hot weights, one per stem, so one model instead of four gives the same vocals as
  ``apply_model`` over the whole bag; instrumental = mix - vocals.
* The plan's chunk length, overlap and batch: several chunks go through the model in one
  forward pass. The chunking, the triangular cross-fade weights and the context padding are
  demucs's own (``apply_model`` with ``shifts=0``), so the result matches it.
* The whole track stays in host memory; only a batch of chunks is on the device at a time,
  so a 10-minute song needs no more VRAM than a 1-minute one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ultrasinger_gpu_cli.components.base import Backend
from ultrasinger_gpu_cli.components.demucs import DemucsSettings
from ultrasinger_gpu_cli.engines.base import Engine, Progress, no_progress
from ultrasinger_gpu_cli.errors import EngineError
from ultrasinger_gpu_cli.fallback import LOAD_ERRORS, fallback_worthy
from ultrasinger_gpu_cli.models import damaged, demucs_bag, demucs_needed, demucs_status, pull_demucs, require_present


@dataclass
class Separation:
    vocals: np.ndarray  # (channels, n) float32, at sample_rate
    instrumental: np.ndarray
    sample_rate: int
    silent: bool = False  # nothing to separate: the input is (near) silence


class DemucsEngine(Engine[DemucsSettings]):
    """Demucs's own models: only the ones the vocals need, batched chunks."""

    def load(self) -> None:
        import torch
        from demucs.repo import ModelLoadingError, check_checksum
        from demucs.states import load_model

        bag = demucs_bag(self.settings.model, self.models_dir)

        def load_sig(sig: str):
            f = bag.files[sig]
            if not f.present:
                require_present(demucs_status(self.settings.model, self.models_dir))
            if f.expected_sha256_prefix and f.url is None:  # local <sig>-<sha256[:8]>.th
                try:
                    check_checksum(f.path, f.expected_sha256_prefix)
                except ModelLoadingError as exc:
                    raise damaged(f.path, "demucs", self.settings.model, exc) from exc
            try:
                package = torch.load(f.path, map_location="cpu", weights_only=False)
                if not isinstance(package, dict) or "klass" not in package:
                    raise ValueError("not a demucs model package")
                return load_model(package).eval()
            except LOAD_ERRORS as exc:
                if fallback_worthy(exc):
                    raise
                raise damaged(f.path, "demucs", self.settings.model, exc) from exc

        # Learn the stem order from one present model (vocals come last in the released bags),
        # then load only the models the vocals need.
        present = [sig for sig in reversed(bag.signatures) if bag.files[sig].present]
        probe_sig = present[0] if present else bag.signatures[-1]
        probe = load_sig(probe_sig)
        sources = list(probe.sources)
        if "vocals" not in sources:
            raise EngineError(f"demucs model {bag.name!r} has no vocals stem (it has: {', '.join(sources)})")
        k = sources.index("vocals")
        needed = demucs_needed(bag, k)
        device = self.device()
        parts = []
        for index, sig in enumerate(bag.signatures):
            if sig not in needed:
                continue
            weight = 1.0 if bag.weights is None else bag.weights[index][k]
            model = probe if sig == probe_sig else load_sig(sig)
            parts.append((model.to(device), weight))
        self._model = {"parts": parts, "vocals_index": k, "sources": sources, "samplerate": probe.samplerate,
                       "channels": probe.audio_channels, "signatures": needed}  # fmt: skip

    @property
    def sample_rate(self) -> int:
        self.ensure_loaded()
        return int(self._model["samplerate"])

    def run(self, mix: np.ndarray, progress: Progress = no_progress) -> Separation:
        """Separate ``mix`` (channels, n) at the model's sample rate (44.1 kHz)."""
        import torch

        self.ensure_loaded()
        state = self._model
        rate = state["samplerate"]
        mix = np.asarray(mix, dtype=np.float32)
        if mix.ndim == 1:
            mix = np.stack([mix] * state["channels"])
        if mix.shape[0] != state["channels"]:
            raise EngineError(f"demucs expects {state['channels']} channels, got {mix.shape[0]}")
        duration = mix.shape[-1] / rate
        wav = torch.from_numpy(mix)
        ref = wav.mean(0)
        mean, std = ref.mean(), ref.std()
        if mix.shape[-1] < 2 or not torch.isfinite(std) or float(std) < 1e-8:
            zeros = np.zeros_like(mix)
            progress(1.0, duration)
            return Separation(zeros, mix.copy(), rate, silent=True)
        normalised = (wav - mean) / std
        total = torch.zeros_like(normalised)
        weight_sum = 0.0
        n_parts = len(state["parts"])
        for i, (model, weight) in enumerate(state["parts"]):

            def part_progress(fraction: float, i: int = i) -> None:
                done = (i + fraction) / n_parts
                progress(done, done * duration)

            vocals = self._vocals_of(model, normalised, state["vocals_index"], part_progress)
            total += vocals * weight
            weight_sum += weight
        vocals = (total / weight_sum) * std + mean
        vocals_np = vocals.numpy().astype(np.float32)
        return Separation(vocals_np, (mix - vocals_np).astype(np.float32), rate)

    def _vocals_of(self, model: Any, mix, source_index: int, progress) -> Any:
        """demucs's split/overlap-add (``apply_model``, ``shifts=0``), with batched chunks."""
        import torch
        from demucs.apply import TensorChunk
        from demucs.htdemucs import HTDemucs
        from demucs.utils import center_trim

        device = next(model.parameters()).device
        channels, length = mix.shape
        segment = self.settings.chunk_size / model.samplerate  # seconds, as apply_model takes it
        segment_length = int(model.samplerate * segment)
        stride = int((1 - self.settings.overlap) * segment_length)
        offsets = list(range(0, length, stride))
        weight = torch.cat([torch.arange(1, segment_length // 2 + 1),
                            torch.arange(segment_length - segment_length // 2, 0, -1)])  # fmt: skip
        weight = weight / weight.max()
        out = torch.zeros(channels, length)
        sum_weight = torch.zeros(length)
        full = mix[None]  # (1, channels, length): the track stays in host memory

        def padded_length(chunk: TensorChunk) -> int:
            if isinstance(model, HTDemucs):
                return int(segment * model.samplerate)
            if hasattr(model, "valid_length"):
                return int(model.valid_length(chunk.length))
            return chunk.length

        batch_size = max(1, self.settings.batch_size)
        chunks = [TensorChunk(full, offset, segment_length) for offset in offsets]
        done = 0
        i = 0
        while i < len(chunks):
            # A batch is consecutive chunks that pad to the same length (all of them for HTDemucs).
            target = padded_length(chunks[i])
            batch = [chunks[i]]
            while len(batch) < batch_size and i + len(batch) < len(chunks):
                nxt = chunks[i + len(batch)]
                if padded_length(nxt) != target:
                    break
                batch.append(nxt)
            inputs = torch.cat([c.padded(target) for c in batch]).to(device)
            with torch.inference_mode():
                outputs = model(inputs)[:, source_index].float().cpu()
            for chunk, estimate in zip(batch, outputs):
                estimate = center_trim(estimate, chunk.length)
                n = estimate.shape[-1]
                out[..., chunk.offset : chunk.offset + n] += weight[:n] * estimate
                sum_weight[chunk.offset : chunk.offset + n] += weight[:n]
            i += len(batch)
            done += len(batch)
            progress(done / len(chunks))
        return out / sum_weight


BACKEND = Backend(
    name="demucs",
    engine=DemucsEngine,
    summary="Demucs (demucs 4): only the sub-models the vocals need, several chunks per forward pass",
    model_status=demucs_status,
    requires=("torch", "demucs"),
    install="pip install demucs",
    pull=pull_demucs,
)
