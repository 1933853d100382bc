"""What a real gateway does that the live engine must survive, as the real ib_async client sees it in ibsim:
completed orders, DAY expiry at the close, a cancel that loses the race with a fill, orders cancelled or filled
by another client while ours is away, late and missing commission reports, a GBP account, and the 162 for
missing market-data permissions."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

import pytest
from ib_async import IB, LimitOrder, MarketOrder, Stock, StopOrder, Trade

from ibsim import IBSim, SimConfig
from ibsim.messages import PACING_TEXT
from tests.integration.conftest import NY

Wait = Callable[..., None]
AAPL = Stock("AAPL", "SMART", "USD")


def _codes(ib: IB) -> list[tuple[int, int, str]]:
    seen: list[tuple[int, int, str]] = []
    ib.errorEvent += lambda reqId, code, text, *_: seen.append((reqId, code, text))
    return seen


def _connect(sim: IBSim, clientId: int = 1) -> IB:
    client = IB()
    client.connect(sim.host, sim.port, clientId=clientId, timeout=5)
    return client


@pytest.fixture
def aapl(ib: IB) -> Stock:
    (contract,) = ib.qualifyContracts(Stock("AAPL", "SMART", "USD"))
    return contract


def _working(ib: IB, contract: Stock, order: LimitOrder | StopOrder, wait_until: Wait) -> Trade:
    trade = ib.placeOrder(contract, order)
    wait_until(ib, lambda: trade.orderStatus.status == "Submitted")
    return trade


# -- completed orders and changes made while the client is away -------------------------------------
def test_completed_orders_hold_fills_and_a_cancel_by_another_client_made_while_away(
        ib: IB, sim: IBSim, aapl: Stock, wait_until: Wait) -> None:
    entry = ib.placeOrder(aapl, MarketOrder("BUY", 100))
    wait_until(ib, lambda: entry.orderStatus.status == "Filled")
    stop = _working(ib, aapl, StopOrder("SELL", 100, 150.0), wait_until)
    stopId, entryPermId = stop.order.orderId, entry.order.permId
    ib.disconnect()
    sim.cancelByOtherClient(stopId, clientId=1)
    back = _connect(sim)
    try:
        assert stopId not in [t.order.orderId for t in back.openTrades()]
        done = {t.order.permId: t for t in back.reqCompletedOrders(apiOnly=False)}
        assert done[entryPermId].orderStatus.status == "Filled"
        assert done[entryPermId].order.filledQuantity == 100
        cancelled = done[sim.order(stopId).permId]
        assert cancelled.orderStatus.status == "Cancelled"
        assert cancelled.order.orderRef == stop.order.orderRef
        assert [o.status for o in sim.completedOrders()] == ["Filled", "Cancelled"]
    finally:
        back.disconnect()


def test_cancel_by_another_client_reaches_a_connected_owner_as_cancelled_202(
        ib: IB, sim: IBSim, aapl: Stock, wait_until: Wait) -> None:
    codes = _codes(ib)
    stop = _working(ib, aapl, StopOrder("SELL", 100, 150.0), wait_until)
    sim.cancelByOtherClient(stop.order.orderId)
    wait_until(ib, lambda: stop.orderStatus.status == "Cancelled")
    assert (stop.order.orderId, 202) in [(r, c) for r, c, _ in codes]


def test_fill_by_another_client_while_away_is_found_in_executions_positions_and_completed_orders(
        ib: IB, sim: IBSim, aapl: Stock, wait_until: Wait) -> None:
    bid = _working(ib, aapl, LimitOrder("BUY", 100, 150.0), wait_until)
    orderId = bid.order.orderId
    ib.disconnect()
    sim.fillByOtherClient(orderId, price=151.25)
    back = _connect(sim)
    try:
        (fill,) = back.fills()
        assert (fill.execution.orderId, fill.execution.price, fill.execution.shares) == (orderId, 151.25, 100)
        assert fill.commissionReport.commission == 1.0
        assert [(p.contract.symbol, p.position) for p in back.positions()] == [("AAPL", 100)]
        assert [t.orderStatus.status for t in back.reqCompletedOrders(apiOnly=False)] == ["Filled"]
    finally:
        back.disconnect()


# -- DAY expiry ------------------------------------------------------------------------------------
def test_day_orders_expire_at_the_close_and_gtc_orders_survive(ib: IB, sim: IBSim, aapl: Stock,
                                                               wait_until: Wait) -> None:
    codes = _codes(ib)
    day = _working(ib, aapl, StopOrder("SELL", 100, 150.0), wait_until)
    gtc = _working(ib, aapl, StopOrder("SELL", 100, 150.0, tif="GTC"), wait_until)
    extended = _working(ib, aapl, LimitOrder("BUY", 100, 150.0, outsideRth=True), wait_until)
    sim.setTime(datetime(2024, 1, 4, 15, 59, tzinfo=NY))
    ib.sleep(0.1)
    assert day.orderStatus.status == "Submitted"
    sim.setTime(datetime(2024, 1, 4, 16, 1, tzinfo=NY))
    wait_until(ib, lambda: day.orderStatus.status == "Cancelled")
    assert (day.order.orderId, 202, "Order Canceled - reason:") in codes
    assert gtc.orderStatus.status == "Submitted"
    assert extended.orderStatus.status == "Submitted"  # outsideRth: valid through the after-hours session
    sim.setTime(datetime(2024, 1, 4, 20, 1, tzinfo=NY))
    wait_until(ib, lambda: extended.orderStatus.status == "Cancelled")
    assert gtc.orderStatus.status == "Submitted"
    expired = {o.orderId: o for o in sim.completedOrders()}
    assert expired[day.order.orderId].completedText.startswith("Cancelled by System")
    assert expired[day.order.orderId].completedAt == datetime(2024, 1, 4, 16, 0, tzinfo=NY)


# -- a cancel racing a fill -------------------------------------------------------------------------
@pytest.mark.parametrize("code", [10148, 161])
def test_cancel_racing_a_fill_gets_the_error_before_the_filled_status(ib: IB, sim: IBSim, aapl: Stock,
                                                                      wait_until: Wait, code: int) -> None:
    codes = _codes(ib)
    target = _working(ib, aapl, LimitOrder("SELL", 100, 250.0), wait_until)
    sim.raceCancelWithFill("AAPL", code)
    ib.cancelOrder(target.order)
    wait_until(ib, lambda: target.orderStatus.status == "Filled" and len(target.fills) == 1)
    logged = [(entry.status, entry.errorCode) for entry in target.log]
    refused = next(i for i, (_, c) in enumerate(logged) if c == code)
    filled = next(i for i, (status, _) in enumerate(logged) if status == "Filled")
    assert refused < filled  # the refusal arrives first: the client briefly believes the order dead
    assert (target.order.orderId, code) in [(r, c) for r, c, _ in codes]
    assert target.fills[0].execution.price == 250.0
    wait_until(ib, lambda: [p.position for p in ib.positions()] == [-100])


# -- commission reports ----------------------------------------------------------------------------
def test_delayed_commission_report_arrives_once_the_simulated_clock_passes(ib: IB, sim: IBSim, aapl: Stock,
                                                                           wait_until: Wait) -> None:
    sim.delayCommissionReports(60)
    trade = ib.placeOrder(aapl, MarketOrder("BUY", 100))
    wait_until(ib, lambda: len(trade.fills) == 1)
    ib.sleep(0.1)
    assert trade.fills[0].commissionReport.execId == ""  # the execution is known, its commission is not
    sim.advance(seconds=59)
    ib.sleep(0.1)
    assert trade.fills[0].commissionReport.execId == ""
    sim.advance(seconds=2)
    wait_until(ib, lambda: trade.fills[0].commissionReport.commission == 1.0)


def test_dropped_commission_report_never_arrives_live_but_reqexecutions_has_it(ib: IB, sim: IBSim, aapl: Stock,
                                                                               wait_until: Wait) -> None:
    sim.dropCommissionReports()
    trade = ib.placeOrder(aapl, MarketOrder("BUY", 100))
    wait_until(ib, lambda: len(trade.fills) == 1)
    sim.advance(minutes=10)
    ib.sleep(0.2)
    assert trade.fills[0].commissionReport.execId == ""
    ib.disconnect()
    back = _connect(sim)
    try:
        (fill,) = back.fills()
        assert fill.commissionReport.commission == 1.0
    finally:
        back.disconnect()


# -- non-USD base currency ------------------------------------------------------------------------
@pytest.fixture
def gbp_sim(sim_bars: dict, request: pytest.FixtureRequest) -> Iterator[IBSim]:
    from tests.integration.conftest import SIM_START  # noqa: PLC0415

    config = SimConfig(baseCurrency="GBP", usdToBase=0.8, initialCash=500_000.0)
    with IBSim(sim_bars, start=SIM_START, config=config) as simulator:
        yield simulator


def test_gbp_account_reports_base_and_gbp_values_usd_ledger_lines_and_netliq_in_gbp(
        gbp_sim: IBSim, wait_until: Wait) -> None:
    ib = _connect(gbp_sim)
    try:
        def values() -> dict[tuple[str, str], str]:
            return {(v.tag, v.currency): v.value for v in ib.accountValues()}

        start = values()
        assert start[("NetLiquidation", "GBP")] == "500000.00"
        assert ("NetLiquidation", "USD") not in start
        assert ("NetLiquidation", "BASE") not in start  # an engine reading USD or BASE finds nothing
        assert start[("Currency", "BASE")] == "BASE"
        assert start[("CashBalance", "BASE")] == start[("CashBalance", "GBP")] == "500000.00"
        assert ("CashBalance", "USD") not in start  # no USD activity yet
        (contract,) = ib.qualifyContracts(AAPL)
        trade = ib.placeOrder(contract, MarketOrder("BUY", 100))
        wait_until(ib, lambda: trade.orderStatus.status == "Filled")
        cost = 100 * trade.orderStatus.avgFillPrice + 1.0
        wait_until(ib, lambda: ("CashBalance", "USD") in values())
        after = values()
        assert float(after[("CashBalance", "USD")]) == pytest.approx(-cost, abs=0.01)  # IB lends the USD
        assert after[("ExchangeRate", "USD")] == "0.8"
        assert float(after[("StockMarketValue", "USD")]) == pytest.approx(cost - 1.0, abs=0.01)
        assert float(after[("NetLiquidation", "GBP")]) == pytest.approx(500_000 - 0.8, abs=0.01)
        summary = {(v.tag, v.currency): v.value for v in ib.accountSummary() if v.account != "All"}
        assert ("NetLiquidation", "GBP") in summary
        ledger = {(v.tag, v.currency) for v in ib.accountSummary() if v.account == "All"}
        assert {("CashBalance", "BASE"), ("CashBalance", "GBP"), ("CashBalance", "USD")} <= ledger
    finally:
        ib.disconnect()


def test_usd_account_values_carry_base_ledger_lines_and_netliq_in_usd(ib: IB) -> None:
    values = {(v.tag, v.currency): v.value for v in ib.accountValues()}
    assert values[("NetLiquidation", "USD")] == "1000000.00"
    assert values[("CashBalance", "BASE")] == values[("CashBalance", "USD")]
    assert values[("Cushion", "")] == "1.00"


# -- 162 without permissions -----------------------------------------------------------------------
def test_missing_market_data_permissions_162_differs_from_pacing_and_lasts_until_granted(
        ib: IB, sim: IBSim, aapl: Stock) -> None:
    codes = _codes(ib)
    sim.denyMarketData("AAPL")
    assert not ib.reqHistoricalData(aapl, "", "1800 S", "1 min", "TRADES", useRTH=True)
    assert codes[-1][1:] == (162, "Historical Market Data Service error message:No market data permissions for "
                                  "ISLAND STK")
    assert codes[-1][2] != PACING_TEXT
    sim.advance(seconds=20)
    assert not ib.reqHistoricalData(aapl, "", "1800 S", "1 min", "TRADES", useRTH=True)  # it lasts
    msft = ib.reqHistoricalData(Stock("MSFT", "SMART", "USD"), "", "1800 S", "1 min", "TRADES", useRTH=True)
    assert len(msft) == 30  # 09:31 … the forming 10:00 bar: other symbols are served
    sim.grantMarketData("AAPL")
    sim.advance(seconds=20)
    assert len(ib.reqHistoricalData(aapl, "", "1800 S", "1 min", "TRADES", useRTH=True)) == 30
