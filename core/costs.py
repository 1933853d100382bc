"""Trading costs: IBKR US-stock commissions (Fixed and Tiered) as pure functions and as backtrader CommInfo.

The same functions price trades in the backtest broker, the training labels and the live reports, so a
label's net return is exactly what the backtest books for the same fills.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import backtrader as bt

logger = logging.getLogger(__name__)

#: IBKR Tiered per-share rates by shares already traded this month (upper bound of the band, rate).
TIERED_BANDS: tuple[tuple[float, float], ...] = (
    (300_000, 0.0035),
    (3_000_000, 0.0020),
    (20_000_000, 0.0015),
    (100_000_000, 0.0010),
    (math.inf, 0.0005),
)
TIERED_EXCHANGE_FEE = 0.0030  # per share, removing liquidity (market orders), approximate
TIERED_CLEARING_FEE = 0.00020  # per share, NSCC/DTC


def ibkr_fixed(shares: float, price: float) -> float:
    """IBKR Fixed: $0.005 per share, at least $1.00, at most 1% of the trade value."""
    shares = abs(shares)
    if shares == 0:
        return 0.0
    value = shares * price
    return min(max(0.005 * shares, 1.0), 0.01 * value)


def ibkr_tiered(shares: float, price: float, monthly_shares: float = 0.0) -> float:
    """IBKR Tiered: band rate per share (min $0.35, max 1% of value) plus exchange and clearing fees.

    Exchange fees vary by venue; a flat remove-liquidity fee is used. Regulatory pass-through fees are
    left out (they are cents on typical orders).
    """
    shares = abs(shares)
    if shares == 0:
        return 0.0
    rate = next(r for bound, r in TIERED_BANDS if monthly_shares <= bound)
    broker_fee = min(max(rate * shares, 0.35), 0.01 * shares * price)
    return broker_fee + (TIERED_EXCHANGE_FEE + TIERED_CLEARING_FEE) * shares


def no_commission(shares: float, price: float) -> float:
    """Zero commission (for studies that isolate slippage)."""
    return 0.0


def commission_function(model: str, tiered_monthly_shares: int = 0) -> Callable[[float, float], float]:
    """Return ``f(shares, price) -> commission in USD`` for a config commission model name."""
    if model == "ibkr_fixed":
        return ibkr_fixed
    if model == "ibkr_tiered":
        return lambda shares, price: ibkr_tiered(shares, price, tiered_monthly_shares)
    if model == "none":
        return no_commission
    raise ValueError(f"costs.commission = {model!r}: expected 'ibkr_fixed', 'ibkr_tiered' or 'none'")


class IBKRCommission(bt.CommInfoBase):
    """backtrader commission scheme wrapping one of the functions above (stock-like, no leverage)."""

    params = (("stocklike", True), ("commtype", bt.CommInfoBase.COMM_FIXED), ("percabs", True),
              ("fn", None))

    def _getcommission(self, size: float, price: float, pseudoexec: bool) -> float:
        return float(self.p.fn(size, price))


def slipped_buy(price: float, high: float, slip: float) -> float:
    """Fill of a market buy at ``price`` with fractional slippage, capped at the bar high (backtrader rule)."""
    p = price * (1.0 + slip)
    return p if p <= high else high


def slipped_sell(price: float, low: float, slip: float) -> float:
    """Fill of a market/stop sell at ``price`` with fractional slippage, floored at the bar low."""
    p = price * (1.0 - slip)
    return p if p >= low else low
