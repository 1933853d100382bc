"""Replayed market: bars per symbol, the intrabar tape derived from them, and historical-bar queries.

Each base bar (e.g. 1 min starting at ``s``) is replayed as four ticks: the open at ``s``, then the low and
the high (low first when the bar closed up, high first when it closed down) at ``s + base/4`` and
``s + base/2``, and the close at ``s + 3·base/4``. Limit and stop orders therefore trigger from bar highs and
lows, and a bar is complete (identical to the file) once its close tick has printed. Prices set by hand
(:meth:`Market.setPrice`) are extra ticks merged into that tape.
"""

from __future__ import annotations

import bisect
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

NS = 1_000_000_000
EXCHANGE_TZ = "America/New_York"
RTH_OPEN_MIN = 9 * 60 + 30
RTH_CLOSE_MIN = 16 * 60

_BAR_SIZE_RE = re.compile(r"^\s*(\d+)\s*(sec|secs|min|mins|hour|hours|day|days)\s*$")
_DURATION_RE = re.compile(r"^\s*(\d+)\s*([SDWMY])\s*$")
_BAR_UNIT_SECONDS = {"sec": 1, "secs": 1, "min": 60, "mins": 60, "hour": 3600, "hours": 3600,
                     "day": 86400, "days": 86400}


class HistoryError(ValueError):
    """Raise when a historical request cannot be served (answered with error 162 or 321)."""


@dataclass(frozen=True)
class Tick:
    """One print on the replayed tape."""

    timeNs: int
    price: float
    bar: int = -1
    jump: bool = True


def parseBarSize(text: str) -> int:
    """Parse an IB bar size (``'1 min'``, ``'5 mins'``, ``'1 hour'``, ``'1 day'``) into seconds.

    Raises
    ------
    HistoryError
        If the text is not a bar size.
    """
    match = _BAR_SIZE_RE.match(text)
    if match is None:
        raise HistoryError(f"invalid bar size {text!r}")
    return int(match.group(1)) * _BAR_UNIT_SECONDS[match.group(2)]


def parseDuration(text: str) -> tuple[int, str]:
    """Parse an IB duration (``'3600 S'``, ``'2 D'``, ``'1 W'``, ``'1 M'``, ``'1 Y'``) into (count, unit).

    Raises
    ------
    HistoryError
        If the text is not a duration.
    """
    match = _DURATION_RE.match(text)
    if match is None:
        raise HistoryError(f"invalid duration {text!r}")
    return int(match.group(1)), match.group(2)


def toNs(t: datetime) -> int:
    """Convert a tz-aware datetime to integer nanoseconds since the epoch."""
    return int(pd.Timestamp(t).value)


def fromNs(ns: int) -> datetime:
    """Convert integer nanoseconds since the epoch to a UTC datetime."""
    return pd.Timestamp(ns, tz=UTC).to_pydatetime()


def isRthNs(ns: int) -> bool:
    """Return True when ``ns`` falls in US regular trading hours (Mon–Fri 09:30–16:00 New York)."""
    t = pd.Timestamp(ns, tz=UTC).tz_convert(EXCHANGE_TZ)
    minute = t.hour * 60 + t.minute
    return t.weekday() < 5 and RTH_OPEN_MIN <= minute < RTH_CLOSE_MIN


class BarSeries:
    """One symbol's bars as arrays, its tape, and prices set by hand.

    Parameters
    ----------
    symbol
        The ticker.
    frame
        Bars indexed by a tz-aware bar-start index, with float columns open, high, low, close, volume.
    """

    def __init__(self, symbol: str, frame: pd.DataFrame) -> None:
        if frame.empty:
            raise ValueError(f"{symbol}: no bars")
        index = pd.DatetimeIndex(frame.index)
        if index.tz is None:
            raise ValueError(f"{symbol}: the bar index must be timezone-aware")
        index = index.tz_convert(UTC).as_unit("ns")
        order = np.argsort(index.asi8, kind="stable")
        self.symbol = symbol
        self.starts = index.asi8[order].astype(np.int64)
        self.open = frame["open"].to_numpy(dtype=float)[order]
        self.high = frame["high"].to_numpy(dtype=float)[order]
        self.low = frame["low"].to_numpy(dtype=float)[order]
        self.close = frame["close"].to_numpy(dtype=float)[order]
        self.volume = frame["volume"].to_numpy(dtype=float)[order]
        diffs = np.diff(self.starts)
        diffs = diffs[diffs > 0]
        self.baseNs = int(diffs.min()) if diffs.size else 60 * NS
        local = index[order].tz_convert(EXCHANGE_TZ)
        minutes = local.hour * 60 + local.minute
        self.rth = np.asarray((local.day_of_week < 5) & (minutes >= RTH_OPEN_MIN) & (minutes < RTH_CLOSE_MIN))
        self.etDate = np.asarray(local.year * 10000 + local.month * 100 + local.day, dtype=np.int64)
        self.manual: list[tuple[int, float]] = []

    # -- the tape ---------------------------------------------------------------------------------
    def barTicks(self, i: int) -> list[Tick]:
        """Return bar ``i``'s ticks merged with hand-set prices inside it, in time order."""
        s, q = int(self.starts[i]), self.baseNs // 4
        up = self.close[i] >= self.open[i]
        first, second = (self.low[i], self.high[i]) if up else (self.high[i], self.low[i])
        ticks = [Tick(s, float(self.open[i]), i, True), Tick(s + q, float(first), i, False),
                 Tick(s + 2 * q, float(second), i, False), Tick(s + 3 * q, float(self.close[i]), i, False)]
        extra = [Tick(t, p, i, True) for t, p in self.manual if s <= t < s + self.baseNs]
        if extra:
            ticks = sorted(ticks + extra, key=lambda k: k.timeNs)  # stable: a hand-set price wins a tie
        return ticks

    def _manualOutsideBars(self, lo: int, hi: int) -> list[Tick]:
        out = []
        for t, p in self.manual:
            i = self.barIndexAt(t)
            if i is None and lo < t <= hi:
                out.append(Tick(t, p))
        return out

    def isRth(self, tick: Tick) -> bool:
        """Return True when ``tick`` printed during regular trading hours."""
        return bool(self.rth[tick.bar]) if tick.bar >= 0 else isRthNs(tick.timeNs)

    def barIndexAt(self, ns: int) -> int | None:
        """Return the index of the bar covering ``ns``, or None in a gap."""
        i = int(np.searchsorted(self.starts, ns, side="right")) - 1
        if i >= 0 and ns < self.starts[i] + self.baseNs:
            return i
        return None

    def ticksBetween(self, t0: int, t1: int) -> Iterator[Tick]:
        """Yield the ticks printed in ``(t0, t1]`` in time order."""
        lo = int(np.searchsorted(self.starts, t0 - self.baseNs, side="right"))
        hi = int(np.searchsorted(self.starts, t1, side="right"))
        loose = self._manualOutsideBars(t0, t1) if self.manual else []
        out: list[Tick] = []
        for i in range(lo, hi):
            out.extend(k for k in self.barTicks(i) if t0 < k.timeNs <= t1)
        if loose:
            out = sorted(out + loose, key=lambda k: k.timeNs)
        yield from out

    def lastTick(self, ns: int) -> Tick | None:
        """Return the last tick printed at or before ``ns``."""
        best: Tick | None = None
        i = int(np.searchsorted(self.starts, ns, side="right")) - 1
        if i >= 0:
            for k in self.barTicks(i):
                if k.timeNs <= ns:
                    best = k
        for t, p in self.manual:
            if t <= ns and (best is None or t >= best.timeNs):
                best = Tick(t, p)
        return best

    def nextTick(self, ns: int) -> Tick | None:
        """Return the first tick printed at or after ``ns`` (a hand-set price wins a tie)."""
        i = max(int(np.searchsorted(self.starts, ns, side="right")) - 1, 0)
        candidates: list[Tick] = []
        for j in range(i, min(i + 3, len(self.starts))):
            candidates.extend(k for k in self.barTicks(j) if k.timeNs >= ns)
        candidates.extend(Tick(t, p) for t, p in self.manual if t >= ns and self.barIndexAt(t) is None)
        if not candidates:
            return None
        first = min(k.timeNs for k in candidates)
        return [k for k in candidates if k.timeNs == first][-1]

    def setPrice(self, ns: int, price: float) -> None:
        """Print ``price`` on the tape at ``ns``."""
        bisect.insort(self.manual, (ns, float(price)))

    # -- bars as of a moment ----------------------------------------------------------------------
    def partialBar(self, i: int, asOfNs: int, inclusive: bool) -> tuple[float, float, float, float, float]:
        """Return bar ``i`` as it looked at ``asOfNs`` (o, h, l, c, volume)."""
        ticks = [k for k in self.barTicks(i) if k.timeNs < asOfNs or (inclusive and k.timeNs == asOfNs)]
        prices = [k.price for k in ticks] or [float(self.open[i])]
        elapsed = asOfNs - int(self.starts[i]) - (0 if inclusive else 1)
        fraction = min(elapsed // (self.baseNs // 4) + 1, 4) / 4
        return prices[0], max(prices), min(prices), prices[-1], float(np.floor(self.volume[i] * fraction))

    def frameUpTo(self, lo: int, hi: int, asOfNs: int, inclusive: bool) -> pd.DataFrame:
        """Return bars ``[lo, hi)`` as a frame whose last bar is cut at ``asOfNs`` if still forming."""
        frame = pd.DataFrame({
            "start": self.starts[lo:hi], "open": self.open[lo:hi], "high": self.high[lo:hi],
            "low": self.low[lo:hi], "close": self.close[lo:hi], "volume": self.volume[lo:hi],
            "rth": self.rth[lo:hi], "etDate": self.etDate[lo:hi],
        })
        last = hi - 1
        if hi > lo and asOfNs < self.starts[last] + self.baseNs:
            o, h, lw, c, v = self.partialBar(last, asOfNs, inclusive)
            frame.iloc[-1, 1:6] = [o, h, lw, c, v]
        return frame


class Market:
    """All replayed symbols.

    Parameters
    ----------
    bars
        Per symbol, a frame of bars indexed by tz-aware bar start (the ``feeds.bars.load_bars`` format).
    """

    def __init__(self, bars: Mapping[str, pd.DataFrame]) -> None:
        self.series: dict[str, BarSeries] = {sym.upper(): BarSeries(sym.upper(), df)
                                             for sym, df in bars.items() if not df.empty}

    @property
    def symbols(self) -> list[str]:
        """Return the replayed symbols, sorted."""
        return sorted(self.series)

    def has(self, symbol: str) -> bool:
        """Return True when ``symbol`` is replayed."""
        return symbol.upper() in self.series

    def get(self, symbol: str) -> BarSeries:
        """Return ``symbol``'s series (KeyError when unknown)."""
        return self.series[symbol.upper()]

    def firstTime(self) -> datetime:
        """Return the earliest bar start over all symbols."""
        return fromNs(min(int(s.starts[0]) for s in self.series.values()))

    def lastPrice(self, symbol: str, at: datetime) -> float | None:
        """Return the last price printed for ``symbol`` at or before ``at``."""
        tick = self.get(symbol).lastTick(toNs(at))
        return None if tick is None else tick.price

    def history(self, symbol: str, now: datetime, end: datetime | None, *, duration: str, barSize: str,
                useRth: bool) -> pd.DataFrame:
        """Answer a historical-bars request as IB would at simulated time ``now``.

        Parameters
        ----------
        symbol
            The ticker.
        now
            Simulated time; nothing after it is ever returned.
        end
            The request's end, or None for "now". With "now" the still-forming bar is the last element.
        duration
            IB duration string (S, D, W, M or Y).
        barSize
            IB bar size string; a multiple of the data's own bar size.
        useRth
            Keep only regular-trading-hours bars.

        Returns
        -------
        pandas.DataFrame
            Columns start (ns, bar start), open, high, low, close, volume, average, barCount, etDate.

        Raises
        ------
        HistoryError
            For a bar size or duration the data cannot serve.
        """
        series = self.get(symbol)
        sizeNs = parseBarSize(barSize) * NS
        if sizeNs < series.baseNs or sizeNs % series.baseNs:
            raise HistoryError(f"invalid step: bar size {barSize!r} is not a multiple of the data's bars")
        count, unit = parseDuration(duration)
        nowNs = toNs(now)
        inclusive = end is None or toNs(end) >= nowNs
        asOf = nowNs if inclusive else toNs(end)  # type: ignore[arg-type]
        hi = int(np.searchsorted(series.starts, asOf, side="right" if inclusive else "left"))
        lo = self._durationStart(series, hi, asOf, (count, unit), useRth)
        frame = series.frameUpTo(lo, hi, asOf, inclusive)
        if useRth:
            frame = frame[frame["rth"]]
        return _resample(frame, sizeNs, series.baseNs)

    @staticmethod
    def _durationStart(series: BarSeries, hi: int, asOf: int, duration: tuple[int, str], useRth: bool) -> int:
        count, unit = duration
        if unit == "S":
            return int(np.searchsorted(series.starts, asOf - count * NS, side="left"))
        if unit == "D":
            dates = series.etDate[:hi][series.rth[:hi]] if useRth else series.etDate[:hi]
            unique = np.unique(dates)
            if unique.size == 0:
                return hi
            cutoff = unique[max(unique.size - count, 0)]
            return int(np.searchsorted(series.etDate[:hi], cutoff, side="left"))
        days = {"W": 7, "M": 31, "Y": 365}[unit] * count
        return int(np.searchsorted(series.starts, asOf - days * 86400 * NS, side="left"))


def _resample(frame: pd.DataFrame, sizeNs: int, baseNs: int) -> pd.DataFrame:
    frame = frame.assign(typical=(frame["high"] + frame["low"] + frame["close"]) / 3.0)
    frame["pv"] = frame["typical"] * frame["volume"]
    if sizeNs == baseNs:
        out = frame.assign(barCount=1)
    else:
        key = frame["etDate"] if sizeNs >= 86400 * NS else (frame["start"] // sizeNs) * sizeNs
        grouped = frame.groupby(key.to_numpy(), sort=True)
        out = pd.DataFrame({
            "start": grouped["start"].first(), "open": grouped["open"].first(),
            "high": grouped["high"].max(), "low": grouped["low"].min(), "close": grouped["close"].last(),
            "volume": grouped["volume"].sum(), "pv": grouped["pv"].sum(),
            "typical": grouped["typical"].last(),
            "etDate": grouped["etDate"].first(), "barCount": grouped["start"].count(),
        })
        if sizeNs < 86400 * NS:
            out["start"] = out.index.to_numpy(dtype=np.int64)
    vol = out["volume"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        avg = np.where(vol > 0, out["pv"].to_numpy(dtype=float) / np.where(vol > 0, vol, 1.0),
                       out["typical"].to_numpy(dtype=float))
    out = out.assign(average=np.round(avg, 6))
    columns = ["start", "open", "high", "low", "close", "volume", "average", "barCount", "etDate"]
    return out[columns].reset_index(drop=True)
