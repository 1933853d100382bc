"""Simulated account: orders and their lifecycle, fills from the replayed tape, commissions, positions, cash.

The broker is pure state: it never touches a socket. Every change is queued as an :class:`Event` that the
gateway drains and turns into TWS messages for the right client.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from ibsim.market import EXCHANGE_TZ, BarSeries, Market, Tick, fromNs, toNs
from ibsim.messages import Completion, ExecFields, OrderFields, StockContract

logger = logging.getLogger(__name__)

_ZONE = ZoneInfo(EXCHANGE_TZ)

WORKING = frozenset({"PreSubmitted", "Submitted"})
DONE = frozenset({"Filled", "Cancelled", "Inactive"})
HELD = "Held"  # transmit=False: stored, not shown to the exchange (internal, never sent)
SUPPORTED_TYPES = frozenset({"MKT", "LMT", "STP", "STP LMT"})
RACE_CODES = frozenset({10148, 161})  # IB's answers to a cancel that arrives after the order filled

_KNOWN = {
    "AAPL": (265598, "NASDAQ"), "MSFT": (272093, "NASDAQ"), "SPY": (756733, "ARCA"),
    "AMZN": (3691937, "NASDAQ"), "NVDA": (4815747, "NASDAQ"), "GOOGL": (208813719, "NASDAQ"),
    "META": (107113386, "NASDAQ"), "TSLA": (76792991, "NASDAQ"), "QQQ": (320227571, "NASDAQ"),
    "IWM": (9579970, "ARCA"), "JPM": (1520593, "NYSE"), "XOM": (13977, "NYSE"),
}


def contractFor(symbol: str) -> StockContract:
    """Return the simulator's stock contract for ``symbol`` (real conIds for a few, else a stable hash)."""
    symbol = symbol.upper()
    conId, primary = _KNOWN.get(symbol, (100_000 + zlib.crc32(symbol.encode()) % 900_000_000, "NASDAQ"))
    return StockContract(conId=conId, symbol=symbol, primaryExchange=primary)


@dataclass(frozen=True)
class CommissionSchedule:
    """IBKR Fixed pricing for US stocks: per share, with a per-order minimum and a 1 % cap."""

    perShare: float = 0.005
    minimum: float = 1.0
    maxPctOfValue: float = 0.01

    def total(self, shares: float, value: float) -> float:
        """Return the commission for an order's cumulative ``shares`` traded for ``value`` dollars."""
        if shares <= 0:
            return 0.0
        return round(min(max(self.perShare * shares, self.minimum), self.maxPctOfValue * value), 6)


@dataclass
class SimOrder:
    """One order as the simulator holds it (IB field names)."""

    clientId: int
    orderId: int
    permId: int
    contract: StockContract
    action: str
    totalQuantity: float
    orderType: str
    lmtPrice: float | None
    auxPrice: float | None
    tif: str = "DAY"
    ocaGroup: str = ""
    ocaType: int = 0
    account: str = ""
    orderRef: str = ""
    parentId: int = 0
    transmit: bool = True
    outsideRth: bool = False
    status: str = HELD
    filled: float = 0.0
    avgFillPrice: float = 0.0
    lastFillPrice: float = 0.0
    commission: float = 0.0
    fillValue: float = 0.0
    examFromNs: int = 0
    lastSeen: float | None = None
    stopTriggered: bool = False
    placedAt: datetime | None = None
    completedAt: datetime | None = None
    completedText: str = ""

    @property
    def key(self) -> tuple[int, int]:
        """Return (clientId, orderId), the key IB clients match orders by."""
        return (self.clientId, self.orderId)

    @property
    def symbol(self) -> str:
        """Return the order's ticker."""
        return self.contract.symbol

    @property
    def remaining(self) -> float:
        """Return the quantity still to fill."""
        return max(self.totalQuantity - self.filled, 0.0)

    @property
    def sign(self) -> int:
        """Return +1 for BUY, -1 for SELL."""
        return 1 if self.action == "BUY" else -1

    def expiresAt(self) -> datetime | None:
        """Return when a DAY order expires: the close (16:00, or 20:00 with outsideRth) of its trading day.

        An order placed after that day's close waits for the next weekday's session. GTC orders (and orders
        not yet placed) never expire.
        """
        if self.tif.upper() != "DAY" or self.placedAt is None:
            return None
        local = self.placedAt.astimezone(_ZONE)
        close = local.replace(hour=20 if self.outsideRth else 16, minute=0, second=0, microsecond=0)
        while local >= close or close.weekday() >= 5:
            close = (close + timedelta(days=1)).replace(hour=close.hour)
        return close

    def completion(self) -> Completion:
        """Return how the order ended, for ``completedOrder``."""
        when = (self.completedAt or self.placedAt or fromNs(0)).astimezone(_ZONE)
        return Completion(self.status, self.filled, f"{when:%Y%m%d %H:%M:%S} {EXCHANGE_TZ}", self.completedText)

    def fields(self, parentPermId: int | None = None) -> OrderFields:
        """Return the fields that ``openOrder`` and ``completedOrder`` echo back."""
        return OrderFields(
            orderId=self.orderId, clientId=self.clientId, permId=self.permId, action=self.action,
            totalQuantity=self.totalQuantity, orderType=self.orderType, lmtPrice=self.lmtPrice,
            auxPrice=self.auxPrice, tif=self.tif, ocaGroup=self.ocaGroup, ocaType=self.ocaType,
            account=self.account, orderRef=self.orderRef, parentId=self.parentId, outsideRth=self.outsideRth,
            transmit=self.transmit, parentPermId=parentPermId,
        )


@dataclass(frozen=True)
class Execution:
    """One fill with its commission report."""

    execId: str
    order: tuple[int, int]
    permId: int
    contract: StockContract
    side: str
    shares: float
    price: float
    time: datetime
    cumQty: float
    avgPrice: float
    orderRef: str
    commission: float
    realizedPNL: float | None
    account: str

    def fields(self) -> ExecFields:
        """Return the fields of ``execDetails``."""
        local = self.time.astimezone(_ZONE)
        return ExecFields(
            orderId=self.order[1], clientId=self.order[0], permId=self.permId, execId=self.execId,
            time=f"{local:%Y%m%d %H:%M:%S} {EXCHANGE_TZ}", account=self.account, side=self.side,
            shares=self.shares, price=self.price, cumQty=self.cumQty, avgPrice=self.avgPrice,
            orderRef=self.orderRef,
        )


@dataclass
class Position:
    """A holding: signed quantity, average cost per share (commissions included), realized P&L."""

    contract: StockContract
    qty: float = 0.0
    avgCost: float = 0.0
    realizedPNL: float = 0.0


@dataclass(frozen=True)
class OrderSnap:
    """An order's status numbers at the moment an event was queued."""

    status: str
    filled: float
    remaining: float
    avgFillPrice: float
    lastFillPrice: float

    @classmethod
    def of(cls, order: SimOrder) -> OrderSnap:
        """Capture ``order`` now."""
        return cls(order.status, order.filled, order.remaining, order.avgFillPrice, order.lastFillPrice)


@dataclass(frozen=True)
class Event:
    """Something the gateway must tell clients about.

    ``kind`` is one of ``order`` (openOrder + orderStatus), ``cancelled`` (orderStatus + error 202),
    ``rejected`` (error + Inactive), ``error`` (a plain error for an order id), ``fill`` (openOrder,
    orderStatus, execDetails, commissionReport) and ``account`` (positions and account values changed).
    """

    kind: str
    order: SimOrder | None = None
    execution: Execution | None = None
    code: int = 0
    text: str = ""
    clientId: int = -1
    reqId: int = -1
    snap: OrderSnap | None = None

    @property
    def target(self) -> tuple[int, int]:
        """Return (clientId, reqId) the event is addressed to (the order's, when there is one)."""
        if self.order is not None:
            return self.order.clientId, self.order.orderId
        return self.clientId, self.reqId


@dataclass
class FillPolicy:
    """How orders fill.

    Attributes
    ----------
    slippage
        Dollars per share against the trader on market and stop fills.
    maxFillQty
        Split fills into executions of at most this many shares, one per tape tick (None: fill at once).
    maxFillQtyBySymbol
        Per-symbol override of ``maxFillQty``.
    """

    slippage: float = 0.0
    maxFillQty: float | None = None
    maxFillQtyBySymbol: dict[str, float | None] = field(default_factory=dict)

    def cap(self, symbol: str) -> float | None:
        """Return the largest execution size for ``symbol`` (None: unlimited)."""
        return self.maxFillQtyBySymbol.get(symbol, self.maxFillQty)


class Broker:
    """The simulated account and order book.

    Parameters
    ----------
    market
        The replayed tape.
    account
        Account id (``DU…``).
    initialCash
        Starting cash, in the base currency.
    commissions
        Commission schedule.
    policy
        Fill policy (slippage, partial fills).
    baseCurrency
        The account's base currency. US stocks trade in USD: with another base currency the starting cash
        stays in that currency and trades build a USD balance (negative after buying: IB lends the USD).
    usdToBase
        The value of one USD in the base currency (IB's ``ExchangeRate`` for USD); 1 for a USD account.
    """

    def __init__(self, market: Market, account: str, initialCash: float = 1_000_000.0,
                 commissions: CommissionSchedule | None = None, policy: FillPolicy | None = None,
                 baseCurrency: str = "USD", usdToBase: float = 1.0) -> None:
        self.market = market
        self.account = account
        self.baseCurrency = baseCurrency.upper()
        self.usdToBase = 1.0 if self.baseCurrency == "USD" else float(usdToBase)
        self.cash = float(initialCash) if self.baseCurrency == "USD" else 0.0  # USD
        self.baseCash = 0.0 if self.baseCurrency == "USD" else float(initialCash)  # non-USD base currency
        self.commissions = commissions or CommissionSchedule()
        self.policy = policy or FillPolicy()
        self.orders: dict[tuple[int, int], SimOrder] = {}
        self.executions: list[Execution] = []
        self.positions: dict[str, Position] = {}
        self.rejectNext: dict[str, str] = {}
        self.raceCancel: dict[str | None, int] = {}  # symbol (None: any) → 10148 or 161
        self.paused = False
        self._events: list[Event] = []
        self._nextPermId = 1_000_001
        self._execSeq = 0
        self._nowNs = 0

    # -- events -----------------------------------------------------------------------------------
    def drain(self) -> list[Event]:
        """Return and forget the queued events."""
        events, self._events = self._events, []
        return events

    def _emit(self, kind: str, order: SimOrder | None = None, **kw: object) -> None:
        snap = None if order is None else OrderSnap.of(order)
        self._events.append(Event(kind, order, snap=snap, **kw))  # type: ignore[arg-type]

    @property
    def nextOrderId(self) -> int:
        """Return one more than the highest order id ever used (at least 1)."""
        return max((k[1] for k in self.orders), default=0) + 1

    # -- orders -----------------------------------------------------------------------------------
    def placeOrder(self, order: SimOrder, now: datetime) -> None:
        """Accept a new order or a modification of a working one.

        Parameters
        ----------
        order
            The order as parsed from ``placeOrder`` (permId and status are set here).
        now
            Simulated time of arrival.
        """
        self._nowNs = toNs(now)
        existing = self.orders.get(order.key)
        if existing is not None:
            self._modify(existing, order)
            return
        order.permId = self._nextPermId
        self._nextPermId += 1
        order.placedAt = now
        self.orders[order.key] = order
        reason = self._rejection(order)
        if reason is not None:
            self._finish(order, "Inactive", reason[1])
            self._emit("rejected", order, code=reason[0], text=reason[1])
            return
        if not order.transmit:
            order.status = HELD
            logger.info("order %s held until a transmitting order arrives", order.key)
            return
        for held in self._heldLinkedTo(order):
            self._activate(held)
        self._activate(order)
        self.process(now)

    def _rejection(self, order: SimOrder) -> tuple[int, str] | None:
        reason = self.rejectNext.pop(order.symbol, None)
        if reason is not None:
            return 201, f"Order rejected - reason:{reason}"
        if order.orderType not in SUPPORTED_TYPES:
            return 201, f"Order rejected - reason:order type {order.orderType} is not simulated"
        if order.totalQuantity <= 0:
            return 201, "Order rejected - reason:The order size must be positive"
        if order.orderType in {"LMT", "STP LMT"} and order.lmtPrice is None:
            return 201, "Order rejected - reason:A limit price is required"
        if order.orderType in {"STP", "STP LMT"} and order.auxPrice is None:
            return 201, "Order rejected - reason:A stop price is required"
        return None

    def _heldLinkedTo(self, order: SimOrder) -> list[SimOrder]:
        out = []
        for o in self.orders.values():
            if o.status != HELD or o.clientId != order.clientId or o is order:
                continue
            parentLink = order.parentId and order.parentId in {o.orderId, o.parentId}
            ocaLink = order.ocaGroup and o.ocaGroup == order.ocaGroup
            if parentLink or ocaLink:
                out.append(o)
        return sorted(out, key=lambda o: o.orderId)

    def _activate(self, order: SimOrder) -> None:
        parent = self.orders.get((order.clientId, order.parentId)) if order.parentId else None
        if parent is not None and parent.status != "Filled":
            order.status = "PreSubmitted"
        else:
            order.status = "Submitted"
        order.examFromNs = self._nowNs
        self._emit("order", order)

    def _modify(self, order: SimOrder, new: SimOrder) -> None:
        if order.status in DONE:
            self._emit("error", order, code=104, text="Can't modify a filled order.")
            return
        order.lmtPrice, order.auxPrice = new.lmtPrice, new.auxPrice
        order.totalQuantity = max(new.totalQuantity, order.filled)
        order.orderRef, order.outsideRth = new.orderRef, new.outsideRth
        if order.status == HELD and new.transmit:
            order.transmit = True
            self._activate(order)
        elif order.status != HELD:
            self._emit("order", order)

    def cancelOrder(self, clientId: int, orderId: int, now: datetime, byOther: bool = False) -> None:
        """Cancel a working or held order (and its bracket children); 10147/10148 when impossible.

        Parameters
        ----------
        clientId, orderId
            The order's key.
        now
            Simulated time of the cancel.
        byOther
            The cancel comes from another client (TWS, a second API session) rather than the owner: the owner
            sees only the result, and the completed order says so.
        """
        self._nowNs = toNs(now)
        order = self.orders.get((clientId, orderId))
        if order is None:
            self._events.append(Event("error", None, code=10147, clientId=clientId, reqId=orderId,
                                      text=f"OrderId {orderId} that needs to be cancelled is not found."))
            return
        if order.status in DONE:
            self._emit("error", order, code=10148,
                       text=f"OrderId {orderId} that needs to be cancelled cannot be cancelled, "
                            f"state: {order.status}.")
            return
        race = self._raceCode(order)
        if race is not None:
            self._loseRace(order, race)
            return
        text = "Cancelled by another client" if byOther else "Cancelled by Trader"
        self._cancel(order, text)
        for child in self._children(order):
            if child.status not in DONE:
                self._cancel(child, text)

    def _raceCode(self, order: SimOrder) -> int | None:
        if order.status not in WORKING:
            return None
        for key in (order.symbol, None):
            if key in self.raceCancel:
                return self.raceCancel.pop(key)
        return None

    def _loseRace(self, order: SimOrder, code: int) -> None:
        """The order filled at the exchange before the cancel arrived: the refusal first, then the fill."""
        logger.warning("cancel of %s lost the race with a fill: %d before Filled", order.key, code)
        if code == 161:
            text = f"Cancel attempted when order is not in a cancellable state. Order permId ={order.permId}"
        else:
            text = f"OrderId {order.orderId} that needs to be cancelled cannot be cancelled, state: Filled."
        self._emit("error", order, code=code, text=text)
        self.forceFill(order, None)

    def forceFill(self, order: SimOrder, price: float | None) -> None:
        """Fill the rest of a working order now, at ``price`` (default: its limit or stop, else the last print).

        Parameters
        ----------
        order
            A working order.
        price
            The execution price; None takes the limit price, the stop price or the last price, in that order.
        """
        if order.status not in WORKING or order.remaining <= 0:
            raise ValueError(f"order {order.key} is {order.status}, not working")
        if price is None:
            price = order.lmtPrice or order.auxPrice or self.mark(order.symbol, fromNs(self._nowNs))
        if order.status == "PreSubmitted":
            order.status = "Submitted"
        self._fill(order, order.remaining, round(float(price), 6), self._nowNs)

    def _cancel(self, order: SimOrder, text: str = "Cancelled by Trader") -> None:
        self._finish(order, "Cancelled", text)
        self._emit("cancelled", order, code=202, text="Order Canceled - reason:")

    def _finish(self, order: SimOrder, status: str, text: str, timeNs: int | None = None) -> None:
        order.status = status
        order.completedAt = fromNs(self._nowNs if timeNs is None else timeNs)
        order.completedText = text

    def expire(self, now: datetime) -> list[SimOrder]:
        """Cancel the DAY orders whose session has closed by ``now`` (GTC orders stay); return them."""
        self._nowNs = toNs(now)
        expired = []
        for order in sorted(self.orders.values(), key=lambda o: o.permId):
            due = order.expiresAt()
            if order.status in WORKING and due is not None and due <= now:
                self._nowNs = toNs(due)
                logger.info("DAY order %s %s expired at the close %s", order.key, order.symbol, due)
                self._cancel(order, "Cancelled by System: the DAY order expired at the close")
                expired.append(order)
        self._nowNs = toNs(now)
        return expired

    def completed(self, now: datetime) -> list[SimOrder]:
        """Return the orders that ended (Filled, Cancelled, Inactive) on ``now``'s New York date, oldest first."""
        today = now.astimezone(_ZONE).date()
        done = [o for o in self.orders.values() if o.status in DONE and o.completedAt is not None
                and o.completedAt.astimezone(_ZONE).date() == today]
        return sorted(done, key=lambda o: (o.completedAt or now, o.permId))

    def globalCancel(self, now: datetime) -> None:
        """Cancel every working or held order (reqGlobalCancel)."""
        self._nowNs = toNs(now)
        for order in list(self.orders.values()):
            if order.status not in DONE:
                self._cancel(order, "Cancelled by Trader: global cancel")

    def _children(self, order: SimOrder) -> list[SimOrder]:
        return [o for o in self.orders.values()
                if o.clientId == order.clientId and o.parentId == order.orderId]

    def _siblings(self, order: SimOrder) -> list[SimOrder]:
        out = []
        for o in self.orders.values():
            if o is order or o.clientId != order.clientId or o.status in DONE:
                continue
            sameParent = order.parentId and o.parentId == order.parentId
            if sameParent or (order.ocaGroup and o.ocaGroup == order.ocaGroup):
                out.append(o)
        return out

    # -- matching ---------------------------------------------------------------------------------
    def working(self, symbol: str | None = None) -> list[SimOrder]:
        """Return the orders that can fill now (Submitted), in placement order."""
        return sorted((o for o in self.orders.values()
                       if o.status == "Submitted" and (symbol is None or o.symbol == symbol)),
                      key=lambda o: o.permId)

    def process(self, now: datetime) -> None:
        """Match working orders against every tick printed up to ``now``.

        Parameters
        ----------
        now
            Simulated time; ticks after it are never used.
        """
        nowNs = toNs(now)
        self._nowNs = nowNs
        if self.paused:
            return
        for symbol in sorted({o.symbol for o in self.working()}):
            if not self.market.has(symbol):
                continue
            series = self.market.get(symbol)
            self._processSymbol(series, symbol, nowNs)

    def applyPrint(self, symbol: str, timeNs: int, price: float) -> None:
        """Let working orders react to a price printed by hand at the current time.

        Parameters
        ----------
        symbol
            The ticker.
        timeNs
            The print's time (the current simulated time, already examined by :meth:`process`).
        price
            The printed price.
        """
        self._nowNs = timeNs
        if self.paused:
            return
        series = self.market.get(symbol)
        bar = series.barIndexAt(timeNs)
        tick = Tick(timeNs, float(price), -1 if bar is None else bar, True)
        for order in self.working(symbol):
            if order.examFromNs <= timeNs:
                continue  # not yet examined up to now: process() will see the print
            if order.outsideRth or series.isRth(tick):
                self._examine(order, tick)
            order.lastSeen = tick.price

    def _processSymbol(self, series: BarSeries, symbol: str, nowNs: int) -> None:
        # every order that may work during this pass (bracket children activate on the way), by arrival
        live = sorted((o for o in self.orders.values() if o.symbol == symbol and o.status in WORKING),
                      key=lambda o: o.permId)
        start = min(o.examFromNs for o in live if o.status == "Submitted")
        for tick in series.ticksBetween(start - 1, nowNs):
            for order in live:
                if order.status != "Submitted" or tick.timeNs < order.examFromNs:
                    continue
                if order.lastSeen is None:
                    prior = series.lastTick(order.examFromNs - 1)
                    order.lastSeen = None if prior is None else prior.price
                if order.outsideRth or series.isRth(tick):
                    self._examine(order, tick)
                order.lastSeen = tick.price
        for order in live:
            if order.status == "Submitted":
                order.examFromNs = max(order.examFromNs, nowNs + 1)

    def _examine(self, order: SimOrder, tick: Tick) -> None:
        price = self._triggerPrice(order, tick)
        if price is None:
            return
        cap = self.policy.cap(order.symbol)
        qty = order.remaining if cap is None else min(order.remaining, cap)
        self._fill(order, qty, round(price, 6), tick.timeNs)

    def _triggerPrice(self, order: SimOrder, tick: Tick) -> float | None:
        p, prev = tick.price, order.lastSeen
        smooth = not tick.jump and prev is not None
        buy = order.sign > 0
        slip = self.policy.slippage * order.sign
        kind = order.orderType
        if kind in {"STP", "STP LMT"} and not order.stopTriggered:
            stop = float(order.auxPrice or 0.0)
            hit = p >= stop if buy else p <= stop
            if not hit:
                return None
            if kind == "STP LMT":
                order.stopTriggered = True
                return self._limitPrice(order, tick, smooth=False)
            crossed = smooth and prev is not None and (prev < stop if buy else prev > stop)
            return (stop if crossed else p) + slip
        if kind == "MKT" or (kind == "STP" and order.stopTriggered):
            return p + slip
        return self._limitPrice(order, tick, smooth)

    @staticmethod
    def _limitPrice(order: SimOrder, tick: Tick, smooth: bool) -> float | None:
        p, prev, lmt = tick.price, order.lastSeen, float(order.lmtPrice or 0.0)
        if order.sign > 0:
            if p > lmt:
                return None
            return lmt if smooth and prev is not None and prev > lmt else p
        if p < lmt:
            return None
        return lmt if smooth and prev is not None and prev < lmt else p

    def _fill(self, order: SimOrder, qty: float, price: float, timeNs: int) -> None:
        before = order.commission
        order.fillValue += qty * price
        order.filled += qty
        order.commission = self.commissions.total(order.filled, order.fillValue)
        commission = round(order.commission - before, 6)
        order.avgFillPrice = round(order.fillValue / order.filled, 6)
        order.lastFillPrice = price
        if order.remaining <= 1e-9:
            self._finish(order, "Filled", f"Filled Size: {order.filled:g}", timeNs)
        realized = self._book(order, qty * order.sign, price, commission)
        self._execSeq += 1
        execution = Execution(
            execId=f"0000{self._execSeq:04x}.{timeNs // 1_000_000_000:08x}.01.01", order=order.key,
            permId=order.permId, contract=order.contract, side="BOT" if order.sign > 0 else "SLD",
            shares=qty, price=price, time=fromNs(timeNs), cumQty=order.filled, avgPrice=order.avgFillPrice,
            orderRef=order.orderRef, commission=commission, realizedPNL=realized, account=self.account,
        )
        self.executions.append(execution)
        logger.info("fill %s %s %s %g @ %.4f (commission %.2f)", order.key, order.symbol, order.action, qty,
                    price, commission)
        self._emit("fill", order, execution=execution)
        if order.status == "Filled":
            self._afterFilled(order, timeNs)
        self._emit("account", order)

    def _afterFilled(self, order: SimOrder, timeNs: int) -> None:
        for child in self._children(order):
            if child.status == "PreSubmitted":
                child.status = "Submitted"
                child.examFromNs = timeNs + 1
                child.lastSeen = order.lastFillPrice
                self._emit("order", child)
        for sibling in self._siblings(order):
            if sibling.parentId == order.orderId:
                continue
            self._cancel(sibling, "Cancelled by System: OCA / bracket sibling filled")

    def _book(self, order: SimOrder, signedQty: float, price: float, commission: float) -> float | None:
        pos = self.positions.setdefault(order.symbol, Position(order.contract))
        self.cash -= signedQty * price + commission
        q, a = pos.qty, pos.avgCost
        if q == 0 or (q > 0) == (signedQty > 0):
            size = abs(q) + abs(signedQty)
            signedCommission = commission if signedQty > 0 else -commission
            pos.avgCost = (abs(q) * a + abs(signedQty) * price + signedCommission) / size
            pos.qty = q + signedQty
            return None
        closed = min(abs(signedQty), abs(q))
        share = commission * closed / abs(signedQty)
        realized = closed * (price - a) * (1 if q > 0 else -1) - share
        pos.realizedPNL += realized
        pos.qty = q + signedQty
        rest = abs(signedQty) - closed
        if abs(pos.qty) < 1e-9:
            pos.qty, pos.avgCost = 0.0, 0.0
        elif rest > 0:  # the fill flipped the position
            pos.avgCost = price + (1 if signedQty > 0 else -1) * (commission - share) / rest
        return round(realized, 6)

    # -- account ----------------------------------------------------------------------------------
    def mark(self, symbol: str, now: datetime) -> float:
        """Return the mark price of ``symbol`` at ``now`` (last tape price, else average cost)."""
        price = self.market.lastPrice(symbol, now) if self.market.has(symbol) else None
        if price is None:
            pos = self.positions.get(symbol)
            return pos.avgCost if pos else 0.0
        return price

    def _holdings(self, now: datetime) -> tuple[float, float, float, float]:
        """Return (stock value, gross value, unrealized, realized P&L) in USD at ``now``."""
        gross = unrealized = realized = stock = 0.0
        for symbol, pos in self.positions.items():
            px = self.mark(symbol, now)
            stock += pos.qty * px
            gross += abs(pos.qty) * px
            unrealized += (px - pos.avgCost) * pos.qty
            realized += pos.realizedPNL
        return stock, gross, unrealized, realized

    def accountValues(self, now: datetime) -> dict[str, float]:
        """Return the account's numeric values (IB tag → value in the base currency) at ``now``."""
        stock, gross, unrealized, realized = (x * self.usdToBase for x in self._holdings(now))
        cash = self.baseCash + self.cash * self.usdToBase
        netLiq = cash + stock
        margin = 0.25 * gross
        available = netLiq - margin
        return {
            "NetLiquidation": netLiq, "TotalCashValue": cash, "SettledCash": cash,
            "CashBalance": cash, "GrossPositionValue": gross, "StockMarketValue": stock,
            "EquityWithLoanValue": netLiq, "PreviousDayEquityWithLoanValue": netLiq, "RegTEquity": netLiq,
            "RegTMargin": 0.5 * gross, "SMA": available, "InitMarginReq": margin, "MaintMarginReq": margin,
            "FullInitMarginReq": margin, "FullMaintMarginReq": margin, "AvailableFunds": available,
            "FullAvailableFunds": available, "ExcessLiquidity": available, "FullExcessLiquidity": available,
            "BuyingPower": 4.0 * available, "Cushion": available / netLiq if netLiq else 0.0,
            "UnrealizedPnL": unrealized, "RealizedPnL": realized, "AccruedCash": 0.0, "Leverage": (
                gross / netLiq if netLiq else 0.0),
        }

    def ledger(self, now: datetime) -> dict[str, dict[str, float]]:
        """Return IB's per-currency ledger at ``now``: the base currency, on a non-USD account with USD activity
        ``USD``, then ``BASE`` (totals in the base currency).

        Each row maps CashBalance, TotalCashBalance, StockMarketValue, NetLiquidationByCurrency,
        UnrealizedPnL, RealizedPnL, AccruedCash and ExchangeRate (value of one unit in the base currency).
        """
        stock, _, unrealized, realized = self._holdings(now)

        def row(cash: float, stockValue: float, upl: float, rpl: float, rate: float) -> dict[str, float]:
            return {"CashBalance": cash, "TotalCashBalance": cash, "StockMarketValue": stockValue,
                    "NetLiquidationByCurrency": cash + stockValue, "UnrealizedPnL": upl, "RealizedPnL": rpl,
                    "AccruedCash": 0.0, "ExchangeRate": rate}

        usd = row(self.cash, stock, unrealized, realized, self.usdToBase)
        rate = self.usdToBase
        base = row(self.baseCash + self.cash * rate, stock * rate, unrealized * rate, realized * rate, 1.0)
        if self.baseCurrency == "USD":
            return {"USD": usd, "BASE": base}  # IB's order: each currency, then BASE
        out = {self.baseCurrency: row(self.baseCash, 0.0, 0.0, 0.0, 1.0)}
        if self.cash or self.positions:
            out["USD"] = usd
        return {**out, "BASE": base}
