"""Fast backtest feed for prepared bar frames.

backtrader's stock ``PandasData`` reads every cell with ``iloc`` and converts a tz-aware index to UTC on its
own. This feed preloads by filling each line's buffer from a numpy column in one step (no per-bar
``load()``), skips backtrader's per-bar ``tick_*`` copies (only replay and live bar building use them; the
broker falls back to the bar's own values), keeps time in UTC internally (``datetime`` floats are UTC,
as backtrader's brokers and analyzers assume),
and carries two extra lines the strategy needs without any per-bar date arithmetic:

- ``minutes_to_close``: minutes from the bar's end to its session's close (exchange calendar, half days included);
- ``session``: the exchange-local date of the bar as an integer key (days since 1970-01-01).
"""

from __future__ import annotations

import logging
from array import array

import backtrader as bt
import numpy as np
import pandas as pd

from core.calendar import minutes_to_close, session_keys

logger = logging.getLogger(__name__)

_EPOCH_ORDINAL = 719_163.0  # datetime.date(1970, 1, 1).toordinal(): backtrader's float-day epoch offset


def to_bt_num(index: pd.DatetimeIndex) -> np.ndarray:
    """Return backtrader float datetimes (days since 0001-01-01, UTC) for a tz-aware index."""
    secs = pd.DatetimeIndex(index).tz_convert("UTC").as_unit("ns").asi8 / 1e9
    return _EPOCH_ORDINAL + secs / 86_400.0


def from_bt_num(nums: np.ndarray) -> pd.DatetimeIndex:
    """Inverse of :func:`to_bt_num`, rounded to the second (bars start on whole minutes)."""
    secs = np.round((np.asarray(nums, dtype="float64") - _EPOCH_ORDINAL) * 86_400.0).astype("int64")
    return pd.DatetimeIndex(pd.to_datetime(secs, unit="s", utc=True), name="datetime").as_unit("ns")


class BarFrameFeed(bt.feed.DataBase):
    """A backtrader feed over one symbol's prepared bars (see :func:`feeds.bars.load_bars`).

    Parameters
    ----------
    frame
        UTC-indexed OHLCV frame.
    bar_minutes
        Bar length, for the ``minutes_to_close`` line.
    exchange
        Exchange calendar name.
    """

    lines = ("minutes_to_close", "session")
    params = (("frame", None), ("bar_minutes", 1), ("exchange", "XNYS"))
    _fast_lines: tuple[bt.LineBuffer, ...] | None = None  # every line buffer, once preloaded in one step

    def start(self) -> None:
        """Convert the frame to numpy columns once; bind the line names as plain attributes."""
        super().start()
        # The broker reads data.close/open/high/low for every position and working order on every bar; as
        # instance attributes they skip LineSeries.__getattr__ and the Lines alias (same buffer objects).
        for alias in self.lines.getlinealiases():
            if not hasattr(type(self), alias):
                setattr(self, alias, getattr(self.lines, alias))
        frame: pd.DataFrame = self.p.frame
        if frame is None or frame.empty:
            raise ValueError(f"feed {self._name!r}: no bars")
        index = pd.DatetimeIndex(frame.index)
        days, _ = session_keys(index)
        self._arrays: dict[str, np.ndarray] = {
            "datetime": to_bt_num(index),
            **{k: frame[k].to_numpy(dtype="float64") for k in ("open", "high", "low", "close", "volume")},
            "openinterest": np.zeros(len(frame)),
            "minutes_to_close": minutes_to_close(index, self.p.bar_minutes, self.p.exchange),
            "session": days.astype("float64"),
        }
        self._cols: list[list[float]] | None = None
        self._pos = 0
        self._n = len(frame)
        self._fast_lines = None

    def preload(self) -> None:
        """Fill every line buffer at once (same result as backtrader's bar-by-bar preload, much faster)."""
        if self._filters or self._ffilters or self._tzinput or self.p.fromdate or self.p.todate:
            super().preload()
            return
        for name, values in self._arrays.items():
            buf = array("d")
            buf.frombytes(np.ascontiguousarray(values, dtype="float64").tobytes())
            getattr(self.lines, name).array = buf
        self._arrays = {}  # the line buffers hold the bars now; _load is never called after this
        self._pos = self._n
        buffers = tuple(self.lines.lines)
        # unbounded buffers (no exactbars, which turns preload off anyway) have a plain idx setter
        if all(b.mode == bt.LineBuffer.UnBounded for b in buffers):
            self._fast_lines = buffers
        self.home()

    # backtrader calls the three methods below for every feed on every bar (and len() many times more); they
    # do what LineSeries/DataBase do, minus the proxy calls and, after the one-step preload, the no-op ticks.
    def __len__(self) -> int:
        """Return the number of bars delivered so far (``LineSeries.__len__`` without two proxy calls)."""
        return int(self.lines.lines[0].lencount)

    def advance_peek(self) -> float:
        """Return the next bar's datetime, or ``inf`` when none is left (as ``DataBase.advance_peek``)."""
        first = self.lines.lines[0]
        if first.lencount < len(first.array) - first.extension:
            dt = self.lines.datetime
            return float(dt.array[dt.idx + 1])
        return float("inf")

    def advance(self, size: int = 1, datamaster: bt.feed.DataBase | None = None, ticks: bool = True) -> None:
        """Move every line on by ``size`` bars (``DataBase.advance`` without its no-op tick calls)."""
        lines = self._fast_lines if datamaster is None else None
        if lines is None:
            super().advance(size, datamaster, ticks)
            return
        for line in lines:
            line._idx += size
            line.lencount += size

    def _tick_nullify(self) -> None:
        """Skip: ``tick_*`` prices serve replay/resampling only; the broker then uses the bar's values."""

    def _tick_fill(self, force: bool = False) -> None:
        """Skip (see :meth:`_tick_nullify`)."""

    def _load(self) -> bool:
        i = self._pos
        if i >= self._n:
            return False
        if self._cols is None:
            names = ("datetime", "open", "high", "low", "close", "volume", "minutes_to_close", "session")
            self._cols = [self._arrays[k].tolist() for k in names]
        dt, o, h, lo, c, v, to_close, sess = (col[i] for col in self._cols)
        lines = self.lines
        lines.datetime[0] = dt
        lines.open[0] = o
        lines.high[0] = h
        lines.low[0] = lo
        lines.close[0] = c
        lines.volume[0] = v
        lines.openinterest[0] = 0.0
        lines.minutes_to_close[0] = to_close
        lines.session[0] = sess
        self._pos = i + 1
        return True
