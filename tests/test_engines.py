"""The real engines (demucs, openai-whisper, torchcrepe) on small local models; no mocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.audio_factory import melody, midi_to_hz, song, sung_note
from tests.model_factory import FT_SIGNATURES
from ultrasinger_gpu_cli.components import spec
from ultrasinger_gpu_cli.engines import Engine, create
from ultrasinger_gpu_cli.engines.crepe_engine import import_torchcrepe

DEMUCS = {"model": "htdemucs_ft", "chunk_size": 262144, "overlap": 0.25, "batch_size": 3, "device": "cpu"}
WHISPER = {"model": "tiny", "batch_size": 4, "compute_type": "float32", "device": "cpu"}


def make(component: str, values: dict, models_dir=None) -> Engine:
    """An engine of the component's default backend with these settings (the rest: CPU defaults)."""
    return create(component, spec(component).defaults(**values), models_dir)


def _reference_vocals(models_dir, mix: np.ndarray, chunk_size: int, overlap: float) -> np.ndarray:
    """demucs's own apply_model over the whole four-model bag, normalised as demucs separate does."""
    from demucs.apply import apply_model
    from demucs.pretrained import get_model

    bag = get_model("htdemucs_ft", repo=models_dir / "demucs")
    wav = torch.from_numpy(mix)
    ref = wav.mean(0)
    normalised = ((wav - ref.mean()) / ref.std())[None]
    out = apply_model(bag, normalised, shifts=0, split=True, overlap=overlap, segment=chunk_size / 44_100)[0]
    return (out[bag.sources.index("vocals")] * ref.std() + ref.mean()).numpy()


# -- demucs -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("batch", "chunk", "overlap"), [(1, 262144, 0.25), (3, 262144, 0.25), (2, 343980, 0.1)])
def test_demucs_vocals_equal_apply_model_over_the_full_bag(models_dir, batch, chunk, overlap):
    mix = song(14.0)
    engine = make("demucs", {**DEMUCS, "batch_size": batch, "chunk_size": chunk, "overlap": overlap}, models_dir)
    separation = engine.run(mix)
    reference = _reference_vocals(models_dir, mix, chunk, overlap)
    assert np.abs(separation.vocals - reference).max() <= 1e-4
    assert np.allclose(separation.instrumental, mix - separation.vocals, atol=1e-6)
    assert separation.vocals.shape == mix.shape and separation.sample_rate == 44_100


def _streamed(models_dir, tmp_path):
    """A 40-s mix on disk, read in 5-s blocks; a Demucs engine that separates it two chunks a batch."""
    from ultrasinger_gpu_cli.run import streaming
    from ultrasinger_gpu_cli.song import stream as streams
    from ultrasinger_gpu_cli.song.audio import write_audio

    path = write_audio(tmp_path / "mix.wav", song(40.0), 44_100)
    engine = make("demucs", {**DEMUCS, "batch_size": 2}, models_dir)

    def blocks():
        return streams.AudioStream(path, 44_100, 2, block_s=5.0)

    return engine, blocks, streaming.scan(blocks(), False)


def test_streamed_stems_written_on_a_thread_are_those_written_in_order(models_dir, tmp_path):
    """The stems are written on a writer thread while Demucs separates the next chunks: the files
    and the 16 kHz vocals are byte for byte those of writing each stretch as it comes."""
    from ultrasinger_gpu_cli.run import streaming
    from ultrasinger_gpu_cli.song import stream as streams

    engine, blocks, scan = _streamed(models_dir, tmp_path)
    got = streaming.separate(engine, blocks(), scan, (tmp_path / "v.wav", tmp_path / "i.wav"), lambda f, s: None)
    vocals, instrumental = streams.StemWriter(tmp_path / "v0.wav", 44_100, 2), streams.StemWriter(tmp_path / "i0.wav", 44_100, 2)
    r16, parts = streams.Resampler(44_100, 16_000), []

    def in_order(mix: np.ndarray, voice: np.ndarray) -> None:
        vocals.write(voice)
        instrumental.write(mix - voice)
        parts.append(r16.push(voice.mean(axis=0)))

    engine.separate_stream(iter(blocks()), scan.mean, scan.std, in_order)
    parts.append(r16.finish())
    vocals.close(), instrumental.close()
    assert (tmp_path / "v.wav").read_bytes() == (tmp_path / "v0.wav").read_bytes()
    assert (tmp_path / "i.wav").read_bytes() == (tmp_path / "i0.wav").read_bytes()
    assert np.array_equal(got.vocals16, np.concatenate(parts)) and len(got.vocals16) == scan.samples16


def test_a_stem_that_cannot_be_written_stops_the_song_and_leaves_no_partial_file(models_dir, tmp_path, monkeypatch):
    from ultrasinger_gpu_cli.run import streaming
    from ultrasinger_gpu_cli.song import stream as streams

    engine, blocks, scan = _streamed(models_dir, tmp_path)
    written, real = [], streams.StemWriter.write

    def disk_full(self, block):
        if len(written) >= 3:
            raise OSError(28, "No space left on device")
        written.append(block.shape)
        real(self, block)

    monkeypatch.setattr(streams.StemWriter, "write", disk_full)
    out = tmp_path / "stems"
    with pytest.raises(OSError, match="No space left"):
        streaming.separate(engine, blocks(), scan, (out / "v.wav", out / "i.wav"), lambda f, s: None)
    assert list(out.iterdir()) == []


def test_demucs_runs_only_the_vocals_model_of_the_one_hot_bag(models_dir):
    engine = make("demucs", DEMUCS, models_dir)
    engine.load()
    assert engine._model["signatures"] == (FT_SIGNATURES[3],)
    assert len(engine._model["parts"]) == 1


def test_demucs_sends_only_batches_of_chunks_to_the_model(models_dir):
    engine = make("demucs", {**DEMUCS, "batch_size": 2}, models_dir)
    engine.load()
    model = engine._model["parts"][0][0]
    shapes = []
    handle = model.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    try:
        engine.run(song(40.0))
    finally:
        handle.remove()
    assert len(shapes) > 3
    assert {s[0] for s in shapes} <= {1, 2} and {s[-1] for s in shapes} == {262144}


def test_demucs_silence_and_very_short_input_give_no_vocals(models_dir):
    engine = make("demucs", DEMUCS, models_dir)
    silent = engine.run(np.zeros((2, 44_100), dtype=np.float32))
    assert silent.silent and not silent.vocals.any()
    short = engine.run(song(0.5))
    assert short.vocals.shape == (2, 22_050) and np.isfinite(short.vocals).all()


# -- whisper ------------------------------------------------------------------------------------
def _voice(duration: float = 70.0) -> np.ndarray:
    notes = [(2.0, 6.0, 57), (12.0, 5.0, 60), (31.0, 7.0, 64), (45.0, 8.0, 62), (58.0, 5.0, 65)]
    return melody(notes, duration)


def test_whisper_batched_decoding_gives_the_same_tokens_as_one_at_a_time(models_dir, fast_whisper):
    audio = _voice()
    chunks = [(1.75, 8.25), (11.75, 17.25), (30.75, 38.25), (44.75, 53.25), (57.75, 63.25)]
    batched = make("whisper", {**WHISPER, "batch_size": 4}, models_dir).run(audio, language="en", chunks=chunks)
    single = make("whisper", {**WHISPER, "batch_size": 1}, models_dir).run(audio, language="en", chunks=chunks)
    assert [s.text for s in batched.segments] == [s.text for s in single.segments]
    assert len(batched.segments) == len(chunks) and all(s.text for s in batched.segments)
    assert [[w.text for w in s.words] for s in batched.segments] == [[w.text for w in s.words] for s in single.segments]


def test_whisper_finds_voiced_chunks_and_maps_word_times_back_to_the_song(models_dir, fast_whisper):
    engine = make("whisper", WHISPER, models_dir)
    events = []
    transcript = engine.run(_voice(), lambda f, s: events.append((f, s)), language="en")
    assert 2 <= len(transcript.chunks) <= 5
    assert all(end - start <= 30.0 for start, end in transcript.chunks)
    assert transcript.chunks[0][0] == pytest.approx(1.75, abs=0.1)  # silence before the voice is skipped
    for segment in transcript.segments:
        assert segment.words
        for word in segment.words:
            assert 1.5 <= word.start_s <= word.end_s <= 70.0 and 0.0 <= word.probability <= 1.0
    fractions = [f for f, _ in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert events[-1][1] == pytest.approx(70.0)  # progress ends at the song's length


def test_whisper_detects_a_language_when_none_is_given(models_dir, fast_whisper):
    """The language is whisper's own detect_language on the same (single) chunk."""
    import whisper

    audio = _voice(20.0)
    engine = make("whisper", WHISPER, models_dir)
    transcript = engine.run(audio)
    ((start, end),) = transcript.chunks
    piece = torch.from_numpy(audio[int(start * 16_000) : int(end * 16_000)])
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(piece), engine._model.dims.n_mels)
    _, probs = whisper.detect_language(engine._model, mel)
    assert transcript.language == max(probs, key=probs.get)
    assert transcript.language in whisper.tokenizer.LANGUAGES


def test_whisper_on_silence_finds_no_vocals(models_dir, fast_whisper):
    transcript = make("whisper", WHISPER, models_dir).run(np.zeros(16_000 * 5, dtype=np.float32))
    assert transcript.no_vocals and transcript.segments == []


def test_engine_loads_once_and_unloads(models_dir, fast_whisper, monkeypatch):
    from ultrasinger_gpu_cli.engines import whisper_engine

    engine = make("whisper", WHISPER, models_dir)
    calls = []
    real = whisper_engine.load_whisper
    monkeypatch.setattr(whisper_engine, "load_whisper", lambda *a, **k: calls.append(a) or real(*a, **k))
    for _ in range(2):
        engine.run(_voice(12.0), language="en")
    assert len(calls) == 1 and engine.loaded
    engine.unload()
    assert not engine.loaded


def test_whisper_s_word_alignment_without_its_numba_kernels_is_its_own(tmp_path):
    """openai-whisper's DTW and path walk compile with numba in every new process (1.4 s on the
    CPU; the walk on every cold GPU run): ugpu's numpy versions find whisper's own paths, to the
    index, on shapes from one cell to a window's 1500 frames, with ties, and the walk does the
    same on an int32 trace as whisper's GPU kernel hands it over."""
    import subprocess
    import sys

    from ultrasinger_gpu_cli.engines import whisper_dtw

    shapes = [(1, 1), (1, 7), (5, 1), (3, 50), (40, 1500), (120, 700), (8, 8), (30, 30)]
    code = f"""
import numpy as np, whisper.timing as t
rng = np.random.default_rng(3)
out = {{}}
for k, (n, m) in enumerate({shapes!r}):
    x = rng.standard_normal((n, m))
    x = np.round(x) if k >= 6 else x  # ties
    out[f"x{{k}}"], out[f"p{{k}}"] = x, t.dtw_cpu(x)
trace = rng.integers(0, 3, (60, 900)).astype(np.int32)
out["trace"], out["walk"] = trace.copy(), t.backtrace(trace)
np.savez({str(tmp_path / "whisper.npz")!r}, **out)
"""
    subprocess.run([sys.executable, "-c", code], check=True)
    whisper_s = np.load(tmp_path / "whisper.npz")
    for k in range(len(shapes)):
        assert np.array_equal(whisper_dtw.dtw_cpu(whisper_s[f"x{k}"]), whisper_s[f"p{k}"]), shapes[k]
    assert np.array_equal(whisper_dtw.backtrace(whisper_s["trace"].copy()), whisper_s["walk"])


def test_the_openai_whisper_engine_times_words_with_the_numpy_alignment(models_dir, fast_whisper, monkeypatch):
    import whisper.timing

    from ultrasinger_gpu_cli.engines import whisper_dtw

    for name in ("dtw_cpu", "backtrace"):  # not ugpu's, whatever ran before in this process
        monkeypatch.setattr(whisper.timing, name, object())
    make("whisper", WHISPER, models_dir).run(_voice(12.0), language="en")
    assert whisper.timing.dtw_cpu is whisper_dtw.dtw_cpu and whisper.timing.backtrace is whisper_dtw.backtrace


class _Held(Engine):
    def load(self) -> None:
        self._model = object()


@pytest.mark.parametrize("device, collections", [("cpu", 0), ("cuda", 1)])
def test_unloading_collects_garbage_only_for_a_card(monkeypatch, device, collections):
    """Unloading a CPU run's two engines cost two full garbage collections (0.1 s each with torch
    loaded) for memory that goes back as the model is dropped; a card's model is still collected
    at once, so its VRAM is free before the next stage or rung."""
    import gc

    collected = []
    monkeypatch.setattr(gc, "collect", lambda *a: collected.append(a) or 0)
    engine = _Held(spec("crepe").defaults(device=device))
    engine.load()
    engine.unload()
    assert not engine.loaded and len(collected) == collections


def test_a_run_s_end_collects_once_for_all_its_card_engines(monkeypatch):
    """At a run's end every engine is dropped and one collection frees them all (on a card a
    collection each cost a tenth of a second or more, three times, at the end of every cold run)."""
    import gc

    from ultrasinger_gpu_cli.plan.resolver import CPU_TARGET, resolve
    from ultrasinger_gpu_cli.run.runner import StageRunner

    collected = []
    monkeypatch.setattr(gc, "collect", lambda *a: collected.append(a) or 0)
    runner = StageRunner(resolve(CPU_TARGET, "balanced"))
    engines = [_Held(spec(c).defaults(device="cuda")) for c in ("demucs", "whisper", "crepe")]
    for k, engine in enumerate(engines):
        engine.load()
        runner._engines[(str(k), "", "", "cuda:0")] = engine
    runner.finish("done")
    assert not any(e.loaded for e in engines) and len(collected) == 1 and not runner._engines


def test_freeing_memory_never_imports_torch():
    """A process that has not imported torch has none of torch's memory to give back: importing
    torch to find that out cost a second at the end of a run without it."""
    import subprocess
    import sys

    code = ("import sys; from ultrasinger_gpu_cli.gpu.devices import free_memory; free_memory(); "
            "print('torch' in sys.modules)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


# -- crepe --------------------------------------------------------------------------------------
def _cents(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return 1200 * np.abs(np.log2(a / b))


@pytest.mark.parametrize("capacity", ["tiny", "full"])
def test_crepe_known_pitch_within_25_cents(capacity):
    notes = [(0.2, 0.8, 57), (1.2, 0.8, 64), (2.2, 0.8, 69), (3.2, 0.6, 60)]
    audio = melody(notes, 4.0)
    track = make("crepe", {"model": capacity, "step_size": 10, "batch_size": 256, "device": "cpu"}).run(audio)
    checked = 0
    for start, length, midi in notes:
        inside = (track.times > start + 0.06) & (track.times < start + length - 0.06)
        voiced = inside & (track.confidence > 0.5)
        assert voiced.sum() >= 0.9 * inside.sum()
        errors = _cents(track.frequency[voiced], np.full(voiced.sum(), midi_to_hz(midi)))
        assert np.mean(errors <= 25) >= 0.95, (capacity, midi, float(np.median(errors)))
        checked += voiced.sum()
    assert checked > 200


def test_crepe_equals_torchcrepe_predict_on_the_voiced_frames():
    torchcrepe = import_torchcrepe()
    audio = melody([(0.5, 1.0, 60), (2.0, 1.0, 67)], 3.5)
    track = make("crepe", {"model": "tiny", "step_size": 10, "batch_size": 128, "device": "cpu"}).run(audio)
    pitch, periodicity = torchcrepe.predict(
        torch.from_numpy(audio)[None], 16_000, 160, model="tiny", decoder=torchcrepe.decode.weighted_argmax,
        return_periodicity=True, batch_size=128,
    )  # fmt: skip
    computed = track.computed
    assert 0 < computed.sum() < len(computed)  # the silence in between is not computed
    assert len(track.times) == pitch.shape[1]
    assert np.abs(pitch[0].numpy()[computed] - track.frequency[computed]).max() < 0.01
    assert np.abs(periodicity[0].numpy()[computed] - track.confidence[computed]).max() < 1e-4
    assert not track.frequency[~computed].any() and not track.confidence[~computed].any()


def test_crepe_gate_regions_and_csv():
    audio = melody([(0.5, 1.0, 60)], 3.0)
    engine = make("crepe", {"model": "tiny", "step_size": 20, "batch_size": 64, "device": "cpu"})
    track = engine.run(audio, regions=[(1.0, 1.2)])
    assert track.computed.sum() == pytest.approx(11, abs=1)
    everything = engine.run(audio, gate=False)
    assert everything.computed.all()
    lines = track.to_csv().splitlines()
    assert lines[0] == "time,frequency,confidence" and len(lines) == len(track.times) + 1
    assert lines[1].startswith("0.000,0.000,")


def test_crepe_silence_and_short_input():
    engine = make("crepe", {"model": "tiny", "step_size": 10, "batch_size": 64, "device": "cpu"})
    assert engine.run(np.zeros(16_000, dtype=np.float32)).computed.sum() == 0
    short = engine.run(sung_note(220, 0.4, 16_000))
    assert short.computed.any()


def test_torchcrepe_imports_although_torchaudio_is_broken_here():
    import subprocess
    import sys

    broken = subprocess.run([sys.executable, "-c", "import torchaudio"], capture_output=True).returncode != 0
    if not broken:  # pragma: no cover - a machine whose torchaudio matches its torch
        pytest.skip("torchaudio imports fine here: there is nothing to work around")
    import_torchcrepe()
    import torchaudio  # the stand-in, which explains itself instead of crashing the import

    with pytest.raises(ImportError, match="ffmpeg"):
        torchaudio.load  # noqa: B018


# -- CUDA (skipped without a GPU) ---------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_engines_on_cuda_use_the_gpu_and_agree_with_the_cpu(models_dir, fast_whisper):  # pragma: no cover - GPU only
    from ultrasinger_gpu_cli.gpu import devices

    binding = devices.bind(None)
    devices.start_measuring(binding)
    sep = make("demucs", {**DEMUCS, "device": "cuda"}, models_dir).run(song(10.0))
    assert devices.peak_vram_mb(binding) > 0
    cpu = make("demucs", DEMUCS, models_dir).run(song(10.0))
    assert np.abs(sep.vocals - cpu.vocals).max() < 1e-3
    tr = make("whisper", {**WHISPER, "device": "cuda", "compute_type": "float16"}, models_dir).run(_voice(30.0), language="en")
    assert tr.segments
    pt = make("crepe", {"model": "full", "step_size": 10, "batch_size": 1024, "device": "cuda"}).run(melody([(0.2, 1.0, 60)], 1.5))
    assert pt.computed.any()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_demucs_on_a_side_stream_beside_crepe_gives_the_vocals_it_gives_alone(models_dir):  # pragma: no cover - GPU only
    """A batch's next song is separated on a CUDA stream of its own while another thread runs
    this song's pitch on the default stream: the vocals must be those of Demucs alone."""
    import threading

    from ultrasinger_gpu_cli.gpu import devices

    binding = devices.bind(None)
    demucs = make("demucs", {**DEMUCS, "device": "cuda"}, models_dir)
    crepe = make("crepe", {"model": "full", "step_size": 10, "batch_size": 1024, "device": "cuda"})
    mix, voice = song(20.0), melody([(0.2, 8.0, 60)], 10.0)
    alone = demucs.run(mix).vocals
    crepe.run(voice)  # loaded and warm
    stop, pitched = threading.Event(), []

    def pitch() -> None:
        while not stop.is_set():
            pitched.append(crepe.run(voice).frequency)

    thread = threading.Thread(target=pitch)
    thread.start()
    try:
        with devices.on_stream(devices.side_stream(binding), binding):
            beside = demucs.run(mix).vocals
    finally:
        stop.set()
        thread.join()
    assert pitched and np.array_equal(alone, beside)
    assert all(np.array_equal(pitched[0], f) for f in pitched)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_float16_whisper_loads_without_a_float32_copy_on_the_card(models_dir):  # pragma: no cover - GPU only
    """Seen on an H200: whisper.load_model(device="cuda") held the checkpoint and a float32 model
    on the card at once (3x the float16 weights), so turbo could not load under a 4 GB cap."""
    from ultrasinger_gpu_cli.gpu import devices

    binding = devices.bind(None)
    devices.free_memory()
    torch.cuda.reset_peak_memory_stats(binding.ordinal)
    before = torch.cuda.memory_allocated(binding.ordinal)
    engine = make("whisper", {**WHISPER, "device": "cuda", "compute_type": "float16"}, models_dir)
    engine.load()
    weights = sum(p.numel() * p.element_size() for p in engine._model.parameters())
    assert torch.cuda.max_memory_allocated(binding.ordinal) - before < 1.25 * weights
    engine.unload()


def test_float16_whisper_keeps_its_weights_in_float16_but_layernorm_in_float32(models_dir):
    """On CUDA the float16 plan stores float16 weights (half the memory), not float32 cast per layer."""
    import whisper

    from ultrasinger_gpu_cli.engines.whisper_engine import half_weights

    model = whisper.load_model(str(models_dir / "whisper" / "tiny.pt"), device="cpu")
    before = sum(p.numel() * p.element_size() for p in model.parameters())
    half_weights(model)
    after = sum(p.numel() * p.element_size() for p in model.parameters())
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(p.dtype == torch.float32 for m in norms for p in m.parameters())
    others = {id(p) for m in norms for p in m.parameters()}
    assert all(p.dtype == torch.float16 for p in model.parameters() if id(p) not in others)
    assert after < 0.52 * before
