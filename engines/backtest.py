"""The backtest engine: bar frames, backtrader's broker with IBKR costs, ``MLStrategy``, its sizer and the
analyzers wired into one ``Cerebro``, run, and collected into a :class:`BacktestResult` for the reports.

:func:`run_backtest` is what ``run_backtest.py`` calls; it is :func:`build_cerebro` then :func:`run_cerebro`,
the two steps the tests and ``benchmarks.backtest`` call directly. The live engine adds the same strategy
to IB's feed and broker instead.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import backtrader as bt
import pandas as pd

from core.costs import IBKRCommission, commission_function
from core.records import TradeRecord
from feeds.pandas_feed import BarFrameFeed
from strategies.ml_strategy import MLStrategy, strategy_params
from strategies.observers import RISK_OBSERVERS
from strategies.sizer import FixedFractionSizer

if TYPE_CHECKING:
    from config.settings import AppConfig
    from ml.model import ModelBundle

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


class DailyEquity(bt.Analyzer):
    """Record, per exchange session, the closing account value and the worst intraday drawdown.

    ``get_analysis()`` returns ``{session_key: {"equity": float, "max_drawdown": float}}`` where the
    session key is the exchange-local date as days since 1970-01-01 and drawdown is a negative fraction
    from the day's running peak (the previous close included).
    """

    def start(self) -> None:
        self.days: dict[int, dict[str, float]] = {}
        self._session = -1
        self._peak = math.nan

    def next(self) -> None:
        session = int(self.strategy.risk.session)
        if session < 0:
            return
        value = self.strategy.broker.getvalue()
        if session != self._session:
            prev = self.days.get(self._session, {}).get("equity", value)
            self._session, self._peak = session, prev
            self.days[session] = {"equity": value, "max_drawdown": 0.0}
        day = self.days[session]
        self._peak = max(self._peak, value)
        day["equity"] = value
        day["max_drawdown"] = min(day["max_drawdown"], value / self._peak - 1.0)

    def get_analysis(self) -> dict[int, dict[str, Any]]:
        return self.days


class Progress(bt.Analyzer):
    """A tqdm progress bar over the master clock (updates every ``every`` bars)."""

    params = (("total", 0), ("every", 500), ("desc", "backtest"))

    def start(self) -> None:
        from tqdm.auto import tqdm  # noqa: PLC0415

        self._bar = tqdm(total=self.p.total, desc=self.p.desc, unit="bar", leave=False)
        self._pending = 0

    def next(self) -> None:
        self._pending += 1
        if self._pending >= self.p.every:
            self._bar.update(self._pending)
            self._pending = 0

    def stop(self) -> None:
        self._bar.update(self._pending)
        self._bar.close()


def build_cerebro(
    frames: Mapping[str, pd.DataFrame],
    strategy_kwargs: dict[str, Any],
    *,
    starting_cash: float,
    risk_per_trade_fraction: float,
    commission: str = "ibkr_fixed",
    tiered_monthly_shares: int = 0,
    calendar: str = "XNYS",
    observers: bool = True,
) -> bt.Cerebro:
    """Return a configured ``Cerebro`` (runonce + preload; the default observers are off, ours are on).

    The sizer's stop-loss and slippage are the strategy's (``strategy_kwargs``, else ``MLStrategy``'s
    defaults), so the size and the bracket always agree.
    """
    cerebro = bt.Cerebro(stdstats=False, runonce=True, preload=True, quicknotify=False)
    params = {**MLStrategy.params._getpairs(), **strategy_kwargs}  # what the strategy will run with
    bar_minutes = int(params["bar_minutes"])
    stop_loss = float(params["stop_loss"])
    slippage = float(params["slippage"])
    for sym, frame in frames.items():
        cerebro.adddata(BarFrameFeed(frame=frame, bar_minutes=bar_minutes, exchange=calendar), name=sym)
    broker = cerebro.getbroker()
    broker.setcash(starting_cash)
    broker.addcommissioninfo(IBKRCommission(fn=commission_function(commission, tiered_monthly_shares)))
    broker.set_slippage_perc(slippage, slip_open=True, slip_limit=True, slip_match=True, slip_out=False)
    broker.set_coc(False)
    cerebro.addstrategy(MLStrategy, **strategy_kwargs)
    cerebro.addsizer(FixedFractionSizer, risk_fraction=risk_per_trade_fraction, stop_loss=stop_loss,
                     slippage=slippage)
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


def save_chart(cerebro: bt.Cerebro, path: Path) -> None:
    """Save backtrader's chart (prices, p_up, risk observers) of a finished run, headless."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    figures = cerebro.plot(iplot=False, style="line", volume=False, numfigs=1)
    figures[0][0].set_size_inches(16, 3 + 2 * len(cerebro.datas))
    figures[0][0].savefig(path, dpi=90)


def run_backtest(cfg: AppConfig, frames: Mapping[str, pd.DataFrame], model: ModelBundle, *,
                 progress: bool = True, chart: Path | None = None) -> BacktestResult:
    """Backtest ``model`` on ``frames`` with the strategy, risk, cost and cash settings of ``cfg``.

    Parameters
    ----------
    progress
        Show a progress bar over the bars.
    chart
        Record the risk observers and save backtrader's chart there (slower); ``None``: neither.
    """
    cerebro = build_cerebro(frames, {**strategy_params(cfg), "model": model},
                            starting_cash=cfg.backtest.starting_cash,
                            risk_per_trade_fraction=cfg.risk.risk_per_trade_fraction,
                            commission=cfg.costs.commission, tiered_monthly_shares=cfg.costs.tiered_monthly_shares,
                            calendar=cfg.data.calendar, observers=chart is not None)
    if progress:
        cerebro.addanalyzer(Progress, total=max(len(f) for f in frames.values()), desc="backtest")
    result = run_cerebro(cerebro)
    if chart is not None:
        save_chart(cerebro, chart)
    return result
