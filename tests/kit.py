"""Shared test kit: bar builders on real XNYS session minutes, fixed signals and a backtest runner.

Every frame built here has the shape :func:`feeds.bars.load_bars` returns: a UTC ``DatetimeIndex`` named
``datetime`` (bar start) and float64 ``open, high, low, close, volume``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import backtrader as bt
import exchange_calendars as xcals
import numpy as np
import pandas as pd

from config.settings import SyntheticConfig
from engines.backtest import BacktestResult, build_cerebro, run_cerebro
from feeds.synthetic import generate_universe

logger = logging.getLogger(__name__)

NY = "America/New_York"


def ny(stamp: str) -> pd.Timestamp:
    """Return the UTC timestamp of an exchange-time wall clock string (``"2024-01-03 10:00"``)."""
    return pd.Timestamp(stamp, tz=NY).tz_convert("UTC")


def xnys_minutes(start: str, sessions: int) -> pd.DatetimeIndex:
    """Return the 1-minute bar starts of ``sessions`` real XNYS sessions from ``start`` (half days included)."""
    sched = xcals.get_calendar("XNYS").schedule.loc[pd.Timestamp(start):].iloc[:sessions]
    parts = [pd.date_range(o, c, freq="1min", inclusive="left") for o, c in zip(sched["open"], sched["close"],
                                                                               strict=True)]
    index = parts[0].append(parts[1:]) if len(parts) > 1 else parts[0]
    return pd.DatetimeIndex(index.tz_convert("UTC"), name="datetime").as_unit("ns")


def flat_bars(index: pd.DatetimeIndex, price: float = 100.0, wick: float = 0.01,
              volume: float = 1_000.0) -> pd.DataFrame:
    """Return bars that open and close at ``price`` with a ``wick`` either side (no barrier ever fills)."""
    n = len(index)
    return pd.DataFrame(
        {"open": np.full(n, price), "high": np.full(n, price + wick), "low": np.full(n, price - wick),
         "close": np.full(n, price), "volume": np.full(n, volume)},
        index=index,
    ).astype("float64")


def set_bar(frame: pd.DataFrame, at: pd.Timestamp, **ohlc: float) -> pd.DataFrame:
    """Overwrite some of ``open/high/low/close`` of the bar starting at ``at`` (in place; returns the frame)."""
    for col, value in ohlc.items():
        frame.loc[at, col] = float(value)
    return frame


def signal_from(frame: pd.DataFrame, start: pd.Timestamp, value: float = 1.0) -> pd.Series:
    """Return a ``p_up`` series that is 0 before ``start`` and ``value`` from ``start`` on."""
    return pd.Series(np.where(frame.index >= start, value, 0.0), index=frame.index)


def synthetic_frames(symbols: Iterable[str], sessions: int, start: str = "2024-01-02",
                     seed: int = 7) -> dict[str, pd.DataFrame]:
    """Return the first ``sessions`` sessions of the SYNTHETIC universe (the generator needs at least 5)."""
    cfg = SyntheticConfig(seed=seed, symbols=tuple(symbols), start=start, sessions=max(sessions, 5))
    out = {}
    for sym, frame in generate_universe(cfg).items():
        days = frame.index.tz_convert(NY).normalize()
        keep = days.isin(days.unique()[:sessions])
        out[sym] = frame.loc[keep]
    return out


class PositionLog(bt.Analyzer):
    """Record, after every bar's decisions, the broker position of every feed (``rows``: time, symbol, size)."""

    def start(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def next(self) -> None:
        for d in self.strategy.datas:
            self.rows.append({"time": bt.num2date(d.datetime[0]), "symbol": d._name,
                              "size": self.strategy.getposition(d).size,
                              "busy": self.strategy.books[d._name].busy})

    def frame(self) -> pd.DataFrame:
        """Return the rows as a frame with a UTC ``time`` column."""
        out = pd.DataFrame(self.rows, columns=["time", "symbol", "size", "busy"])
        out["time"] = pd.to_datetime(out["time"]).dt.tz_localize("UTC")
        return out


@dataclass
class Run:
    """A finished backtest plus what the kit recorded along the way."""

    result: BacktestResult
    decisions: pd.DataFrame
    positions: pd.DataFrame
    cerebro: bt.Cerebro
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def trades(self) -> pd.DataFrame:
        """The closed trades."""
        return self.result.trades


def run_backtest(frames: Mapping[str, pd.DataFrame], signals: Mapping[str, pd.Series], *,
                 starting_cash: float = 100_000.0, commission: str = "ibkr_fixed",
                 risk_per_trade_fraction: float = 0.002, **params: Any) -> Run:
    """Run ``MLStrategy`` on ``frames`` with fixed ``signals`` through :func:`engines.backtest.build_cerebro`."""
    decisions: list[dict[str, Any]] = []
    kwargs = {**params, "signals": dict(signals), "decision_sink": decisions.append}
    cerebro = build_cerebro(frames, kwargs, starting_cash=starting_cash, commission=commission,
                            risk_per_trade_fraction=risk_per_trade_fraction)
    cerebro.addanalyzer(PositionLog, _name="positions")
    result = run_cerebro(cerebro)
    dec = pd.DataFrame(decisions, columns=["time", "symbol", "p_up", "decision", "reason"])
    dec["time"] = pd.to_datetime(dec["time"]).dt.tz_localize("UTC")
    return Run(result, dec, result.strategy.analyzers.positions.frame(), cerebro, kwargs)
