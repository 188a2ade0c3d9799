"""Whisper backends (issue 10): faster-whisper (CTranslate2) beside openai-whisper, planned with
its compute type, its model converted offline from the openai-whisper checkpoint, the same tokens
and words in float32 on the same weights and chunks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("faster_whisper")

from tests.audio_factory import melody, write_wav  # noqa: E402
from ultrasinger_gpu_cli.gpu import devices  # noqa: E402
from ultrasinger_gpu_cli.cli import app  # noqa: E402
from ultrasinger_gpu_cli.components import WHISPER  # noqa: E402
from ultrasinger_gpu_cli.errors import InvalidSettingError  # noqa: E402
from ultrasinger_gpu_cli.gpu.facts import GpuIdentity  # noqa: E402
from ultrasinger_gpu_cli.plan.resolver import PlanTarget, resolve  # noqa: E402

RTX_5060_TI = PlanTarget("NVIDIA GeForce RTX 5060 Ti", 16311, "12.0", GpuIdentity(0, "GPU-5060ti"), torch_can_run=True)


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def _song() -> np.ndarray:
    phrase = melody([(0.5 + 0.45 * k, 0.35, 60 + k % 5) for k in range(12)], 8.0, 16_000)
    return np.concatenate([phrase, np.zeros(3 * 16_000, np.float32), phrase])


@pytest.fixture
def converted(env):
    result = invoke("models", "pull", "whisper", "--backend", "faster-whisper", "--model", "tiny")
    assert result.exit_code == 0, result.output
    return env / "faster-whisper" / "tiny"


def test_pull_converts_the_openai_checkpoint_and_verify_checks_it(converted):
    assert (converted / "model.bin").is_file() and (converted / "tokenizer.json").is_file()
    listed = json.loads(invoke("models", "list", "whisper", "--backend", "faster-whisper", "--model", "tiny", "--json").stdout)
    assert listed["models"][0]["present"] and listed["models"][0]["backend"] == "faster-whisper"
    verified = invoke("models", "verify", "whisper", "--backend", "faster-whisper", "--model", "tiny", "--json")
    assert verified.exit_code == 0 and json.loads(verified.stdout)["ok"], verified.output
    (converted / "model.bin").write_bytes(b"\0" * 64)  # damaged
    broken = invoke("models", "verify", "whisper", "--backend", "faster-whisper", "--model", "tiny")
    assert broken.exit_code == 1 and "not a CTranslate2 model" in broken.stderr
    again = invoke("models", "pull", "whisper", "--backend", "faster-whisper", "--model", "tiny", "--force")
    assert again.exit_code == 0 and (converted / "model.bin").stat().st_size > 1000, again.output


def test_float32_gives_the_openai_backends_tokens_and_words(converted, fast_whisper):
    audio = _song()
    runs = {}
    for backend in ("openai-whisper", "faster-whisper"):
        settings = WHISPER.defaults(backend=backend, model="tiny", compute_type="float32", batch_size=4)
        engine = WHISPER.create(settings, converted.parent.parent, devices.DeviceBinding.cpu())
        runs[backend] = engine.run(audio, language="en")
    a, b = runs["openai-whisper"], runs["faster-whisper"]
    assert a.chunks == b.chunks and len(a.segments) == len(b.segments) > 0
    for x, y in zip(a.segments, b.segments):
        assert x.text == y.text
        assert [w.text for w in x.words] == [w.text for w in y.words]
        assert np.allclose([w.start_s for w in x.words], [w.start_s for w in y.words], atol=0.021)


def test_the_tests_small_whisper_ends_its_text_after_a_few_tokens_in_both_backends(converted):
    """tests/model_factory.py: without it every chunk of random weights decodes to whisper's limit
    at each temperature, in every process the tests start (minutes of the suite)."""
    import ctranslate2
    import whisper

    from tests.model_factory import TEXT_TOKENS
    from ultrasinger_gpu_cli.engines.whisper_engine import load_whisper
    from ultrasinger_gpu_cli.engines.whisper_features import log_mel

    mel = log_mel(_song()[: 10 * 16_000], 80)
    model = load_whisper(converted.parent.parent / "whisper" / "tiny.pt").float()
    decoded = whisper.decode(model, mel, whisper.DecodingOptions(language="en", without_timestamps=True, fp16=False))
    assert len(decoded.tokens) == TEXT_TOKENS and decoded.avg_logprob > -1.0  # no temperature fallback
    tokenizer = whisper.tokenizer.get_tokenizer(True, language="en", task="transcribe")
    ct2 = ctranslate2.models.Whisper(str(converted), device="cpu", compute_type="float32")
    features = ctranslate2.StorageView.from_array(mel.numpy()[None])
    result = ct2.generate(features, [[*tokenizer.sot_sequence, tokenizer.no_timestamps]], max_length=448)[0]
    assert result.sequences_ids[0] == decoded.tokens


def test_the_plan_gives_faster_whisper_its_compute_type_and_refuses_what_it_cannot_run():
    cpu = resolve(PlanTarget("CPU: test"), flags={"whisper": {"backend": "faster-whisper"}}).components["whisper"]
    assert cpu.value("compute_type") == "int8" and "int8 on the CPU" in cpu.settings["compute_type"].reason
    gpu = resolve(RTX_5060_TI, flags={"whisper": {"backend": "faster-whisper"}}).components["whisper"]
    assert (gpu.value("device"), gpu.value("compute_type")) == ("cuda", "int8_float16")
    assert "CUBLAS_STATUS_NOT_SUPPORTED" in gpu.settings["compute_type"].reason
    pascal = PlanTarget("Tesla P40", 24576, "6.1", GpuIdentity(0, "GPU-p40"), torch_can_run=True)
    old_card = resolve(pascal, flags={"whisper": {"backend": "faster-whisper"}}).components["whisper"]
    assert old_card.value("compute_type") == "int8" and "sm_61" in old_card.settings["compute_type"].reason
    # int8 weights: the estimate counts one byte per weight.
    fp16 = resolve(RTX_5060_TI, flags={"whisper": {"backend": "faster-whisper", "compute_type": "float16"}})
    assert gpu.estimated_vram_mb < fp16.components["whisper"].estimated_vram_mb
    with pytest.raises(InvalidSettingError, match="its compute types: float16, float32"):
        resolve(PlanTarget("CPU: test"), flags={"whisper": {"backend": "openai-whisper", "compute_type": "int8"}})


def test_cublas_refusing_int8_steps_to_float16_on_the_gpu_then_halves_in_float16():
    from ultrasinger_gpu_cli.run.fallback import ladder, run_with_fallback

    plan = WHISPER.defaults(backend="faster-whisper", compute_type="int8_float16", batch_size=8).but(device="cuda")
    cpu = WHISPER.defaults(backend="faster-whisper", compute_type="int8", batch_size=4)
    rungs = ladder("whisper", plan, cpu)
    assert [r.label for r in rungs[:3]] == ["cuda batch 8 int8_float16", "cuda batch 8 float16", "cuda batch 4 int8_float16"]
    tried, events = [], []

    def attempt(settings):
        tried.append((settings.compute_type, settings.batch_size, settings.device))
        if settings.compute_type == "int8_float16":
            raise RuntimeError("cuBLAS failed with status CUBLAS_STATUS_NOT_SUPPORTED")
        if settings.batch_size > 4 and settings.device == "cuda":
            raise RuntimeError("CUDA failed with error out of memory")
        return "words"

    result, used = run_with_fallback("whisper", rungs, attempt, on_event=events.append)
    assert result == "words" and (used.compute_type, used.batch_size, used.device) == ("float16", 4, "cuda")
    assert tried == [("int8_float16", 8, "cuda"), ("float16", 8, "cuda"), ("float16", 4, "cuda")]
    assert [(e.from_setting, e.to_setting) for e in events] == [
        ("cuda batch 8 int8_float16", "cuda batch 8 float16"), ("cuda batch 8 float16", "cuda batch 4")]
    assert "CUBLAS_STATUS_NOT_SUPPORTED" in events[0].reason
    # Out of memory never takes the precision step (float16 needs more memory, not less).
    tried.clear()

    def oom_then_ok(settings):
        tried.append((settings.compute_type, settings.batch_size))
        if settings.batch_size > 4:
            raise RuntimeError("CUDA failed with error out of memory")
        return "words"

    run_with_fallback("whisper", ladder("whisper", plan, cpu), oom_then_ok)
    assert tried == [("int8_float16", 8), ("int8_float16", 4)]


def test_ugpu_run_with_faster_whisper(converted, fast_whisper, tmp_path):
    source = write_wav(tmp_path / "Band - Song.wav", _song()[None], 16_000)
    result = invoke("run", str(source), "--no-separation", "--whisper-backend", "faster-whisper", "--language", "en",
                    "-o", str(tmp_path / "out"), "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    (report,) = json.loads(result.stdout)["songs"]
    (stage,) = [s for s in report["stages"] if s["stage"] == "whisper"]
    assert stage["backend"] == "faster-whisper" and stage["settings"]["compute_type"] == "int8"
    assert Path(report["files"]["ultrastar"]).read_text(encoding="utf-8").endswith("E\n")


def test_the_first_run_converts_offline_and_a_missing_checkpoint_names_both_pulls(env, fast_whisper, tmp_path, monkeypatch):
    source = write_wav(tmp_path / "Band - Song.wav", _song()[None], 16_000)
    args = ["run", str(source), "--no-separation", "--whisper-backend", "faster-whisper", "--language", "en"]
    first = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "a")])  # UGPU_OFFLINE=1: conversion is local
    assert first.exit_code == 0, first.output
    assert (env / "faster-whisper" / "small" / "model.bin").is_file()
    monkeypatch.setenv("UGPU_MODELS", str(tmp_path / "empty"))
    missing = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "b")])
    assert missing.exit_code == 1 and "Traceback" not in missing.output
    assert "converted from the openai-whisper checkpoint" in missing.stderr and "--backend faster-whisper" in missing.stderr


def test_lyrics_with_faster_whisper_every_word_once(converted, fast_whisper, tmp_path):
    from ultrasinger_gpu_cli.song.notes import lyrics_text
    from ultrasinger_gpu_cli.song.ultrastar import read_chart

    source = write_wav(tmp_path / "Band - Song.wav", _song()[None], 16_000)
    lyrics = tmp_path / "l.txt"
    text = "Hello, little star\nhow I wonder what you are\n\nUp above the world so high"
    lyrics.write_text(text, encoding="utf-8")
    result = invoke("run", str(source), "--no-separation", "--whisper-backend", "faster-whisper", "--lyrics", str(lyrics),
                    "--language", "en", "-o", str(tmp_path / "o"), "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    (report,) = json.loads(result.stdout)["songs"]
    chart = read_chart(Path(report["files"]["ultrastar"]).read_text(encoding="utf-8"))
    assert lyrics_text(chart.notes).split() == text.split()
    assert [s["backend"] for s in report["stages"] if s["stage"] == "whisper"] == ["faster-whisper"]


def test_faster_whisper_s_fallback_samples_the_same_for_a_song_whatever_ran_before(converted, monkeypatch):
    # faster-whisper samples its temperature fallback with CTranslate2's generators: one per
    # thread, taking the process-wide seed at the thread's first draw only, so on the loaded
    # model's worker thread a song's samples went on from the songs before it (a batch, a
    # server). Each batch that falls back now samples on a model of its own, seeded from the
    # stage's seed and the batch's start.
    import ctranslate2

    settings = WHISPER.defaults(backend="faster-whisper", model="tiny", compute_type="float32", batch_size=4, beam_size=1)
    engine = WHISPER.create(settings, converted.parent.parent, devices.DeviceBinding.cpu())
    engine.temperatures, engine.logprob_threshold = (0.0, 3.0), 0.0  # every chunk falls back: random weights are unsure
    engine.load()
    drawn: list[list[int]] = []
    build = ctranslate2.models.Whisper

    class Recorded:  # a sampler, its draws kept
        def __init__(self, *args, **kwargs):
            self._model = build(*args, **kwargs)

        def generate(self, *args, **kwargs):
            results = self._model.generate(*args, **kwargs)
            drawn.extend(seq for r in results for seq in r.sequences_ids)
            return results

    monkeypatch.setattr(ctranslate2.models, "Whisper", Recorded)
    song, other = _song()[: 8 * 16_000], _song()[8 * 16_000 : 16 * 16_000]

    def samples(audio: np.ndarray, seed: int) -> list[list[int]]:
        drawn.clear()
        engine.seeded(seed)
        engine.run(audio, language="en")
        return list(drawn)

    first = samples(song, 1)
    samples(other, 2)  # another song's samples in between
    assert first and samples(song, 1) == first
    assert samples(song, 3) != first  # it does sample: another seed, other draws
    engine.unload()


def test_openai_whisper_s_fallback_samples_the_same_whatever_else_draws_meanwhile(converted, monkeypatch):
    # openai-whisper samples its temperature fallback with torch's process-wide generators: a
    # server's worker threads share them, so one song's samples moved with another's draws. Each
    # batch now samples holding a lock, torch seeded from the stage's seed and the batch's start.
    import threading

    import torch
    import whisper

    drawn: dict[int, list[tuple[int, ...]]] = {}  # each thread's samples
    decode = whisper.decode

    def recorded(model, mel, options):
        results = decode(model, mel, options)
        if options.temperature > 0:
            drawn.setdefault(threading.get_ident(), []).extend(tuple(r.tokens) for r in results)
        return results

    monkeypatch.setattr(whisper, "decode", recorded)

    def loaded():
        settings = WHISPER.defaults(backend="openai-whisper", model="tiny", compute_type="float32", batch_size=4,
                                    beam_size=1)  # fmt: skip
        engine = WHISPER.create(settings, converted.parent.parent, devices.DeviceBinding.cpu())
        engine.temperatures, engine.logprob_threshold = (0.0, 3.0), 0.0  # every chunk falls back: random weights are unsure
        engine.sample_len = 12
        engine.load()
        return engine

    engine, other_engine = loaded(), loaded()
    song, other = _song()[: 8 * 16_000], _song()[8 * 16_000 : 16 * 16_000]

    def samples(engine, audio: np.ndarray, seed: int) -> list[tuple[int, ...]]:
        drawn.pop(threading.get_ident(), None)
        engine.seeded(seed)
        engine.run(audio, language="en")
        return drawn.pop(threading.get_ident(), [])

    torch.manual_seed(0)
    first = samples(engine, song, 1)
    torch.rand(1000)  # another draw from the generators, between the seed and the song
    assert first and samples(engine, song, 1) == first
    found: dict[str, list] = {}
    threads = [threading.Thread(target=lambda: found.__setitem__("song", samples(engine, song, 1))),
               threading.Thread(target=lambda: found.__setitem__("other", samples(other_engine, other, 2)))]  # fmt: skip
    for thread in threads:  # another worker sampling at the same time
        thread.start()
    for thread in threads:
        thread.join(120)
    assert found["song"] == first and found["other"]
    assert samples(engine, song, 3) != first  # it does sample: another seed, other draws
    engine.unload()
    other_engine.unload()


def test_a_fallback_keeps_the_sample_that_passes_whisper_s_checks_and_the_best_try_when_none_does():
    # Whisper retries a chunk that fails its checks (too repetitive, too improbable) at higher
    # temperatures, drawing BEST_OF samples each time as transcribe() does. On sung audio the
    # most probable sample is often a loop ("pantsy pantsy ..."): the one kept is the most
    # probable that passes. Where every temperature fails, the most probable try that is no loop,
    # as faster-whisper keeps it (openai-whisper keeps the last: one sample at temperature 1).
    from types import SimpleNamespace

    from ultrasinger_gpu_cli.components.whisper import WhisperSettings
    from ultrasinger_gpu_cli.engines.faster_whisper_engine import FasterWhisperEngine
    from ultrasinger_gpu_cli.engines.whisper_engine import BEST_OF, WhisperEngine

    def result(avg_logprob: float, compression_ratio: float, no_speech_prob: float = 0.0):
        return SimpleNamespace(avg_logprob=avg_logprob, compression_ratio=compression_ratio, no_speech_prob=no_speech_prob)

    assert BEST_OF == 5  # transcribe()'s best_of in both libraries
    loop, clean, unsure = result(-0.1, 11.7), result(-0.3, 1.8), result(-1.2, 0.8)
    for backend, engine_type in (("openai-whisper", WhisperEngine), ("faster-whisper", FasterWhisperEngine)):
        engine = engine_type(WhisperSettings(backend=backend, model="tiny.en", device="cpu", batch_size=1, compute_type="int8"))
        assert engine._best([loop, clean, unsure]) == 1
        assert engine._best([loop, unsure]) == 0  # none passes: the most probable
        assert engine._best([unsure, result(-0.2, 1.5, no_speech_prob=0.9)]) == 1  # silence passes (it is skipped)
        every = [result(-1.02, 0.7), result(-1.3, 0.8), result(-0.08, 6.3), result(-1.3, 0.7), result(-1.4, 0.7),
                 result(-3.2, 1.0)]  # fmt: skip
        assert len(every) == len(engine.temperatures) and engine._chosen(every) == 0
        loops = [result(-0.5 + 0.1 * k, 3.0 + k) for k in range(len(every))]
        assert engine._chosen(loops) == len(loops) - 1  # all loops: the most probable of all
        assert engine._chosen([every[0], clean]) == 1  # passed at the second temperature: that one
        assert engine._chosen([clean]) == 0


def test_both_backends_draw_best_of_samples_at_a_fallback_temperature(converted, monkeypatch):
    import whisper

    from ultrasinger_gpu_cli.engines.whisper_engine import BEST_OF

    drawn: dict[str, list[float]] = {"openai-whisper": [], "faster-whisper": []}
    decode = whisper.decode

    def counted(model, mel, options):
        drawn["openai-whisper"].append(options.temperature)
        return decode(model, mel, options)

    monkeypatch.setattr(whisper, "decode", counted)

    class Counted:  # CTranslate2's model, its generate calls counted
        def __init__(self, model):
            self._model = model

        def __getattr__(self, name):
            return getattr(self._model, name)

        def generate(self, features, prompts, **options):
            drawn["faster-whisper"] += [options.get("sampling_temperature", 0.0)] * options.get("num_hypotheses", 1)
            return self._model.generate(features, prompts, **options)

    audio = _song()[: 8 * 16_000]
    words = {}
    for backend in ("openai-whisper", "faster-whisper"):
        settings = WHISPER.defaults(backend=backend, model="tiny", compute_type="float32", batch_size=4, beam_size=1)
        engine = WHISPER.create(settings, converted.parent.parent, devices.DeviceBinding.cpu())
        engine.temperatures, engine.logprob_threshold = (0.0, 0.5), 0.0  # every try fails: random weights are unsure
        engine.load()
        if backend == "faster-whisper":  # the loaded model decodes, a model built for the batch samples
            import ctranslate2

            engine._model.model = Counted(engine._model.model)
            build = ctranslate2.models.Whisper
            monkeypatch.setattr(ctranslate2.models, "Whisper", lambda *a, **k: Counted(build(*a, **k)))
        words[backend] = [w.text for w in engine.run(audio, language="en").words]
        engine.unload()
    for backend, temperatures in drawn.items():  # per batch: one decoding at 0, BEST_OF samples at 0.5
        assert temperatures.count(0.0) >= 1 and temperatures.count(0.5) == BEST_OF * temperatures.count(0.0), backend
        assert words[backend], backend  # the best of the failed tries is kept, not nothing


def test_faster_whisper_counts_a_hypothesis_log_probability_as_both_libraries_do():
    # CTranslate2's score is the tokens' summed log-probability over their number; whisper and
    # faster-whisper divide the sum by the tokens and the end of text, and decide the fallback on it.
    from types import SimpleNamespace

    from ultrasinger_gpu_cli.engines.faster_whisper_engine import _decoded

    tokenizer = SimpleNamespace(eot=50256, decode=lambda tokens: " la" * len(tokens))
    ct2 = SimpleNamespace(sequences_ids=[[11, 12, 13, 50256], [11]], scores=[-0.9, -0.2], no_speech_prob=0.25)
    first = _decoded(ct2, 0, tokenizer)
    assert first.tokens == [11, 12, 13] and first.text == " la la la" and first.no_speech_prob == 0.25
    assert first.avg_logprob == pytest.approx(-0.9 * 3 / 4)
    assert _decoded(ct2, 1, tokenizer).avg_logprob == pytest.approx(-0.2 / 2)


def test_windows_reach_into_a_neighbour_only_at_a_cut_and_never_past_30_s():
    from ultrasinger_gpu_cli.song.vad import overlapped

    chunks = [(0.0, 20.0), (20.0, 48.0), (50.0, 60.0)]  # a cut at 20 s; a silence between 48 and 50 s
    assert overlapped(chunks, 1.0, 61.0) == [(0.0, 21.0), (19.0, 48.0), (50.0, 60.0)]  # 29 s: one second of room
    assert overlapped([(0.0, 30.0), (30.0, 40.0)], 1.0, 40.0) == [(0.0, 30.0), (29.0, 40.0)]


def test_a_chunk_keeps_its_own_words_and_a_phrase_heard_on_both_sides_of_a_cut_once():
    from ultrasinger_gpu_cli.engines.whisper_engine import _join_at_cut
    from ultrasinger_gpu_cli.song.words import Segment, Word

    def texts(segments):
        return [(w.text.strip(), w.start_s) for s in segments for w in s.words]

    # The window before a cut at 20 s heard "so far" in its overlap and stretched "so" over the pause.
    before = Segment(10.0, 20.9, "coming home so far", [Word(" coming", 10.0, 11.0), Word(" home", 11.0, 12.0),
                                                         Word(" so", 12.0, 17.0), Word(" far", 17.0, 17.2)])  # fmt: skip
    after = Segment(19.0, 24.0, "oh so far away", [Word(" oh", 19.2, 19.8), Word(" so", 19.9, 20.3),
                                                      Word(" far", 20.4, 20.7), Word(" away", 20.7, 21.5)])  # fmt: skip
    song: list[Segment] = []
    _join_at_cut(song, before, float("-inf"), 20.0)
    _join_at_cut(song, after, 20.0, float("inf"))
    # "so" (19.9 s, before the cut) and "far" are kept as the window after heard them; "oh" is before its chunk.
    assert texts(song) == [("coming", 10.0), ("home", 11.0), ("so", 19.9), ("far", 20.4), ("away", 20.7)]
    assert song[0].end == 12.0 and song[1].text == "so far away"
    def joined(cut: float, heard_before: list, heard_after: list, past: bool = False) -> list[tuple[str, float]]:
        """The song's words where a window before and a window after a cut heard these."""
        song: list[Segment] = []
        before = Segment(heard_before[0].start_s, cut + 1.0, "", heard_before)
        _join_at_cut(song, before, float("-inf"), cut)
        _join_at_cut(song, Segment(cut - 1.0, cut + 30.0, "", heard_after), cut, float("inf"),
                     heard_past=[w for w in before.words if w.start_s >= cut] if past else ())  # fmt: skip
        return texts(song)

    # No echo: each side keeps the words that start in its own chunk; a word the cut fell in,
    # heard whole before the cut (19.5-20.6 s), is not heard again after it.
    assert joined(20.0, [Word(" we", 18.0, 18.5), Word(" were", 18.6, 19.4), Word(" there", 19.5, 20.6), Word(" and", 20.7, 21.0)],
                  [Word(" air", 20.05, 20.5), Word(" and", 20.6, 21.0), Word(" back", 21.0, 21.5)]) == \
        [("we", 18.0), ("were", 18.6), ("there", 19.5), ("and", 20.6), ("back", 21.0)]  # fmt: skip
    # The window before stretched its last word over the cut and the next word's whole time; the
    # window after heard as many words before the cut as the window before kept there, so the word
    # inside the stretched one is a new word, not that one again (real singing, a cut at 16 s).
    assert joined(16.0, [Word(" from", 14.84, 15.18), Word(" Mr.", 15.18, 15.46), Word(" Betsy's", 15.96, 16.44),
                         Word(" pants", 16.44, 16.54)],
                  [Word(" Mr.", 15.0, 15.46), Word(" Fatty", 15.66, 16.28), Word(" Pants!", 16.28, 16.4)]) == \
        [("from", 14.84), ("Mr.", 15.18), ("Betsy's", 15.96), ("Pants!", 16.28)]  # fmt: skip
    # A word only the window before heard, past the cut (the window after starts hearing later):
    # kept from the window before, once; where the window after heard it too, as the window after did.
    before = [Word(" seeing", 46.15, 46.55), Word(" you", 46.55, 47.43), Word(" soon", 47.43, 47.59)]
    for heard_after, expected in (([Word(" so", 50.2, 50.5)], ["seeing", "you", "soon", "so"]),
                                  ([Word(" soon", 47.3, 47.6), Word(" so", 50.2, 50.5)], ["seeing", "you", "soon", "so"]),
                                  ([Word(" soon", 47.65, 47.9)], ["seeing", "you", "soon"])):  # fmt: skip
        assert [w for w, _ in joined(47.19, before, heard_after, past=True)] == expected
    assert [w for w, _ in joined(47.19, before, [Word(" so", 50.2, 50.5)])] == ["seeing", "you", "so"]  # without it: lost


@pytest.mark.parametrize("seconds", [0.01, 3.0, 30.0, 31.5])
@pytest.mark.parametrize("n_mels", [80, 128])
def test_whisper_features_are_openai_whispers_bit_for_bit(seconds, n_mels):
    """The features both backends feed Whisper, computed without importing openai-whisper, are the
    ones whisper computes: its filter bank file and its log-mel of a window (padded, or cut at 30 s)."""
    import torch
    import whisper

    from ultrasinger_gpu_cli.engines.whisper_features import frames_in, log_mel, mel_filters

    with np.load(Path(whisper.__file__).parent / "assets" / "mel_filters.npz") as shipped:
        assert np.array_equal(mel_filters(n_mels), shipped[f"mel_{n_mels}"])
    piece = melody([(0.0, 1.0, 60), (1.5, 20.0, 67)], seconds, 16_000) + np.float32(1e-3) * np.random.default_rng(7).standard_normal(
        int(seconds * 16_000)).astype(np.float32)  # fmt: skip
    theirs = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(piece)), n_mels)
    assert theirs.shape == (n_mels, 3000) and torch.equal(log_mel(piece, n_mels), theirs)
    assert frames_in(piece) == min(3000, piece.shape[-1] // whisper.audio.HOP_LENGTH)


def test_a_checkpoint_loads_mapped_in_its_own_precision_timing_words_on_the_upper_half(tmp_path):
    """Issue 22, item 5: the checkpoint memory-mapped and assigned as stored (float16 stays
    float16: no float32 copy; LayerNorm float32, as whisper computes it), the model equal to
    ``whisper.load_model``'s, buffers too. Issue 21: words are timed on every head of the
    decoder's upper half (``word_heads``), not on the release's speech-tuned heads that
    ``load_model`` would set for a model loaded by name."""
    import torch
    import whisper

    from tests.model_factory import SMALL_WHISPER_DIMS, build_whisper_checkpoint
    from ultrasinger_gpu_cli.components.whisper import word_heads
    from ultrasinger_gpu_cli.engines.whisper_engine import half_weights, load_whisper

    dims = {**SMALL_WHISPER_DIMS, "n_text_layer": 4, "n_text_head": 6, "n_text_state": 96}  # tiny's decoder heads
    path = build_whisper_checkpoint(tmp_path / "tiny.pt", dims)
    released = torch.load(path, weights_only=True)
    released["model_state_dict"] = {k: v.half() for k, v in released["model_state_dict"].items()}
    torch.save(released, path)  # whisper's releases are float16

    model = load_whisper(path)
    reference = whisper.load_model(str(path), device="cpu")
    ours, theirs = dict(model.named_parameters()), dict(reference.named_parameters())
    assert ours.keys() == theirs.keys()
    norms = {f"{n}.{p}" for n, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm) for p in ("weight", "bias")}
    for name, tensor in ours.items():
        assert tensor.dtype == (torch.float32 if name in norms else torch.float16), name
        assert torch.equal(tensor.float(), theirs[name].float()), name
    buffers = dict(model.named_buffers())
    for name, buffer in reference.named_buffers():
        assert torch.equal(buffers[name].to_dense().float(), buffer.to_dense().float()), name
    heads = model.alignment_heads.to_dense().numpy()
    assert heads.sum() == 12 and heads[2:].all() and [tuple(int(i) for i in ij) for ij in np.argwhere(heads)] == list(word_heads(4, 6))
    # Half precision costs no copy; any shape: its upper half.
    weight = model.decoder.token_embedding.weight
    assert half_weights(model).decoder.token_embedding.weight.data_ptr() == weight.data_ptr()
    other = load_whisper(build_whisper_checkpoint(tmp_path / "large-v3-turbo.pt"))
    assert other.alignment_heads.to_dense().sum() == 2  # 2 layers of 2 heads: the second half
    # Building it imports nothing more of torch: meta-device construction would import torch._dynamo
    # and triton (2 s, and an abort where TensorFlow was loaded first), seen in this suite.
    import subprocess
    import sys

    code = ("import sys; from ultrasinger_gpu_cli.engines.whisper_engine import load_whisper; "
            f"load_whisper({str(path)!r}); print(sorted(m for m in ('torch._dynamo', 'triton') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert done.returncode == 0 and done.stdout.strip() == "[]", (done.stdout, done.stderr[-2000:])
