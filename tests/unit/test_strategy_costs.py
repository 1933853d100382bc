"""IBKR commissions (Fixed and Tiered) and the slippage helpers."""

from __future__ import annotations

import logging

import pytest

from core.costs import (
    IBKRCommission,
    commission_function,
    ibkr_fixed,
    ibkr_tiered,
    no_commission,
    slipped_buy,
    slipped_sell,
)

logger = logging.getLogger(__name__)

FEES = 0.0030 + 0.00020  # tiered exchange + clearing fee per share


@pytest.mark.parametrize(
    ("shares", "price", "expected"),
    [
        (100, 50.0, 1.00),  # 100 × $0.005 = $0.50, raised to the $1 minimum
        (200, 50.0, 1.00),  # exactly the minimum
        (1_000, 50.0, 5.00),  # per share
        (10_000, 50.0, 50.00),
        (100, 0.50, 0.50),  # 1% of a $50 trade caps the $1 minimum
        (1_000, 0.20, 2.00),  # 1% of $200 caps $5
        (-1_000, 50.0, 5.00),  # sells pay the same
        (0, 50.0, 0.0),
    ],
)
def test_ibkr_fixed_commission(shares: float, price: float, expected: float) -> None:
    assert ibkr_fixed(shares, price) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("monthly", "rate"),
    [(0, 0.0035), (300_000, 0.0035), (300_001, 0.0020), (3_000_000, 0.0020), (3_000_001, 0.0015),
     (20_000_001, 0.0010), (100_000_001, 0.0005)],
)
def test_ibkr_tiered_rate_follows_the_monthly_volume_band(monthly: int, rate: float) -> None:
    # Act
    fee = ibkr_tiered(1_000, 100.0, monthly)

    # Assert
    assert fee == pytest.approx(rate * 1_000 + FEES * 1_000)


def test_ibkr_tiered_has_a_minimum_and_a_one_percent_cap() -> None:
    assert ibkr_tiered(10, 100.0) == pytest.approx(0.35 + FEES * 10)  # $0.035 raised to $0.35
    assert ibkr_tiered(100, 0.20) == pytest.approx(0.20 + FEES * 100)  # 1% of $20 caps $0.35
    assert ibkr_tiered(-1_000, 100.0) == ibkr_tiered(1_000, 100.0)
    assert ibkr_tiered(0, 100.0) == 0.0


def test_commission_function_resolves_config_names() -> None:
    assert commission_function("ibkr_fixed") is ibkr_fixed
    assert commission_function("none") is no_commission
    assert commission_function("ibkr_tiered", 5_000_000)(1_000, 100.0) == ibkr_tiered(1_000, 100.0, 5_000_000)
    with pytest.raises(ValueError, match="ibkr_fixd"):
        commission_function("ibkr_fixd")


def test_backtrader_commission_scheme_charges_the_function() -> None:
    # Arrange
    scheme = IBKRCommission(fn=ibkr_fixed)

    # Act / Assert
    assert scheme.getcommission(1_000, 50.0) == 5.0
    assert scheme.getcommission(-100, 50.0) == 1.0


def test_slippage_helpers_follow_backtraders_caps() -> None:
    assert slipped_buy(100.0, 101.0, 0.001) == pytest.approx(100.1)
    assert slipped_buy(100.0, 100.05, 0.001) == 100.05  # capped at the bar high
    assert slipped_sell(100.0, 99.0, 0.001) == pytest.approx(99.9)
    assert slipped_sell(100.0, 99.95, 0.001) == 99.95  # floored at the bar low
