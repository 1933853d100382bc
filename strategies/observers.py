"""Risk observers: record the strategy's risk state every bar (plotted by ``cerebro.plot()``)."""

from __future__ import annotations

import logging
import math

import backtrader as bt

logger = logging.getLogger(__name__)


class DailyLossObserver(bt.Observer):
    """Today's P&L (open P&L included) as a fraction of start-of-day equity, against the loss limit."""

    lines = ("day_pnl", "loss_limit")
    plotinfo = {"plot": True, "subplot": True, "plotname": "Daily P&L vs limit"}
    plotlines = {"loss_limit": {"ls": "--", "color": "red"}}

    def next(self) -> None:
        strat = self._owner
        start = strat.risk.start_equity
        equity = strat.broker.getvalue()
        self.lines.day_pnl[0] = (equity - start) / start if start > 0 else math.nan
        self.lines.loss_limit[0] = -strat.p.daily_loss_limit


class PositionsObserver(bt.Observer):
    """Open (or opening) positions against the concurrent-position cap."""

    lines = ("open_positions", "max_positions")
    plotinfo = {"plot": True, "subplot": True, "plotname": "Open positions"}
    plotlines = {"max_positions": {"ls": "--", "color": "red"}}

    def next(self) -> None:
        strat = self._owner
        self.lines.open_positions[0] = sum(1 for b in strat.books.values() if b.busy)
        self.lines.max_positions[0] = strat.p.max_concurrent_positions


class BlockedEntriesObserver(bt.Observer):
    """Entries blocked by a risk rule so far today (all reasons)."""

    lines = ("blocked",)
    plotinfo = {"plot": True, "subplot": True, "plotname": "Blocked entries today"}

    def next(self) -> None:
        self.lines.blocked[0] = sum(self._owner.risk.blocked.values())


RISK_OBSERVERS = (DailyLossObserver, PositionsObserver, BlockedEntriesObserver)
