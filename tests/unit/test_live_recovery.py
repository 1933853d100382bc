"""Adopting our trades from IB executions and open orders when the state store lost them (engines.live.recovery)."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from engines.live.recovery import Adopter, RecoveryParams, TradeAtIB, collect
from engines.live.state import StateStore
from feeds.ib.mapping import execution_records, open_order_records

RULES = RecoveryParams(bar_minutes=1, flatten_minutes=5, cooldown_bars_after_stop=15, max_hold_bars=30)
NOW = datetime(2024, 1, 8, 20, 0, 30, tzinfo=UTC)  # 15:00:30 New York


def fill(ref: str, side: str, shares: float, price: float, t: datetime, exec_id: str, comm: float = 1.0) -> Any:
    ex = SimpleNamespace(orderRef=ref, side=side, shares=shares, price=price, time=t, execId=exec_id, orderId=9,
                         permId=99)
    return SimpleNamespace(execution=ex, commissionReport=SimpleNamespace(execId=exec_id, commission=comm))


def working(ref: str, order_type: str, price: float, status: str = "Submitted") -> Any:
    order = SimpleNamespace(orderRef=ref, orderType=order_type, lmtPrice=price, auxPrice=price, totalQuantity=100,
                            orderId=11, permId=111)
    return SimpleNamespace(order=order, orderStatus=SimpleNamespace(status=status))


def collect_from_ib(fills: list[Any], open_trades: list[Any], strategy_id: str) -> dict[tuple[str, str], TradeAtIB]:
    """Group IB's fills and open orders as the engine gets them: through the adapter's records."""
    return collect(execution_records(fills), open_order_records(open_trades), strategy_id)


def utc(hhmm: str, sec: int = 5) -> datetime:
    h, m = map(int, hhmm.split(":"))
    return datetime(2024, 1, 8, h, m, sec, tzinfo=UTC)


def test_collect_groups_our_fills_and_working_orders_by_trade_and_ignores_others() -> None:
    found = collect_from_ib(
        [fill("mlx:AAA:20240108-1430:entry", "BOT", 100, 10.0, utc("19:31"), "e1"),
         fill("other:AAA:20240108-1430:entry", "BOT", 100, 10.0, utc("19:31"), "e2"),
         fill("manual", "BOT", 5, 10.0, utc("19:31"), "e3")],
        [working("mlx:AAA:20240108-1430:stop", "STP", 9.96), working("mlx:AAA:20240108-1430:target", "LMT", 10.06),
         working("mlx:BBB:20240108-1400:stop", "STP", 5.0, status="Cancelled")],
        "mlx")
    assert list(found) == [("AAA", "20240108-1430")]
    trade = found[("AAA", "20240108-1430")]
    assert trade.shares() == 100
    assert set(trade.open_orders) == {"stop", "target"}


def test_open_trade_book_takes_entry_time_from_the_trade_id_and_binds_working_children() -> None:
    found = collect_from_ib([fill("mlx:AAA:20240108-1430:entry", "BOT", 100, 10.0, utc("19:31"), "e1", comm=1.25)],
                            [working("mlx:AAA:20240108-1430:stop", "STP", 9.96)], "mlx")[("AAA", "20240108-1430")]
    book = Adopter(StateStore(":memory:"), "mlx", RULES, NOW).open_book(found).to_dict()
    assert book["entry_time"] == "2024-01-08T19:31:00"  # the bar after the 14:30 New York signal bar
    assert (book["size"], book["entry_price"], book["entry_comm"]) == (100, 10.0, 1.25)
    assert book["stop_bound"]
    assert not book["target_bound"]
    assert book["bars_held"] == 29  # 19:31 … 19:59, the last closed bar at 20:00:30


@pytest.mark.parametrize(("exit_at", "reason"), [("20:50", "TIMEOUT"), ("20:56", "EOD")])
def test_market_exit_reason_follows_the_time_to_the_close(exit_at: str, reason: str) -> None:
    found = collect_from_ib([fill("mlx:AAA:20240108-1530:entry", "BOT", 100, 10.0, utc("20:31"), "e1"),
                             fill("mlx:AAA:20240108-1530:exit", "SLD", 100, 10.5, utc(exit_at), "x1")],
                            [], "mlx")[("AAA", "20240108-1530")]
    trade = Adopter(StateStore(":memory:"), "mlx", RULES, NOW).closed_trade(found)
    assert trade.exit_reason == reason
    assert trade.pnl == pytest.approx(50.0 - 2.0)


def test_stop_exit_keeps_the_rest_of_its_cooldown() -> None:
    found = collect_from_ib([fill("mlx:AAA:20240108-1440:entry", "BOT", 100, 10.0, utc("19:41"), "e1"),
                             fill("mlx:AAA:20240108-1440:stop", "SLD", 100, 9.96, utc("19:50", 40), "s1")],
                            [], "mlx")[("AAA", "20240108-1440")]
    adopter = Adopter(StateStore(":memory:"), "mlx", RULES, NOW)
    trade = adopter.closed_trade(found)
    assert trade.exit_reason == "STOP"
    assert adopter.cooldown_left(trade) == 15 - 9  # stop seen on the 19:50 bar, bars up to 19:59 processed


def test_only_todays_trades_unknown_to_the_store_in_traded_symbols_are_adopted() -> None:
    store = StateStore(":memory:")
    adopter = Adopter(store, "mlx", RULES, NOW)
    found = collect_from_ib([fill("mlx:AAA:20240108-1430:entry", "BOT", 100, 10.0, utc("19:31"), "e1"),
                             fill("mlx:BBB:20240105-1430:entry", "BOT", 100, 10.0, utc("19:31"), "e2"),
                             fill("mlx:CCC:20240108-1430:entry", "BOT", 100, 10.0, utc("19:31"), "e3")], [], "mlx")
    assert [k for k, f in found.items() if adopter.unknown(f, {"AAA", "BBB"})] == [("AAA", "20240108-1430")]
    store.put_order("mlx:AAA:20240108-1430:entry", symbol="AAA", trade_id="20240108-1430", role="entry",
                    action="BUY", quantity=100, order_type="MKT", price=None)
    assert not adopter.unknown(found[("AAA", "20240108-1430")], {"AAA"})
