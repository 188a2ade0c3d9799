"""Sung words from Whisper's alignment: the rules that turn each word's aligned span into its time.

Both backends' libraries time a window's words in two steps: a dynamic-time-warping path over
the decoder's cross-attention gives each word a span of 20 ms frames (openai-whisper's
``whisper.timing.find_alignment``, faster-whisper's ``WhisperModel.find_alignment``), then
``add_word_timestamps`` corrects the spans with rules made for speech. ugpu takes the first step
from the library and applies the rules here, once for both backends, as whisper does (the same
order, medians and rounding), but for one rule that singing breaks:

* a word after a sentence's end that lasts more than twice the window's median word (the median
  capped at :data:`MAX_MEDIAN_S`) starts two medians before its end, and a sentence's end mark
  lasts at most that long (whisper's: the alignment gives the pause before a sentence to its
  first word);
* punctuation merged into its word (whisper's marks, :data:`PREPENDED`, :data:`APPENDED`);
* **after a pause** (the window's first word ends more than four medians after the last word
  heard), a first word longer than two medians starts two medians before its end (whisper's:
  the alignment stretched it over the pause). Whisper also cuts the *second* word there when it
  is long, moving both words to its end: in speech a long second word is the pause misplaced;
  in a song it is the held note after a pickup ("co-ming **home**~~~", held 8 s, was moved with
  its pickup to the hold's end, 9 s late). ugpu leaves a long second word where the alignment
  put it; a word that holds a rest instead is the voice's to place
  (:func:`~ultrasinger_gpu_cli.song.onsets.after_rests` starts it where the voice comes back);
* the window's span follows its first and last words, unless a word reaches more than half a
  second past it (whisper's).

Pure: numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from ultrasinger_gpu_cli.song.words import Word

PREPENDED = "\"'“¿([{-"  # whisper's punctuation that joins the word after it
APPENDED = "\"'.。,，!！?？:：”)]}、"  # and the word before it
SENTENCE_END = ".。!！?？"
MAX_MEDIAN_S = 0.7  # whisper's cap on the median word
SPAN_SLACK_S = 0.5  # a word this far past the window's span moves the span, not the word


@dataclass
class Aligned:
    """One word (or mark) as the alignment times it: seconds from the window's start; a word's
    text keeps the tokenizer's leading space."""

    text: str
    tokens: list[int]
    start_s: float
    end_s: float
    probability: float


def _medians(aligned: Sequence[Aligned]) -> tuple[float, float]:
    """(median word, longest allowed word): the median over the non-empty spans, capped."""
    durations = np.array([a.end_s - a.start_s for a in aligned])
    durations = durations[durations.nonzero()]
    median = min(MAX_MEDIAN_S, float(np.median(durations))) if len(durations) else 0.0
    return median, 2 * median


def _at_sentence_ends(aligned: list[Aligned], longest: float) -> None:
    for i in range(1, len(aligned)):
        if aligned[i].end_s - aligned[i].start_s > longest:
            if aligned[i].text in SENTENCE_END:
                aligned[i].end_s = aligned[i].start_s + longest
            elif aligned[i - 1].text in SENTENCE_END:
                aligned[i].start_s = aligned[i].end_s - longest


def _merge_punctuation(aligned: list[Aligned]) -> None:
    """Marks joined to their words, whisper's way: an opening mark (a space before it) to the
    word after, a closing one to the word before (no space after that word); the mark's entry
    is left empty, its tokens moved."""
    j = len(aligned) - 1
    for i in range(len(aligned) - 2, -1, -1):
        before, after = aligned[i], aligned[j]
        if before.text.startswith(" ") and before.text.strip() in PREPENDED:
            after.text, after.tokens = before.text + after.text, before.tokens + after.tokens
            before.text, before.tokens = "", []
        else:
            j = i
    i = 0
    for j in range(1, len(aligned)):
        before, after = aligned[i], aligned[j]
        if not before.text.endswith(" ") and after.text in APPENDED:
            before.text, before.tokens = before.text + after.text, before.tokens + after.tokens
            after.text, after.tokens = "", []
        else:
            i = j


def _probability(value: float) -> float:
    """whisper averages token probabilities per word; a word of no text tokens gives NaN."""
    value = float(value)
    return value if np.isfinite(value) else 0.0


def sung_words(aligned: Sequence[Aligned], span: tuple[float, float],
               last_speech_s: float) -> tuple[list[Word], tuple[float, float]]:  # fmt: skip
    """A window's words (song time, rounded to 10 ms as whisper does) and its span, from its
    alignment (``aligned``, times from the window's start ``span[0]``; not changed) and the end
    of the last word heard before it (``last_speech_s``). See the module for the rules."""
    aligned = [replace(a, tokens=list(a.tokens)) for a in aligned]
    median, longest = _medians(aligned)
    if median > 0:
        _at_sentence_ends(aligned, longest)
    _merge_punctuation(aligned)
    offset = span[0]
    words = [Word(a.text, float(round(offset + a.start_s, 2)), float(round(offset + a.end_s, 2)), _probability(a.probability))
             for a in aligned if a.text]  # fmt: skip
    if not words:
        return [], span
    start, end = span
    first = words[0]
    if first.end_s - last_speech_s > 4 * median and first.end_s - first.start_s > longest:
        first = words[0] = replace(first, start_s=max(0.0, first.end_s - longest))
    if start < first.end_s and start - SPAN_SLACK_S > first.start_s:
        words[0] = replace(first, start_s=max(0.0, min(first.end_s - median, start)))
    else:
        start = first.start_s
    last = words[-1]
    if end > last.start_s and end + SPAN_SLACK_S < last.end_s:
        words[-1] = replace(last, end_s=max(last.start_s + median, end))
    else:
        end = last.end_s
    return words, (start, end)
