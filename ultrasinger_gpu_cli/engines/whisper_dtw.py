"""openai-whisper's word alignment without its numba kernels: the same dynamic-time-warping path,
computed in numpy, so no process compiles anything to time a song's words.

``whisper.timing`` aligns tokens to audio frames with a DTW whose CPU version (``dtw_cpu``) and
path walk (``backtrace``, used on the GPU too, after the Triton kernel) are numba functions
compiled on their first call in every new process, without a cache: 1.4 s for both here on
the CPU, and the walk's compile on every cold GPU run. This module computes the same cost
matrix, the same choices and the same path: the cost along each anti-diagonal at once (each
cell needs only the two diagonals before it), with whisper's float32 costs, float64 sums and
tie rules, so the words' times are whisper's own to the last bit (a test compares them).
:func:`install` puts both into ``whisper.timing`` for the openai-whisper engine.
"""

from __future__ import annotations

import numpy as np


def backtrace(trace: np.ndarray) -> np.ndarray:
    """The path (2, steps) from the trace matrix's last cell back to its first, in order:
    0 moves diagonally, 1 up a row (a token), 2 along a row (a frame); the first row and column
    lead to the corner (``trace`` is changed there, as whisper's own does)."""
    i, j = trace.shape[0] - 1, trace.shape[1] - 1
    trace[0, :] = 2
    trace[:, 0] = 1
    moves = trace.tolist()
    path = []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        move = moves[i][j]
        if move == 0:
            i, j = i - 1, j - 1
        elif move == 1:
            i -= 1
        elif move == 2:
            j -= 1
        else:
            raise ValueError("Unexpected trace[i, j]")
    return np.array(path)[::-1, :].T


def dtw_cpu(x: np.ndarray) -> np.ndarray:
    """The cheapest monotonic path through ``x`` (tokens x frames, float64), as
    ``whisper.timing.dtw_cpu`` finds it."""
    n, m = x.shape
    cost = np.full((n + 1, m + 1), np.inf, dtype=np.float32)
    trace = np.full((n + 1, m + 1), -1.0, dtype=np.float32)
    cost[0, 0] = 0
    for d in range(2, n + m + 1):  # the cells with i + j == d, every one needing only d - 1 and d - 2
        i = np.arange(max(1, d - m), min(n, d - 1) + 1)
        j = d - i
        c0, c1, c2 = cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1]
        diagonal = (c0 < c1) & (c0 < c2)
        up = ~diagonal & (c1 < c0) & (c1 < c2)
        best = np.where(diagonal, c0, np.where(up, c1, c2))
        cost[i, j] = x[i - 1, j - 1] + best.astype(np.float64)
        trace[i, j] = np.where(diagonal, 0, np.where(up, 1, 2))
    return backtrace(trace)


def install() -> None:
    """Time words with these in ``whisper.timing`` (which looks both up when it aligns)."""
    import whisper.timing

    whisper.timing.backtrace = backtrace
    whisper.timing.dtw_cpu = dtw_cpu
