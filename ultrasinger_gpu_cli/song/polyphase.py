"""Resampling by a rational factor: a polyphase FIR filter, the Kaiser-windowed sinc scipy's
``resample_poly`` designs (beta 5, ten zero crossings of the slower rate on each side), computed in
numpy with scipy's result bit for bit (the same taps, the same float32 products summed in the same
order), so that a song's path needs no ``scipy.signal``: importing it took 0.7 s of every cold
``ugpu run`` on a 2-core machine (issue 22), more than the resampling itself.

A test holds the result equal to scipy's, bit for bit, on every rate pair a song arrives at.
"""

from __future__ import annotations

import math
from functools import lru_cache
from math import gcd

import numpy as np

KAISER_BETA = 5.0  # the window's shape (scipy's default for resample_poly)
ZERO_CROSSINGS = 10  # the filter's half-length in periods of the slower rate

# Cephes' Chebyshev coefficients of exp(-x) I0(x) on [0, 8] (as scipy.special.i0 and numpy.i0 use).
_I0_A = (-4.4153416464793395e-18, 3.3307945188222384e-17, -2.431279846547955e-16, 1.715391285555133e-15,
         -1.1685332877993451e-14, 7.676185498604936e-14, -4.856446783111929e-13, 2.95505266312964e-12,
         -1.726826291441556e-11, 9.675809035373237e-11, -5.189795601635263e-10, 2.6598237246823866e-09,
         -1.300025009986248e-08, 6.046995022541919e-08, -2.670793853940612e-07, 1.1173875391201037e-06,
         -4.4167383584587505e-06, 1.6448448070728896e-05, -5.754195010082104e-05, 0.00018850288509584165,
         -0.0005763755745385824, 0.0016394756169413357, -0.004324309995050576, 0.010546460394594998,
         -0.02373741480589947, 0.04930528423967071, -0.09490109704804764, 0.17162090152220877,
         -0.3046826723431984, 0.6767952744094761)  # fmt: skip


def _i0(x: np.ndarray) -> np.ndarray:
    """The modified Bessel function I0 for 0 <= x <= 8, Cephes' way: exp(x) (the C library's,
    as Cephes calls it) times a Chebyshev series in x/2 - 2, summed in Cephes' order."""
    x = np.asarray(x, dtype=np.float64)
    if x.size and (x.min() < 0 or x.max() > 8):
        raise ValueError("the Kaiser window's Bessel function is defined here for 0 <= x <= 8")
    y = x / 2.0 - 2.0
    b0, b1, b2 = np.full_like(y, _I0_A[0]), np.zeros_like(y), np.zeros_like(y)
    for coefficient in _I0_A[1:]:
        b2 = b1
        b1 = b0
        b0 = y * b1 - b2 + coefficient
    exp = np.array([math.exp(v) for v in x.ravel()], dtype=np.float64).reshape(x.shape)
    return exp * (0.5 * (b0 - b2))


@lru_cache(maxsize=16)
def lowpass(up: int, down: int) -> np.ndarray:
    """The anti-aliasing filter (float64, ``2 * half_len + 1`` taps, unit gain at DC) for resampling
    by ``up / down``: a sinc cut at the slower rate's Nyquist frequency, Kaiser-windowed."""
    rate = max(up, down)
    half_len = ZERO_CROSSINGS * rate
    taps = 2 * half_len + 1
    cutoff = 1.0 / rate  # relative to the Nyquist frequency
    m = np.arange(0, taps, dtype=np.float64) - 0.5 * (taps - 1)
    x = cutoff * m
    y = np.pi * np.where(x != 0, x, np.finfo(np.float64).eps)
    h = cutoff * (np.sin(y) / y)
    n = np.arange(0, taps, dtype=np.float64)
    alpha = (taps - 1) / 2.0
    window = _i0(KAISER_BETA * np.sqrt(1 - ((n - alpha) / alpha) ** 2.0)) / _i0(np.asarray(KAISER_BETA))
    h *= window
    h /= np.sum(h)
    h.setflags(write=False)
    return h


def resample_poly(x: np.ndarray, up: int, down: int) -> np.ndarray:
    """``x`` (float, 1-D or channels × samples) resampled by ``up / down`` along its last axis:
    ``ceil(n * up / down)`` samples, zero outside the signal, in float32 for float32 input."""
    g = gcd(up, down)
    up, down = up // g, down // g
    x = np.asarray(x)
    dtype = np.result_type(x.dtype, np.float32)
    if up == down:
        return np.array(x, dtype=dtype)
    if x.ndim and x.shape[-1] == 0:
        return np.zeros(x.shape, dtype=dtype)
    h = lowpass(up, down).astype(dtype)
    h *= up
    rows = x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)
    out = np.stack([_filter(np.asarray(row, dtype=dtype), h, up, down) for row in rows])
    return out.reshape(*x.shape[:-1], out.shape[-1])


def _filter(x: np.ndarray, h: np.ndarray, up: int, down: int) -> np.ndarray:
    """Output ``i`` is the sum over input samples ``m`` (ascending, as scipy's upfirdn adds them) of
    ``x[m] * h[i * down - m * up + half_len]``. Outputs one filter phase apart share their taps:
    for each phase the sum runs tap by tap over all its outputs at once."""
    n_out = -(-len(x) * up // down)
    half_len = (len(h) - 1) // 2
    phases = min(up, n_out)
    per_phase = -(-len(h) // up)  # the most taps an output sees
    count = -(-n_out // up)  # outputs per phase (the last ones past n_out are cut)
    first = np.arange(phases) * down + half_len
    last_input, tap = first // up, first % up  # each phase's newest input sample and its tap
    # columns[c, q] = x[q * down + c + low]: every input one phase's sum reads is a row slice
    low = int(last_input.min()) - (per_phase - 1)
    width = int(last_input.max()) - low + 1
    blocks = -(-width // down)
    padded = np.zeros((count + blocks) * down, dtype=x.dtype)
    start = -low
    keep = x[max(0, low) : max(0, low) + len(padded) - max(0, start)]
    padded[max(0, start) : max(0, start) + len(keep)] = keep
    columns = np.ascontiguousarray(padded.reshape(-1, down).T)
    out = np.zeros((phases, count), dtype=x.dtype)
    product = np.empty(count, dtype=x.dtype)
    for p in range(phases):
        acc = out[p]
        for k in range(per_phase - 1, -1, -1):
            index = tap[p] + k * up
            if index >= len(h):
                continue
            c = int(last_input[p]) - k - low
            np.multiply(columns[c % down, c // down : c // down + count], h[index], out=product)
            np.add(acc, product, out=acc)
    return out.T.reshape(-1)[:n_out]
