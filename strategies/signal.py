"""``MLSignal``: the classifier as a backtrader indicator with one line, ``p_up``.

- ``once()`` (backtests, ``runonce=True``): features for the whole preloaded series in one vectorised pass
  and one batched ``predict_proba`` (per-row prediction is ~800× slower).
- ``next()`` (live, or ``runonce=False``): features on the trailing :func:`ml.features.live_window_bars`
  window, prediction for the last bar only.

Both paths call the same :func:`ml.features.compute_features`, whose values on a trailing window equal the
full-history values bit for bit, so both produce identical ``p_up`` (tested under runonce × preload).
"""

from __future__ import annotations

import logging
import math
from array import array
from functools import lru_cache

import backtrader as bt
import numpy as np
import pandas as pd
from threadpoolctl import ThreadpoolController

from feeds.pandas_feed import from_bt_num
from ml.features import WARMUP_BARS, compute_features, live_window_bars, usable_rows

logger = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _thread_pools() -> ThreadpoolController:
    """Return the native thread pools loaded once the model is (scanning them costs ~8 ms; once, not per bar)."""
    return ThreadpoolController()


def _frame_from_lines(data: bt.feed.DataBase, start: int, end: int) -> pd.DataFrame:
    """Build a bar frame from a feed's line arrays ``[start, end)`` (absolute positions)."""
    arr = {name: np.asarray(getattr(data.lines, name).array[start:end], dtype="float64")
           for name in ("open", "high", "low", "close", "volume")}
    return pd.DataFrame(arr, index=from_bt_num(data.lines.datetime.array[start:end]))


def _fill(dst: array[float], values: np.ndarray, start: int, end: int) -> None:
    """Copy ``values[start:end]`` into the line buffer ``dst`` at the same positions, in one step.

    ``once()`` only runs with ``runonce`` (never with ``exactbars``), where backtrader's line buffers are
    ``array('d')`` already extended to the full length; float64 → C double keeps every value bit for bit.
    """
    chunk = np.ascontiguousarray(values[start:end], dtype="float64")
    if len(chunk) != end - start:  # a slice assignment would resize the buffer instead of failing
        raise IndexError(f"p_up values cover {len(values)} bars, the feed has {end}")
    dst[start:end] = array("d", chunk.tobytes())


class _SignalBase(bt.Indicator):
    """``len`` and ``advance`` as backtrader's, without its proxy calls (the strategy calls both every bar)."""

    def __len__(self) -> int:
        return int(self.lines.lines[0].lencount)

    def advance(self, size: int = 1) -> None:
        """Move the lines on by ``size`` bars while they trail the clock (as ``Indicator.advance``)."""
        lines = self.lines.lines
        if lines[0].lencount < len(self._clock):
            for line in lines:
                line.advance(size)


class MLSignal(_SignalBase):
    """Calibrated probability that an entry at the next bar's open ends with a positive net return.

    Parameters
    ----------
    model
        A :class:`ml.model.ModelBundle` (anything with ``predict_p_up(X) -> ndarray``).
    bar_minutes
        Bar length (sets the trailing window of the ``next()`` path).
    """

    lines = ("p_up",)
    params = (("model", None), ("bar_minutes", 1))
    plotinfo = {"plot": True, "subplot": True, "plotymargin": 0.05}
    plotlines = {"p_up": {"_name": "p_up"}}

    def __init__(self) -> None:
        if self.p.model is None:
            raise ValueError("MLSignal needs a model (ml.model.ModelBundle)")
        self.addminperiod(WARMUP_BARS)
        self._window = live_window_bars(self.p.bar_minutes)

    def next(self) -> None:
        """Predict the last bar from the trailing window (the live path)."""
        # Absolute position of the current bar: with preload the arrays hold the whole series, without it
        # they grow bar by bar; idx points at the current bar either way (exactbars is not supported).
        pos = self.data.lines.close.idx + 1
        start = max(0, pos - self._window)
        frame = _frame_from_lines(self.data, start, pos)
        row = compute_features(frame).to_numpy()[-1:]
        if not usable_rows(row)[0]:
            self.lines.p_up[0] = math.nan
            return
        # One row: OpenMP threads only add overhead (0.4 ms alone vs ~0.4 s on two busy cores).
        with _thread_pools().limit(limits=1, user_api="openmp"):
            self.lines.p_up[0] = float(self.p.model.predict_p_up(row)[0])

    def oncestart(self, start: int, end: int) -> None:
        """Leave the first scored bar to :meth:`once` (backtrader's default would run a whole pass for it)."""

    def once(self, start: int, end: int) -> None:
        """Predict every bar at once from the full preloaded series (the backtest path).

        The first scored bar (``oncestart``'s) is scored in the same batch: the features of a bar do not
        depend on later bars, so its value is the one a pass cut after it gives.
        """
        start = min(start, self._minperiod - 1)
        if start >= end:
            return  # fewer bars than the warm-up: nothing to score
        frame = _frame_from_lines(self.data, 0, end)
        feats = compute_features(frame).to_numpy()
        out = np.full(end, np.nan)
        ok = usable_rows(feats)
        if ok.any():
            out[ok] = self.p.model.predict_p_up(feats[ok])
        _fill(self.lines.p_up.array, out, start, end)


class SeriesSignal(_SignalBase):
    """A fixed ``p_up`` series in place of the model (studies, the differential test).

    Parameters
    ----------
    series
        ``p_up`` values aligned position by position with the feed's bars.
    """

    lines = ("p_up",)
    params = (("series", None),)

    def __init__(self) -> None:
        self._values = np.asarray(self.p.series, dtype="float64")

    def next(self) -> None:
        """Read the value at the current bar's position."""
        self.lines.p_up[0] = self._values[self.data.lines.close.idx]

    def once(self, start: int, end: int) -> None:
        """Copy the whole series."""
        _fill(self.lines.p_up.array, self._values, start, end)
