"""IB's own Python client (``ibapi`` 9.81.1.post1, EClient/EWrapper, server version 157) against ``python -m ibsim``.

Drives every flow the ib_async and ib_insync runs cover: handshake, contract details and error 200, historical
bars (volume as IB sends it at 157: integer round lots), a market order with execution and commission, a
bracket, cancels (202, 10147), executions, positions, open and completed orders, account summary, 162 (pacing
and missing permissions), 326 and 1100/1102. Run by ``.ci/ibapi_compat.sh`` in its own virtual environment
(``ibapi`` is not in requirements.txt). Not a pytest module: a plain script that prints one line per check and
``N passed, M failed``, and exits non-zero on any failure.
"""

# ruff: noqa: N802  (the EWrapper callbacks overridden here must keep IB's camelCase names)
from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

import pandas as pd
from compat_support import Control, Result, Served, report, serve_ibsim
from ibapi.client import EClient
from ibapi.contract import Contract
from ibapi.execution import ExecutionFilter
from ibapi.order import Order
from ibapi.wrapper import EWrapper

logger = logging.getLogger("ibapi_smoke")

TIMEOUT = 15.0  # wall seconds for one answer; generous, so that a loaded machine changes duration, not verdict


class App(EWrapper, EClient):
    """Records every callback as (name, args) and lets the checks wait for one."""

    def __init__(self) -> None:
        EWrapper.__init__(self)
        EClient.__init__(self, wrapper=self)
        self.events: list[tuple[str, tuple[Any, ...]]] = []
        self.changed = threading.Condition()
        self.next_id = 0

    def record(self, name: str, *args: Any) -> None:
        with self.changed:
            self.events.append((name, args))
            self.changed.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
        with self.changed:
            return self.changed.wait_for(predicate, timeout)

    def seen(self, name: str) -> list[tuple[Any, ...]]:
        with self.changed:
            return [args for n, args in self.events if n == name]

    def errors(self) -> list[tuple[int, int, str]]:
        return [(a[0], a[1], a[2]) for a in self.seen("error")]

    def take_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    # -- EWrapper callbacks ------------------------------------------------------------------------
    def nextValidId(self, orderId: int) -> None:
        self.next_id = max(self.next_id, orderId)
        self.record("nextValidId", orderId)

    def managedAccounts(self, accountsList: str) -> None:
        self.record("managedAccounts", accountsList)

    def error(self, reqId: int, errorCode: int, errorString: str) -> None:
        self.record("error", reqId, errorCode, errorString)

    def contractDetails(self, reqId: int, contractDetails: Any) -> None:
        self.record("contractDetails", reqId, contractDetails)

    def contractDetailsEnd(self, reqId: int) -> None:
        self.record("contractDetailsEnd", reqId)

    def historicalData(self, reqId: int, bar: Any) -> None:
        self.record("historicalData", reqId, bar)

    def historicalDataEnd(self, reqId: int, start: str, end: str) -> None:
        self.record("historicalDataEnd", reqId, start, end)

    def orderStatus(self, orderId: int, status: str, filled: float, remaining: float, avgFillPrice: float,
                    permId: int, parentId: int, lastFillPrice: float, clientId: int, whyHeld: str,
                    mktCapPrice: float) -> None:
        self.record("orderStatus", orderId, status, filled, remaining, avgFillPrice, permId, parentId)

    def openOrder(self, orderId: int, contract: Contract, order: Order, orderState: Any) -> None:
        self.record("openOrder", orderId, contract, order, orderState.status)

    def openOrderEnd(self) -> None:
        self.record("openOrderEnd")

    def completedOrder(self, contract: Contract, order: Order, orderState: Any) -> None:
        self.record("completedOrder", contract, order, orderState.status, orderState.completedStatus)

    def completedOrdersEnd(self) -> None:
        self.record("completedOrdersEnd")

    def execDetails(self, reqId: int, contract: Contract, execution: Any) -> None:
        self.record("execDetails", reqId, contract, execution)

    def execDetailsEnd(self, reqId: int) -> None:
        self.record("execDetailsEnd", reqId)

    def commissionReport(self, commissionReport: Any) -> None:
        self.record("commissionReport", commissionReport)

    def position(self, account: str, contract: Contract, position: float, avgCost: float) -> None:
        self.record("position", account, contract.symbol, position, avgCost)

    def positionEnd(self) -> None:
        self.record("positionEnd")

    def accountSummary(self, reqId: int, account: str, tag: str, value: str, currency: str) -> None:
        self.record("accountSummary", reqId, account, tag, value, currency)

    def accountSummaryEnd(self, reqId: int) -> None:
        self.record("accountSummaryEnd", reqId)

    def connectionClosed(self) -> None:
        self.record("connectionClosed")


def stock(symbol: str) -> Contract:
    c = Contract()
    c.symbol, c.secType, c.exchange, c.currency = symbol, "STK", "SMART", "USD"
    return c


def order(action: str, qty: int, orderType: str, price: float | None = None, *, transmit: bool = True,
          parentId: int = 0) -> Order:
    o = Order()
    o.action, o.totalQuantity, o.orderType, o.transmit, o.parentId = action, qty, orderType, transmit, parentId
    o.eTradeOnly = o.firmQuoteOnly = False  # 9.81 defaults both to True, which IB Gateway 10 rejects
    if orderType == "LMT":
        o.lmtPrice = price
    elif orderType == "STP":
        o.auxPrice = price
    return o


def connect(port: int, clientId: int) -> App:
    app = App()
    app.connect("127.0.0.1", port, clientId)
    threading.Thread(target=app.run, name=f"ibapi-reader-{clientId}", daemon=True).start()
    return app


class Checks:
    """One App per check run; each check appends (name, passed, detail)."""

    def __init__(self, app: App, port: int, control: Control, frame: pd.DataFrame) -> None:
        self.app, self.port, self.control, self.frame = app, port, control, frame
        self.results: list[Result] = []

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.results.append((name, bool(ok), detail))

    def statuses(self, orderId: int) -> list[str]:
        return [a[1] for a in self.app.seen("orderStatus") if a[0] == orderId]

    def handshake(self) -> None:
        app = self.app
        ready = app.wait(lambda: bool(app.seen("nextValidId")) and bool(app.seen("managedAccounts")))
        farms = {c for _, c, _ in app.errors()}
        app.wait(lambda: {2104, 2106, 2158} <= {c for _, c, _ in app.errors()}, 5)
        farms = {c for _, c, _ in app.errors()}
        self.check("handshake at server version 157, nextValidId + managedAccounts",
                   ready and app.serverVersion() == 157 and app.seen("managedAccounts")[0][0] == "DU1234567",
                   f"server version {app.serverVersion()}, accounts {app.seen('managedAccounts')}")
        self.check("farm notices 2104/2106/2158 decoded (5-field errors at 157)", {2104, 2106, 2158} <= farms,
                   f"codes {sorted(farms)}")

    def contract_details(self) -> None:
        app = self.app
        app.reqContractDetails(11, stock("AAPL"))
        ok = app.wait(lambda: (11,) in app.seen("contractDetailsEnd"))
        details = [a[1] for a in app.seen("contractDetails") if a[0] == 11]
        conId = details[0].contract.conId if details else None
        self.check("reqContractDetails AAPL", ok and conId == 265598 and details[0].minTick == 0.01,
                   f"conId {conId}")
        app.reqContractDetails(12, stock("NOPE"))
        ok = app.wait(lambda: any(r == 12 and c == 200 for r, c, _ in app.errors()))
        self.check("unknown symbol gets error 200", ok, str([e for e in app.errors() if e[0] == 12]))

    def historical_bars(self) -> None:
        app = self.app
        app.reqHistoricalData(21, stock("AAPL"), "", "1 D", "1 min", "TRADES", 1, 1, False, [])
        ok = app.wait(lambda: any(a[0] == 21 for a in app.seen("historicalDataEnd")))
        bars = [a[1] for a in app.seen("historicalData") if a[0] == 21]
        first = bars[0] if bars else None
        today = self.frame[self.frame["datetime"].str.startswith("2024-01-04T14:30")]
        lots = round(int(today["volume"].iloc[0]) / 100)
        self.check("reqHistoricalData 1 D of 1 min bars", ok and len(bars) >= 31 and first is not None
                   and first.date.startswith("20240104 09:30:00"), f"{len(bars)} bars, first {first}")
        self.check("bar volume is an integer in round lots at 157", first is not None
                   and isinstance(first.volume, int) and first.volume == lots,
                   f"volume {getattr(first, 'volume', None)!r}, file {int(today['volume'].iloc[0])} shares")

    def market_order(self) -> None:
        app = self.app
        orderId = app.take_id()
        app.placeOrder(orderId, stock("AAPL"), order("BUY", 10, "MKT"))
        ok = app.wait(lambda: "Filled" in self.statuses(orderId) and bool(app.seen("commissionReport")))
        execs = [a[2] for a in app.seen("execDetails") if a[2].orderId == orderId]
        reports = [a[0] for a in app.seen("commissionReport")]
        commission = reports[0].commission if reports else None
        self.check("market order: openOrder, Filled, execDetails, commissionReport",
                   ok and len(execs) == 1 and execs[0].shares == 10 and commission == 1.0,
                   f"statuses {self.statuses(orderId)}, commission {commission}")
        self.entry_id = orderId

    def bracket(self) -> None:
        app = self.app
        parent, profit, stop = app.take_id(), app.take_id(), app.take_id()
        app.placeOrder(parent, stock("AAPL"), order("BUY", 10, "LMT", 250.0, transmit=False))
        app.placeOrder(profit, stock("AAPL"), order("SELL", 10, "LMT", 250.0, transmit=False, parentId=parent))
        app.placeOrder(stop, stock("AAPL"), order("SELL", 10, "STP", 100.0, parentId=parent))
        ok = app.wait(lambda: "Filled" in self.statuses(parent) and self.statuses(profit)[-1:] == ["Submitted"]
                      and self.statuses(stop)[-1:] == ["Submitted"])
        self.check("bracket: parent fills, both children working", ok,
                   f"parent {self.statuses(parent)}, profit {self.statuses(profit)}, stop {self.statuses(stop)}")
        app.cancelOrder(profit)
        ok = app.wait(lambda: "Cancelled" in self.statuses(profit)
                      and any(r == profit and c == 202 for r, c, _ in app.errors()))
        self.check("cancel a working order: Cancelled + 202", ok, f"profit {self.statuses(profit)}")
        app.cancelOrder(9999)
        ok = app.wait(lambda: any(r == 9999 and c == 10147 for r, c, _ in app.errors()))
        self.check("cancel of an unknown order id: 10147", ok, str([e for e in app.errors() if e[0] == 9999]))
        self.stop_id = stop

    def reports(self) -> None:
        app = self.app
        app.reqExecutions(31, ExecutionFilter())
        ok = app.wait(lambda: (31,) in app.seen("execDetailsEnd"))
        execs = [a[2] for a in app.seen("execDetails") if a[0] == 31]
        self.check("reqExecutions: both fills, then execDetailsEnd", ok and len(execs) == 2,
                   f"{[(e.orderId, e.shares, e.price) for e in execs]}")
        app.reqPositions()
        ok = app.wait(lambda: bool(app.seen("positionEnd")))
        positions = [(a[1], a[2]) for a in app.seen("position")]
        self.check("reqPositions: AAPL 20", ok and ("AAPL", 20.0) in positions, str(positions))
        before = len(app.seen("openOrder"))
        app.reqOpenOrders()
        ok = app.wait(lambda: bool(app.seen("openOrderEnd")))
        working = [(a[0], a[3]) for a in app.seen("openOrder")[before:]]
        self.check("reqOpenOrders: only the bracket stop is working", ok and working == [(self.stop_id, "Submitted")],
                   str(working))
        app.reqCompletedOrders(False)
        ok = app.wait(lambda: bool(app.seen("completedOrdersEnd")))
        done = sorted((a[2], a[3]) for a in app.seen("completedOrder"))
        self.check("reqCompletedOrders: 2 filled, 1 cancelled", ok and [s for s, _ in done] == [
            "Cancelled", "Filled", "Filled"], str(done))
        app.reqAccountSummary(41, "All", "NetLiquidation,TotalCashValue,BuyingPower")
        ok = app.wait(lambda: (41,) in app.seen("accountSummaryEnd"))
        tags = {a[2]: (a[3], a[4]) for a in app.seen("accountSummary") if a[0] == 41}
        self.check("reqAccountSummary", ok and tags.get("NetLiquidation", ("", ""))[1] == "USD"
                   and set(tags) == {"NetLiquidation", "TotalCashValue", "BuyingPower"}, str(tags))

    def errors_162(self) -> None:
        app = self.app
        self.control("pacing-hist 1 AAPL")
        app.reqHistoricalData(51, stock("AAPL"), "", "1800 S", "1 min", "TRADES", 1, 1, False, [])
        ok = app.wait(lambda: any(r == 51 and c == 162 for r, c, _ in app.errors()))
        text = next((t for r, c, t in app.errors() if r == 51), "")
        self.check("162 pacing violation", ok and text.endswith("Historical data request pacing violation"), text)
        self.control("no-permissions AAPL")
        app.reqHistoricalData(52, stock("AAPL"), "", "3600 S", "1 min", "TRADES", 1, 1, False, [])
        ok = app.wait(lambda: any(r == 52 and c == 162 for r, c, _ in app.errors()))
        text = next((t for r, c, t in app.errors() if r == 52), "")
        self.check("162 no market data permissions", ok and "No market data permissions for ISLAND STK" in text,
                   text)
        self.control("grant-permissions")

    def connectivity(self) -> None:
        app = self.app
        self.control("reset 0.5")
        ok = app.wait(lambda: 1102 in [c for _, c, _ in app.errors()])
        codes = [c for _, c, _ in app.errors() if c in {1100, 1102}]
        self.check("1100 then 1102 with the socket kept open", ok and codes == [1100, 1102] and app.isConnected(),
                   str(codes))

    def duplicate_client_id(self) -> None:
        second = connect(self.port, 1)
        ok = second.wait(lambda: any(c == 326 for _, c, _ in second.errors()))
        closed = second.wait(lambda: bool(second.seen("connectionClosed")) or not second.isConnected(), 5)
        self.check("a second clientId 1 gets 326 and is closed", ok and closed and self.app.isConnected(),
                   str(second.errors()))
        second.disconnect()


def run_checks(served: Served) -> list[Result]:
    app = connect(served.port, 1)
    checks = Checks(app, served.port, served.control, served.frame)
    try:
        for step in (checks.handshake, checks.contract_details, checks.historical_bars, checks.market_order,
                     checks.bracket, checks.reports, checks.errors_162, checks.connectivity,
                     checks.duplicate_client_id):
            try:
                step()
            except Exception as exc:  # a broken step is a failed check, and the others still run
                checks.check(step.__name__, False, f"raised {exc!r}")
    finally:
        app.disconnect()
    return checks.results


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    with serve_ibsim() as served:
        results = run_checks(served)
    return report("ibapi", results)


if __name__ == "__main__":
    sys.exit(main())
