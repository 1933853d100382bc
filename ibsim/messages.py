"""Server → client TWS messages at server version 157, as field lists, and the IB texts the server sends.

Field orders follow ``tws_protocol.md`` §1.6. Each builder returns a list ready for
:func:`ibsim.codec.encodeFields`; ints are written as integers and bools as ``0``/``1``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ibsim.codec import Field

logger = logging.getLogger(__name__)

SERVER_VERSION = 157
UNSET_DOUBLE_TEXT = "1.7976931348623157E308"

# Incoming (client → server) message ids.
IN_NAMES: dict[int, str] = {
    1: "reqMktData",
    2: "cancelMktData",
    3: "placeOrder",
    4: "cancelOrder",
    5: "reqOpenOrders",
    6: "reqAccountUpdates",
    7: "reqExecutions",
    8: "reqIds",
    9: "reqContractDetails",
    15: "reqAutoOpenOrders",
    16: "reqAllOpenOrders",
    17: "reqManagedAccts",
    20: "reqHistoricalData",
    25: "cancelHistoricalData",
    49: "reqCurrentTime",
    58: "reqGlobalCancel",
    59: "reqMarketDataType",
    61: "reqPositions",
    62: "reqAccountSummary",
    63: "cancelAccountSummary",
    64: "cancelPositions",
    71: "startApi",
    76: "reqAccountUpdatesMulti",
    77: "cancelAccountUpdatesMulti",
    99: "reqCompletedOrders",
}

# IB error / notice texts (tws_protocol.md §3.2).
TEXT = {
    162: "Historical Market Data Service error message:",
    200: "No security definition has been found for the request",
    201: "Order rejected - reason:",
    202: "Order Canceled - reason:",
    326: "Unable to connect as the client id is already in use. Retry with a unique client id.",
    354: "Requested market data is not subscribed.",
    1100: "Connectivity between IB and Trader Workstation has been lost.",
    1101: "Connectivity between IB and TWS has been restored- data lost.",
    1102: "Connectivity between IB and Trader Workstation has been restored - data maintained.",
    2103: "Market data farm connection is broken:usfarm",
    2104: "Market data farm connection is OK:usfarm",
    2105: "HMDS data farm connection is broken:ushmds",
    2106: "HMDS data farm connection is OK:ushmds",
    2157: "Sec-def data farm connection is broken:secdefnj",
    2158: "Sec-def data farm connection is OK:secdefnj",
}
PACING_TEXT = "Historical Market Data Service error message:Historical data request pacing violation"
FARM_OK = (2104, 2106, 2158)
FARM_BROKEN = (2103, 2105, 2157)


@dataclass(frozen=True)
class StockContract:
    """A US stock as the simulator lists it (SMART-routed, USD)."""

    conId: int
    symbol: str
    primaryExchange: str = "NASDAQ"
    exchange: str = "SMART"
    currency: str = "USD"
    longName: str = ""
    minTick: float = 0.01

    def positionFields(self) -> list[Field]:
        """Return the 11 contract fields of a position message (exchange, no primaryExchange)."""
        return [self.conId, self.symbol, "STK", "", 0.0, "", "", self.exchange, self.currency,
                self.symbol, "NMS"]

    def c12(self, exchange: str | None = None) -> list[Field]:
        """Return the 11 contract fields of openOrder/execDetails (conId … tradingClass, no primary)."""
        return [self.conId, self.symbol, "STK", "", 0.0, "", "", exchange or self.exchange,
                self.currency, self.symbol, "NMS"]


def error(reqId: int, code: int, text: str | None = None) -> list[Field]:
    """Build ``4`` errMsg: ``4, 2, reqId, code, text`` plus an empty advancedOrderRejectJson."""
    return [4, 2, reqId, code, TEXT.get(code, "") if text is None else text, ""]


def managedAccounts(accounts: list[str]) -> list[Field]:
    """Build ``15`` managedAccounts (exactly 3 fields)."""
    return [15, 1, ",".join(accounts)]


def nextValidId(orderId: int) -> list[Field]:
    """Build ``9`` nextValidId (exactly 3 fields)."""
    return [9, 1, orderId]


def currentTime(epochSeconds: int) -> list[Field]:
    """Build ``49`` currentTime."""
    return [49, 1, epochSeconds]


def position(account: str, contract: StockContract, qty: float, avgCost: float) -> list[Field]:
    """Build ``61`` position (16 fields)."""
    return [61, 3, account, *contract.positionFields(), qty, avgCost]


def positionEnd() -> list[Field]:
    """Build ``62`` positionEnd."""
    return [62, 1]


def accountValue(key: str, value: str, currency: str, account: str) -> list[Field]:
    """Build ``6`` accountValue."""
    return [6, 2, key, value, currency, account]


def portfolioValue(contract: StockContract, qty: float, marketPrice: float, marketValue: float,
                   avgCost: float, unrealizedPNL: float, realizedPNL: float, account: str) -> list[Field]:
    """Build ``7`` portfolioValue (20 fields)."""
    return [7, 8, contract.conId, contract.symbol, "STK", "", 0.0, "", "", contract.primaryExchange,
            contract.currency, contract.symbol, "NMS", qty, marketPrice, marketValue, avgCost,
            unrealizedPNL, realizedPNL, account]


def accountUpdateTime(hhmm: str) -> list[Field]:
    """Build ``8`` accountUpdateTime (``HH:MM``)."""
    return [8, 1, hhmm]


def accountDownloadEnd(account: str) -> list[Field]:
    """Build ``54`` accountDownloadEnd."""
    return [54, 1, account]


def accountUpdateMulti(reqId: int, account: str, key: str, value: str, currency: str) -> list[Field]:
    """Build ``73`` accountUpdateMulti (modelCode empty)."""
    return [73, 1, reqId, account, "", key, value, currency]


def accountUpdateMultiEnd(reqId: int) -> list[Field]:
    """Build ``74`` accountUpdateMultiEnd."""
    return [74, 1, reqId]


def accountSummary(reqId: int, account: str, tag: str, value: str, currency: str) -> list[Field]:
    """Build ``63`` accountSummary."""
    return [63, 1, reqId, account, tag, value, currency]


def accountSummaryEnd(reqId: int) -> list[Field]:
    """Build ``64`` accountSummaryEnd."""
    return [64, 1, reqId]


def openOrderEnd() -> list[Field]:
    """Build ``53`` openOrderEnd."""
    return [53, 1]


def completedOrdersEnd() -> list[Field]:
    """Build ``102`` completedOrdersEnd (the id alone)."""
    return [102]


def execDetailsEnd(reqId: int) -> list[Field]:
    """Build ``55`` execDetailsEnd."""
    return [55, 1, reqId]


def contractDataEnd(reqId: int) -> list[Field]:
    """Build ``52`` contractDataEnd."""
    return [52, 1, reqId]


_TRADING_HOURS = "0400-2000"  # only the shape matters to the clients


def contractData(reqId: int, c: StockContract, exchange: str = "SMART") -> list[Field]:
    """Build ``10`` contractData in the pre-164 layout (version field and mdSizeMultiplier)."""
    return [
        10, 8, reqId, c.symbol, "STK", "", 0.0, "", exchange, c.currency, c.symbol, "NMS", "NMS",
        c.conId, c.minTick, 1, "", "ACTIVETIM,AD,ADJUST,ALERT,ALLOC,AVGCOST,BASKET,GAT,GTC,LIT,LMT,MKT,"
        "MOC,MOO,OCA,REL,STP,STPLMT,TRAIL,WHATIF", f"SMART,{c.primaryExchange}", 1, 0, c.longName or c.symbol,
        c.primaryExchange, "", "", "", "", "US/Eastern", _TRADING_HOURS, "0930-1600", "", "", 0,
        0, "", "", "26", "", "COMMON",
    ]


@dataclass(frozen=True)
class OrderFields:
    """The subset of an order's fields that the simulator echoes back in ``openOrder``."""

    orderId: int
    clientId: int
    permId: int
    action: str
    totalQuantity: float
    orderType: str
    lmtPrice: float | None
    auxPrice: float | None
    tif: str
    ocaGroup: str
    ocaType: int
    account: str
    orderRef: str
    parentId: int
    outsideRth: bool
    transmit: bool = True


def openOrder(o: OrderFields, c: StockContract, status: str) -> list[Field]:
    """Build ``5`` openOrder at server version 157: exactly 120 fields for a plain order."""
    head: list[Field] = [
        5, o.orderId, *c.c12(), o.action, o.totalQuantity, o.orderType,
        o.lmtPrice, o.auxPrice, o.tif, o.ocaGroup, o.account, "O", 0, o.orderRef, o.clientId,
        o.permId, o.outsideRth, 0, 0.0, "", "", "", "", "", "",  # hidden … faProfile
    ]
    middle: list[Field] = [
        "", "", "", "", "", 0, "", 0,  # modelCode goodTillDate rule80A percentOffset settlingFirm
        0, "", "", "", "", "", "", 0, 0, 0, "",  # auctionStrategy … minQty
        o.ocaType, 0, 0, "", o.parentId, 0, "", 0, "", "",  # ocaType … deltaNeutralAuxPrice
        0, 0, "", "", "", "", "",  # continuousUpdate … comboLegsDescrip
        0, 0, 0,  # numLegs numOrderComboLegs numSmartComboRoutingParams
        "", "", "",  # scaleInitLevelSize scaleSubsLevelSize scalePriceIncrement
        "", 0, "", "", 0, 0, "",  # hedgeType optOutSmartRouting clearing… notHeld dncPresent algoStrategy
    ]
    tail: list[Field] = [
        0, 0, status,  # solicited whatIf status
        "", "", "", "", "", "", "", "", "", "", "", "", "", "",  # margins, commissions, warningText
        0, 0,  # randomizeSize randomizePrice
        0,  # numConditions
        "", "", "", "", "", "", "", 0, "", "", "", "", 0, 0, "", 0,  # adjustedOrderType … usePriceMgmtAlgo
    ]
    return head + middle + tail


def orderStatus(orderId: int, status: str, filled: float, remaining: float, avgFillPrice: float,
                permId: int, parentId: int, lastFillPrice: float, clientId: int) -> list[Field]:
    """Build ``3`` orderStatus (no version field)."""
    return [3, orderId, status, filled, remaining, avgFillPrice, permId, parentId, lastFillPrice,
            clientId, "", 0.0]


@dataclass(frozen=True)
class ExecFields:
    """One execution as ``execDetails`` carries it."""

    orderId: int
    clientId: int
    permId: int
    execId: str
    time: str
    account: str
    side: str
    shares: float
    price: float
    cumQty: float
    avgPrice: float
    orderRef: str
    exchange: str = "ISLAND"


def execDetails(reqId: int, e: ExecFields, c: StockContract) -> list[Field]:
    """Build ``11`` execDetails: exactly 31 fields (ib_insync unpacks them strictly)."""
    return [11, reqId, e.orderId, *c.c12(exchange=e.exchange), e.execId, e.time, e.account,
            e.exchange, e.side, e.shares, e.price, e.permId, e.clientId, 0, e.cumQty, e.avgPrice,
            e.orderRef, "", "", "", 1]


def commissionReport(execId: str, commission: float, realizedPNL: float | None) -> list[Field]:
    """Build ``59`` commissionReport (8 fields); an opening fill has an unset realized P&L."""
    return [59, 1, execId, commission, "USD",
            UNSET_DOUBLE_TEXT if realizedPNL is None else realizedPNL, UNSET_DOUBLE_TEXT, ""]


def historicalData(reqId: int, start: str, end: str, bars: list[list[Field]]) -> list[Field]:
    """Build ``17`` historicalData: each bar is (date, o, h, l, c, volume, average, barCount)."""
    out: list[Field] = [17, reqId, start, end, len(bars)]
    for bar in bars:
        out.extend(bar)
    return out
