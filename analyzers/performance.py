"""backtrader analyzers for the reports: end-of-day equity and each day's max intraday drawdown."""

from __future__ import annotations

import logging
import math
from typing import Any

import backtrader as bt

logger = logging.getLogger(__name__)


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
