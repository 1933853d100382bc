"""The asyncio TWS-protocol server: sessions, request dispatch, pushes after fills, and injected faults."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd

from ibsim import messages as msg
from ibsim.broker import (
    WORKING,
    Broker,
    CommissionSchedule,
    Event,
    Execution,
    FillPolicy,
    OrderSnap,
    SimOrder,
    contractFor,
)
from ibsim.clock import SimClock
from ibsim.codec import (
    API_MAGIC,
    MAX_SERVER_VERSION,
    MIN_SERVER_VERSION,
    CodecError,
    Field,
    encodeFields,
    fieldsAt,
    negotiateVersion,
    parseHello,
)
from ibsim.market import EXCHANGE_TZ, NS, HistoryError, Market, parseBarSize, toNs
from ibsim.messages import StockContract
from ibsim.pacing import HistRequestKey, PacingGuard, PacingRules

logger = logging.getLogger(__name__)

_ZONE = ZoneInfo(EXCHANGE_TZ)
_TEXT_KEYS = ("AccountCode", "AccountType", "Currency", "RealCurrency", "AccountReady", "DayTradesRemaining")
_RATIO_KEYS = frozenset({"Cushion", "Leverage"})  # sent without a currency, as IB does
_LEDGER_KEYS = frozenset({"CashBalance", "TotalCashBalance", "StockMarketValue", "NetLiquidationByCurrency",
                          "UnrealizedPnL", "RealizedPnL", "AccruedCash", "ExchangeRate"})


@dataclass(frozen=True)
class SimConfig:
    """Simulator settings.

    Attributes
    ----------
    host
        Listening address; loopback by default.
    port
        TCP port; 0 picks a free one.
    account
        The single managed account (paper style ``DU…``).
    serverVersion
        Highest server version to announce (157–178; never more than the client's maximum). Lower it to
        make the real clients speak an older version, e.g. 166 or 176.
    initialCash
        Starting cash (USD).
    pacing
        Historical-data pacing rules.
    slippage
        Dollars per share against the trader on market and stop fills.
    maxFillQty
        Split every fill into executions of at most this many shares (None: fill at once).
    tickInterval
        Wall seconds between clock polls when the clock runs by itself.
    baseCurrency
        The account's base currency (``GBP`` for the recorded account). Account values then come in
        ``BASE`` and that currency, NetLiquidation in that currency only, plus USD ledger lines once the
        account trades US stocks.
    usdToBase
        Value of one USD in the base currency (IB's ExchangeRate line for USD), e.g. 0.79 for GBP.
    expireDayOrders
        Cancel DAY orders at the close (16:00 New York, 20:00 with outsideRth) as IB does.
    """

    host: str = "127.0.0.1"
    port: int = 0
    account: str = "DU1234567"
    serverVersion: int = MAX_SERVER_VERSION
    initialCash: float = 1_000_000.0
    pacing: PacingRules = field(default_factory=PacingRules)
    slippage: float = 0.0
    maxFillQty: float | None = None
    tickInterval: float = 0.05
    baseCurrency: str = "USD"
    usdToBase: float = 1.0
    expireDayOrders: bool = True


@dataclass(frozen=True)
class RequestRecord:
    """One request received from a client, for inspection by tests."""

    time: datetime
    clientId: int
    msgId: int
    name: str
    fields: tuple[str, ...]
    summary: str


@dataclass
class HistFault:
    """A pending delay, withholding or pacing violation of historical-data answers."""

    mode: str  # "delay", "withhold" or "pacing"
    seconds: float = 0.0
    count: int = 1
    symbol: str | None = None


@dataclass
class CommissionFault:
    """Commission reports of the next ``count`` executions held back ``seconds`` of simulated time, or never
    pushed (``seconds`` None). reqExecutions answers a report once it is due (a dropped one at once)."""

    seconds: float | None
    count: int = 1
    symbol: str | None = None


@dataclass
class HeldReport:
    """A commission report not sent yet."""

    dueNs: int | None  # None: never pushed live
    execution: Execution


@dataclass
class PendingHist:
    """A historical request not answered yet."""

    session: Session
    reqId: int
    fields: list[str]
    task: asyncio.Task[None] | None = None


class Session:
    """One client connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.clientId: int | None = None
        self.serverVersion = 0
        self.wire = msg.Wire(MIN_SERVER_VERSION)
        self.positions = False
        self.accountUpdates = False
        self.multi: set[int] = set()
        self.summary: dict[int, list[str]] = {}
        self.closed = False
        self.handled = 0  # messages after the handshake, handled in arrival order (tests wait on this)
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"

    def send(self, fields: list[Field]) -> None:
        """Write one message (dropped silently once the session is closed)."""
        if not self.closed:
            self.writer.write(encodeFields(fields))

    def error(self, reqId: int, code: int, text: str | None = None) -> None:
        """Send an error / notice in this session's version layout (IB's text for ``code`` by default)."""
        self.send(self.wire.error(reqId, code, text))

    def close(self) -> None:
        """Close the socket (the client sees EOF)."""
        if not self.closed:
            self.closed = True
            with contextlib.suppress(Exception):
                self.writer.close()


class Gateway:
    """A simulated IB Gateway serving the TWS API over TCP.

    Parameters
    ----------
    market
        The replayed bars.
    clock
        The simulated clock.
    config
        Settings.
    """

    def __init__(self, market: Market, clock: SimClock, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        if not MIN_SERVER_VERSION <= self.config.serverVersion <= MAX_SERVER_VERSION:
            raise ValueError(f"serverVersion {self.config.serverVersion}: ibsim implements server versions "
                             f"{MIN_SERVER_VERSION}..{MAX_SERVER_VERSION}")
        self.market = market
        self.clock = clock
        self.broker = Broker(market, self.config.account, self.config.initialCash, CommissionSchedule(),
                             FillPolicy(slippage=self.config.slippage, maxFillQty=self.config.maxFillQty),
                             baseCurrency=self.config.baseCurrency, usdToBase=self.config.usdToBase)
        self.pacing = PacingGuard(self.config.pacing)
        self.contracts: dict[str, StockContract] = {s: contractFor(s) for s in market.symbols}
        self.requests: list[RequestRecord] = []
        self.sessions: list[Session] = []
        self.heldClientIds: set[int] = set()
        self.histFaults: list[HistFault] = []
        self.commissionFaults: list[CommissionFault] = []
        self.heldReports: dict[str, HeldReport] = {}  # execId → report not sent yet
        self.noPermissions: set[str | None] = set()  # symbols (None: all) without market-data permissions
        self.pendingHist: dict[tuple[int, int], PendingHist] = {}
        self.connectivityLost = False
        self.port = self.config.port
        self._server: asyncio.Server | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._handlers: dict[int, Callable[[Session, list[str]], None]] = {
            1: self._reqMktData, 3: self._placeOrder, 4: self._cancelOrder, 5: self._reqOpenOrders,
            6: self._reqAccountUpdates, 7: self._reqExecutions, 8: self._reqIds, 9: self._reqContractDetails,
            16: self._reqAllOpenOrders, 17: self._reqManagedAccts, 20: self._reqHistoricalData,
            25: self._cancelHistoricalData, 49: self._reqCurrentTime, 58: self._reqGlobalCancel,
            61: self._reqPositions, 62: self._reqAccountSummary, 63: self._cancelAccountSummary,
            64: self._cancelPositions, 76: self._reqAccountUpdatesMulti, 77: self._cancelAccountUpdatesMulti,
            99: self._reqCompletedOrders,
        }

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start listening (and the clock poller when the clock runs by itself)."""
        await self._listen()
        if not self.clock.stepped and self._ticker is None:
            self._ticker = asyncio.create_task(self._tick())
        logger.info("ibsim listening on %s:%d, account %s, simulated time %s", self.config.host, self.port,
                    self.config.account, self.clock.now().astimezone(_ZONE))

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.config.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close every connection and stop listening."""
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        await self._stopListening()
        self.dropConnections()
        for task in list(self._tasks):
            task.cancel()

    async def _stopListening(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.config.tickInterval)
            self.process()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- connections ------------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = Session(reader, writer)
        self.sessions.append(session)
        try:
            if await self._handshake(session):
                await self._serve(session)
        except (asyncio.IncompleteReadError, ConnectionError, CodecError) as exc:
            logger.info("connection %s ended: %s", session.peer, exc.__class__.__name__)
        finally:
            session.close()
            if session in self.sessions:
                self.sessions.remove(session)
            if session.clientId is None:
                logger.info("connection %s closed before startApi", session.peer)
            else:
                logger.info("client %s disconnected (%s)", session.clientId, session.peer)

    async def _handshake(self, session: Session) -> bool:
        magic = await session.reader.readexactly(4)
        if magic != API_MAGIC:
            logger.warning("connection %s did not start with API\\0: %r", session.peer, magic)
            return False
        hello = parseHello(await self._readFrame(session.reader))
        deal = negotiateVersion(hello, self.config.serverVersion)
        session.serverVersion = deal.version
        session.wire = msg.Wire(deal.version)
        local = self.clock.now().astimezone(_ZONE)
        session.send([deal.version, f"{local:%Y%m%d %H:%M:%S} {local.tzname()}"])
        if not deal.served:
            logger.warning("refusing client %s (v%d..%d): %s", session.peer, hello.minVersion, hello.maxVersion,
                           deal.refusal)
            session.error(-1, deal.code, deal.refusal)
            with contextlib.suppress(ConnectionError):
                await session.writer.drain()
            return False
        logger.info("handshake %s: client v%d..%d%s, announced %d", session.peer, hello.minVersion,
                    hello.maxVersion, f" {hello.options}" if hello.options else "", deal.version)
        return True

    @staticmethod
    async def _readFrame(reader: asyncio.StreamReader) -> bytes:
        size = int.from_bytes(await reader.readexactly(4), "big")
        if size > 0xFFFFFF:
            raise CodecError(f"frame of {size} bytes")
        return await reader.readexactly(size)

    async def _serve(self, session: Session) -> None:
        while not session.closed:
            payload = await self._readFrame(session.reader)
            fields = msg_fields(payload)
            if not fields:
                continue
            self._dispatch(session, fields)
            with contextlib.suppress(ConnectionError):
                await session.writer.drain()

    def _dispatch(self, session: Session, fields: list[str]) -> None:
        try:
            self._handleMessage(session, fields)
        finally:
            session.handled += 1

    def _handleMessage(self, session: Session, fields: list[str]) -> None:
        try:
            msgId = int(fields[0])
        except ValueError:
            logger.warning("client %s sent a non-numeric message id %r", session.clientId, fields[0])
            return
        self._record(session, msgId, fields)
        if msgId == 71:
            self._startApi(session, fields)
            return
        handler = self._handlers.get(msgId)
        if handler is None:
            logger.info("client %s: message %d not simulated, ignored", session.clientId, msgId)
            return
        try:
            handler(session, fields)
        except (ValueError, IndexError, KeyError):
            logger.exception("client %s: could not handle %s %s", session.clientId,
                             msg.IN_NAMES.get(msgId, msgId), fields)

    def _record(self, session: Session, msgId: int, fields: list[str]) -> None:
        name = msg.IN_NAMES.get(msgId, f"msg{msgId}")
        summary = describe(msgId, fields)
        self.requests.append(RequestRecord(self.clock.now(), session.clientId if session.clientId is not None
                                           else -1, msgId, name, tuple(fields), summary))
        logger.info("client %s → %s %s", session.clientId, name, summary)

    def _startApi(self, session: Session, fields: list[str]) -> None:
        clientId = int(fields[2])
        inUse = any(s.clientId == clientId and s is not session and not s.closed for s in self.sessions)
        if inUse or clientId in self.heldClientIds:
            logger.warning("clientId %d already in use: 326 and close", clientId)
            session.error(-1, 326)
            session.close()
            return
        session.clientId = clientId
        session.send(msg.managedAccounts([self.config.account]))
        session.send(msg.nextValidId(self.broker.nextOrderId))
        codes = (1100, *msg.FARM_BROKEN) if self.connectivityLost else msg.FARM_OK
        for code in codes:
            session.error(-1, code)

    def sessionsFor(self, clientId: int) -> list[Session]:
        """Return the live sessions of ``clientId``."""
        return [s for s in self.sessions if s.clientId == clientId and not s.closed]

    def _ready(self) -> list[Session]:
        return [s for s in self.sessions if s.clientId is not None and not s.closed]

    # -- simple requests --------------------------------------------------------------------------
    def _reqCurrentTime(self, session: Session, fields: list[str]) -> None:
        session.send(msg.currentTime(int(self.clock.now().timestamp())))

    def _reqIds(self, session: Session, fields: list[str]) -> None:
        session.send(msg.nextValidId(self.broker.nextOrderId))

    def _reqManagedAccts(self, session: Session, fields: list[str]) -> None:
        session.send(msg.managedAccounts([self.config.account]))

    def _reqMktData(self, session: Session, fields: list[str]) -> None:
        session.error(int(fields[2]), 354, "Requested market data is not subscribed. "
                      "(ibsim serves historical bars only)")

    def _reqCompletedOrders(self, session: Session, fields: list[str]) -> None:
        for order in self.broker.completed(self.clock.now()):
            session.send(session.wire.completedOrder(self._orderFields(order), order.contract, order.completion()))
        session.send(msg.completedOrdersEnd())

    def _resolve(self, conId: str, symbol: str, secType: str, currency: str) -> StockContract | None:
        if secType not in {"", "STK"} or currency not in {"", "USD"}:
            return None
        if conId and conId != "0":
            return next((c for c in self.contracts.values() if str(c.conId) == conId), None)
        return self.contracts.get(symbol.upper())

    def _reqContractDetails(self, session: Session, fields: list[str]) -> None:
        reqId = int(fields[2])
        contract = self._resolve(fields[3], fields[4], fields[5], fields[12])
        if contract is None:
            session.error(reqId, 200)
            return
        session.send(session.wire.contractData(reqId, contract, fields[10] or "SMART"))
        session.send(msg.contractDataEnd(reqId))

    # -- account ----------------------------------------------------------------------------------
    def accountRows(self) -> list[tuple[str, str, str]]:
        """Return the account values as IB sends them: (tag, value, currency), sorted by tag then currency."""
        now = self.clock.now()
        base = self.broker.baseCurrency
        out = [("AccountCode", self.config.account, ""), ("AccountType", "INDIVIDUAL", ""),
               ("AccountReady", "true", ""), ("DayTradesRemaining", "-1", "")]
        for key, value in self.broker.accountValues(now).items():
            if key not in _LEDGER_KEYS:
                out.append((key, f"{value:.2f}", "" if key in _RATIO_KEYS else base))
        out += self._ledgerRows(now)
        return sorted(out, key=lambda row: (row[0], row[2]))

    def _ledgerRows(self, now: datetime, currencies: set[str] | None = None) -> list[tuple[str, str, str]]:
        rows = []
        for currency, row in self.broker.ledger(now).items():
            if currencies is not None and currency not in currencies:
                continue
            rows += [("Currency", currency, currency), ("RealCurrency", currency, currency)]
            for key, value in row.items():
                text = f"{value:.2f}" if key != "ExchangeRate" or value == 1.0 else f"{value:g}"
                rows.append((key, text, currency))
        return rows

    def _portfolio(self, session: Session, symbol: str) -> list[Field]:
        pos = self.broker.positions[symbol]
        px = self.broker.mark(symbol, self.clock.now())
        return session.wire.portfolioValue(pos.contract, pos.qty, px, round(pos.qty * px, 2),
                                           round(pos.avgCost, 6), round((px - pos.avgCost) * pos.qty, 2),
                                           round(pos.realizedPNL, 2), self.config.account)

    def _position(self, session: Session, symbol: str) -> list[Field]:
        pos = self.broker.positions[symbol]
        return session.wire.position(self.config.account, pos.contract, pos.qty, round(pos.avgCost, 6))

    def _reqPositions(self, session: Session, fields: list[str]) -> None:
        session.positions = True
        for symbol in sorted(self.broker.positions):
            session.send(self._position(session, symbol))
        session.send(msg.positionEnd())

    def _cancelPositions(self, session: Session, fields: list[str]) -> None:
        session.positions = False

    def _accountTime(self) -> list[Field]:
        return msg.accountUpdateTime(f"{self.clock.now().astimezone(_ZONE):%H:%M}")

    def _reqAccountUpdates(self, session: Session, fields: list[str]) -> None:
        session.accountUpdates = fields[2] == "1"
        if not session.accountUpdates:
            return
        for key, value, currency in self.accountRows():
            session.send(msg.accountValue(key, value, currency, self.config.account))
        for symbol in sorted(self.broker.positions):
            if self.broker.positions[symbol].qty:
                session.send(self._portfolio(session, symbol))
        session.send(self._accountTime())
        session.send(msg.accountDownloadEnd(self.config.account))

    def _reqAccountUpdatesMulti(self, session: Session, fields: list[str]) -> None:
        reqId = int(fields[2])
        session.multi.add(reqId)
        for key, value, currency in self.accountRows():
            session.send(msg.accountUpdateMulti(reqId, self.config.account, key, value, currency))
        session.send(msg.accountUpdateMultiEnd(reqId))

    def _cancelAccountUpdatesMulti(self, session: Session, fields: list[str]) -> None:
        session.multi.discard(int(fields[2]))

    def _reqAccountSummary(self, session: Session, fields: list[str]) -> None:
        reqId = int(fields[2])
        tags = [t for t in fieldsAt(fields, 4).split(",") if t]
        session.summary[reqId] = tags
        self._sendSummary(session, reqId, tags)
        session.send(msg.accountSummaryEnd(reqId))

    def _sendSummary(self, session: Session, reqId: int, tags: list[str]) -> None:
        wanted = set(tags)
        for key, value, currency in self.accountRows():
            if key in wanted and key not in {"AccountCode", "AccountReady"} and key not in _LEDGER_KEYS:
                session.send(msg.accountSummary(reqId, self.config.account, key, value, currency))
        ledger = [t for t in tags if t.startswith("$LEDGER")]
        if ledger:  # $LEDGER: BASE only; $LEDGER:ALL every currency; $LEDGER:GBP one (IB names the group 'All')
            scope = ledger[0].partition(":")[2].upper()
            currencies = None if scope == "ALL" else {scope or "BASE"}
            for key, value, currency in self._ledgerRows(self.clock.now(), currencies):
                session.send(msg.accountSummary(reqId, "All", key, value, currency))

    def _cancelAccountSummary(self, session: Session, fields: list[str]) -> None:
        session.summary.pop(int(fields[2]), None)

    def pushAccount(self, symbols: set[str]) -> None:
        """Send position, portfolio and account-value updates to every subscribed session."""
        values = [v for v in self.accountRows() if v[0] not in _TEXT_KEYS]
        for session in self._ready():
            for symbol in sorted(symbols):
                if session.positions:
                    session.send(self._position(session, symbol))
                if session.accountUpdates:
                    session.send(self._portfolio(session, symbol))
            self._pushValues(session, values)

    def _pushValues(self, session: Session, values: list[tuple[str, str, str]]) -> None:
        account = self.config.account
        if session.accountUpdates:
            for key, value, currency in values:
                session.send(msg.accountValue(key, value, currency, account))
            session.send(self._accountTime())
        for reqId in sorted(session.multi):
            for key, value, currency in values:
                session.send(msg.accountUpdateMulti(reqId, account, key, value, currency))
        for reqId, tags in session.summary.items():
            self._sendSummary(session, reqId, tags)

    # -- orders -----------------------------------------------------------------------------------
    def _placeOrder(self, session: Session, f: list[str]) -> None:
        orderId = int(f[1])
        clientId = session.clientId if session.clientId is not None else 0
        contract = self._resolve(f[2], f[3], f[4], f[11])
        if contract is None:
            session.error(orderId, 200)
            return
        order = SimOrder(
            clientId=clientId, orderId=orderId, permId=0, contract=contract, action=f[16].upper(),
            totalQuantity=float(f[17] or 0), orderType=f[18].upper(), lmtPrice=_optFloat(f[19]),
            auxPrice=_optFloat(f[20]), tif=f[21] or "DAY", ocaGroup=f[22],
            account=f[23] or self.config.account,
            orderRef=f[26], transmit=f[27] != "0", parentId=int(f[28] or 0), outsideRth=f[33] == "1",
            ocaType=int(fieldsAt(f, 47) or 0),
        )
        self.broker.placeOrder(order, self.clock.now())
        self.publish()

    def _cancelOrder(self, session: Session, f: list[str]) -> None:
        clientId = session.clientId if session.clientId is not None else 0
        self.broker.cancelOrder(clientId, int(f[2]), self.clock.now())
        self.publish()

    def findOrder(self, orderId: int, clientId: int | None = None) -> SimOrder:
        """Return the order ``orderId`` (of ``clientId`` when several clients used that id).

        Raises
        ------
        KeyError
            If no order, or more than one, matches.
        """
        matches = [o for o in self.broker.orders.values()
                   if o.orderId == orderId and clientId in {None, o.clientId}]
        if len(matches) != 1:
            raise KeyError(f"{len(matches)} orders with id {orderId}" + ("" if clientId is None
                                                                        else f" of client {clientId}"))
        return matches[0]

    def cancelByOther(self, orderId: int, clientId: int | None = None) -> SimOrder:
        """Cancel an order as another client (TWS, a second session) would: the owner sees only the result."""
        order = self.findOrder(orderId, clientId)
        logger.warning("order %s %s cancelled by another client", order.key, order.symbol)
        self.broker.cancelOrder(order.clientId, order.orderId, self.clock.now(), byOther=True)
        self.publish()
        return order

    def fillByOther(self, orderId: int, price: float | None = None, clientId: int | None = None) -> SimOrder:
        """Fill the rest of a working order now (at ``price``, else its limit/stop, else the last print), as when
        another client changed it or the market traded through it while its owner was away."""
        order = self.findOrder(orderId, clientId)
        logger.warning("order %s %s filled outside its owner's control", order.key, order.symbol)
        self.broker.forceFill(order, price)
        self.publish()
        return order

    def _reqGlobalCancel(self, session: Session, f: list[str]) -> None:
        self.broker.globalCancel(self.clock.now())
        self.publish()

    def _sendOrder(self, session: Session, order: SimOrder, snap: OrderSnap | None = None) -> None:
        s = snap or OrderSnap.of(order)
        session.send(session.wire.openOrder(self._orderFields(order), order.contract, s.status))
        session.send(self._status(session, order, s))

    def _orderFields(self, order: SimOrder) -> msg.OrderFields:
        parent = self.broker.orders.get((order.clientId, order.parentId)) if order.parentId else None
        return order.fields(parent.permId if parent is not None else None)

    @staticmethod
    def _status(session: Session, order: SimOrder, s: OrderSnap) -> list[Field]:
        return session.wire.orderStatus(order.orderId, s.status, s.filled, s.remaining, s.avgFillPrice,
                                        order.permId, order.parentId, s.lastFillPrice, order.clientId)

    def _openOrders(self, session: Session, everyone: bool) -> None:
        for order in sorted(self.broker.orders.values(), key=lambda o: o.permId):
            if order.status in WORKING and (everyone or session.clientId in {0, order.clientId}):
                self._sendOrder(session, order)
        session.send(msg.openOrderEnd())

    def _reqOpenOrders(self, session: Session, f: list[str]) -> None:
        self._openOrders(session, everyone=False)

    def _reqAllOpenOrders(self, session: Session, f: list[str]) -> None:
        self._openOrders(session, everyone=True)

    def _reqExecutions(self, session: Session, f: list[str]) -> None:
        reqId = int(f[2])
        clientId, symbol, side = int(f[3] or 0), f[6].upper(), f[9].upper()
        matched = [e for e in self.broker.executions
                   if (not clientId or e.order[0] == clientId) and (not symbol or e.contract.symbol == symbol)
                   and (not side or e.side == side or (side, e.side) in {("BUY", "BOT"), ("SELL", "SLD")})]
        for e in matched:
            session.send(session.wire.execDetails(reqId, e.fields(), e.contract))
        for e in matched:
            held = self.heldReports.get(e.execId)
            if held is None or held.dueNs is None:  # a dropped live report is still on the server
                session.send(msg.commissionReport(e.execId, e.commission, e.realizedPNL))
        session.send(msg.execDetailsEnd(reqId))

    def publish(self) -> None:
        """Turn the broker's queued events into messages for the owning clients."""
        touched: set[str] = set()
        events = self.broker.drain()
        for event in events:
            if event.kind == "fill" and event.execution is not None:
                self._holdReport(event.execution)
        for event in events:
            if event.kind == "account" and event.order is not None:
                touched.add(event.order.symbol)
                continue
            clientId, reqId = event.target
            for session in self.sessionsFor(clientId):
                self._sendEvent(session, event, reqId)
        if touched:
            self.pushAccount(touched)

    def _sendEvent(self, session: Session, event: Event, reqId: int) -> None:
        order, snap = event.order, event.snap
        if event.kind == "error" or order is None or snap is None:
            session.error(reqId, event.code, event.text)
        elif event.kind == "order":
            self._sendOrder(session, order, snap)
        elif event.kind == "cancelled":
            session.send(self._status(session, order, snap))
            session.error(order.orderId, 202, event.text)
        elif event.kind == "rejected":
            session.error(order.orderId, event.code, event.text)
            self._sendOrder(session, order, snap)
        elif event.kind == "fill" and event.execution is not None:
            self._sendOrder(session, order, snap)
            e = event.execution
            session.send(session.wire.execDetails(-1, e.fields(), e.contract))
            if e.execId not in self.heldReports:
                session.send(msg.commissionReport(e.execId, e.commission, e.realizedPNL))

    def _holdReport(self, execution: Execution) -> None:
        for fault in self.commissionFaults:
            if fault.symbol is None or fault.symbol == execution.contract.symbol:
                fault.count -= 1
                if fault.count <= 0:
                    self.commissionFaults.remove(fault)
                due = None if fault.seconds is None else toNs(self.clock.now()) + int(fault.seconds * NS)
                logger.warning("commission report of %s %s", execution.execId,
                               "dropped" if due is None else f"held back {fault.seconds:g} s")
                self.heldReports[execution.execId] = HeldReport(due, execution)
                return

    def _releaseReports(self) -> None:
        nowNs = toNs(self.clock.now())
        for execId, held in list(self.heldReports.items()):
            if held.dueNs is not None and held.dueNs <= nowNs:
                del self.heldReports[execId]
                e = held.execution
                logger.info("commission report of %s released", execId)
                for session in self.sessionsFor(e.order[0]):
                    session.send(msg.commissionReport(e.execId, e.commission, e.realizedPNL))

    # -- time -------------------------------------------------------------------------------------
    def process(self) -> None:
        """Fill what the tape allows up to the current simulated time, expire DAY orders at the close, release
        held commission reports, and publish the results."""
        now = self.clock.now()
        self.broker.paused = self.connectivityLost
        self.broker.process(now)
        if self.config.expireDayOrders:
            self.broker.expire(now)
        self.publish()
        self._releaseReports()

    def advance(self, seconds: float) -> None:
        """Step the simulated clock forward and fill what the tape allows on the way."""
        self.clock.advance(seconds)
        self.process()

    def setTime(self, t: datetime) -> None:
        """Jump the simulated clock to ``t`` (never backwards) and fill on the way."""
        if t.astimezone(UTC) < self.clock.now():
            raise ValueError(f"cannot move the simulated clock back to {t}")
        self.clock.set(t)
        self.process()

    def setPrice(self, symbol: str, price: float) -> None:
        """Print ``price`` for ``symbol`` on the tape now (orders react immediately)."""
        nowNs = int(pd.Timestamp(self.clock.now()).value)
        self.market.get(symbol).setPrice(nowNs, price)
        self.broker.applyPrint(symbol.upper(), nowNs, price)
        self.process()

    # -- historical data --------------------------------------------------------------------------
    def _reqHistoricalData(self, session: Session, f: list[str]) -> None:
        reqId = int(f[1])
        contract = self._resolve(f[2], f[3], f[4], f[11])
        if contract is None or not self.market.has(contract.symbol):
            session.error(reqId, 200)
            return
        if {contract.symbol, None} & self.noPermissions:
            logger.warning("reqId %d %s: no market data permissions (162)", reqId, contract.symbol)
            session.error(reqId, 162, msg.NO_PERMISSIONS_TEXT.format(exchange=_exchangeCode(contract)))
            return
        key = HistRequestKey(contract.symbol, f[9], f[19], f[15], f[17], f[16], f[18] == "1")
        try:
            barSeconds = parseBarSize(f[16])
        except HistoryError as exc:
            session.error(reqId, 321, f"Error validating request.-'bP' : cause - {exc}")
            return
        violation = self.pacing.check(key, self.clock.now().timestamp(), len(self.pendingHist), barSeconds)
        if violation is not None:
            logger.warning("pacing violation reqId %d %s: %s", reqId, contract.symbol, violation)
            session.error(reqId, 162, msg.PACING_TEXT)
            return
        pending = PendingHist(session, reqId, f)
        fault = self._takeHistFault(contract.symbol)
        if fault is not None and fault.mode == "pacing":
            logger.warning("pacing violation reqId %d %s: injected (another client used the allowance)", reqId,
                           contract.symbol)
            session.error(reqId, 162, msg.PACING_TEXT)
        elif fault is not None and fault.mode == "withhold":
            logger.warning("withholding historical answer reqId %d", reqId)
            self.pendingHist[(id(session), reqId)] = pending
        elif fault is not None or self.connectivityLost:
            self.pendingHist[(id(session), reqId)] = pending
            delay = fault.seconds if fault is not None else None
            pending.task = self._spawn(self._answerLater(pending, delay))
        else:
            self._answerHist(session, reqId, f)

    def _takeHistFault(self, symbol: str) -> HistFault | None:
        for fault in self.histFaults:
            if fault.symbol is None or fault.symbol == symbol:
                fault.count -= 1
                if fault.count <= 0:
                    self.histFaults.remove(fault)
                return fault
        return None

    async def _answerLater(self, pending: PendingHist, delay: float | None) -> None:
        if delay:
            logger.warning("delaying historical answer reqId %d by %.2f s", pending.reqId, delay)
            await asyncio.sleep(delay)
        while self.connectivityLost:
            await asyncio.sleep(0.02)
        if self.pendingHist.pop((id(pending.session), pending.reqId), None) is not None:
            self._answerHist(pending.session, pending.reqId, pending.fields)
            with contextlib.suppress(ConnectionError):
                await pending.session.writer.drain()

    def _answerHist(self, session: Session, reqId: int, f: list[str]) -> None:
        symbol = self._resolve(f[2], f[3], f[4], f[11]).symbol  # type: ignore[union-attr]
        now = self.clock.now()
        end = parseEndDateTime(f[15])
        try:
            frame = self.market.history(symbol, now, end, duration=f[17], barSize=f[16], useRth=f[18] == "1")
        except HistoryError as exc:
            session.error(reqId, 162, f"{msg.TEXT[162]}{exc}")
            return
        if frame.empty:
            session.error(reqId, 162, f"{msg.TEXT[162]}HMDS query returned no data: {symbol}@SMART Trades")
            return
        daily = parseBarSize(f[16]) >= 86400
        bars = [msg.Bar(formatBarTime(int(r.start), int(r.etDate), f[20], daily), float(r.open), float(r.high),
                        float(r.low), float(r.close), float(r.volume), float(r.average), int(r.barCount))
                for r in frame.itertuples()]
        endText = (end or now).astimezone(_ZONE)
        startText = pd.Timestamp(int(frame["start"].iloc[0]), tz=UTC).tz_convert(_ZONE)
        session.send(session.wire.historicalData(reqId, f"{startText:%Y%m%d %H:%M:%S}",
                                                 f"{endText:%Y%m%d %H:%M:%S}", bars))

    def _cancelHistoricalData(self, session: Session, f: list[str]) -> None:
        reqId = int(f[2])
        pending = self.pendingHist.pop((id(session), reqId), None)
        if pending is None:
            return
        if pending.task is not None:
            pending.task.cancel()
        session.error(reqId, 162, f"{msg.TEXT[162]}API historical data query cancelled: {reqId}")

    # -- faults -----------------------------------------------------------------------------------
    def dropConnections(self) -> int:
        """Close every client socket (EOF); state is kept. Return how many were dropped."""
        sessions = list(self.sessions)
        for session in sessions:
            session.close()
        self.sessions.clear()
        for pending in self.pendingHist.values():
            if pending.task is not None:
                pending.task.cancel()
        self.pendingHist.clear()
        if sessions:
            logger.warning("dropped %d client connection(s)", len(sessions))
        return len(sessions)

    def goDown(self) -> None:
        """First half of a gateway restart: stop listening (connections are refused) and close sockets."""
        logger.warning("gateway restart: no longer listening on port %d", self.port)
        if self._server is not None:
            self._server.close()
            self._server = None
        self.dropConnections()

    async def comeBack(self) -> None:
        """Second half of a gateway restart: listen again on the same port, state kept."""
        if self._server is None:
            await self._listen()
        logger.warning("gateway back on port %d", self.port)

    async def restart(self, downSeconds: float) -> None:
        """Emulate a gateway restart: close sockets, refuse connections for ``downSeconds``, come back."""
        self.goDown()
        await asyncio.sleep(downSeconds)
        await self.comeBack()

    def loseConnectivity(self) -> None:
        """Start an IB server reset: 1100 and farm-broken notices; sockets stay open, fills pause."""
        self.connectivityLost = True
        self.broker.paused = True
        for session in self._ready():
            for code in (1100, *msg.FARM_BROKEN):
                session.error(-1, code)

    def restoreConnectivity(self, dataLost: bool = False) -> None:
        """End a server reset: farm-OK notices and 1102 (or 1101 when ``dataLost``)."""
        self.connectivityLost = False
        self.broker.paused = False
        for session in self._ready():
            for code in msg.FARM_OK:
                session.error(-1, code)
            session.error(-1, 1101 if dataLost else 1102)
        self.process()

    async def nightlyReset(self, downSeconds: float, dataLost: bool = False) -> None:
        """Run 1100 → wait ``downSeconds`` → 1102 with the sockets kept open."""
        self.loseConnectivity()
        await asyncio.sleep(downSeconds)
        self.restoreConnectivity(dataLost)


def _exchangeCode(contract: StockContract) -> str:
    """Return the exchange IB names in a permissions error: ISLAND for NASDAQ listings."""
    return "ISLAND" if contract.primaryExchange == "NASDAQ" else contract.primaryExchange


def _optFloat(text: str) -> float | None:
    if not text:
        return None
    value = float(text)
    return None if value >= 1.7e308 else value


def msg_fields(payload: bytes) -> list[str]:
    """Split a request payload into fields (the trailing terminator dropped)."""
    fields = payload.decode(errors="backslashreplace").split("\0")
    if fields and fields[-1] == "":
        fields.pop()
    return fields


def parseEndDateTime(text: str) -> datetime | None:
    """Parse a reqHistoricalData endDateTime; ``''`` means now.

    Accepts ``yyyymmdd hh:mm:ss UTC``, ``yyyymmdd hh:mm:ss Zone/Name``, ``yyyymmdd-hh:mm:ss`` (UTC) and
    ``yyyymmdd hh:mm:ss`` (exchange time).
    """
    text = text.strip()
    if not text:
        return None
    if "-" in text[:9] and " " not in text:
        return datetime.strptime(text, "%Y%m%d-%H:%M:%S").replace(tzinfo=UTC)
    parts = text.split()
    if len(parts) == 1 and len(text) == 8:
        return datetime.strptime(text, "%Y%m%d").replace(hour=23, minute=59, second=59, tzinfo=_ZONE)
    naive = datetime.strptime(parts[0] + parts[1], "%Y%m%d%H:%M:%S")
    zone = ZoneInfo(parts[2]) if len(parts) > 2 and parts[2] != "UTC" else (UTC if len(parts) > 2 else _ZONE)
    return naive.replace(tzinfo=zone)


def formatBarTime(startNs: int, etDate: int, formatDate: str, daily: bool) -> str:
    """Format a bar's date as IB does: ``yyyymmdd`` for daily bars, else by ``formatDate`` (1 or 2)."""
    if daily:
        return str(etDate)
    if formatDate == "2":
        return str(startNs // NS)
    local = pd.Timestamp(startNs, tz=UTC).tz_convert(_ZONE)
    return f"{local:%Y%m%d %H:%M:%S} {EXCHANGE_TZ}"


def describe(msgId: int, f: list[str]) -> str:
    """Summarise a request in one readable line for the log."""
    g = lambda i: fieldsAt(f, i)  # noqa: E731
    summaries: dict[int, Callable[[], str]] = {
        71: lambda: f"clientId={g(2)}",
        3: lambda: (f"orderId={g(1)} {g(16)} {g(17)} {g(3)} {g(18)} lmt={g(19) or '-'} aux={g(20) or '-'} "
                    f"parentId={g(28)} transmit={g(27)} oca={g(22) or '-'}"),
        4: lambda: f"orderId={g(2)}",
        9: lambda: f"reqId={g(2)} {g(4)} {g(5)} {g(10)} {g(12)}",
        20: lambda: (f"reqId={g(1)} {g(3)} end={g(15)!r} duration={g(17)!r} bar={g(16)!r} useRTH={g(18)} "
                     f"{g(19)} formatDate={g(20)}"),
        25: lambda: f"reqId={g(2)}",
        6: lambda: f"subscribe={g(2)} account={g(3)}",
        7: lambda: f"reqId={g(2)} clientId={g(3)} symbol={g(6) or '*'}",
        62: lambda: f"reqId={g(2)} group={g(3)} tags={len(g(4).split(','))}",
        76: lambda: f"reqId={g(2)} account={g(3)}",
    }
    fn = summaries.get(msgId)
    return fn() if fn else ""
