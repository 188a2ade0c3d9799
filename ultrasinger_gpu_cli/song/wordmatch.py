"""Two word sequences matched in order: which word of one is which word of the other.

One monotonic alignment serves both places that need it: ``--lyrics`` (the user's words onto the
words Whisper heard) and ``ugpu eval`` (a chart's words onto a hand chart's). A pair of words
counts by how alike they are (equal: 1; a recogniser's near spelling: its letters' similarity);
an optional bonus prefers pairs close in time; an optional cost per skipped word of the second
sequence (its time) makes the alignment keep the song's order rather than jump across it; an
optional cost per word left unpaired on either side, with misheard words pairing for nothing,
makes it an edit-distance alignment (``--lyrics``: no lone common word as an anchor). The lyric
similarity is the longest common subsequence (:func:`common_words`). Pure numpy: the dynamic
programmes run a row at a time, vectorised.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

import numpy as np

SPELLING = 0.75  # two words whose letters agree this much are the same word (a recogniser's spelling)
NEAR_BONUS = 0.2  # at most this much more for a pair of words at the same time (1 s apart: half of it)
MAX_CELLS = 16_000_000  # larger problems: pairs within WINDOW_S of each other only (timed), else in blocks
WINDOW_S = 30.0  # two timed words further apart than this are not the same sung word
BLOCK = 2_000  # untimed and large: matched block by block along the diagonal


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
          times_b: Sequence[float] | None = None, skip_cost_b: Sequence[float] | None = None,
          unpaired_cost: float = 0.0) -> list[tuple[int, int]]:  # fmt: skip
    """The best monotonic matching of ``a`` onto ``b``: (index in a, index in b) pairs, both
    increasing. With both sequences' times, a pair counts up to :data:`NEAR_BONUS` more the
    closer they are (a word sung again later pairs with its own occurrence, never at the cost of
    a match). ``skip_cost_b[j]`` is what leaving ``b[j]`` unmatched costs between two matches
    (words of ``b`` before the first match and after the last are free): with it, the matching
    will not jump over a stretch of ``b`` for a word or two. Skipping a word of ``a`` is free.

    ``unpaired_cost`` > 0 makes it an edit-distance alignment: two words that are not alike may
    stand for each other (a word the recogniser misheard: no gain, and not a returned pair), and
    each word of either sequence left with no partner between the first pair and the last costs
    this much. A lone equal word that would leave words without a partner on both sides of it
    (the lyrics' "to" paired with a "to" heard five seconds early, the words between crammed
    before it) then loses to pairing the stretch word for word; words before the first pair and
    after the last stay free."""
    na, nb = [normalise(w) for w in a], [normalise(w) for w in b]
    if not na or not nb:
        return []
    if len(na) * len(nb) > MAX_CELLS:
        if times_a is not None and times_b is not None:
            return _sparse_match(na, nb, np.asarray(times_a, dtype=float), np.asarray(times_b, dtype=float))
        return _blockwise(na, nb)
    weights = _weights(na, nb)
    if times_a is not None and times_b is not None:
        ta, tb = np.asarray(times_a, dtype=float), np.asarray(times_b, dtype=float)
        weights = weights * (1 + NEAR_BONUS / (1 + np.abs(tb[None, :] - ta[:, None])))
    alike = weights > 0
    # Words that are not alike never pair (not even to avoid a skip's cost), unless they may stand
    # for each other (an edit-distance alignment: no gain).
    weights[~alike] = 0.0 if unpaired_cost > 0 else -np.inf
    cost = np.full(len(nb) + 1, float(unpaired_cost))
    cost[0] = 0.0
    if skip_cost_b is not None:
        cost[1:] += np.asarray(skip_cost_b, dtype=float)
    paid = np.cumsum(cost)  # paid[j]: skipping b[0..j-1] all
    # score[i][j]: the best matching of a[:i] onto b[:j] that ends on a pair at or before
    # (i-1, j-1); 0 where none is worth its costs yet (the words before the first pair are free).
    # A row is, vectorised, max over k <= j of (candidate[k] - cost of skipping b[k..j-1]).
    score = np.zeros((len(na) + 1, len(nb) + 1))
    for i in range(1, len(na) + 1):
        candidate = np.maximum(score[i - 1] - unpaired_cost, 0.0)
        candidate[1:] = np.maximum(candidate[1:], score[i - 1, :-1] + weights[i - 1])
        score[i] = np.maximum.accumulate(candidate + paid) - paid
    pairs = []
    # The words after the last pair are free: b's always, a's where leaving one unpaired costs.
    i = len(na) if unpaired_cost <= 0 else int(np.argmax(score.max(axis=1)))
    j = int(np.argmax(score[i]))
    while i > 0 and j > 0 and score[i, j] > 1e-9:
        if abs(score[i, j] - (score[i - 1, j] - unpaired_cost)) <= 1e-9:
            i -= 1
        elif abs(score[i, j] - (score[i, j - 1] - cost[j])) <= 1e-9:
            j -= 1
        else:
            if alike[i - 1, j - 1]:
                pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
    return pairs[::-1]


def _sparse_match(na: list[str], nb: list[str], ta: np.ndarray, tb: np.ndarray) -> list[tuple[int, int]]:
    """Large timed sequences: the heaviest monotonic chain over the pairs of alike words at most
    :data:`WINDOW_S` apart (a weighted longest increasing subsequence over a Fenwick tree of
    prefix maxima): O(pairs · log n) time and memory, whatever the lengths."""
    order_b = np.maximum.accumulate(tb)  # searchable even where a chart's times step back
    cache: dict[tuple[str, str], float] = {}
    pairs: list[tuple[int, int, float]] = []
    for i, word in enumerate(na):
        lo, hi = np.searchsorted(order_b, [ta[i] - WINDOW_S, ta[i] + WINDOW_S])
        for j in range(int(lo), int(hi)):
            key = (word, nb[j])
            if key not in cache:
                cache[key] = 1.0 + 1e-6 if word == nb[j] else 0.999 * similarity(word, nb[j])
            if cache[key] > 0:
                pairs.append((i, j, cache[key] * (1 + NEAR_BONUS / (1 + abs(tb[j] - ta[i])))))
    pairs.sort(key=lambda p: (p[0], -p[1]))  # a row's pairs never chain with each other
    size = len(nb) + 1
    tree_value = [0.0] * (size + 1)
    tree_at = [-1] * (size + 1)
    before = [-1] * len(pairs)
    total = [0.0] * len(pairs)
    for k, (_, j, weight) in enumerate(pairs):
        best, at, x = 0.0, -1, j  # the best chain ending at a column < j
        while x > 0:
            if tree_value[x] > best:
                best, at = tree_value[x], tree_at[x]
            x -= x & -x
        total[k], before[k] = best + weight, at
        x = j + 1
        while x <= size:
            if total[k] > tree_value[x]:
                tree_value[x], tree_at[x] = total[k], k
            x += x & -x
    k = max(range(len(pairs)), key=total.__getitem__) if pairs else -1
    out = []
    while k >= 0:
        out.append((pairs[k][0], pairs[k][1]))
        k = before[k]
    return out[::-1]


def _blockwise(na: list[str], nb: list[str]) -> list[tuple[int, int]]:
    """Large untimed sequences: matched a block at a time along their diagonal (each block by
    the full alignment), linear in the lengths."""
    out: list[tuple[int, int]] = []
    i = j = 0
    while i < len(na) and j < len(nb):
        width_a = min(BLOCK, len(na) - i)
        width_b = min(int(BLOCK * len(nb) / len(na)) + 1, len(nb) - j)
        pairs = match(na[i : i + width_a], nb[j : j + width_b])
        if not pairs:
            i, j = i + width_a, j + width_b
            continue
        keep = pairs[: max(1, len(pairs) * 3 // 4)]  # the block's tail is matched again with what follows
        out += [(i + a, j + b) for a, b in keep]
        i, j = i + keep[-1][0] + 1, j + keep[-1][1] + 1
    return out


def ratio(a: Sequence[str], b: Sequence[str], times_a: Sequence[float], times_b: Sequence[float]) -> float:
    """How alike two word sequences are: 2 · the most equal words matched in order (their longest
    common subsequence, :func:`common_words`) / both lengths. Sequences too long for that (above
    :data:`MAX_CELLS` pairs): the equal pairs of the timed sparse match. (difflib's ratio, used
    before, takes the longest common block first: on a song whose chorus returns it paired a
    chorus with the wrong occurrence and scored half the words that match in order.)"""
    if not a and not b:
        return 1.0
    if len(a) * len(b) <= MAX_CELLS:
        return 2 * common_words(a, b) / (len(a) + len(b))
    pairs = _sparse_match(list(a), list(b), np.asarray(times_a, dtype=float), np.asarray(times_b, dtype=float))
    equal = sum(1 for i, j in pairs if a[i] == b[j])
    return 2 * equal / (len(a) + len(b))


def common_words(a: Sequence[str], b: Sequence[str]) -> int:
    """The length of the longest common subsequence of two word sequences (equal words, as
    given), a row at a time: a row is the running maximum of the row above and the diagonal
    step where the words are equal."""
    codes = {w: k for k, w in enumerate(set(a) | set(b))}
    columns = np.array([codes[w] for w in b], dtype=np.int64)
    row = np.zeros(len(b) + 1, dtype=np.int64)
    for word in a:
        candidate = row.copy()
        candidate[1:] = np.maximum(row[1:], row[:-1] + (columns == codes[word]))
        row = np.maximum.accumulate(candidate)
    return int(row[-1])
