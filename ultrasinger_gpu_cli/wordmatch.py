"""Two word sequences matched in order: which word of one is which word of the other.

One monotonic alignment serves both places that need it: ``--lyrics`` (the user's words onto the
words Whisper heard) and ``ugpu eval`` (a chart's words onto a hand chart's). A pair of words
counts by how alike they are (equal: 1; a recogniser's near spelling: its letters' similarity);
an optional bonus prefers pairs close in time; an optional cost per skipped word of the second
sequence (its time) makes the alignment keep the song's order rather than jump across it. Pure
numpy: the dynamic programme runs a row at a time, vectorised.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

import numpy as np

SPELLING = 0.75  # two words whose letters agree this much are the same word (a recogniser's spelling)
NEAR_BONUS = 0.2  # at most this much more for a pair of words at the same time (1 s apart: half of it)
MAX_CELLS = 16_000_000  # larger problems are matched by difflib's blocks (linear memory)


def normalise(word: str) -> str:
    """A word as compared: case, punctuation and the chart's ``~`` ignored."""
    return re.sub(r"[^\w']", "", word.casefold()).strip("'")


def similarity(a: str, b: str) -> float:
    """1 for equal words, their letters' similarity when at least :data:`SPELLING`, else 0."""
    if a == b:
        return 1.0
    if not a or not b or abs(len(a) - len(b)) > max(len(a), len(b)) // 2:
        return 0.0
    ratio = difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()
    return ratio if ratio >= SPELLING else 0.0


def _weights(na: list[str], nb: list[str]) -> np.ndarray:
    """Pair weights, each pair of distinct words compared once; an equal pair beats any near one."""
    distinct_b = sorted(set(nb))
    index_b = {w: k for k, w in enumerate(distinct_b)}
    columns = np.array([index_b[w] for w in nb])
    rows = {}
    for w in set(na):
        row = np.array([1.0 + 1e-6 if w == other else 0.999 * similarity(w, other) for other in distinct_b])
        rows[w] = row[columns]
    return np.stack([rows[w] for w in na])


def match(a: Sequence[str], b: Sequence[str], *, times_a: Sequence[float] | None = None,
          times_b: Sequence[float] | None = None, skip_cost_b: Sequence[float] | None = None) -> list[tuple[int, int]]:  # fmt: skip
    """The best monotonic matching of ``a`` onto ``b``: (index in a, index in b) pairs, both
    increasing. With both sequences' times, a pair counts up to :data:`NEAR_BONUS` more the
    closer they are (a word sung again later pairs with its own occurrence, never at the cost of
    a match). ``skip_cost_b[j]`` is what leaving ``b[j]`` unmatched costs between two matches
    (words of ``b`` before the first match and after the last are free): with it, the matching
    will not jump over a stretch of ``b`` for a word or two. Skipping a word of ``a`` is free."""
    na, nb = [normalise(w) for w in a], [normalise(w) for w in b]
    if not na or not nb:
        return []
    if len(na) * len(nb) > MAX_CELLS:
        matcher = difflib.SequenceMatcher(None, na, nb, autojunk=False)
        return [(m.a + k, m.b + k) for m in matcher.get_matching_blocks() for k in range(m.size)]
    weights = _weights(na, nb)
    if times_a is not None and times_b is not None:
        ta, tb = np.asarray(times_a, dtype=float), np.asarray(times_b, dtype=float)
        weights = weights * (1 + NEAR_BONUS / (1 + np.abs(tb[None, :] - ta[:, None])))
    weights[weights <= 0] = -np.inf  # words that are not alike never pair (not even to avoid a skip's cost)
    cost = np.zeros(len(nb) + 1)
    if skip_cost_b is not None:
        cost[1:] = np.asarray(skip_cost_b, dtype=float)
    paid = np.cumsum(cost)  # paid[j]: skipping b[0..j-1] all
    # score[i][j]: the best matching of a[:i] onto b[:j] that ends on a match at or before b[j-1]
    # (b's words before a first match are free: row 0 is 0). A row is, vectorised,
    # max over k <= j of (candidate[k] - cost of skipping b[k..j-1]).
    score = np.zeros((len(na) + 1, len(nb) + 1))
    for i in range(1, len(na) + 1):
        candidate = score[i - 1].copy()
        candidate[1:] = np.maximum(candidate[1:], score[i - 1, :-1] + weights[i - 1])
        score[i] = np.maximum.accumulate(candidate + paid) - paid
    pairs = []
    i, j = len(na), int(np.argmax(score[-1]))  # b's words after the last match are free
    while i > 0 and j > 0:
        if abs(score[i, j] - score[i - 1, j]) <= 1e-9:
            i -= 1
        elif abs(score[i, j] - (score[i, j - 1] - cost[j])) <= 1e-9:
            j -= 1
        else:
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
    return pairs[::-1]
