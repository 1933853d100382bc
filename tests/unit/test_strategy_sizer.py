"""Fixed-fraction sizing: ``shares = floor(risk × equity / (entry × stop))`` within cash, never negative."""

from __future__ import annotations

import logging
import math

import pytest

from core.costs import ibkr_fixed
from strategies.sizer import CASH_BUFFER, fixed_fraction_shares

logger = logging.getLogger(__name__)

BIG_CASH = 1e12


def test_shares_lose_the_risk_fraction_of_equity_at_the_stop() -> None:
    # Arrange: risk 0.2% of 100k = $200; a 0.4% stop on $48 is $0.192 per share
    # Act
    shares = fixed_fraction_shares(100_000.0, BIG_CASH, 48.0, risk_fraction=0.002, stop_loss=0.004, slippage=0.0)

    # Assert
    assert shares == math.floor(200.0 / 0.192) == 1041


def test_slippage_raises_the_entry_price_used_for_sizing() -> None:
    # Act
    shares = fixed_fraction_shares(100_000.0, BIG_CASH, 48.0, 0.002, 0.004, slippage=0.001)

    # Assert
    assert shares == math.floor(200.0 / (48.0 * 1.001 * 0.004)) == 1040


def test_cash_caps_shares_with_a_buffer_on_the_entry_price() -> None:
    # Arrange: risk alone would buy 1041 shares ($50k); $10k buys 199 at 50 × 1.005 = 50.25
    # Act
    shares = fixed_fraction_shares(100_000.0, 10_000.0, 50.0, 0.002, 0.004, 0.0)

    # Assert
    assert shares == math.floor(10_000.0 / (50.0 * (1.0 + CASH_BUFFER))) == 199


def test_commission_headroom_keeps_the_order_within_cash() -> None:
    # Arrange: 199 × 50.25 = 9,999.75 leaves no room for the $1 minimum commission
    cash = 10_000.0

    # Act
    shares = fixed_fraction_shares(100_000.0, cash, 50.0, 0.002, 0.004, 0.0, commission=ibkr_fixed)

    # Assert
    assert shares == 198
    assert shares * 50.25 + ibkr_fixed(shares, 50.0) <= cash


@pytest.mark.parametrize("cash", [1_000.0, 25_000.0, 77_777.0, 250_000.0])
def test_commission_headroom_holds_for_large_orders(cash: float) -> None:
    # Act
    shares = fixed_fraction_shares(10_000_000.0, cash, 3.17, 0.01, 0.004, 0.0001, commission=ibkr_fixed)

    # Assert: within cash, and at most ~1% below the cash cap (the headroom loop steps by 1%)
    entry = 3.17 * 1.0001
    assert shares * entry * (1.0 + CASH_BUFFER) + ibkr_fixed(shares, entry) <= cash
    assert shares >= 0.98 * math.floor(cash / (entry * (1.0 + CASH_BUFFER)))


@pytest.mark.parametrize(
    ("equity", "cash", "price", "risk_fraction", "stop_loss"),
    [
        (0.0, BIG_CASH, 50.0, 0.002, 0.004),
        (-5_000.0, BIG_CASH, 50.0, 0.002, 0.004),
        (100_000.0, 0.0, 50.0, 0.002, 0.004),
        (100_000.0, -1.0, 50.0, 0.002, 0.004),
        (100_000.0, BIG_CASH, 0.0, 0.002, 0.004),
        (100_000.0, BIG_CASH, -50.0, 0.002, 0.004),
        (100_000.0, BIG_CASH, 50.0, 0.0, 0.004),
        (100_000.0, BIG_CASH, 50.0, -0.002, 0.004),
        (100_000.0, BIG_CASH, 50.0, 0.002, -0.004),
        (100_000.0, BIG_CASH, 50.0, 0.002, 0.0),
        (math.nan, BIG_CASH, 50.0, 0.002, 0.004),
        (100_000.0, math.nan, 50.0, 0.002, 0.004),
    ],
)
def test_zero_shares_for_non_positive_inputs(equity: float, cash: float, price: float, risk_fraction: float,
                                              stop_loss: float) -> None:
    # Act
    shares = fixed_fraction_shares(equity, cash, price, risk_fraction, stop_loss, 0.0, commission=ibkr_fixed)

    # Assert
    assert shares == 0


def test_shares_are_never_negative_when_cash_cannot_cover_the_commission() -> None:
    # Act: $5 of cash buys no $4.99 share once the $1 commission is added
    shares = fixed_fraction_shares(100_000.0, 5.0, 4.99, 0.002, 0.004, 0.0, commission=ibkr_fixed)

    # Assert
    assert shares == 0
