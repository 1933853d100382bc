"""Orders, fills, brackets and the account, as the real ib_async client sees them through ibsim."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import pytest
from ib_async import IB, LimitOrder, MarketOrder, Stock, StopOrder, Trade

from ibsim import IBSim, SimConfig
from tests.integration.conftest import NY, SIM_START

Wait = Callable[..., None]


@pytest.fixture
def aapl(ib: IB) -> Stock:
    (contract,) = ib.qualifyContracts(Stock("AAPL", "SMART", "USD"))
    return contract


def _bar(frame: pd.DataFrame, local: str) -> pd.Series:
    return frame.loc[pd.Timestamp(local, tz=NY).tz_convert("UTC")]


def _statuses(trade: Trade) -> list[str]:
    seen: list[str] = []
    for entry in trade.log:
        if not seen or seen[-1] != entry.status:
            seen.append(entry.status)
    return seen


def test_market_order_full_lifecycle_with_commission(ib: IB, sim: IBSim, aapl: Stock, wait_until: Wait,
                                                     sim_bars: dict[str, pd.DataFrame]) -> None:
    open_price = _bar(sim_bars["AAPL"], "2024-01-04 10:00").open
    trade = ib.placeOrder(aapl, MarketOrder("BUY", 100))
    wait_until(ib, lambda: trade.isDone() and trade.fills and trade.fills[0].commissionReport.execId)
    assert _statuses(trade) == ["PendingSubmit", "Submitted", "Filled"]
    assert trade.orderStatus.avgFillPrice == open_price
    (fill,) = trade.fills
    assert fill.execution.shares == 100
    assert fill.execution.side == "BOT"
    assert fill.commissionReport.commission == 1.0  # 100 × $0.005 = $0.50, raised to the $1 minimum
    wait_until(ib, lambda: ib.positions() and ib.portfolio())
    (position,) = ib.positions()
    assert position.position == 100
    assert position.avgCost == pytest.approx(open_price + 0.01)  # IB's average cost includes commission
    assert sim.cash == pytest.approx(1_000_000 - 100 * open_price - 1.0)
    (item,) = ib.portfolio()
    assert item.marketValue == pytest.approx(100 * open_price)


def test_market_order_fills_at_the_next_price_the_tape_reaches(
        ib: IB, sim: IBSim, aapl: Stock, wait_until: Wait, sim_bars: dict[str, pd.DataFrame]) -> None:
    sim.advance(seconds=50)  # after the 10:00 bar's last print (its close, at :45)
    trade = ib.placeOrder(aapl, MarketOrder("BUY", 10))
    wait_until(ib, lambda: trade.orderStatus.status == "Submitted")
    sim.advance(seconds=10)
    wait_until(ib, trade.isDone)
    assert trade.orderStatus.avgFillPrice == _bar(sim_bars["AAPL"], "2024-01-04 10:01").open


def test_slippage_moves_market_fills_against_the_trader(sim_bars: dict[str, pd.DataFrame],
                                                        wait_until: Wait) -> None:
    with IBSim(sim_bars, SIM_START, SimConfig(slippage=0.02)) as sim:
        ib = IB()
        ib.connect(sim.host, sim.port, clientId=1)
        trade = ib.placeOrder(Stock("AAPL", "SMART", "USD"), MarketOrder("SELL", 10))
        wait_until(ib, trade.isDone)
        assert trade.orderStatus.avgFillPrice == pytest.approx(_bar(sim_bars["AAPL"], "2024-01-04 10:00").open
                                                               - 0.02)
        ib.disconnect()


def test_limit_order_fills_when_a_bar_low_reaches_the_limit(
        ib: IB, sim: IBSim, aapl: Stock, wait_until: Wait, sim_bars: dict[str, pd.DataFrame]) -> None:
    frame = sim_bars["AAPL"]
    ahead = frame.loc[pd.Timestamp("2024-01-04 10:01", tz=NY):pd.Timestamp("2024-01-04 11:00", tz=NY)]
    limit = round(float(ahead.low.min()) + 0.01, 2)
    expected_bar = ahead[ahead.low <= limit].iloc[0]
    sim.advance(seconds=50)
    trade = ib.placeOrder(aapl, LimitOrder("BUY", 50, limit))
    wait_until(ib, lambda: trade.orderStatus.status == "Submitted")  # the order is in before time moves on
    sim.advance(minutes=61)
    wait_until(ib, trade.isDone)
    price = trade.orderStatus.avgFillPrice
    assert price == (expected_bar.open if expected_bar.open <= limit else limit)
    assert trade.fills[0].execution.time.astimezone(NY).strftime("%H:%M") == expected_bar.name.tz_convert(
        NY).strftime("%H:%M")


def test_stop_order_triggers_from_a_bar_low(ib: IB, sim: IBSim, aapl: Stock, wait_until: Wait) -> None:
    buy = ib.placeOrder(aapl, MarketOrder("BUY", 20))
    wait_until(ib, buy.isDone)
    stop = round(buy.orderStatus.avgFillPrice - 0.50, 2)
    trade = ib.placeOrder(aapl, StopOrder("SELL", 20, stop))
    wait_until(ib, lambda: trade.orderStatus.status == "Submitted")
    sim.advance(seconds=5)
    assert not trade.isDone()
    sim.setPrice("AAPL", stop - 0.10)  # a jump through the stop fills at the printed price
    wait_until(ib, trade.isDone)
    assert trade.orderStatus.status == "Filled"
    assert trade.orderStatus.avgFillPrice == pytest.approx(stop - 0.10)


def _bracket(ib: IB, contract: Stock, quantity: int, prices: tuple[float, float, float]) -> list[Trade]:
    entry, target, stop = prices
    return [ib.placeOrder(contract, order) for order in ib.bracketOrder("BUY", quantity, entry, target, stop)]


def test_bracket_children_wait_until_the_last_child_transmits(ib: IB, sim: IBSim, aapl: Stock,
                                                               wait_until: Wait) -> None:
    parent, target, stop = ib.bracketOrder("BUY", 10, 1.00, 500.0, 0.50)  # parent far below the market
    trades = [ib.placeOrder(aapl, parent), ib.placeOrder(aapl, target)]
    wait_until(ib, lambda: [o.status for o in sim.orders()] == ["Held", "Held"])
    assert [t.orderStatus.status for t in trades] == ["PendingSubmit", "PendingSubmit"]
    trades.append(ib.placeOrder(aapl, stop))
    wait_until(ib, lambda: [t.orderStatus.status for t in trades] == ["Submitted", "PreSubmitted",
                                                                        "PreSubmitted"])


def test_bracket_target_fill_cancels_stop(ib: IB, sim: IBSim, aapl: Stock, wait_until: Wait) -> None:
    errors: list[tuple[int, int]] = []
    ib.errorEvent += lambda reqId, code, *_: errors.append((reqId, code))
    price = sim.gateway.market.lastPrice("AAPL", sim.now())
    parent, target, stop = _bracket(ib, aapl, 100, (price + 1.0, price + 2.0, price - 2.0))
    wait_until(ib, lambda: parent.isDone() and target.orderStatus.status == "Submitted"
               and stop.orderStatus.status == "Submitted")
    assert parent.orderStatus.avgFillPrice == price  # a marketable limit fills at the next print
    sim.setPrice("AAPL", price + 2.5)
    wait_until(ib, lambda: target.isDone() and stop.isDone())
    assert [t.orderStatus.status for t in (parent, target, stop)] == ["Filled", "Filled", "Cancelled"]
    assert target.orderStatus.avgFillPrice == pytest.approx(price + 2.5)
    assert (stop.order.orderId, 202) in errors
    wait_until(ib, lambda: not ib.positions())


def test_bracket_stop_fill_cancels_target(ib: IB, sim: IBSim, aapl: Stock, wait_until: Wait) -> None:
    price = sim.gateway.market.lastPrice("AAPL", sim.now())
    parent, target, stop = _bracket(ib, aapl, 100, (price + 1.0, price + 2.0, price - 2.0))
    wait_until(ib, lambda: parent.isDone() and stop.orderStatus.status == "Submitted")
    sim.setPrice("AAPL", price - 2.3)
    wait_until(ib, lambda: target.isDone() and stop.isDone())
    assert [t.orderStatus.status for t in (parent, target, stop)] == ["Filled", "Cancelled", "Filled"]
    assert stop.orderStatus.avgFillPrice == pytest.approx(price - 2.3)
    wait_until(ib, lambda: not ib.positions())
    realized = sum(f.commissionReport.realizedPNL for f in ib.fills())
    assert realized == pytest.approx(100 * (price - 2.3 - price) - 2 * 1.0)


def test_bracket_children_trigger_from_bar_highs_and_lows(ib: IB, sim: IBSim, aapl: Stock, wait_until: Wait,
                                                          sim_bars: dict[str, pd.DataFrame]) -> None:
    price = sim.gateway.market.lastPrice("AAPL", sim.now())
    parent, target, stop = _bracket(ib, aapl, 10, (price + 1.0, price + 0.30, price - 0.30))
    wait_until(ib, parent.isDone)
    sim.advance(minutes=120)
    wait_until(ib, lambda: target.isDone() and stop.isDone())
    frame = sim_bars["AAPL"].loc[pd.Timestamp("2024-01-04 10:00", tz=NY):]
    up = frame[frame.high >= price + 0.30].index.min()
    down = frame[frame.low <= price - 0.30].index.min()
    winner, loser = (target, stop) if up < down else (stop, target)
    assert winner.orderStatus.status == "Filled"
    assert loser.orderStatus.status == "Cancelled"


def test_time_exit_cancels_children_then_sells(ib: IB, sim: IBSim, aapl: Stock, wait_until: Wait) -> None:
    price = sim.gateway.market.lastPrice("AAPL", sim.now())
    parent, target, stop = _bracket(ib, aapl, 100, (price + 1.0, price + 50.0, price - 50.0))
    wait_until(ib, lambda: parent.isDone() and target.orderStatus.status == "Submitted")
    sim.advance(minutes=30)
    ib.cancelOrder(target.order)
    ib.cancelOrder(stop.order)
    wait_until(ib, lambda: target.isDone() and stop.isDone())
    assert [target.orderStatus.status, stop.orderStatus.status] == ["Cancelled", "Cancelled"]
    exit_trade = ib.placeOrder(aapl, MarketOrder("SELL", 100))
    wait_until(ib, exit_trade.isDone)
    wait_until(ib, lambda: not ib.positions())
    assert sim.positions()["AAPL"].qty == 0
    assert [o.status for o in sim.orders()] == ["Filled", "Cancelled", "Cancelled", "Filled"]


def test_cancel_order_gets_202_and_unknown_id_gets_10147(ib: IB, sim: IBSim, aapl: Stock,
                                                         wait_until: Wait) -> None:
    errors: list[tuple[int, int]] = []
    ib.errorEvent += lambda reqId, code, *_: errors.append((reqId, code))
    trade = ib.placeOrder(aapl, LimitOrder("BUY", 10, 1.00))
    wait_until(ib, lambda: trade.orderStatus.status == "Submitted")
    ib.cancelOrder(trade.order)
    wait_until(ib, trade.isDone)
    assert trade.orderStatus.status == "Cancelled"
    assert (trade.order.orderId, 202) in errors
    ib.client.cancelOrder(999, "")
    wait_until(ib, lambda: (999, 10147) in errors)


def test_rejected_order_gets_201_and_ends_inactive(ib: IB, sim: IBSim, aapl: Stock, wait_until: Wait) -> None:
    errors: list[tuple[int, int, str]] = []
    ib.errorEvent += lambda reqId, code, text, *_: errors.append((reqId, code, text))
    sim.rejectNextOrder("AAPL", "insufficient buying power")
    trade = ib.placeOrder(aapl, MarketOrder("BUY", 100))
    wait_until(ib, trade.isDone)
    assert trade.orderStatus.status == "Inactive"
    assert errors == [(trade.order.orderId, 201, "Order rejected - reason:insufficient buying power")]
    assert sim.fills() == []
    again = ib.placeOrder(aapl, MarketOrder("BUY", 100))  # only the next order was rejected
    wait_until(ib, again.isDone)
    assert again.orderStatus.status == "Filled"


def test_partial_fills_arrive_as_several_executions(ib: IB, sim: IBSim, aapl: Stock,
                                                    wait_until: Wait) -> None:
    sim.setPartialFills(30, symbol="AAPL")
    trade = ib.placeOrder(aapl, MarketOrder("BUY", 100))
    wait_until(ib, lambda: len(trade.fills) == 1)
    assert trade.orderStatus.status == "Submitted"
    assert trade.orderStatus.filled == 30
    sim.advance(seconds=60)
    wait_until(ib, trade.isDone)
    assert [f.execution.shares for f in trade.fills] == [30, 30, 30, 10]
    assert trade.orderStatus.filled == 100
    wait_until(ib, lambda: all(f.commissionReport.execId for f in trade.fills))
    assert sum(f.commissionReport.commission for f in trade.fills) == pytest.approx(1.0)


def test_commissions_follow_ibkr_fixed(ib: IB, sim: IBSim, aapl: Stock, wait_until: Wait) -> None:
    trade = ib.placeOrder(aapl, MarketOrder("BUY", 1000))
    wait_until(ib, lambda: trade.fills and trade.fills[0].commissionReport.execId)
    assert trade.fills[0].commissionReport.commission == pytest.approx(5.0)  # 1000 × $0.005


def test_open_orders_and_executions_are_listed_on_request(ib: IB, sim: IBSim, aapl: Stock,
                                                          wait_until: Wait) -> None:
    resting = ib.placeOrder(aapl, LimitOrder("BUY", 10, 1.00))
    filled = ib.placeOrder(aapl, MarketOrder("BUY", 10))
    wait_until(ib, filled.isDone)
    assert [t.order.orderId for t in ib.reqOpenOrders()] == [resting.order.orderId]
    fills = ib.reqExecutions()
    assert [f.execution.orderId for f in fills] == [filled.order.orderId]
    assert sim.order(filled.order.orderId).status == "Filled"


def test_account_stays_consistent_after_a_round_trip(ib: IB, sim: IBSim, aapl: Stock,
                                                     wait_until: Wait) -> None:
    buy = ib.placeOrder(aapl, MarketOrder("BUY", 200))
    wait_until(ib, buy.isDone)
    sim.advance(minutes=30)
    sell = ib.placeOrder(aapl, MarketOrder("SELL", 200))
    wait_until(ib, sell.isDone)
    gross = 200 * (sell.orderStatus.avgFillPrice - buy.orderStatus.avgFillPrice)
    values = sim.accountValues()
    assert values["RealizedPnL"] == pytest.approx(gross - 2.0)
    assert values["NetLiquidation"] == pytest.approx(1_000_000 + gross - 2.0)
    assert sim.cash == pytest.approx(values["NetLiquidation"])
    expected = pytest.approx(gross - 2.0, abs=0.01)
    wait_until(ib, lambda: any(v.tag == "RealizedPnL" and float(v.value) == expected
                               for v in ib.accountValues()))
