"""Causal intraday features, one function for backtests, training and live trading.

:func:`compute_features` maps a bar frame to a feature frame; the value at bar t uses bars <= t only.
Every feature depends on a bounded trailing window (at most :data:`WARMUP_BARS` bars, plus the current
session back to the previous session's last bar), and every window statistic is computed with a fixed
summation order. So the features of the last bar computed on a trailing window of
:func:`live_window_bars` bars are **bit-identical** to those computed on the whole history: the live
engine and the backtest see the same numbers (``tests/unit/test_features.py`` proves it).

This module must never import :mod:`ml.labels` (forward-looking code).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from core.calendar import session_keys

logger = logging.getLogger(__name__)

FEATURE_VERSION = "1.0"

FEATURE_NAMES: tuple[str, ...] = (
    "ret_1", "ret_5", "ret_15", "ret_30", "ret_60",
    "rv_15", "rv_60", "rv_ratio",
    "range_1", "range_15", "pos_in_range_30",
    "gap", "ret_since_open", "vwap_dist",
    "rsi_14", "macd", "macd_hist",
    "volume_z_60", "minutes_since_open",
)
#: Bars of history a feature row needs before it is defined (the longest lookback + 1).
WARMUP_BARS = 61
_CHUNK = 200_000


def live_window_bars(bar_minutes: int) -> int:
    """Return how many trailing bars reproduce the full-history features of the last bar exactly.

    The window must hold :data:`WARMUP_BARS` bars and the whole current session plus the previous
    session's last bar (for the gap, VWAP and since-open features).
    """
    return WARMUP_BARS + 390 // bar_minutes + 1


def _rolling_fold(x: np.ndarray, w: int, op: np.ufunc) -> np.ndarray:
    """Fold the last ``w`` values left to right with ``op`` (add, minimum, maximum).

    The fixed order makes each value independent of where ``x`` starts (bit-identical on any window).
    """
    n = len(x)
    out = np.full(n, np.nan)
    if n < w:
        return out
    acc = x[: n - w + 1].copy()
    for k in range(1, w):
        op(acc, x[k : n - w + 1 + k], out=acc)
    out[w - 1 :] = acc
    return out


def _rolling_sum(x: np.ndarray, w: int) -> np.ndarray:
    return _rolling_fold(x, w, np.add)


def _rolling_mean(x: np.ndarray, w: int) -> np.ndarray:
    return _rolling_sum(x, w) / w


def _rolling_std(x: np.ndarray, w: int) -> np.ndarray:
    """Sample standard deviation over the last ``w`` values (two-pass, fixed order)."""
    n = len(x)
    out = np.full(n, np.nan)
    if n < w:
        return out
    mean = _rolling_mean(x, w)[w - 1 :]
    acc = np.zeros(n - w + 1)
    for k in range(w):
        d = x[k : n - w + 1 + k] - mean
        acc += d * d
    out[w - 1 :] = np.sqrt(acc / (w - 1))
    return out


def _lag(x: np.ndarray, h: int) -> np.ndarray:
    out = np.full(len(x), np.nan)
    if len(x) > h:
        out[h:] = x[:-h]
    return out


def _session_features(
    days: np.ndarray, o: np.ndarray, c: np.ndarray, typical: np.ndarray, v: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (gap, return since the session open, distance to session VWAP)."""
    n = len(c)
    starts = np.flatnonzero(np.r_[True, days[1:] != days[:-1]])
    ends = np.r_[starts[1:], n]
    gap = np.full(n, np.nan)
    since_open = np.empty(n)
    vwap_dist = np.empty(n)
    for s, e in zip(starts, ends, strict=True):
        # The first session in the frame has no previous close: its gap stays unknown.
        if s > 0:
            gap[s:e] = np.log(o[s] / c[s - 1])
        since_open[s:e] = np.log(c[s:e] / o[s])
        cum_pv = np.cumsum(typical[s:e] * v[s:e])
        cum_v = np.cumsum(v[s:e])
        with np.errstate(invalid="ignore", divide="ignore"):
            vwap = np.where(cum_v > 0, cum_pv / cum_v, typical[s:e])
        vwap_dist[s:e] = np.log(c[s:e] / vwap)
    return gap, since_open, vwap_dist


def _rsi(ret: np.ndarray, w: int) -> np.ndarray:
    up = np.where(ret > 0, ret, 0.0)
    down = np.where(ret < 0, -ret, 0.0)
    su, sd = _rolling_sum(up, w), _rolling_sum(down, w)
    total = su + sd
    with np.errstate(invalid="ignore", divide="ignore"):
        rsi = np.where(total > 0, su / total, 0.5)
    return np.where(np.isnan(total), np.nan, rsi - 0.5)


def compute_features(bars: pd.DataFrame) -> pd.DataFrame:
    """Compute the feature frame of one symbol's bars.

    Parameters
    ----------
    bars
        Bars of one symbol indexed by a tz-aware ``DatetimeIndex`` (bar start), columns
        ``open, high, low, close, volume``, regular trading hours only, oldest first.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`FEATURE_NAMES` in that order, same index; rows before :data:`WARMUP_BARS` bars of
        history are NaN. The gap of the first session in the frame is NaN.
    """
    o = bars["open"].to_numpy(dtype="float64")
    h = bars["high"].to_numpy(dtype="float64")
    lo = bars["low"].to_numpy(dtype="float64")
    c = bars["close"].to_numpy(dtype="float64")
    v = bars["volume"].to_numpy(dtype="float64")
    days, minutes = session_keys(pd.DatetimeIndex(bars.index))
    logc = np.log(c)
    ret_1 = logc - _lag(logc, 1)
    rng_1 = np.log(h / lo)
    low_30 = _rolling_fold(lo, 30, np.minimum)
    high_30 = _rolling_fold(h, 30, np.maximum)
    span = high_30 - low_30
    rv_15, rv_60 = _rolling_std(ret_1, 15), _rolling_std(ret_1, 60)
    gap, since_open, vwap_dist = _session_features(days, o, c, (h + lo + c) / 3.0, v)
    macd = (_rolling_mean(c, 12) - _rolling_mean(c, 26)) / c
    log_v = np.log1p(v)
    with np.errstate(invalid="ignore", divide="ignore"):
        cols = {
            "ret_1": ret_1,
            "ret_5": logc - _lag(logc, 5),
            "ret_15": logc - _lag(logc, 15),
            "ret_30": logc - _lag(logc, 30),
            "ret_60": logc - _lag(logc, 60),
            "rv_15": rv_15,
            "rv_60": rv_60,
            "rv_ratio": np.where(rv_60 > 0, rv_15 / rv_60, 1.0),
            "range_1": rng_1,
            "range_15": _rolling_mean(rng_1, 15),
            "pos_in_range_30": np.where(span > 0, (c - low_30) / span, 0.5),
            "gap": gap,
            "ret_since_open": since_open,
            "vwap_dist": vwap_dist,
            "rsi_14": _rsi(ret_1, 14),
            "macd": macd,
            "macd_hist": macd - _rolling_mean(macd, 9),
            "volume_z_60": _zscore(log_v, 60),
            "minutes_since_open": minutes,
        }
    out = np.column_stack([cols[name] for name in FEATURE_NAMES])
    out[: WARMUP_BARS - 1] = np.nan
    return pd.DataFrame(out, index=bars.index, columns=list(FEATURE_NAMES))


def usable_rows(feats: np.ndarray) -> np.ndarray:
    """Return which feature rows the model may score (training keeps exactly these rows too).

    Every feature must be finite except ``gap``, which is NaN in a frame's first session (the model handles
    that NaN) but must not be infinite.
    """
    gap = FEATURE_NAMES.index("gap")
    return np.isfinite(np.delete(feats, gap, axis=1)).all(axis=1) & ~np.isinf(feats[:, gap])


def _zscore(x: np.ndarray, w: int) -> np.ndarray:
    mean, std = _rolling_mean(x, w), _rolling_std(x, w)
    return np.where(std > 0, (x - mean) / std, 0.0)
