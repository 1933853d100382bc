"""Fixed-fraction position sizing."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import backtrader as bt

from config.settings import RiskConfig, StrategyConfig

logger = logging.getLogger(__name__)

#: Headroom on the entry price when checking cash (the next open may be higher than the signal close).
CASH_BUFFER = 0.005


def fixed_fraction_shares(
    equity: float, cash: float, price: float, risk_fraction: float, stop_loss: float, slippage: float,
    cash_buffer: float = CASH_BUFFER, commission: Callable[[float, float], float] | None = None,
) -> int:
    """Return whole shares so that a stop-out loses about ``risk_fraction × equity``, within ``cash``.

    ``shares = floor(risk_fraction × equity / (entry × stop_loss))`` with ``entry = price × (1 + slippage)``,
    capped at what ``cash`` buys at ``entry × (1 + cash_buffer)`` plus ``commission(shares, entry)`` (the
    buffer leaves room for the next bar's open moving against us). Never negative.
    """
    if not (equity > 0 and price > 0 and cash > 0 and stop_loss > 0):
        return 0
    entry = price * (1.0 + slippage)
    by_risk = math.floor(risk_fraction * equity / (entry * stop_loss))
    unit = entry * (1.0 + cash_buffer)
    shares = max(0, min(by_risk, math.floor(cash / unit)))
    while shares > 0 and commission is not None and shares * unit + commission(shares, entry) > cash:
        shares -= max(1, shares // 100)
    return shares


class FixedFractionSizer(bt.Sizer):
    """backtrader sizer around :func:`fixed_fraction_shares`.

    Cash already promised to entry orders that have not filled yet (``strategy.reserved_cash``) is not
    available again, so several entries on one bar never overdraw the account.
    """

    # risk and stop-loss default to the config's values, slippage to none (as MLStrategy); the engines pass all three
    params = (
        ("risk_fraction", RiskConfig.model_fields["risk_per_trade_fraction"].default),
        ("stop_loss", StrategyConfig.model_fields["stop_loss"].default),
        ("slippage", 0.0),
    )

    def _getsizing(self, comminfo: bt.CommInfoBase, cash: float, data: bt.feed.DataBase, isbuy: bool) -> int:
        if not isbuy:
            return abs(int(self.strategy.getposition(data).size))
        reserved = float(getattr(self.strategy, "reserved_cash", 0.0))
        return fixed_fraction_shares(self.broker.getvalue(), cash - reserved, data.close[0],
                                     self.p.risk_fraction, self.p.stop_loss, self.p.slippage,
                                     commission=comminfo.getcommission)
