"""Whisper on CTranslate2 (faster-whisper's engine): the same voiced chunks, batches and word
timings as the openai-whisper backend, on a faster runtime with less memory.

* The same chunks (the energy gate's voiced parts in windows of at most 30 s) and the same log-mel
  features (whisper's own, computed by :mod:`.whisper_features` without importing openai-whisper),
  so both backends see identical input; ``batch_size`` chunks are encoded and decoded per call.
* Beam search at temperature 0 with whisper's suppression rules (its non-speech tokens, no blank
  at the start), and its temperature fallback on the chunks that fail its quality checks, drawing
  ``BEST_OF`` samples at each temperature as ``transcribe()`` does (which one a chunk keeps:
  :meth:`~.whisper_engine.WhisperEngine._best` and ``_chosen``), sampled on a model built for the
  batch so that its draws follow the stage's seed alone (:class:`_Sampler`);
  in float32, on the same weights, the tokens equal the openai-whisper backend's (a test checks it).
* Word timings from CTranslate2's cross-attention alignment on the same heads as the
  openai-whisper backend (every head of the decoder's upper half:
  :func:`~ultrasinger_gpu_cli.components.whisper.word_heads`), whatever the folder's config
  names, made words by the rules both backends share (:mod:`.whisper_words`).
* Compute type from the plan: int8 on the CPU, float16 on CUDA.

The model is a CTranslate2 folder under ``DIR/faster-whisper/<model>``; ``ugpu models pull``
converts the openai-whisper checkpoint there (:mod:`.whisper_ct2`), offline.
"""

from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ultrasinger_gpu_cli.components.base import Backend
from ultrasinger_gpu_cli.errors import ModelMissingError
from ultrasinger_gpu_cli.engines.whisper_ct2 import timing_words
from ultrasinger_gpu_cli.engines.whisper_engine import BEST_OF, WhisperEngine
from ultrasinger_gpu_cli.engines.whisper_features import SAMPLE_RATE, frames_in, log_mel, prepare
from ultrasinger_gpu_cli.engines.whisper_words import Aligned, sung_words
from ultrasinger_gpu_cli.failures import LOAD_ERRORS, fallback_worthy
from ultrasinger_gpu_cli.gpu.devices import cpu_threads
from ultrasinger_gpu_cli.weights.models import ModelFile, ModelStatus, damaged, require_present, whisper_checkpoint, whisper_status
from ultrasinger_gpu_cli.song.words import Segment, Word

FOLDER = "faster-whisper"
VOCABULARY = ("vocabulary.json", "vocabulary.txt")  # CTranslate2 reads either
OPTIONAL = ("preprocessor_config.json",)


def model_files(root: Path) -> tuple[Path, ...]:
    """The files a CTranslate2 Whisper folder needs, as faster-whisper reads it: ``model.bin``,
    ``config.json``, the vocabulary (``vocabulary.json``, or ``vocabulary.txt`` as Systran's
    published folders have it), ``tokenizer.json`` (offline there is no other tokenizer), and
    ``preprocessor_config.json`` only where the folder has one (the mel bins are the model's own
    otherwise: :attr:`ctranslate2.models.Whisper.n_mels`)."""
    vocabulary = next((root / n for n in VOCABULARY if (root / n).is_file()), root / VOCABULARY[0])
    optional = [root / n for n in OPTIONAL if (root / n).is_file()]
    return (root / "model.bin", root / "config.json", vocabulary, root / "tokenizer.json", *optional)


def hub_repository(model: str) -> str:
    """The Hugging Face repository faster-whisper downloads ``model`` from (its own table)."""
    try:
        from faster_whisper.utils import _MODELS

        return str(_MODELS.get(model) or f"Systran/faster-whisper-{model}")
    except ImportError:
        return f"Systran/faster-whisper-{model}"


def faster_whisper_status(model: str, directory: Path | None) -> ModelStatus:
    """The CTranslate2 folder: ``DIR/faster-whisper/<model>`` (or ugpu's cache), else the one
    faster-whisper downloaded into the Hugging Face hub's cache, used where it is."""
    from ultrasinger_gpu_cli.weights.models import _cache_home, hf_hub_cache, hf_published_sha256, hf_snapshot

    root = (directory or _cache_home()) / FOLDER / model
    where = f"models dir {directory}" if directory is not None else "ugpu cache"
    note = "a CTranslate2 folder (faster-whisper's, or converted from the openai-whisper checkpoint)"
    own = ModelStatus("whisper", model, where, tuple(ModelFile(path) for path in model_files(root)), note,
                      backend="faster-whisper")  # fmt: skip
    if own.present:
        return own
    snapshot = hf_snapshot(hub_repository(model))
    if snapshot is not None:
        files = tuple(ModelFile(path, published_sha256=hf_published_sha256(path)) for path in model_files(snapshot))
        if all(f.present for f in files):
            return ModelStatus("whisper", model, f"Hugging Face cache {hf_hub_cache()}", files, note, backend="faster-whisper")
    return own


def pull_faster_whisper(status: ModelStatus, directory: Path | None = None, progress: object = None,
                        download: bool = True) -> list[Path]:  # fmt: skip
    """Convert the openai-whisper checkpoint into the CTranslate2 folder, offline; where the
    checkpoint is not here, fetch it first (online only, and only when ``download``)."""
    from ultrasinger_gpu_cli.weights.downloads import offline
    from ultrasinger_gpu_cli.engines.whisper_ct2 import convert
    from ultrasinger_gpu_cli.weights.models import pull_whisper

    source = whisper_status(status.model, directory)
    if not source.present:
        if offline() or not download:
            raise ModelMissingError(f"faster-whisper's {status.model} is not on this machine; it is converted from the "
                                    f"openai-whisper checkpoint, which is not here either ({source.files[0].path}), "
                                    "and ugpu is offline",
                                    hint=f"on a machine with internet: ugpu models pull whisper --backend faster-whisper "
                                         f"--model {status.model}")  # fmt: skip
        pull_whisper(source, directory, progress)  # type: ignore[arg-type]
    convert(whisper_checkpoint(status.model, directory), status.files[0].path.parent)
    return [f.path for f in status.files]


@dataclass
class _Decoded:
    tokens: list[int]
    text: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float


def _decoded(result, k: int, tokenizer) -> _Decoded:
    """Hypothesis ``k`` of a CTranslate2 result, its average log-probability per token counted as
    both libraries count it (the sum over the tokens and the end of text; CTranslate2's score is
    the sum over the tokens divided by their number)."""
    tokens = [t for t in result.sequences_ids[k] if t < tokenizer.eot]
    text = tokenizer.decode(tokens)
    raw = text.encode("utf-8")
    avg_logprob = float(result.scores[k]) * len(tokens) / (len(tokens) + 1)
    return _Decoded(tokens, text, avg_logprob, float(result.no_speech_prob), len(raw) / max(1, len(zlib.compress(raw))))


#: Held while a sampler takes its seed: CTranslate2's one seed is process-wide until a fresh
#: thread's first draw reads it (:class:`_Sampler`).
_SEEDING = threading.Lock()


class FasterWhisperEngine(WhisperEngine):
    """CTranslate2's Whisper on the openai-whisper backend's chunks (its decoding options too)."""

    _folder: Path | None = None

    def load(self) -> None:
        from faster_whisper import WhisperModel

        status = faster_whisper_status(self.settings.model, self.models_dir)
        if not status.present and whisper_status(self.settings.model, self.models_dir).present:
            # First use (a GPU plan's CPU rung, a library caller): convert the checkpoint here, offline.
            from ultrasinger_gpu_cli.engines.whisper_ct2 import convert

            convert(whisper_checkpoint(self.settings.model, self.models_dir), status.files[0].path.parent)
        require_present(status, fetch=f"ugpu models pull whisper --backend faster-whisper --model {self.settings.model}")
        prepare()  # the log-mel's torch, with the model
        device = "cuda" if self.binding.is_cuda else "cpu"
        folder = self._folder = status.files[0].path.parent
        try:
            with timing_words(folder) as loaded:  # words timed on every upper-half head, as openai-whisper's
                self._model = WhisperModel(str(loaded), device=device,
                                           device_index=(self.binding.ordinal or 0) if self.binding.is_cuda else 0,
                                           compute_type=self.settings.compute_type, cpu_threads=cpu_threads())  # fmt: skip
        except LOAD_ERRORS as exc:
            if fallback_worthy(exc):
                raise
            raise damaged(folder / "model.bin", "whisper", self.settings.model, exc, "faster-whisper") from exc

    def _transcribe_batch(self, audio: np.ndarray, batch: list[tuple[float, float]], language: str | None,
                          last_speech: float) -> tuple[list[Segment | None], str, float]:  # fmt: skip
        features, frames = self._features(audio, batch)
        if language is None:
            language = self._language(features)
        tokenizer = self._tokenizer(language)
        decoded = self._generate(features, tokenizer, batch[0][0])
        keep = [i for i, d in enumerate(decoded) if not self._is_silence(d) and d.tokens]
        words = self._words(features, frames, batch, decoded, keep, tokenizer, last_speech)
        found: list[Segment | None] = [None] * len(batch)
        for i in keep:
            seg_words, (start, end) = words.get(i, ([], batch[i]))
            if seg_words:
                last_speech = seg_words[-1].end_s
            found[i] = Segment(round(start, 3), round(end, 3), decoded[i].text.strip(), seg_words,
                               decoded[i].avg_logprob, decoded[i].no_speech_prob, 0.0)  # fmt: skip
        return found, language, last_speech

    def _align_batch(self, audio: np.ndarray, batch: list[tuple[float, float]], texts: list[str], language: str | None,
                     last_speech: float) -> tuple[list[list[tuple[str, float, float]]], str, float]:  # fmt: skip
        """Given texts (``--lyrics``) timed by CTranslate2's cross-attention alignment, no decoding."""
        features, frames = self._features(audio, batch)
        if language is None:
            language = self._language(features)
        tokenizer = self._tokenizer(language)
        given = [_Decoded(tokenizer.encode(" " + text)[: self.max_align_tokens], text, 0.0, 0.0, 0.0) for text in texts]
        words = self._words(features, frames, batch, given, list(range(len(batch))), tokenizer, last_speech)
        timed = []
        for i in range(len(batch)):
            found, _span = words.get(i, ([], batch[i]))
            timed.append([(w.text, w.start_s, w.end_s) for w in found])
            last_speech = found[-1].end_s if found else last_speech
        return timed, language, last_speech

    # -- steps ------------------------------------------------------------------------------------
    def _features(self, audio: np.ndarray, batch: list[tuple[float, float]]):
        import ctranslate2

        mels, frames = [], []
        n_mels = self._model.model.n_mels  # the model's own: a folder need not say it
        for start, end in batch:
            piece = audio[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)]
            frames.append(frames_in(piece))
            mels.append(log_mel(piece, n_mels).numpy())
        mel = ctranslate2.StorageView.from_array(np.ascontiguousarray(np.stack(mels), dtype=np.float32))
        return self._model.model.encode(mel, to_cpu=False), frames

    def _language(self, features) -> str:
        if not self._model.model.is_multilingual:
            return "en"
        totals: dict[str, float] = {}
        for item in self._model.model.detect_language(features):
            for token, p in item:
                totals[token[2:-2]] = totals.get(token[2:-2], 0.0) + p
        return max(totals, key=totals.get)

    def _tokenizer(self, language: str):
        from faster_whisper.tokenizer import Tokenizer

        return Tokenizer(self._model.hf_tokenizer, self._model.model.is_multilingual, task="transcribe", language=language)

    def _suppress(self, tokenizer) -> list[int]:
        """whisper's ``suppress_tokens="-1"``: its non-speech tokens and the task's specials."""
        specials = [tokenizer.transcribe, tokenizer.translate, tokenizer.sot, tokenizer.sot_prev, tokenizer.sot_lm]
        return sorted({*tokenizer.non_speech_tokens, *specials, tokenizer.no_speech})

    def _generate(self, features, tokenizer, start_s: float) -> list[_Decoded]:
        """Each chunk of a batch (its first starting at ``start_s``) decoded, falling back to
        samples at higher temperatures where it fails whisper's checks."""
        prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        # CTranslate2's Whisper decodes at most max_length / 2 tokens (448: whisper's 224); measured.
        max_length = min(448, 2 * (self.sample_len or 224))
        n = features.shape[0]
        tried: list[list[_Decoded]] = [[] for _ in range(n)]
        pending = list(range(n))
        sampler = _Sampler(self, start_s)
        try:
            for temperature in self.temperatures:
                subset = features if len(pending) == n else _select(features, pending)
                options = {"beam_size": self.beams} if temperature == 0 else {
                    "beam_size": 1, "num_hypotheses": BEST_OF, "sampling_temperature": temperature, "sampling_topk": 0}  # fmt: skip
                model = self._model.model if temperature == 0 else sampler
                results = model.generate(subset, [prompt] * len(pending), max_length=max_length, suppress_blank=True,
                                         suppress_tokens=self._suppress(tokenizer), return_scores=True,
                                         return_no_speech_prob=True, **options)  # fmt: skip
                retry = []
                for i, result in zip(pending, results):
                    drawn = [_decoded(result, k, tokenizer) for k in range(len(result.sequences_ids))]
                    decoded = drawn[self._best(drawn)]
                    tried[i].append(decoded)
                    if self._needs_fallback(decoded):
                        retry.append(i)
                if not retry:
                    break
                pending = retry
        finally:
            sampler.close()
        return [attempts[self._chosen(attempts)] for attempts in tried]

    def _words(self, features, frames, batch, decoded, keep, tokenizer, last_speech) -> dict[int, tuple[list[Word], tuple[float, float]]]:
        """Each kept chunk's words and span: CTranslate2's alignment of its tokens, batched, then
        ugpu's word rules (:func:`.whisper_words.sung_words`), chunk after chunk."""
        if not keep:
            return {}
        subset = features if len(keep) == len(batch) else _select(features, keep)
        alignments = self._model.find_alignment(tokenizer, [[t for t in decoded[i].tokens if t < tokenizer.eot] for i in keep],
                                                subset, [frames[i] for i in keep])  # fmt: skip
        out = {}
        for i, alignment in zip(keep, alignments):
            aligned = [Aligned(a["word"], a["tokens"], a["start"], a["end"], a["probability"]) for a in alignment]
            words, span = out[i] = sung_words(aligned, batch[i], last_speech)
            last_speech = span[1] if words else last_speech
        return out


class _Sampler:
    """What a batch's temperature fallback samples with: a CTranslate2 model built for the batch
    on its first draw, seeded from the stage's seed and the batch's start, whatever ran before in
    this process.

    CTranslate2 samples with a generator per thread that takes the process-wide seed
    (``set_random_seed``) once, at the thread's first draw: the loaded model's worker thread,
    once it has sampled, never takes a seed again, so a song's fallback words would depend on the
    songs before it in a batch or a server. A model built for the batch has a fresh worker
    thread. It is built only where a chunk falls back (CPU: a second copy of the weights
    meanwhile; CUDA: the loaded model waits on the host meanwhile, so the card never holds two)
    and dropped by :meth:`close`. :data:`_SEEDING` is held from the seed to the first draw."""

    def __init__(self, engine: FasterWhisperEngine, start_s: float) -> None:
        self.engine = engine
        self.seed = engine.batch_seed(start_s)
        self.model: Any = None
        self.moved = False  # the loaded model is on the host while this one holds the card
        self.holding = False

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        import ctranslate2

        if self.model is None:
            engine = self.engine
            cuda = engine.binding.is_cuda
            if cuda and not self.moved:
                engine._model.model.unload_model(to_cpu=True)
                self.moved = True
            _SEEDING.acquire()
            self.holding = True
            ctranslate2.set_random_seed(self.seed)
            self.model = ctranslate2.models.Whisper(str(engine._folder), device="cuda" if cuda else "cpu",
                                                    device_index=(engine.binding.ordinal or 0) if cuda else 0,
                                                    compute_type=engine.settings.compute_type,
                                                    intra_threads=cpu_threads())  # fmt: skip
        try:
            return self.model.generate(*args, **kwargs)
        finally:
            self._release()

    def _release(self) -> None:
        if self.holding:  # its worker thread has drawn (or never will): the seed is taken
            self.holding = False
            _SEEDING.release()

    def close(self) -> None:
        self._release()
        self.model = None
        if self.moved:  # (a sampler that could not be built, too)
            self.moved = False
            self.engine._model.model.load_model()


def _select(features, rows: list[int]):
    """Rows of an encoder output (on its device)."""
    import ctranslate2

    array = np.asarray(features.to_device(ctranslate2.Device.cpu)) if features.device != "cpu" else np.asarray(features)
    return ctranslate2.StorageView.from_array(np.ascontiguousarray(array[rows]))


BACKEND = Backend(
    name="faster-whisper",
    engine=FasterWhisperEngine,
    summary="Whisper on CTranslate2 (faster-whisper): int8 on the CPU, float16 on CUDA; the same chunks and words",
    model_status=faster_whisper_status,
    pull=pull_faster_whisper,
    pull_offline=True,
)
