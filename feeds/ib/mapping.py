"""Pure mapping tables between backtrader and IB: order types, order statuses, account tags, ``orderRef``.

Nothing here talks to IB or keeps state, so every rule is testable on its own (nautilus_trader's IB adapter
keeps the same split: ``parsing/`` beside ``execution.py``).

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
from dataclasses import dataclass
from datetime import datetime
from typing import Final
from zoneinfo import ZoneInfo

import backtrader as bt

logger = logging.getLogger(__name__)

EXCHANGE_TZ: Final = ZoneInfo("America/New_York")

ENTRY, STOP, TARGET, EXIT = "entry", "stop", "target", "exit"
ROLES: Final = (ENTRY, STOP, TARGET, EXIT)
PROTECTIVE: Final = (STOP, TARGET)

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
    return bar_time.astimezone(EXCHANGE_TZ).strftime("%Y%m%d-%H%M")


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
