"""Words into sung syllables: no word dropped (a zero-length word gets :data:`MIN_WORD_S` where its
neighbours leave room, else joins the word before it), syllables from the language's hyphenation
dictionary (pyphen) where there is one, else from the vowel-group rule (:func:`rule_syllables`),
and a word's time shared out by letters. Pure functions."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ultrasinger_gpu_cli.song.words import Word, marks_joined

VOWELS = set("aeiouyäöüáéíóúàèìòùâêîôûãõåæøœëïÿAEIOUYÄÖÜÁÉÍÓÚÀÈÌÒÙÂÊÎÔÛÃÕÅÆØŒËÏŸ")
MIN_WORD_S = 0.06  # what a zero-length word gets, where its neighbours leave room
MIN_SYLLABLE_S = 0.1  # the least a sung syllable lasts

_REGIONAL = {"en": "en_US", "de": "de_DE", "fr": "fr_FR", "pt": "pt_PT", "nl": "nl_NL", "it": "it_IT"}


@functools.lru_cache(maxsize=32)
def _dictionary(language: str) -> Any:
    """The hyphenation dictionary (pyphen's LibreOffice dictionaries) for a language, or None."""
    try:
        import pyphen
    except ImportError:
        return None
    name = _REGIONAL.get(language) or pyphen.language_fallback(language)
    # Sung syllables may be a single letter ("a-gain"): no typographic minimum at the ends.
    return pyphen.Pyphen(lang=name, left=1, right=1) if name else None


def syllables(word: str, language: str | None = None) -> list[str]:
    """Split a word into syllables: by the language's hyphenation dictionary where there is
    one (pyphen), else by the vowel-group rule. Punctuation stays with its syllable. A
    hyphenated word ("twenty-two", "one-way") splits at its hyphens first, each hyphen ending
    the syllable before it: the dictionaries know the parts, not the compound."""
    parts = re.split(r"(?<=\w-)(?=\w)", word)
    if len(parts) > 1:
        return [piece for part in parts for piece in syllables(part, language)]
    dictionary = _dictionary(language) if language else None
    if dictionary is not None:
        cuts = dictionary.positions(word)
        if cuts:
            bounds = [0, *cuts, len(word)]
            return _sung_parts([word[a:b] for a, b in zip(bounds, bounds[1:]) if word[a:b]])
        return [word]
    return rule_syllables(word, language)


def _has_vowel(part: str) -> bool:
    """A vowel letter, counting "y" only after the first letter ("my", "day"; not "y-ou")."""
    core = part.strip()
    return any(ch in VOWELS and ch not in "yY" for ch in core) or any(ch in "yY" for ch in core[1:])


def _sung_parts(parts: list[str]) -> list[str]:
    """A piece without a vowel sound is no sung syllable ("s-tar", "y-ou" from a hyphenation
    dictionary allowed to cut one letter off): it joins its neighbour."""
    out: list[str] = []
    carry = ""
    for part in parts:
        part = carry + part
        carry = ""
        if _has_vowel(part):
            out.append(part)
        else:
            carry = part
    if carry:
        if out:
            out[-1] += carry
        else:
            out.append(carry)
    return out


def rule_syllables(word: str, language: str | None = None) -> list[str]:
    """The vowel-group rule: a word splits between vowel groups; a single consonant between two
    groups starts the next syllable, of two or more the first stays. In English a final silent
    "e" after a consonant makes no syllable of its own ("make")."""
    letters = [i for i, ch in enumerate(word) if ch.isalpha()]
    if len(letters) <= 3:
        return [word]
    groups = []  # (start, end) index ranges of vowel groups
    i = 0
    while i < len(word):
        if word[i] in VOWELS:
            j = i
            while j + 1 < len(word) and word[j + 1] in VOWELS:
                j += 1
            groups.append((i, j))
            i = j + 1
        else:
            i += 1
    if len(groups) <= 1:
        return [word]
    cuts = []
    for (_, end_a), (start_b, _) in zip(groups, groups[1:]):
        consonants = start_b - end_a - 1
        cuts.append(end_a + 1 if consonants <= 1 else end_a + 2)
    core = word.rstrip(".,!?;:")
    if language in (None, "en") and core.lower().endswith("e") and groups[-1][0] == len(core) - 1:
        cuts = cuts[:-1]
    pieces, last = [], 0
    for cut in cuts:
        if 0 < cut < len(word) and cut > last:
            pieces.append(word[last:cut])
            last = cut
    pieces.append(word[last:])
    return [p for p in pieces if p]


def place_words(words: Sequence[Word]) -> list[Word]:
    """The words with text, none of zero length: such a word gets :data:`MIN_WORD_S` from the
    room around it, else joins the word before it (the first word: the one after), so every
    word's text reaches the chart in order."""
    out: list[Word] = []
    items = [w for w in words if w.text.strip()]
    pending: list[Word] = []  # zero-length words at the start, waiting for a word to join
    for i, w in enumerate(items):
        if w.end_s > w.start_s:
            if pending:
                joined = " ".join(p.text.strip() for p in pending)
                w = replace(w, text=f"{joined} {w.text.strip()}", phrase_start=pending[0].phrase_start or w.phrase_start)
                pending = []
            out.append(w)
            continue
        room_after = (items[i + 1].start_s if i + 1 < len(items) else w.start_s + MIN_WORD_S) - w.start_s
        room_before = w.start_s - (out[-1].end_s if out else 0.0)
        if room_after >= MIN_WORD_S:
            out.append(replace(w, end_s=w.start_s + MIN_WORD_S))
        elif room_before >= MIN_WORD_S:
            out.append(replace(w, start_s=w.start_s - MIN_WORD_S, end_s=w.start_s))
        elif out:
            prev = out[-1]
            out[-1] = replace(prev, text=f"{prev.text.rstrip()} {w.text.strip()}", end_s=max(prev.end_s, w.end_s))
        else:
            pending.append(w)
    if pending:  # only zero-length words and no room anywhere: one word of the minimum length
        first = pending[0]
        out.append(replace(first, text=" ".join(p.text.strip() for p in pending), end_s=first.start_s + MIN_WORD_S))
    return out


def share_by_letters(start_s: float, end_s: float, pieces: Sequence[str]) -> np.ndarray:
    weights = np.array([max(1, sum(ch.isalpha() for ch in p)) for p in pieces], dtype=float)
    return start_s + np.concatenate(([0.0], np.cumsum(weights) / weights.sum())) * (end_s - start_s)


def _one_word_each(words: Sequence[Word]) -> list[Word]:
    """Words that :func:`place_words` joined, apart again, sharing the time by letters (a mark
    written alone stays with its word: :func:`.words.marks_joined`)."""
    out = []
    for w in words:
        tokens = marks_joined(w.text.split()) or (w.text,)
        if len(tokens) <= 1:
            out.append(w)
            continue
        bounds = share_by_letters(w.start_s, w.end_s, tokens)
        out += [replace(w, text=t, start_s=float(bounds[k]), end_s=float(bounds[k + 1]),
                        phrase_start=w.phrase_start and k == 0) for k, t in enumerate(tokens)]  # fmt: skip
    return out


def split_words(words: Sequence[Word], language: str | None = None) -> list[Word]:
    """Words -> syllables, sharing each word's time out by letters."""
    out = []
    for w in _one_word_each(place_words(words)):
        parts = syllables(w.text.strip(), language)
        bounds = share_by_letters(w.start_s, w.end_s, parts)
        for k, part in enumerate(parts):
            out.append(Word(part, float(bounds[k]), float(bounds[k + 1]), word_end=k == len(parts) - 1,
                            phrase_start=w.phrase_start and k == 0, singer=w.singer))
    return out
