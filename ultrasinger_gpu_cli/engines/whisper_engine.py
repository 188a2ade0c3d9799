"""Whisper: lyrics with word timings, decoded in batches.

``transcribe()`` walks the song one 30-second window after another and runs the encoder
again for every temperature fallback and for the word alignment. This engine:

1. finds the voiced parts of the vocals (energy gate) and packs them into chunks of at most
   30 s, so silence is never decoded;
2. runs the encoder once per batch of ``batch_size`` chunks;
3. decodes the whole batch in one ``whisper.decode`` call on those encoder features
   (``decode`` accepts features directly), re-decoding only the chunks that fail whisper's
   quality checks at higher temperatures (:data:`BEST_OF` samples each, as ``transcribe()``
   draws), again without re-running the encoder;
4. aligns words with whisper's own DTW on the same features, made words by the rules both
   backends share (:mod:`.whisper_words`);
5. maps every time back to the song.

fp16 on CUDA, fp32 on the CPU (so whisper never warns about fp16 on the CPU).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from ultrasinger_gpu_cli.components.base import Backend
from ultrasinger_gpu_cli.components.whisper import WhisperSettings, word_heads
from ultrasinger_gpu_cli.engines.base import Engine, Progress, no_progress
from ultrasinger_gpu_cli.failures import LOAD_ERRORS, fallback_worthy
from ultrasinger_gpu_cli.weights.models import damaged, pull_whisper, whisper_checkpoint, whisper_status
from ultrasinger_gpu_cli.song.words import Segment, Transcript, Word
from ultrasinger_gpu_cli.song.wordmatch import normalise
from ultrasinger_gpu_cli.song.vad import chunk_regions, overlapped, voiced_regions
from ultrasinger_gpu_cli.engines.whisper_dtw import install as install_dtw
from ultrasinger_gpu_cli.engines.whisper_words import Aligned, sung_words
from ultrasinger_gpu_cli.engines.whisper_features import SAMPLE_RATE, frames_in, log_mel

MAX_CHUNK_S = 30.0
#: Samples drawn at each fallback temperature (``transcribe()``'s ``best_of`` in both libraries):
#: the most probable that passes whisper's checks is kept (:meth:`WhisperEngine._best`).
BEST_OF = 5
#: How far a window reaches into the next chunk where a chunk was cut inside sung audio: a sung
#: word rarely lasts longer, so the word the cut falls in is heard whole on one side.
CUT_OVERLAP_S = 1.0


class _EncodedWhisper:
    """The model as ``find_alignment`` sees it, with the encoder already run.

    whisper's alignment calls ``model(mel, tokens)``; given encoder features instead of a
    mel, this runs only the decoder, so the alignment does not re-encode the audio.
    """

    def __init__(self, model: Any) -> None:
        self._model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def __call__(self, audio_features: Any, tokens: Any) -> Any:
        return self._model.decoder(tokens, audio_features)


#: The functions of ``torch.nn.init`` a layer's constructor draws its random weights with.
_DRAWS = ("uniform_", "normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_",
          "trunc_normal_", "zeros_", "ones_", "constant_")  # fmt: skip
_DRAWING = threading.Lock()
#: Held while a batch's temperature fallback samples with torch's process-wide generators.
_SAMPLING = threading.Lock()


@contextmanager
def _no_random_weights() -> Iterator[None]:
    """While a model is built only to take a checkpoint's weights: its layers' random draws
    (``torch.nn.init``, 8.6 s for turbo on a 2-core CPU) leave their tensors as allocated; never
    written, that memory is never committed. Every model ugpu builds takes its weights from a
    checkpoint, so one built in another thread meanwhile loses nothing either."""
    import torch

    with _DRAWING:
        saved = {name: getattr(torch.nn.init, name) for name in _DRAWS}
        try:
            for name in saved:
                setattr(torch.nn.init, name, _as_allocated)
            yield
        finally:
            for name, draw in saved.items():
                setattr(torch.nn.init, name, draw)


def _as_allocated(tensor: Any, *args: Any, **kwargs: Any) -> Any:
    return tensor


def load_whisper(path: Any) -> Any:
    """``whisper.load_model(path, device="cpu")``, less what it costs. The checkpoint is
    memory-mapped (read once, never copied whole), the model is built without drawing random
    weights (:func:`_no_random_weights`) and takes the checkpoint's tensors as they are: float16
    for whisper's releases, so no float32 copy of the weights is ever made (LayerNorm's become
    float32: whisper computes those in float32). Words are timed on
    :func:`~ultrasinger_gpu_cli.components.whisper.word_heads` (every head of the decoder's upper
    half, which ``load_model`` also uses for a file; by name it would set the release's speech-tuned
    heads). The caller casts (CPU: float32) and moves it once."""
    import torch
    from whisper.model import ModelDimensions, Whisper

    try:
        checkpoint = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # saved in torch's legacy format, which cannot be mapped
        checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    dims = ModelDimensions(**checkpoint["dims"])
    with _no_random_weights():
        model = Whisper(dims)
    model.load_state_dict(checkpoint["model_state_dict"], assign=True)
    heads = torch.zeros(dims.n_text_layer, dims.n_text_head, dtype=torch.bool)
    for layer, head in word_heads(dims.n_text_layer, dims.n_text_head):
        heads[layer, head] = True
    model.register_buffer("alignment_heads", heads.to_sparse(), persistent=False)
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.float()
    return model


def half_weights(model: Any) -> Any:
    """Store the weights in float16, except LayerNorm's (whisper computes those in float32).

    ``whisper.load_model`` keeps float32 weights and casts them layer by layer when it decodes
    in float16: turbo then holds 3.2 GB of weights where 1.6 GB would do. whisper's Linear,
    Conv1d and embedding layers cast their weights to the input's dtype anyway, so float16
    weights give the same computation in half the memory.
    """
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            continue
        for name, param in module.named_parameters(recurse=False):
            param.data = param.data.half()
    return model


#: The longest phrase looked for on both sides of a cut (words).
SEAM_WORDS = 4


def _join_at_cut(segments: list[Segment], segment: Segment, start_s: float, end_s: float,
                 heard_past: Sequence[Word] = ()) -> None:  # fmt: skip
    """Add a window's segment to the song's, keeping the words that start in its own chunk
    ``[start_s, end_s)`` (an open side where the window does not overlap). At a cut, the window
    before and the window after both heard the audio around it; three rules keep each word there
    once: :func:`_drop_echo`, :func:`_heard_again` and :func:`_keep_spill`.
    ``heard_past``: the words the window before heard past the cut."""
    cut = start_s > float("-inf")
    echo_start = _drop_echo(segments, segment, start_s) if cut else None
    start = start_s if echo_start is None else echo_start
    repeats = _heard_again(segments, segment, start_s, start) if cut else None
    kept = segment.within(start, end_s, _heard_until(segments), repeats)
    if heard_past and echo_start is None and segments:
        _keep_spill(segments, heard_past, kept, end_s)
    if kept is not None:
        segments.append(kept)


def _heard_until(segments: list[Segment]) -> float:
    """The end of the last word kept so far."""
    return segments[-1].words[-1].end_s if segments and segments[-1].words else float("-inf")


def _drop_echo(segments: list[Segment], segment: Segment, start_s: float) -> float | None:
    """The words that end the chunk before may be the words the window after heard in its first
    second (before or after the cut): the window before heard them trailing off its end, where
    Whisper can stretch a word over the pause before it (a word timed 11 s early was seen); the
    window after heard them with their onset inside it. Such a phrase is kept once, as the window
    after heard it: dropped from the song's last segment here, and the window after keeps its
    words from the phrase's start on (returned; None where there is no such phrase)."""
    if not segments or not segments[-1].words:
        return None
    before = [normalise(w.text) for w in segments[-1].words[-SEAM_WORDS:]]
    heard = [normalise(w.text) for w in segment.words]
    near = [j for j, w in enumerate(segment.words) if w.start_s < start_s + CUT_OVERLAP_S]
    echo = next(((count, j) for count in range(min(len(before), SEAM_WORDS), 0, -1) for j in near
                 if all(before[-count:]) and heard[j : j + count] == before[-count:]), None)  # fmt: skip
    if echo is None:
        return None
    count, j = echo
    trimmed = segments[-1].without_last(count)
    if trimmed is None:
        segments.pop()
    else:
        segments[-1] = trimmed
    return segment.words[j].start_s


def _heard_again(segments: list[Segment], segment: Segment, start_s: float, start: float) -> int | None:
    """How many words of the window after that lie inside the last word kept
    (:meth:`Segment.within`) are that word heard again: as many as the window before kept more
    words in the audio both read than the window after heard before its own chunk. The window
    before can stretch its last word over the cut across the next word's whole time (seen on
    real singing, "Betsy's" at 15.96-16.44 s over the next window's "Pants" at 16.28 s, with a cut
    at 16 s). None where nothing is kept before."""
    if not segments or not segments[-1].words:
        return None
    kept_in_both = sum(w.start_s >= start_s - CUT_OVERLAP_S for w in segments[-1].words)
    return max(0, kept_in_both - sum(w.start_s < start for w in segment.words))


def _keep_spill(segments: list[Segment], heard_past: Sequence[Word], kept: Segment | None, end_s: float) -> None:
    """A window often does not hear a word its audio starts inside or just after (the singer is
    mid-phrase): such a word, heard whole by the window before past the cut (``heard_past``), is
    kept from it where the window after heard nothing in its time ("soon" at 47.43 s on real
    singing, past a cut at 47.19 s, was lost on both sides)."""
    after = kept.words if kept is not None else []
    first = after[0].start_s if after else end_s
    again = {normalise(w.text) for w in after[: len(heard_past)]}
    until = _heard_until(segments)
    spill = [w for w in heard_past if until <= w.start_s and w.end_s <= first and normalise(w.text) not in again]
    if spill:
        segments[-1] = segments[-1].extended(spill)


class WhisperEngine(Engine[WhisperSettings]):
    """openai-whisper on voiced chunks, batched."""

    #: Decoding options; tests and benchmarks cap ``sample_len`` (random weights decode to the limit).
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    compression_ratio_threshold: float | None = 2.4
    logprob_threshold: float | None = -1.0
    no_speech_threshold: float | None = 0.6
    sample_len: int | None = None
    max_align_tokens = 440  # text tokens one window can align (the text context is 448 with the prompt)
    _seed = 0  # the stage's (:meth:`seeded`); 0 for a caller that gives none

    def seeded(self, seed: int) -> None:
        self._seed = seed

    def batch_seed(self, start_s: float) -> int:
        """The seed of the temperature fallback of the batch whose first chunk starts at
        ``start_s``: the stage's and the batch's own, so that its samples follow from them alone,
        whatever else drew before it (another song, another worker's thread)."""
        return int(hashlib.sha256(repr((self._seed, round(start_s, 3))).encode()).hexdigest()[:8], 16)

    def load(self) -> None:
        path = whisper_checkpoint(self.settings.model, self.models_dir)
        device = self.device()
        try:
            # On the CPU first: whisper.load_model(device="cuda") puts the checkpoint and a float32
            # copy of the model on the card at once (4.6 GB for turbo, seen on an H200), which a
            # 4 GB card cannot hold even where the float16 model (1.5 GB) fits.
            model = load_whisper(path)
        except LOAD_ERRORS as exc:
            if fallback_worthy(exc):
                raise
            raise damaged(path, "whisper", self.settings.model, exc, "openai-whisper") from exc
        self._model = (half_weights(model) if self.fp16 else model.float()).to(device)
        install_dtw()  # its words aligned without whisper.timing's per-process numba compile

    @property
    def beams(self) -> int:
        """Hypotheses of the beam search at temperature 0 (1: greedy)."""
        return max(1, self.settings.beam_size)

    @property
    def fp16(self) -> bool:
        return self.binding.is_cuda and self.settings.compute_type == "float16"

    def run(
        self,
        audio: np.ndarray,
        progress: Progress = no_progress,
        *,
        language: str | None = None,
        chunks: list[tuple[float, float]] | None = None,
    ) -> Transcript:
        """Transcribe mono 16 kHz ``audio``. ``chunks`` (seconds) replaces the voice detection.

        Where two chunks touch (the voice went on past 30 s and the chunk was cut inside it),
        Whisper reads each with :data:`CUT_OVERLAP_S` of its neighbour, and each chunk keeps the
        words that start inside it: the word the cut falls in is heard whole once, not broken in
        two halves that Whisper may both drop."""
        self.ensure_loaded()
        audio = np.asarray(audio, dtype=np.float32)
        duration = len(audio) / SAMPLE_RATE
        if chunks is None:
            regions = voiced_regions(audio, SAMPLE_RATE)
            chunks = chunk_regions(regions, audio, SAMPLE_RATE, MAX_CHUNK_S - 2 * CUT_OVERLAP_S)
        if not chunks:
            progress(1.0, duration)
            return Transcript(language, [], [])
        windows = overlapped(chunks, CUT_OVERLAP_S, duration, MAX_CHUNK_S)
        segments: list[Segment] = []
        batch_size = max(1, self.settings.batch_size)
        last_speech = 0.0
        past: list[Word] = []  # the last window's words past its cut
        for first in range(0, len(chunks), batch_size):
            batch = windows[first : first + batch_size]
            found, language, last_speech = self._transcribe_batch(audio, batch, language, last_speech)
            for (start, end), window, segment in zip(chunks[first : first + batch_size], batch, found):
                # Only the sides that reach into a neighbour are trimmed.
                own = (start if window[0] < start else float("-inf"), end if window[1] > end else float("inf"))
                if segment is not None:
                    _join_at_cut(segments, segment, *own, heard_past=past if own[0] > float("-inf") else ())
                past = [w for w in segment.words if w.start_s >= own[1]] if segment is not None else []
            done = min(len(chunks), first + batch_size)
            progress(done / len(chunks), chunks[done - 1][1])
        progress(1.0, duration)
        return Transcript(language, segments, list(chunks))

    def align(
        self,
        audio: np.ndarray,
        windows: list[tuple[float, float]],
        texts: list[str],
        progress: Progress = no_progress,
        *,
        language: str | None = None,
    ) -> tuple[str | None, list[list[tuple[str, float, float]]]]:
        """Time given text on the audio: ``texts[k]`` in ``windows[k]`` (seconds, at most 30 s
        each), by whisper's own word alignment on the encoder features (no decoding). Returns the
        language and, per window, whisper's words as (text, start s, end s)."""
        self.ensure_loaded()
        audio = np.asarray(audio, dtype=np.float32)
        out: list[list[tuple[str, float, float]]] = [[] for _ in windows]
        todo = [k for k, text in enumerate(texts) if text.strip() and windows[k][1] > windows[k][0]]
        batch_size = max(1, self.settings.batch_size)
        last_speech = 0.0
        for first in range(0, len(todo), batch_size):
            rows = todo[first : first + batch_size]
            timed, language, last_speech = self._align_batch(audio, [windows[k] for k in rows],
                                                             [" ".join(texts[k].split()) for k in rows], language,
                                                             last_speech)  # fmt: skip
            for k, words in zip(rows, timed):
                out[k] = words
            done = min(len(todo), first + batch_size)
            progress(done / len(todo), windows[todo[done - 1]][1])
        return language, out

    def _align_batch(self, audio: np.ndarray, batch: list[tuple[float, float]], texts: list[str], language: str | None,
                     last_speech: float) -> tuple[list[list[tuple[str, float, float]]], str, float]:  # fmt: skip
        """Given texts timed in one batch of windows: (words per window, language, last speech)."""
        import whisper

        features, frames = self._encode(audio, batch)
        if language is None:
            language = self._detect_language(features)
        tokenizer = whisper.tokenizer.get_tokenizer(self._model.is_multilingual, num_languages=self._model.num_languages,
                                                    language=language, task="transcribe")  # fmt: skip
        timed = []
        for window, text, feats, n_frames in zip(batch, texts, features, frames):
            tokens = [t for t in tokenizer.encode(" " + text)[: self.max_align_tokens] if t < tokenizer.eot]
            words, span = sung_words(self._aligned(tokenizer, tokens, feats, n_frames), window, last_speech)
            last_speech = span[1] if words else last_speech
            timed.append([(w.text, w.start_s, w.end_s) for w in words])
        return timed, language, last_speech

    def _aligned(self, tokenizer, tokens: list[int], features, n_frames: int) -> list[Aligned]:
        """whisper's alignment of a window's text tokens (its DTW over the cross-attention)."""
        import torch
        from whisper.timing import find_alignment

        with torch.inference_mode():
            found = find_alignment(_EncodedWhisper(self._model), tokenizer, tokens, features, n_frames)
        return [Aligned(t.word, t.tokens, t.start, t.end, t.probability) for t in found]

    # -- steps ------------------------------------------------------------------------------------
    def _transcribe_batch(self, audio: np.ndarray, batch: list[tuple[float, float]], language: str | None,
                          last_speech: float) -> tuple[list[Segment | None], str, float]:  # fmt: skip
        """One batch of windows: encoded once, decoded together, words aligned. Returns one
        segment per window (None where Whisper heard nothing), the language (detected on the
        first batch when not given) and the end of the last speech (whisper's word-timing rules
        use it)."""
        features, frames = self._encode(audio, batch)
        if language is None:
            language = self._detect_language(features)
        results = self._decode(features, language, batch[0][0])
        found = []
        for (start, end), n_frames, feats, (result, temperature) in zip(batch, frames, features, results):
            segment, last_speech = self._align(result, temperature, feats, n_frames, start, end, language, last_speech)
            found.append(segment)
        return found, language, last_speech

    def _encode(self, audio: np.ndarray, batch: list[tuple[float, float]]):
        import torch

        model = self._model
        mels, frames = [], []
        for start, end in batch:
            piece = audio[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)]
            frames.append(frames_in(piece))
            mels.append(log_mel(piece, model.dims.n_mels))
        mel = torch.stack(mels).to(model.device)
        if self.fp16:
            mel = mel.half()
        with torch.inference_mode():
            return model.embed_audio(mel), frames

    def _detect_language(self, features) -> str:
        import torch

        if not self._model.is_multilingual:
            return "en"
        with torch.inference_mode():
            _, probs = self._model.detect_language(features)
        totals: dict[str, float] = {}
        for item in probs:
            for lang, p in item.items():
                totals[lang] = totals.get(lang, 0.0) + p
        return max(totals, key=totals.get)

    def _options(self, language: str, temperature: float):
        import whisper

        beams = self.beams
        return whisper.DecodingOptions(
            task="transcribe", language=language, temperature=temperature, sample_len=self.sample_len,
            without_timestamps=True, fp16=self.fp16, beam_size=beams if temperature == 0 and beams > 1 else None,
        )  # fmt: skip

    def _is_silence(self, result) -> bool:
        """whisper's own rule: likely no speech, and (if checked) a low log-probability."""
        return (
            self.no_speech_threshold is not None
            and result.no_speech_prob > self.no_speech_threshold
            and (self.logprob_threshold is None or result.avg_logprob < self.logprob_threshold)
        )

    def _needs_fallback(self, result) -> bool:
        if self._is_silence(result):
            return False  # silence: whisper skips it rather than retrying
        if self.compression_ratio_threshold is not None and result.compression_ratio > self.compression_ratio_threshold:
            return True
        return self.logprob_threshold is not None and result.avg_logprob < self.logprob_threshold

    def _decode(self, features, language: str, start_s: float) -> list[tuple[Any, float]]:
        """Decode a batch (its first chunk starting at ``start_s``); retry only the failing chunks
        at the next temperatures. whisper samples with torch's process-wide generators, which
        a server's workers share: a batch samples under :data:`_SAMPLING`, torch seeded for it
        (:meth:`batch_seed`), so another worker's draws never fall between its seed and its own."""
        import torch
        import whisper

        tried: list[list[tuple[Any, float]]] = [[] for _ in range(features.shape[0])]
        pending = list(range(features.shape[0]))
        for temperature in self.temperatures:
            options = self._options(language, temperature)
            with torch.inference_mode():
                if options.beam_size:  # openai-whisper's beam search runs one audio at a time (its batches break)
                    results = [whisper.decode(self._model, features[i : i + 1], options)[0] for i in pending]
                elif temperature > 0:  # BEST_OF samples of each chunk, the best kept
                    with _SAMPLING:  # (each temperature its own seed: the lock is held per temperature)
                        torch.manual_seed(self.batch_seed(start_s) + round(100 * temperature))
                        samples = [whisper.decode(self._model, features[pending], options) for _ in range(BEST_OF)]
                    results = [drawn[self._best(drawn)] for drawn in zip(*samples)]
                else:
                    results = whisper.decode(self._model, features[pending], options)
            retry = []
            for index, result in zip(pending, results):
                tried[index].append((result, temperature))
                if self._needs_fallback(result):
                    retry.append(index)
            if not retry:
                break
            pending = retry
        return [attempts[self._chosen([r for r, _t in attempts])] for attempts in tried]

    def _best(self, samples: Sequence[Any]) -> int:
        """Which of a chunk's samples at one temperature to keep: the most probable of those that
        pass whisper's checks, else the most probable. (Both libraries keep the most probable and
        check it alone; on sung audio that is often a loop, "pantsy pantsy pantsy ...", which
        fails the repetition check while another sample of the same temperature passes.)"""
        return max(range(len(samples)), key=lambda k: (not self._needs_fallback(samples[k]), samples[k].avg_logprob))

    def _chosen(self, results: Sequence[Any]) -> int:
        """Which of a chunk's results, one per temperature tried, it keeps: the last, unless every
        temperature failed the checks; then the most probable of those not too repetitive (of all,
        if none is), as faster-whisper's ``transcribe`` chooses (openai-whisper's keeps the last,
        a sample at temperature 1: mostly noise)."""
        if len(results) < len(self.temperatures) or not self._needs_fallback(results[-1]):
            return len(results) - 1
        threshold = self.compression_ratio_threshold
        plain = [k for k, r in enumerate(results) if threshold is None or r.compression_ratio <= threshold]
        return max(plain or range(len(results)), key=lambda k: results[k].avg_logprob)

    def _align(self, result, temperature, features, n_frames, start, end, language, last_speech):
        import whisper

        if self._is_silence(result):
            return None, last_speech
        tokenizer = whisper.tokenizer.get_tokenizer(
            self._model.is_multilingual, num_languages=self._model.num_languages, language=language, task="transcribe"
        )
        tokens = [t for t in result.tokens if t < tokenizer.eot]
        if not tokens:
            return None, last_speech
        words, (start, end) = sung_words(self._aligned(tokenizer, tokens, features, n_frames), (start, end), last_speech)
        segment = Segment(
            start=round(float(start), 3), end=round(float(end), 3), text=result.text.strip(), words=words,
            avg_logprob=float(result.avg_logprob), no_speech_prob=float(result.no_speech_prob), temperature=temperature,
        )  # fmt: skip
        return segment, float(end)


BACKEND = Backend(
    name="openai-whisper",
    engine=WhisperEngine,
    summary="openai-whisper: voiced chunks, one encoder pass per batch, batched decoding",
    model_status=whisper_status,
    pull=pull_whisper,
)
