"""ibsim's tape, bars-as-of-a-moment, pacing rules, commissions and position arithmetic, without sockets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from ibsim.broker import Broker, CommissionSchedule, SimOrder, contractFor
from ibsim.clock import SimClock
from ibsim.market import NS, HistoryError, Market, parseBarSize, parseDuration, toNs
from ibsim.pacing import HistRequestKey, PacingGuard, PacingRules
from ibsim.server import parseEndDateTime

T0 = datetime(2024, 1, 4, 14, 30, tzinfo=UTC)  # 09:30 New York


def _market() -> Market:
    index = pd.DatetimeIndex([T0 + timedelta(minutes=i) for i in range(3)], name="datetime")
    frame = pd.DataFrame({"open": [10.0, 11.0, 10.5], "high": [11.5, 11.2, 10.6], "low": [9.5, 10.4, 9.0],
                          "close": [11.0, 10.5, 9.2], "volume": [400.0, 800.0, 1200.0]}, index=index)
    return Market({"XYZ": frame})


def test_an_up_bar_prints_open_low_high_close_and_a_down_bar_open_high_low_close() -> None:
    series = _market().get("XYZ")
    assert [t.price for t in series.barTicks(0)] == [10.0, 9.5, 11.5, 11.0]
    assert [t.price for t in series.barTicks(1)] == [11.0, 11.2, 10.4, 10.5]
    assert [(t.timeNs - toNs(T0)) // NS for t in series.barTicks(0)] == [0, 15, 30, 45]
    assert [t.jump for t in series.barTicks(0)] == [True, False, False, False]


def test_last_and_next_tick_around_a_moment() -> None:
    series = _market().get("XYZ")
    at = toNs(T0 + timedelta(seconds=20))
    assert series.lastTick(at).price == 9.5
    assert series.nextTick(at).price == 11.5
    assert series.nextTick(toNs(T0 + timedelta(seconds=50))).price == 11.0  # the next bar's open


def test_hand_set_price_wins_a_tie_and_joins_the_forming_bar() -> None:
    market = _market()
    series = market.get("XYZ")
    at = toNs(T0 + timedelta(seconds=15))
    series.setPrice(at, 12.0)
    assert series.nextTick(at).price == 12.0
    frame = market.history("XYZ", T0 + timedelta(seconds=15), None, duration="60 S", barSize="1 min",
                           useRth=True)
    assert frame.iloc[-1][["open", "high", "low", "close"]].tolist() == [10.0, 12.0, 9.5, 12.0]


def test_forming_bar_volume_grows_with_its_prints() -> None:
    market = _market()
    at = T0 + timedelta(minutes=1, seconds=20)
    frame = market.history("XYZ", at, None, duration="120 S", barSize="1 min", useRth=True)
    assert frame["volume"].tolist() == [400.0, 400.0]  # two of four prints of an 800-share bar


def test_history_rejects_a_bar_size_finer_than_the_data() -> None:
    with pytest.raises(HistoryError):
        _market().history("XYZ", T0, None, duration="60 S", barSize="30 secs", useRth=True)


@pytest.mark.parametrize(("text", "seconds"), [("1 min", 60), ("5 mins", 300), ("1 hour", 3600),
                                               ("1 day", 86400)])
def test_bar_sizes_parse(text: str, seconds: int) -> None:
    assert parseBarSize(text) == seconds


def test_durations_parse_and_bad_ones_are_refused() -> None:
    assert parseDuration("3600 S") == (3600, "S")
    assert parseDuration("2 D") == (2, "D")
    with pytest.raises(HistoryError):
        parseDuration("2 days")


@pytest.mark.parametrize(("text", "expected"), [
    ("", None),
    ("20240104 15:00:00 UTC", datetime(2024, 1, 4, 15, tzinfo=UTC)),
    ("20240104-15:00:00", datetime(2024, 1, 4, 15, tzinfo=UTC)),
    ("20240104 10:00:00 America/New_York", datetime(2024, 1, 4, 15, tzinfo=UTC)),
    ("20240104 10:00:00", datetime(2024, 1, 4, 15, tzinfo=UTC)),
])
def test_end_date_time_formats(text: str, expected: datetime | None) -> None:
    assert parseEndDateTime(text) == expected


def _key(duration: str = "1 D", symbol: str = "XYZ", what: str = "TRADES") -> HistRequestKey:
    return HistRequestKey(symbol, "SMART", what, "", duration, "1 min", True)


def test_pacing_identical_request_within_15_seconds() -> None:
    guard = PacingGuard()
    assert guard.check(_key(), 0.0, 0, 60) is None
    assert guard.check(_key(), 14.9, 0, 60) is not None
    assert guard.check(_key(), 15.0, 0, 60) is None


def test_pacing_sixth_request_for_a_contract_within_2_seconds_and_bid_ask_counts_double() -> None:
    guard = PacingGuard()
    for i in range(5):
        assert guard.check(_key(f"{i + 1} D"), 0.1 * i, 0, 60) is None
    assert guard.check(_key("9 D"), 0.5, 0, 60) is not None
    assert guard.check(_key("9 D", symbol="ABC"), 0.5, 0, 60) is None
    bid_ask = PacingGuard()
    for i in range(2):
        assert bid_ask.check(_key(f"{i + 1} D", what="BID_ASK"), 0.0, 0, 60) is None
    assert bid_ask.check(_key("3 D", what="BID_ASK"), 0.0, 0, 60) is not None  # 2 + 2 + 2 > 5


def test_pacing_more_than_60_in_ten_minutes_and_50_open() -> None:
    guard = PacingGuard()
    for i in range(60):
        assert guard.check(_key(f"{i + 1} D", symbol=f"S{i}"), float(i), 0, 60) is None
    assert guard.check(_key("1 D", symbol="NEW"), 100.0, 0, 60) is not None
    assert guard.check(_key("1 D", symbol="NEW"), 600.0, 0, 60) is None  # the first request has aged out
    assert PacingGuard().check(_key(), 0.0, 50, 60) is not None


def test_pacing_off_or_small_bars_only() -> None:
    off = PacingGuard(PacingRules(enabled=False))
    assert all(off.check(_key(), 0.0, 0, 60) is None for _ in range(3))
    small = PacingGuard(PacingRules(smallBarsOnly=True))
    assert all(small.check(_key(), 0.0, 0, 60) is None for _ in range(3))
    assert small.check(_key(), 0.0, 0, 5) is None
    assert small.check(_key(), 0.0, 0, 5) is not None


@pytest.mark.parametrize(("shares", "price", "commission"), [
    (100, 50.0, 1.0),  # $0.50 raised to the $1 minimum
    (1000, 50.0, 5.0),  # $0.005 per share
    (100, 0.5, 0.5),  # capped at 1 % of $50
])
def test_ibkr_fixed_commissions(shares: int, price: float, commission: float) -> None:
    assert CommissionSchedule().total(shares, shares * price) == pytest.approx(commission)


def _order(orderId: int, action: str, qty: float) -> SimOrder:
    return SimOrder(1, orderId, 0, contractFor("XYZ"), action, qty, "MKT", None, None)


def test_position_cash_and_realized_pnl_through_a_flip() -> None:
    market = _market()
    broker = Broker(market, "DU1", initialCash=10_000.0)
    clock = SimClock(T0)
    broker.placeOrder(_order(1, "BUY", 100), clock.now())  # 100 @ 10.00, $1
    pos = broker.positions["XYZ"]
    assert (pos.qty, pos.avgCost) == (100, pytest.approx(10.01))
    clock.advance(60)
    broker.placeOrder(_order(2, "SELL", 300), clock.now())  # 300 @ 11.00, $1.50
    assert pos.qty == -200
    assert pos.realizedPNL == pytest.approx(100 * (11.0 - 10.01) - 0.5)
    assert pos.avgCost == pytest.approx(11.0 - 1.0 / 200)
    assert broker.cash == pytest.approx(10_000 - 1000 - 1 + 3300 - 1.5)
    values = broker.accountValues(clock.now())
    assert values["NetLiquidation"] == pytest.approx(broker.cash - 200 * 11.0)
    assert [e.realizedPNL for e in broker.executions] == [None, pytest.approx(98.5)]


@pytest.mark.parametrize(("placed", "tif", "outsideRth", "expires"), [
    ("2024-01-04 10:00", "DAY", False, "2024-01-04 16:00"),
    ("2024-01-04 10:00", "DAY", True, "2024-01-04 20:00"),  # valid through the after-hours session
    ("2024-01-04 17:00", "DAY", False, "2024-01-05 16:00"),  # placed after the close: tomorrow's session
    ("2024-01-05 17:00", "DAY", False, "2024-01-08 16:00"),  # a Friday evening order waits for Monday
    ("2024-01-04 10:00", "GTC", False, None),
])
def test_day_orders_expire_at_the_close_of_their_session(placed: str, tif: str, outsideRth: bool,
                                                         expires: str | None) -> None:
    order = _order(1, "BUY", 100)
    order.tif, order.outsideRth = tif, outsideRth
    order.placedAt = pd.Timestamp(placed, tz="America/New_York").to_pydatetime()
    due = order.expiresAt()
    assert (None if due is None else pd.Timestamp(due).tz_convert("America/New_York").strftime("%Y-%m-%d %H:%M")
            ) == expires


def test_gbp_account_keeps_its_cash_in_gbp_and_borrows_the_usd_it_trades() -> None:
    broker = Broker(_market(), "DU1", initialCash=10_000.0, baseCurrency="GBP", usdToBase=0.8)
    assert set(broker.ledger(T0)) == {"BASE", "GBP"}
    broker.placeOrder(_order(1, "BUY", 100), T0)  # 100 @ 10.00, $1
    ledger = broker.ledger(T0)
    assert ledger["USD"]["CashBalance"] == pytest.approx(-1001.0)
    assert ledger["USD"]["StockMarketValue"] == pytest.approx(1000.0)
    assert ledger["GBP"]["CashBalance"] == 10_000.0
    assert ledger["BASE"]["CashBalance"] == pytest.approx(10_000 - 0.8 * 1001)
    assert broker.accountValues(T0)["NetLiquidation"] == pytest.approx(10_000 - 0.8)
