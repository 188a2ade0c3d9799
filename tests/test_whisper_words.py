"""The word rules both Whisper backends share (engines/whisper_words.py), against openai-whisper's
own ``add_word_timestamps`` on the same alignments: equal wherever its speech rule for a pause's
first two words does not act, and where it does, only a long first word is cut."""

from __future__ import annotations

import copy
import random

import pytest

from ultrasinger_gpu_cli.engines.whisper_words import Aligned, sung_words

whisper_timing = pytest.importorskip("whisper.timing")

EOT = 50_000


class _Tokenizer:
    eot = EOT


def whispers(aligned: list[Aligned], span: tuple[float, float], last_speech_s: float, monkeypatch) -> tuple[list, tuple]:
    """openai-whisper's ``add_word_timestamps`` on the same alignment (its DTW replaced by it)."""
    timings = [whisper_timing.WordTiming(a.text, list(a.tokens), a.start_s, a.end_s, a.probability) for a in aligned]
    monkeypatch.setattr(whisper_timing, "find_alignment", lambda *args, **kwargs: copy.deepcopy(timings))
    tokens = [t for a in aligned for t in a.tokens]
    segment = {"seek": span[0] * 100, "start": span[0], "end": span[1], "tokens": tokens}
    whisper_timing.add_word_timestamps(segments=[segment], model=None, tokenizer=_Tokenizer(), mel=None, num_frames=0,
                                       last_speech_timestamp=last_speech_s)  # fmt: skip
    words = [(w["word"], w["start"], w["end"]) for w in segment.get("words", [])]
    return words, (segment["start"], segment["end"])


def _random_alignment(rng: random.Random) -> list[Aligned]:
    texts = [" so", " far", " a", "way", ".", " (", "oh", ")", " home", ",", " I'm", " com", "ing", "!", " the", "\""]
    out, t, token = [], rng.uniform(-1.5, 3.0), 1  # (before the window: the span's own rule)
    for _ in range(rng.randint(1, 12)):
        text = rng.choice(texts)
        length = 0.0 if rng.random() < 0.15 else rng.choice([rng.uniform(0.04, 0.6), rng.uniform(0.6, 6.0)])
        n = rng.randint(1, 3)
        out.append(Aligned(text, list(range(token, token + n)), t, t + length, rng.random()))
        token += n
        t += length + (rng.uniform(0.0, 4.0) if rng.random() < 0.2 else 0.0)
    return out


def _ours(aligned, span, last_speech_s):
    words, new_span = sung_words(aligned, span, last_speech_s)
    return [(w.text, w.start_s, w.end_s) for w in words], new_span


def test_equal_to_whispers_rules_where_no_pause_comes_before_the_window(monkeypatch):
    """Sentence ends, punctuation, rounding, the span: whisper's to the last digit (300 random windows)."""
    rng = random.Random(7)
    for _ in range(300):
        aligned = _random_alignment(rng)
        start = round(rng.uniform(0.0, 200.0), 2)
        span = (start, start + rng.choice([30.0, rng.uniform(0.5, 20.0)]))  # words may reach past it
        last_speech = start + 200.0  # the first word ends before it: no pause, the first-words rule is out
        assert _ours(aligned, span, last_speech) == whispers(aligned, span, last_speech, monkeypatch)


def test_after_a_pause_a_long_first_word_is_cut_as_whisper_cuts_it(monkeypatch):
    # " I'm" stretched over 3 s of rest before it, then two ordinary words
    aligned = [Aligned(" I'm", [1], 0.0, 3.2, 0.9), Aligned(" so", [2], 3.2, 3.5, 0.9), Aligned(" far", [3], 3.5, 3.8, 0.9)]
    span = (100.0, 130.0)
    ours = _ours(aligned, span, last_speech_s=90.0)
    assert ours == whispers(aligned, span, 90.0, monkeypatch)
    assert ours[0][0][1] == pytest.approx(103.2 - 0.6)  # two medians (0.3 s) before its end


def test_after_a_pause_a_held_second_word_keeps_its_start(monkeypatch):
    """A pickup and a held note ("co-ming home~~~", the second word 8 s): whisper moves both words
    to the hold's end; they keep the alignment's times."""
    aligned = [Aligned(" Coming", [4], 3.9, 5.3, 0.9), Aligned(" home", [5], 5.3, 13.4, 0.9)]
    span = (200.0, 226.0)
    ours, _ = _ours(aligned, span, last_speech_s=190.0)
    assert ours == [(" Coming", 203.9, 205.3), (" home", 205.3, 213.4)]
    theirs, _ = whispers(aligned, span, 190.0, monkeypatch)
    assert theirs[0][1] > 210.0 and theirs[1][1] > 211.0  # whisper's: both at the hold's end
    # and a short first word before a long gap keeps its start too (whisper stretches it back)
    aligned = [Aligned(" I", [1], 1.0, 1.2, 0.9), Aligned(" love", [2], 4.0, 4.4, 0.9), Aligned(" you", [3], 4.4, 4.7, 0.9)]
    ours, _ = _ours(aligned, span, last_speech_s=190.0)
    assert ours[0] == (" I", 201.0, 201.2)
    assert whispers(aligned, span, 190.0, monkeypatch)[0][0][1] < 201.0


def test_the_alignment_given_is_left_as_it_was():
    aligned = [Aligned(" (", [1], 0.0, 0.1, 0.5), Aligned("oh", [2], 0.1, 0.5, 0.5), Aligned(")", [3], 0.5, 0.6, 0.5)]
    before = copy.deepcopy(aligned)
    words, _ = sung_words(aligned, (0.0, 30.0), 0.0)
    assert [w.text for w in words] == [" (oh)"]
    assert aligned == before


def test_a_window_without_words_keeps_its_span():
    assert sung_words([], (5.0, 9.0), 0.0) == ([], (5.0, 9.0))
    assert sung_words([Aligned(".", [1], 0.0, 0.2, float("nan"))], (5.0, 9.0), 0.0)[0][0].probability == 0.0


def test_a_last_word_past_the_window_ends_a_median_after_its_start_at_least(monkeypatch):
    aligned = [Aligned(" so", [1], 0.0, 0.4, 0.9), Aligned(" far", [2], 0.4, 0.8, 0.9), Aligned(" away", [3], 9.9, 12.0, 0.9)]
    span = (50.0, 60.0)
    ours = _ours(aligned, span, last_speech_s=50.5)
    assert ours == whispers(aligned, span, 50.5, monkeypatch)
    assert ours[0][-1][1:] == (59.9, pytest.approx(59.9 + 0.4)) and ours[1] == span
