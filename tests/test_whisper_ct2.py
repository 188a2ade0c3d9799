"""The openai-whisper -> CTranslate2 conversion (groundwork of the faster-whisper backend, issue 10):
on the same random weights of the real layout, CTranslate2's Whisper gives openai-whisper's
logits and tokens, and the rebuilt tokenizer gives whisper's token ids."""

from __future__ import annotations

import numpy as np
import pytest

ctranslate2 = pytest.importorskip("ctranslate2")
tokenizers = pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def converted(tmp_path_factory, models_dir):
    from ultrasinger_gpu_cli.engines.whisper_ct2 import FILES, convert

    out = convert(models_dir / "whisper" / "tiny.pt", tmp_path_factory.mktemp("ct2") / "tiny")
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # nothing half-written left
    return out


def test_ctranslate2_gives_openai_whispers_logits_and_tokens(converted, models_dir):
    import torch
    import whisper

    from tests.audio_factory import melody

    model = whisper.load_model(str(models_dir / "whisper" / "tiny.pt"), device="cpu")
    audio = melody([(0.5 + 0.45 * k, 0.35, 60 + k % 5) for k in range(12)], 8.0, 16_000)
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(audio)), model.dims.n_mels)[None]
    tokenizer = whisper.tokenizer.get_tokenizer(True, num_languages=model.num_languages, language="en", task="transcribe")
    prompt = list(tokenizer.sot_sequence_including_notimestamps)
    ct2 = ctranslate2.models.Whisper(str(converted), device="cpu", compute_type="float32")
    features = ct2.encode(ctranslate2.StorageView.from_array(mel.numpy()), to_cpu=True)
    with torch.no_grad():
        encoded = model.encoder(mel)
    assert np.abs(np.array(features) - encoded.numpy()).max() < 1e-4
    # Greedy, nothing suppressed, 6 steps: every step's logits and token agree.
    result = ct2.generate(features, [prompt], beam_size=1, max_length=len(prompt) + 6, suppress_blank=False,
                          suppress_tokens=[], return_logits_vocab=True)[0]  # fmt: skip
    tokens = list(prompt)
    for step, logits in enumerate(result.logits[0]):
        with torch.no_grad():
            expected = model.decoder(torch.tensor([tokens]), encoded)[0, -1].numpy()
        assert np.abs(np.array(logits) - expected).max() < 1e-3, step
        tokens.append(int(expected.argmax()))
    assert result.sequences_ids[0] == tokens[len(prompt) : len(prompt) + len(result.sequences_ids[0])]


def test_the_rebuilt_tokenizer_gives_whispers_ids(converted):
    import whisper

    tokenizer = tokenizers.Tokenizer.from_file(str(converted / "tokenizer.json"))
    theirs = whisper.tokenizer.get_tokenizer(True, num_languages=99)
    for text in ("Hello, world!", " Grüße aus Köln", " 東京タワー", "  spaces  and\ttabs", "it's 1999's"):
        assert tokenizer.encode(text, add_special_tokens=False).ids == theirs.encode(text)
        assert tokenizer.decode(theirs.encode(text)) == text
    for name in ("<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>", "<|0.00|>", "<|30.00|>"):
        assert tokenizer.token_to_id(name) == theirs.encoding._special_tokens[name]
