"""Pure mapping tables between backtrader and IB: order types, order statuses, account tags, ``orderRef``, and
IB's executions and open orders as the plain records the rest of the system reads.

Nothing here talks to IB or keeps state, so every rule is testable on its own (nautilus_trader's IB adapter
keeps the same split: ``parsing/`` beside ``execution.py``). :func:`execution_record` is the one mapping of an IB
fill (execution plus commission report) onto the fill we store; :func:`open_order_record` the one of an open
order.

``orderRef`` identifies strategy, symbol, trade and the order's role in the trade::

    mlx:SYNA:20240104-1015:entry     market buy decided on the 10:15 bar (New York time)
    mlx:SYNA:20240104-1015:stop      native bracket child (STP), OCA with the target
    mlx:SYNA:20240104-1015:target    native bracket child (LMT)
    mlx:SYNA:20240104-1015:exit      market sell of a time exit (max hold, end of day) or a flatten

The trade id is the signal bar's exchange-local start time, so one bar can never open two trades and a
restarted process recognises every order it sent before.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import backtrader as bt

from core.calendar import parse_exchange_time, to_exchange, to_utc

logger = logging.getLogger(__name__)

ENTRY, STOP, TARGET, EXIT = "entry", "stop", "target", "exit"
ROLES: Final = (ENTRY, STOP, TARGET, EXIT)
PROTECTIVE: Final = (STOP, TARGET)
#: The IB ``orderType`` the broker sends for each role (entry and time exit at market, a native bracket's
#: stop and target children).
ORDER_TYPE_OF_ROLE: Final[dict[str, str]] = {ENTRY: "MKT", STOP: "STP", TARGET: "LMT", EXIT: "MKT"}

#: backtrader execution type → IB ``orderType``.
BT_EXECTYPE_TO_IB: Final[dict[int, str]] = {
    bt.Order.Market: "MKT",
    bt.Order.Limit: "LMT",
    bt.Order.Stop: "STP",
    bt.Order.StopLimit: "STP LMT",
}

#: IB order status → backtrader status to notify (``None``: nothing to tell the strategy). ``Filled`` is
#: not here: fills are notified from executions with their commission reports, never from a status.
IB_TO_BT_STATUS: Final[dict[str, int | None]] = {
    "PendingSubmit": None,
    "ApiPending": None,
    "PendingCancel": None,
    "ApiUpdate": None,
    "PreSubmitted": bt.Order.Accepted,
    "Submitted": bt.Order.Accepted,
    "Cancelled": bt.Order.Canceled,
    "ApiCancelled": bt.Order.Canceled,
    "Inactive": bt.Order.Rejected,
    "ValidationError": None,
    "Filled": None,
}

#: IB statuses after which an order can no longer fill.
IB_DONE_STATUSES: Final = frozenset({"Filled", "Cancelled", "ApiCancelled", "Inactive"})

#: Account value tags (USD) the broker reads.
TAG_VALUE: Final = "NetLiquidation"
TAG_CASH: Final = "TotalCashValue"

TICK: Final = 0.01  # US stocks priced at $1 or more

_TRADE_ID_FORMAT: Final = "%Y%m%d-%H%M"
_REF_RE: Final = re.compile(r"^(?P<sid>[A-Za-z0-9]{1,8}):(?P<sym>[A-Z0-9.\-]{1,12}):(?P<tid>\d{8}-\d{4}):"
                            r"(?P<role>entry|stop|target|exit)$")


@dataclass(frozen=True)
class OrderRef:
    """A parsed ``orderRef``: strategy id, symbol, trade id and role."""

    strategy_id: str
    symbol: str
    trade_id: str
    role: str

    def __str__(self) -> str:
        return f"{self.strategy_id}:{self.symbol}:{self.trade_id}:{self.role}"

    def with_role(self, role: str) -> OrderRef:
        """Return the ``orderRef`` of another order of the same trade."""
        return OrderRef(self.strategy_id, self.symbol, self.trade_id, role)


def trade_id_for(bar_time: datetime) -> str:
    """Return the trade id of an entry decided on the bar starting at ``bar_time`` (``YYYYMMDD-HHMM``, NY)."""
    if bar_time.tzinfo is None:
        raise ValueError("trade_id_for needs a timezone-aware bar time")
    return to_exchange(bar_time).strftime(_TRADE_ID_FORMAT)


def trade_start(trade_id: str) -> datetime:
    """Return the start (UTC) of the signal bar a trade id names (the inverse of :func:`trade_id_for`)."""
    return parse_exchange_time(trade_id, _TRADE_ID_FORMAT)


def parse_order_ref(text: str | None, strategy_id: str | None = None) -> OrderRef | None:
    """Return the parsed ``orderRef``, or ``None`` when it is not one of ours (or of ``strategy_id``)."""
    match = _REF_RE.match(text or "")
    if match is None:
        return None
    ref = OrderRef(match["sid"], match["sym"], match["tid"], match["role"])
    if strategy_id is not None and ref.strategy_id != strategy_id:
        return None
    return ref


def round_to_tick(price: float, tick: float = TICK) -> float:
    """Round a price to the nearest tick (IB rejects other prices with 110)."""
    if not math.isfinite(price):
        raise ValueError(f"price {price!r} is not finite")
    return round(round(price / tick) * tick, 2)


def bracket_prices(reference: float, stop_loss: float, take_profit: float) -> tuple[float, float]:
    """Return ``(stop, target)`` prices around ``reference`` rounded to the tick."""
    return round_to_tick(reference * (1.0 - stop_loss)), round_to_tick(reference * (1.0 + take_profit))


def order_fields(action: str, quantity: float, exectype: int, price: float | None) -> dict[str, object]:
    """Return IB ``Order`` fields for a backtrader order (action ``BUY``/``SELL``; prices tick-rounded).

    Raises
    ------
    ValueError
        For an execution type IB orders are not built for here (trailing, close).
    """
    if exectype not in BT_EXECTYPE_TO_IB:
        raise ValueError(f"execution type {exectype} is not supported by the IB broker")
    kind = BT_EXECTYPE_TO_IB[exectype]
    fields: dict[str, object] = {"action": action, "totalQuantity": float(abs(quantity)), "orderType": kind,
                                 "tif": "DAY"}
    if kind == "LMT":
        fields["lmtPrice"] = round_to_tick(float(price or 0.0))
    elif kind == "STP":
        fields["auxPrice"] = round_to_tick(float(price or 0.0))
    return fields


def is_paper_account(account: str) -> bool:
    """Return whether ``account`` is an IB paper account id (``DU…``)."""
    return account.upper().startswith("DU")


@dataclass(frozen=True)
class ExecutionRecord:
    """One IB execution of ours with IB's commission: the fill the order journal stores and adoption reads.

    ``time`` is UTC. ``order_id`` and ``perm_id`` are IB's ids of the order: known when the record is made from
    IB's answer, 0 when it is read back from the journal (which does not store them).
    """

    exec_id: str
    order_ref: str
    symbol: str
    side: str  # IB's BOT / SLD
    shares: float
    price: float
    time: datetime
    commission: float
    order_id: int = 0
    perm_id: int = 0

    @property
    def signed_shares(self) -> float:
        """Return the shares bought (positive) or sold (negative)."""
        return self.shares if self.side == "BOT" else -self.shares

    @property
    def role(self) -> str | None:
        """Return the role of the order it filled (``None`` for an ``orderRef`` that is not ours)."""
        ref = parse_order_ref(self.order_ref)
        return None if ref is None else ref.role


@dataclass(frozen=True)
class OpenOrderRecord:
    """One order of ours that IB reports as open (``reqAllOpenOrders``): its role, IB status and prices."""

    order_ref: str
    symbol: str
    trade_id: str
    role: str
    status: str
    order_type: str
    quantity: float
    price: float | None  # the limit price of an LMT, the stop price of an STP
    order_id: int = 0
    perm_id: int = 0

    @property
    def working(self) -> bool:
        """Return whether it can still fill (its IB status is not a final one)."""
        return self.status not in IB_DONE_STATUSES


def execution_record(fill: Any, strategy_id: str | None = None) -> ExecutionRecord | None:
    """Return an ib_async ``Fill`` of ours as the fill we store (the one IB fill → stored fill mapping).

    ``None`` when its ``orderRef`` is not ours (of ``strategy_id``), or while IB's commission report, which
    carries the commission, has not arrived.
    """
    ex, report = fill.execution, fill.commissionReport
    ref = parse_order_ref(ex.orderRef, strategy_id)
    if ref is None or not report.execId:
        return None
    time = to_utc(ex.time) if isinstance(ex.time, datetime) else datetime.now(UTC)
    return ExecutionRecord(exec_id=ex.execId, order_ref=str(ref), symbol=ref.symbol, side=ex.side,
                           shares=float(ex.shares), price=float(ex.price), time=time,
                           commission=float(report.commission or 0.0), order_id=int(ex.orderId or 0),
                           perm_id=int(ex.permId or 0))


def execution_records(fills: Iterable[Any], strategy_id: str | None = None) -> list[ExecutionRecord]:
    """Return the fills of ours (with their commission reports) among ib_async ``Fill`` objects."""
    return [r for f in fills if (r := execution_record(f, strategy_id)) is not None]


def open_order_record(trade: Any, strategy_id: str | None = None) -> OpenOrderRecord | None:
    """Return an ib_async ``Trade`` (an open order) of ours as a record; ``None`` when it is not ours."""
    order = trade.order
    ref = parse_order_ref(order.orderRef, strategy_id)
    if ref is None:
        return None
    price = None
    if order.orderType in {"LMT", "STP"}:
        price = float(order.lmtPrice if order.orderType == "LMT" else order.auxPrice)
    return OpenOrderRecord(order_ref=str(ref), symbol=ref.symbol, trade_id=ref.trade_id, role=ref.role,
                           status=trade.orderStatus.status, order_type=order.orderType,
                           quantity=float(order.totalQuantity), price=price, order_id=int(order.orderId or 0),
                           perm_id=int(order.permId or 0))


def open_order_records(trades: Iterable[Any], strategy_id: str | None = None) -> list[OpenOrderRecord]:
    """Return the orders of ours among ib_async ``Trade`` objects (open orders)."""
    return [r for t in trades if (r := open_order_record(t, strategy_id)) is not None]
