"""Triple-barrier labels that are exactly the strategy's own trade outcome.

LOOK-AHEAD CODE. Only ``ml/dataset.py`` (training) and tests may import this module; features, the indicator,
the strategy and the model-loading side never do (a ruff banned-api rule enforces it). The trade rules a label
simulates, :class:`ml.label_params.LabelParams`, live in :mod:`ml.label_params`, which anyone may import.

For a signal at bar t the simulated trade follows the backtest broker's rules bar by bar:

- entry: market buy filled at the **next** bar's open plus slippage (capped at that bar's high);
- stop ``entry x (1 - stop_loss)`` and target ``entry x (1 + take_profit)`` are submitted when the entry
  fills, so they are live from the bar after the entry bar (as backtrader activates bracket children);
- on a bar where the stop can trigger (open or low at/below the stop) the stop fills, even when the
  target was touched too (stop first; such bars are counted in ``both_touched``); a gap below the stop
  fills at the open minus slippage; the target fills at the target, or at the open when the bar opens
  above it;
- after a bar where no barrier filled: if the bar ends within ``flatten_minutes`` of the session close the
  trade exits at the next bar's open (EOD), else if it has been held ``max_hold_bars`` bars it exits at the
  next bar's open (TIMEOUT); both sells pay slippage (floored at the bar low);
- net return = P&L after IBKR commission on both sides for ``floor(notional / entry)`` shares, divided by
  the entry value; label = 1 when the net return is positive.

A bar is ``eligible`` when the strategy could enter there (outside the no-new-entries window) and the
trade's outcome lies inside the data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pandas as pd

from core.calendar import minutes_to_close
from core.records import ExitReason
from ml.label_params import LabelParams

logger = logging.getLogger(__name__)

#: Outcome codes of a label, by index (0: no trade); the rest are the strategy's exit reasons, in this order.
EXIT_REASONS = ("NONE", *(str(r) for r in ExitReason))
_STOP, _TARGET, _TIMEOUT, _EOD = 1, 2, 3, 4


def triple_barrier_labels(
    bars: pd.DataFrame, params: LabelParams, commission: Callable[[float, float], float]
) -> pd.DataFrame:
    """Simulate the strategy's trade for an entry signal at every bar of one symbol.

    Returns
    -------
    pandas.DataFrame
        Indexed like ``bars``: ``eligible``, ``label`` (1.0/0.0, NaN when not eligible), ``net_return``,
        ``entry_price``, ``exit_price``, ``exit_reason`` (STOP/TARGET/TIMEOUT/EOD), ``bars_held``,
        ``exit_time`` (start of the exit bar; the label interval is [t, exit_time]), ``both_touched``.
    """
    o, h, lo = (bars[k].to_numpy(dtype="float64") for k in ("open", "high", "low"))
    n = len(o)
    slip = params.slippage_bps / 10_000.0
    mtc = minutes_to_close(pd.DatetimeIndex(bars.index), params.bar_minutes, params.calendar)
    t = np.arange(n)
    e = t + 1
    can_enter = (e < n) & (mtc >= params.no_new_entries_minutes)
    e_safe = np.minimum(e, n - 1)
    entry = o[e_safe] * (1.0 + slip)
    entry = np.where(entry <= h[e_safe], entry, h[e_safe])
    stop = entry * (1.0 - params.stop_loss)
    target = entry * (1.0 + params.take_profit)

    reason = np.zeros(n, dtype=np.int8)
    exit_px = np.full(n, np.nan)
    exit_idx = np.full(n, -1, dtype=np.int64)
    both = np.zeros(n, dtype=bool)
    active = can_enter.copy()
    for j in range(params.max_hold_bars):
        k = e + j
        inside = active & (k < n)
        active &= inside  # trades running off the end of the data stay unresolved
        ks = np.minimum(k, n - 1)
        if j > 0:
            _barrier_step(active, ks, o, h, lo, stop, target, slip, reason, exit_px, exit_idx, both)
        # time exits decided at the close of bar k fill at the open of bar k + 1
        eod = active & (mtc[ks] <= params.flatten_minutes)
        timeout = active & ~eod & (j + 1 >= params.max_hold_bars)
        leave = eod | timeout
        has_next = (k + 1) < n
        nxt = np.minimum(k + 1, n - 1)
        fill = o[nxt] * (1.0 - slip)
        fill = np.where(fill >= lo[nxt], fill, lo[nxt])
        done = leave & has_next
        reason[done & eod] = _EOD
        reason[done & timeout] = _TIMEOUT
        exit_px[done] = fill[done]
        exit_idx[done] = nxt[done]
        active &= ~leave
    eligible = can_enter & (reason > 0)
    shares = np.floor(params.notional / np.where(eligible, entry, np.inf))
    shares = np.maximum(shares, 1.0)
    comm = np.array([commission(s, p) + commission(s, x) if ok else np.nan
                     for s, p, x, ok in zip(shares, entry, exit_px, eligible, strict=True)])
    net = np.where(eligible, (shares * (exit_px - entry) - comm) / (shares * entry), np.nan)
    label = np.where(eligible, (net > 0).astype("float64"), np.nan)
    idx = pd.DatetimeIndex(bars.index)
    exit_time = pd.Series(pd.NaT, index=idx, dtype=idx.dtype)
    exit_time[eligible] = idx[exit_idx[eligible]]
    return pd.DataFrame(
        {
            "eligible": eligible,
            "label": label,
            "net_return": net,
            "entry_price": np.where(eligible, entry, np.nan),
            "exit_price": exit_px,
            "exit_reason": np.asarray(EXIT_REASONS, dtype=object)[reason],
            "bars_held": np.where(eligible, exit_idx - e, -1),
            "exit_time": exit_time,
            "both_touched": both & eligible,
        },
        index=idx,
    )


def _barrier_step(
    active: np.ndarray, ks: np.ndarray, o: np.ndarray, h: np.ndarray, lo: np.ndarray,
    stop: np.ndarray, target: np.ndarray, slip: float,
    reason: np.ndarray, exit_px: np.ndarray, exit_idx: np.ndarray, both: np.ndarray,
) -> None:
    """Fill stop or target on bar ``ks`` for active trades (stop first), updating the outputs in place."""
    bo, bh, bl = o[ks], h[ks], lo[ks]
    stop_gap = active & (bo <= stop)
    stop_touch = active & ~stop_gap & (bl <= stop)
    hit_stop = stop_gap | stop_touch
    both |= active & (bl <= stop) & (bh >= target)
    stop_price = np.where(stop_gap, bo, stop) * (1.0 - slip)
    stop_price = np.where(stop_price >= bl, stop_price, bl)
    tgt_gap = active & ~hit_stop & (bo >= target)
    tgt_touch = active & ~hit_stop & ~tgt_gap & (bh >= target)
    tgt_price = np.where(tgt_gap, np.maximum(bo * (1.0 - slip), target), target)
    hit_tgt = tgt_gap | tgt_touch
    reason[hit_stop] = _STOP
    reason[hit_tgt] = _TARGET
    exit_px[hit_stop] = stop_price[hit_stop]
    exit_px[hit_tgt] = tgt_price[hit_tgt]
    exit_idx[hit_stop | hit_tgt] = ks[hit_stop | hit_tgt]
    active &= ~(hit_stop | hit_tgt)
