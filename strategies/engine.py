"""Assemble and run a backtest: feeds, broker costs, the strategy, sizer, risk observers and analyzers."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import backtrader as bt
import pandas as pd

from analyzers.performance import DailyEquity
from core.costs import IBKRCommission, commission_function
from core.records import TradeRecord
from feeds.pandas_feed import BarFrameFeed
from strategies.ml_strategy import MLStrategy
from strategies.observers import RISK_OBSERVERS
from strategies.sizer import FixedFractionSizer

logger = logging.getLogger(__name__)


@dataclass
class BacktestResult:
    """What a finished backtest hands to the reports."""

    strategy: MLStrategy
    trades: pd.DataFrame
    daily_equity: pd.Series
    daily_drawdown: pd.Series
    blocked: pd.DataFrame
    bars: int


def build_cerebro(
    frames: Mapping[str, pd.DataFrame],
    strategy_kwargs: dict[str, Any],
    *,
    starting_cash: float,
    commission: str = "ibkr_fixed",
    tiered_monthly_shares: int = 0,
    risk_per_trade_fraction: float = 0.002,
    calendar: str = "XNYS",
    observers: bool = True,
) -> bt.Cerebro:
    """Return a configured ``Cerebro`` (runonce + preload; the default observers are off, ours are on)."""
    cerebro = bt.Cerebro(stdstats=False, runonce=True, preload=True, quicknotify=False)
    bar_minutes = int(strategy_kwargs.get("bar_minutes", 1))
    for sym, frame in frames.items():
        cerebro.adddata(BarFrameFeed(frame=frame, bar_minutes=bar_minutes, exchange=calendar), name=sym)
    broker = cerebro.getbroker()
    broker.setcash(starting_cash)
    broker.addcommissioninfo(IBKRCommission(fn=commission_function(commission, tiered_monthly_shares)))
    broker.set_slippage_perc(float(strategy_kwargs.get("slippage", 0.0)), slip_open=True, slip_limit=True,
                             slip_match=True, slip_out=False)
    broker.set_coc(False)
    cerebro.addstrategy(MLStrategy, **strategy_kwargs)
    cerebro.addsizer(FixedFractionSizer, risk_fraction=risk_per_trade_fraction,
                     stop_loss=float(strategy_kwargs.get("stop_loss", 0.004)),
                     slippage=float(strategy_kwargs.get("slippage", 0.0)))
    if observers:
        for obs in RISK_OBSERVERS:
            cerebro.addobserver(obs)
        cerebro.addobserver(bt.observers.Value)
    cerebro.addanalyzer(DailyEquity, _name="daily")
    return cerebro


def _session_dates(keys: list[int]) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(pd.to_datetime(keys, unit="D"), name="date")


def run_cerebro(cerebro: bt.Cerebro) -> BacktestResult:
    """Run and collect trades, daily equity/drawdown and blocked entries."""
    strat: MLStrategy = cerebro.run()[0]
    days = strat.analyzers.daily.get_analysis()
    keys = sorted(days)
    equity = pd.Series([days[k]["equity"] for k in keys], index=_session_dates(keys), name="equity")
    drawdown = pd.Series([days[k]["max_drawdown"] for k in keys], index=_session_dates(keys), name="max_drawdown")
    trades = pd.DataFrame([t.to_dict() for t in strat.trades], columns=TradeRecord.columns()).drop(
        columns="adopted")
    for col in ("entry_time", "exit_time"):
        trades[col] = pd.to_datetime(trades[col]).dt.tz_localize("UTC")
    blocked = pd.DataFrame(
        [{"date": _session_dates([k])[0], "reason": r, "count": n} for (k, r), n in strat.blocked_log.items()],
        columns=["date", "reason", "count"])
    bars = sum(len(d) for d in strat.datas)
    return BacktestResult(strat, trades, equity, drawdown, blocked, bars)
