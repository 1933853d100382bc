"""Server → client TWS messages as field lists, at every server version ibsim speaks, and IB's texts.

Messages whose layout never changes between server versions 157 and 178 are module functions. Messages whose
fields or formats depend on the negotiated version are methods of :class:`Wire`, bound to one session's
version. The gates are IB's own ``MIN_SERVER_VER_*`` numbers, read from the decoders of IB's ``ibapi``
(9.81 up to 157; 10.x for 158–178), ib_async 2.1 and ib_insync 0.9.86, and the field values mirror real
gateway frames (the v176 recording in ``shared/docs/ib`` and nautilus_trader's captured responses): a
stock order's ``openOrder`` carries ``right='?'``, ``deltaNeutralOrderType='None'`` and IB's unset
sentinels exactly where a gateway puts them. Each builder returns a list ready for
:func:`ibsim.codec.encodeFields`; ints are written as integers and bools as ``0``/``1``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ibsim.codec import Field, decimalText

logger = logging.getLogger(__name__)

UNSET_DOUBLE_TEXT = "1.7976931348623157E308"
UNSET_INTEGER_TEXT = "2147483647"  # what a gateway writes for an unset int (formatField writes '' for it)

# IB's MIN_SERVER_VER_* gates that change what ibsim sends (server_versions.py of IB's client).
DURATION = 158  # openOrder + duration (ib_async reads it from 159, IB's own decoder from 158)
POST_TO_ATS = 160  # openOrder + postToAts
AUTO_CANCEL_PARENT = 162  # openOrder + autoCancelParent
FRACTIONAL_SIZE_SUPPORT = 163  # sizes are Decimal text ('100', not '100.0'); contractData + sizeMinTick
SIZE_RULES = 164  # contractData: no version field, no mdSizeMultiplier; + minSize, sizeIncrement, suggested…
ADVANCED_ORDER_REJECT = 166  # errMsg + advancedOrderRejectJson (required: a 5-field error is dropped)
PEGBEST_PEGMID_OFFSETS = 170  # openOrder / completedOrder + 5 peg fields
HMDS_MARKET_DATA_IN_SHARES = 175  # historical volume of US stocks in shares (in round lots of 100 before)
FA_PROFILE_DESUPPORT = 177  # openOrder / completedOrder without faProfile
PENDING_PRICE_REVISION = 178  # execDetails + pendingPriceRevision

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
NO_PERMISSIONS_TEXT = "Historical Market Data Service error message:No market data permissions for {exchange} STK"
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

    @property
    def tradingClass(self) -> str:
        """Return IB's trading class: ``NMS`` for NASDAQ listings, the symbol for the others (``SPY``)."""
        return "NMS" if self.primaryExchange == "NASDAQ" else self.symbol

    def fields(self, exchange: str | None = None) -> list[Field]:
        """Return conId … tradingClass as position and execDetails carry them (strike ``0.0``, right '')."""
        return [self.conId, self.symbol, "STK", "", 0.0, "", "", exchange or self.exchange, self.currency,
                self.symbol, self.tradingClass]

    def orderFields(self) -> list[Field]:
        """Return conId … tradingClass as openOrder / completedOrder carry them (strike ``0``, right ``?``)."""
        return [self.conId, self.symbol, "STK", "", "0", "?", "", self.exchange, self.currency, self.symbol,
                self.tradingClass]


def managedAccounts(accounts: list[str]) -> list[Field]:
    """Build ``15`` managedAccounts (exactly 3 fields)."""
    return [15, 1, ",".join(accounts)]


def nextValidId(orderId: int) -> list[Field]:
    """Build ``9`` nextValidId (exactly 3 fields)."""
    return [9, 1, orderId]


def currentTime(epochSeconds: int) -> list[Field]:
    """Build ``49`` currentTime."""
    return [49, 1, epochSeconds]


def positionEnd() -> list[Field]:
    """Build ``62`` positionEnd."""
    return [62, 1]


def accountValue(key: str, value: str, currency: str, account: str) -> list[Field]:
    """Build ``6`` accountValue."""
    return [6, 2, key, value, currency, account]


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


def commissionReport(execId: str, commission: float, realizedPNL: float | None,
                     currency: str = "USD") -> list[Field]:
    """Build ``59`` commissionReport (8 fields); an opening fill has an unset realized P&L."""
    return [59, 1, execId, commission, currency,
            UNSET_DOUBLE_TEXT if realizedPNL is None else realizedPNL, UNSET_DOUBLE_TEXT, ""]


_TRADING_HOURS = "0400-2000"  # only the shape matters to the clients
_ORDER_TYPES = ("ACTIVETIM,AD,ADJUST,ALERT,ALLOC,AVGCOST,BASKET,GAT,GTC,LIT,LMT,MKT,MOC,MOO,OCA,REL,STP,STPLMT,"
                "TRAIL,WHATIF")


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
    parentPermId: int | None = None


@dataclass(frozen=True)
class Completion:
    """How an order ended, as ``completedOrder`` reports it."""

    status: str
    filled: float
    time: str
    text: str


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


@dataclass(frozen=True)
class Bar:
    """One historical bar before formatting: volume in shares."""

    date: str
    open: float
    high: float
    low: float
    close: float
    volume: float
    average: float
    barCount: int


@dataclass(frozen=True)
class Wire:
    """The messages whose layout depends on the server version, built for one negotiated ``version``.

    Parameters
    ----------
    version
        The server version announced to the client (157–178).
    """

    version: int

    def size(self, quantity: float) -> Field:
        """Format a share quantity: a double below 163, IB's Decimal text (``'100'``) from 163."""
        return decimalText(quantity) if self.version >= FRACTIONAL_SIZE_SUPPORT else float(quantity)

    def error(self, reqId: int, code: int, text: str | None = None) -> list[Field]:
        """Build ``4`` errMsg: ``4, 2, reqId, code, text``, plus advancedOrderRejectJson from 166."""
        fields: list[Field] = [4, 2, reqId, code, TEXT.get(code, "") if text is None else text]
        if self.version >= ADVANCED_ORDER_REJECT:
            fields.append("")
        return fields

    def position(self, account: str, contract: StockContract, qty: float, avgCost: float) -> list[Field]:
        """Build ``61`` position (16 fields)."""
        return [61, 3, account, *contract.fields(), self.size(qty), avgCost]

    def portfolioValue(self, contract: StockContract, qty: float, marketPrice: float, marketValue: float,
                       avgCost: float, unrealizedPNL: float, realizedPNL: float, account: str) -> list[Field]:
        """Build ``7`` portfolioValue (20 fields; primaryExchange in the exchange's place)."""
        return [7, 8, contract.conId, contract.symbol, "STK", "", 0.0, "", "", contract.primaryExchange,
                contract.currency, contract.symbol, contract.tradingClass, self.size(qty), marketPrice,
                marketValue, avgCost, unrealizedPNL, realizedPNL, account]

    def orderStatus(self, orderId: int, status: str, filled: float, remaining: float, avgFillPrice: float,
                    permId: int, parentId: int, lastFillPrice: float, clientId: int) -> list[Field]:
        """Build ``3`` orderStatus (no version field; mktCapPrice ``0`` as gateways send it)."""
        return [3, orderId, status, self.size(filled), self.size(remaining), avgFillPrice, permId, parentId,
                lastFillPrice, clientId, "", 0]

    def contractData(self, reqId: int, c: StockContract, exchange: str = "SMART") -> list[Field]:
        """Build ``10`` contractData: a version field and mdSizeMultiplier below 164, size rules from 164."""
        legacy = self.version < SIZE_RULES
        head: list[Field] = [10, 8] if legacy else [10]
        fields: list[Field] = [
            *head, reqId, c.symbol, "STK", "", "0", "", exchange, c.currency, c.symbol, c.tradingClass,
            c.tradingClass, c.conId, c.minTick, *([1] if legacy else []), "", _ORDER_TYPES,
            f"SMART,{c.primaryExchange}", 1, 0, c.longName or c.symbol, c.primaryExchange, "", "", "", "",
            "US/Eastern", _TRADING_HOURS, "0930-1600", "", "", 0, 0, "", "", "26", "", "COMMON",
        ]
        if self.version == FRACTIONAL_SIZE_SUPPORT:
            fields.append("0.0001")  # sizeMinTick, at 163 only
        if not legacy:
            fields += ["1", "1", "100"]  # minSize, sizeIncrement, suggestedSizeIncrement
        return fields

    def historicalData(self, reqId: int, start: str, end: str, bars: list[Bar]) -> list[Field]:
        """Build ``17`` historicalData (no version field).

        Volume is in round lots of 100 shares below 175 (HMDS_MARKET_DATA_IN_SHARES) and in shares from
        175; it is an integer below 163 (IB's 9.81 client decodes it with ``int()``) and Decimal text from
        163, as is the average price.
        """
        out: list[Field] = [17, reqId, start, end, len(bars)]
        for b in bars:
            volume = b.volume if self.version >= HMDS_MARKET_DATA_IN_SHARES else round(b.volume / 100)
            if self.version >= FRACTIONAL_SIZE_SUPPORT:
                size: Field = decimalText(volume)
                average: Field = decimalText(round(b.average, 8))
            else:
                size, average = int(volume), float(b.average)
            out += [b.date, b.open, b.high, b.low, b.close, size, average, b.barCount]
        return out

    def execDetails(self, reqId: int, e: ExecFields, c: StockContract) -> list[Field]:
        """Build ``11`` execDetails: 31 fields (ib_insync unpacks them strictly), + pendingPriceRevision at 178."""
        fields: list[Field] = [
            11, reqId, e.orderId, *c.fields(exchange=e.exchange), e.execId, e.time, e.account, e.exchange,
            e.side, self.size(e.shares), e.price, e.permId, e.clientId, 0, self.size(e.cumQty), e.avgPrice,
            e.orderRef, "", "", "", 1,
        ]
        if self.version >= PENDING_PRICE_REVISION:
            fields.append(0)
        return fields

    def _fa(self) -> list[Field]:
        # faGroup, faMethod, faPercentage (+ faProfile below 177)
        return ["", "", ""] if self.version >= FA_PROFILE_DESUPPORT else ["", "", "", ""]

    def _pegBestPegMid(self) -> list[Field]:
        # minTradeQty, minCompeteSize, competeAgainstBestOffset, midOffsetAtWhole, midOffsetAtHalf
        return ["", "", "", "", ""] if self.version >= PEGBEST_PEGMID_OFFSETS else []

    def openOrder(self, o: OrderFields, c: StockContract, status: str) -> list[Field]:
        """Build ``5`` openOrder as a gateway sends a stock order (136 fields at 176 with the gates below).

        128 fields at 157; + duration (158), postToAts (160), autoCancelParent (162), 5 peg fields (170);
        faProfile dropped at 177. ``deltaNeutralOrderType`` is ``'None'``, so 8 delta-neutral fields follow it.
        """
        v = self.version
        fields: list[Field] = [
            5, o.orderId, *c.orderFields(), o.action, self.size(o.totalQuantity), o.orderType,
            o.lmtPrice or 0.0, o.auxPrice or 0.0, o.tif, o.ocaGroup, o.account, "", 0, o.orderRef, o.clientId,
            o.permId, o.outsideRth, 0, "0", "", f"{o.permId}.0/{o.account}/100", *self._fa(),
            "", "", "", "", "", 0, "", -1, 0,  # modelCode … auctionStrategy
            "", "", "", "", "", UNSET_INTEGER_TEXT, 0, 0, 0, "",  # startingPrice … minQty
            o.ocaType or 3, 0, 0, "", o.parentId, 0,  # ocaType … triggerMethod
            "", 0, "None", "", 0, "", "", "", "?", 0, 0, "",  # volatility … 8 delta-neutral fields
            0, 0, "", "", "", "", "", 0, 0, 0,  # continuousUpdate … numSmartComboRoutingParams
            UNSET_INTEGER_TEXT, UNSET_INTEGER_TEXT, "", "", 0, "", "IB", 0, 0, "",  # scale … algoStrategy
            0, 0, status, *[UNSET_DOUBLE_TEXT] * 9, "", "", "", "", "",  # solicited … warningText
            0, 0, 0, "None", *[UNSET_DOUBLE_TEXT] * 6, 0,  # randomize … adjustableTrailingUnit
            "", "", "", "0", 1, 0, 0, 0,  # softDollarTier … usePriceMgmtAlgo
        ]
        if v >= DURATION:
            fields.append("")
        if v >= POST_TO_ATS:
            fields.append("")
        if v >= AUTO_CANCEL_PARENT:
            fields.append(0)
        return fields + self._pegBestPegMid()

    def completedOrder(self, o: OrderFields, c: StockContract, done: Completion) -> list[Field]:
        """Build ``101`` completedOrder (keyed by permId; no orderId or clientId).

        Same gates as openOrder for faProfile (177) and the 5 peg fields (170); 4 delta-neutral fields.
        """
        fields: list[Field] = [
            101, *c.orderFields(), o.action, self.size(o.totalQuantity), o.orderType, o.lmtPrice or 0.0,
            o.auxPrice or 0.0, o.tif, o.ocaGroup, o.account, "", 0, o.orderRef, o.permId, o.outsideRth, 0,
            "0", "", *self._fa(),
            "", "", "", "", "", 0, "", -1,  # modelCode … exemptCode
            "", "", "", "", "", UNSET_INTEGER_TEXT, 0, 0, "", o.ocaType or 3, 0,  # startingPrice … trigger
            "", 0, "None", "", 0, 0, 0, "",  # volatility … 4 delta-neutral fields
            0, 0, "", "", "", 0, 0, 0,  # continuousUpdate … numSmartComboRoutingParams
            UNSET_INTEGER_TEXT, UNSET_INTEGER_TEXT, "", "", "", "IB", 0, 0, "",  # scale … algoStrategy
            0, done.status, 0, 0, 0,  # solicited, status, randomizeSize, randomizePrice, numConditions
            UNSET_DOUBLE_TEXT, UNSET_DOUBLE_TEXT, "0", 1, 0,  # trailStopPrice … isOmsContainer
            "", self.size(done.filled), UNSET_INTEGER_TEXT, 0, "", 0, 0,  # autoCancelDate … routeMarketable
            o.parentPermId or "", done.time, done.text,
        ]
        return fields + self._pegBestPegMid()
