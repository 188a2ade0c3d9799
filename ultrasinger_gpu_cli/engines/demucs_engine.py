"""Demucs: vocals and instrumental, the fast way.

* Only the sub-models that contribute to the vocals run. htdemucs_ft is four models with
  one-hot weights, one per stem, so one model instead of four gives the same vocals as
  ``apply_model`` over the whole bag; instrumental = mix - vocals.
* The plan's chunk length, overlap and batch: several chunks go through the model in one
  forward pass. The chunking, the triangular cross-fade weights and the context padding are
  demucs's own (``apply_model`` with ``shifts=0``), so the result matches it.
* One overlap-add (:meth:`DemucsEngine.separate_stream`): the track arrives in blocks and each
  stretch of output leaves once final, so host memory holds a few chunks and only a batch of
  chunks is on the device at a time; :meth:`DemucsEngine.run` is the same on one block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from ultrasinger_gpu_cli.components.base import Backend
from ultrasinger_gpu_cli.components.demucs import DemucsSettings
from ultrasinger_gpu_cli.engines.base import Engine, Progress, no_progress
from ultrasinger_gpu_cli.errors import EngineError
from ultrasinger_gpu_cli.failures import LOAD_ERRORS, fallback_worthy
from ultrasinger_gpu_cli.weights.models import damaged, demucs_bag, demucs_needed, demucs_status, pull_demucs, require_present


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
        ref = torch.from_numpy(mix).mean(0)
        mean, std = ref.mean(), ref.std()
        if mix.shape[-1] < 2 or not torch.isfinite(std) or float(std) < 1e-8:
            zeros = np.zeros_like(mix)
            progress(1.0, duration)
            return Separation(zeros, mix.copy(), rate, silent=True)
        # The whole track is one block of the streaming separation: one overlap-add for both paths.
        vocals: list[np.ndarray] = []
        self.separate_stream([mix], float(mean), float(std), lambda _, v: vocals.append(v), progress,
                             total_samples=mix.shape[-1])  # fmt: skip
        vocals_np = np.concatenate(vocals, axis=1)
        return Separation(vocals_np, (mix - vocals_np).astype(np.float32), rate)

    def separate_stream(self, blocks: Iterable[np.ndarray], mean: float, std: float,
                        emit: Callable[[np.ndarray, np.ndarray], None], progress: Progress = no_progress,
                        total_samples: int | None = None) -> int:  # fmt: skip
        """Separate a track that arrives in blocks ``(channels, n)``, in bounded memory.

        The same split and overlap-add as :meth:`run` (demucs's ``apply_model``), with the track's
        ``mean`` and ``std`` (its mono reference, from a first pass) for the normalisation; each
        stretch of output is final once no later chunk can touch it, and goes to
        ``emit(mix, vocals)`` with the matching stretch of the mix. Memory holds a few chunks,
        whatever the track's length. Returns the number of samples separated.
        """
        import torch
        from demucs.htdemucs import HTDemucs
        from demucs.utils import center_trim

        self.ensure_loaded()
        state = self._model
        rate, channels = state["samplerate"], state["channels"]
        parts = state["parts"]
        model0 = parts[0][0]
        device = next(model0.parameters()).device
        seg = int(rate * (self.settings.chunk_size / rate))
        stride = int((1 - self.settings.overlap) * seg)
        window = torch.cat([torch.arange(1, seg // 2 + 1), torch.arange(seg - seg // 2, 0, -1)]).float()
        window = (window / window.max()).numpy()
        weight_sum = float(sum(w for _, w in parts))
        batch_size = max(1, self.settings.batch_size)
        source = iter(blocks)
        buf = np.zeros((channels, 0), dtype=np.float32)  # raw mix from buf_start on
        buf_start = 0
        ended = False
        out = np.zeros((channels, 0), dtype=np.float32)  # weighted sums from out_start on
        wsum = np.zeros(0, dtype=np.float32)
        out_start = 0
        next_offset = 0
        total = 0

        def fill(until: int) -> None:
            nonlocal buf, ended, total
            while not ended and buf_start + buf.shape[1] < until:
                block = next(source, None)
                if block is None:
                    ended = True
                    break
                block = np.asarray(block, dtype=np.float32)
                if block.ndim == 1:
                    block = np.stack([block] * channels)
                buf = np.concatenate([buf, block], axis=1)
                total += block.shape[1]

        def padded_length(length: int) -> int:
            if isinstance(model0, HTDemucs):
                return seg
            if hasattr(model0, "valid_length"):
                return int(model0.valid_length(length))
            return length

        def chunk_input(offset: int, length: int, target: int) -> torch.Tensor:
            """``TensorChunk(track, offset, length).padded(target)`` on the normalised track."""
            delta = target - length
            start = offset - delta // 2
            end = start + target
            lo, hi = max(0, start), min(buf_start + buf.shape[1], end)
            piece = (buf[:, lo - buf_start : hi - buf_start] - mean) / std
            return torch.from_numpy(np.pad(piece, ((0, 0), (lo - start, end - hi))).astype(np.float32))

        def flush(upto: int) -> None:
            nonlocal out, wsum, out_start, buf, buf_start
            n = upto - out_start
            if n <= 0:
                return
            vocals = (out[:, :n] / wsum[:n] / weight_sum) * std + mean
            emit(buf[:, out_start - buf_start : upto - buf_start].copy(), vocals.astype(np.float32))
            out, wsum, out_start = out[:, n:], wsum[n:], upto
            keep = max(0, min(out_start, next_offset - seg) - buf_start)  # context the next chunks may pad with
            buf, buf_start = buf[:, keep:], buf_start + keep

        while True:
            batch: list[tuple[int, int]] = []
            target: int | None = None
            offset = next_offset
            while len(batch) < batch_size:
                fill(offset + 2 * seg)  # the chunk, and the context a padded chunk may take after it
                if ended and offset >= total:
                    break
                length = min(seg, total - offset) if ended else seg
                this_target = padded_length(length)
                if target is not None and this_target != target:
                    break  # a batch is chunks that pad to the same length
                target = this_target
                batch.append((offset, length))
                offset += stride
            if not batch or target is None:
                break
            inputs = torch.stack([chunk_input(o, n, target) for o, n in batch]).to(device)
            need = batch[-1][0] + batch[-1][1] - out_start
            if out.shape[1] < need:
                out = np.concatenate([out, np.zeros((channels, need - out.shape[1]), dtype=np.float32)], axis=1)
                wsum = np.concatenate([wsum, np.zeros(need - wsum.shape[0], dtype=np.float32)])
            estimates = np.zeros((len(batch), channels, target), dtype=np.float32)
            for model, part_weight in parts:
                with torch.inference_mode():
                    estimates += part_weight * model(inputs)[:, state["vocals_index"]].float().cpu().numpy()
            for (o, n), estimate in zip(batch, estimates):
                estimate = center_trim(torch.from_numpy(estimate), n).numpy()
                k = estimate.shape[-1]
                out[:, o - out_start : o - out_start + k] += window[:k] * estimate
                wsum[o - out_start : o - out_start + k] += window[:k]
            next_offset = offset
            flush(min(next_offset, total) if ended else next_offset)  # no later chunk reaches before next_offset
            if total_samples:
                progress(min(1.0, out_start / total_samples), out_start / rate)
        flush(total)
        progress(1.0, total / rate)
        return total


BACKEND = Backend(
    name="demucs",
    engine=DemucsEngine,
    summary="Demucs (demucs 4): only the sub-models the vocals need, several chunks per forward pass",
    model_status=demucs_status,
    pull=pull_demucs,
)
