"""Our account at IB outside a backtrader run: today's executions, open orders, positions and marks as plain
records, and the two order actions the live engine takes there (cancel our open orders, send a flatten order).

The live engine's recovery (adopting trades its state store lost) and its flatten use these; the strategy's
own orders go through :class:`~feeds.ib.broker.IBBroker`. Every function needs a connected session.
"""

from __future__ import annotations

import logging

from ib_async import MarketOrder

from feeds.ib.journal import OrderJournal
from feeds.ib.mapping import (
    ExecutionRecord,
    OpenOrderRecord,
    OrderRef,
    execution_records,
    open_order_records,
    parse_order_ref,
)
from feeds.ib.session import IBSession

logger = logging.getLogger(__name__)


def executions(session: IBSession, strategy_id: str) -> list[ExecutionRecord]:
    """Request today's executions of this client; return ours that have IB's commission report."""
    session.ib.reqExecutions()
    return execution_records(session.ib.fills(), strategy_id)


def open_orders(session: IBSession, strategy_id: str) -> list[OpenOrderRecord]:
    """Request every open order of the account; return ours (in any IB status)."""
    return open_order_records(session.ib.reqAllOpenOrders(), strategy_id)


def positions(session: IBSession) -> dict[str, float]:
    """Return IB's position per symbol in the session's account (ours and anything else)."""
    return {p.contract.symbol: float(p.position) for p in session.ib.positions(session.account)}


def marks(session: IBSession) -> dict[str, float]:
    """Return IB's portfolio price per symbol in the session's account."""
    return {p.contract.symbol: float(p.marketPrice) for p in session.ib.portfolio(session.account)}


def cancel_open_orders(session: IBSession, strategy_id: str) -> list[str]:
    """Cancel every open order of ours that is not done; return their ``orderRef``."""
    cancelled = []
    for trade in session.ib.reqAllOpenOrders():
        if parse_order_ref(trade.order.orderRef, strategy_id) is not None and not trade.isDone():
            logger.warning("flatten: cancelling %s", trade.order.orderRef)
            session.ib.cancelOrder(trade.order)
            cancelled.append(trade.order.orderRef)
    return cancelled


def place_flatten_order(session: IBSession, journal: OrderJournal, ref: OrderRef, quantity: float) -> None:
    """Journal, then send, a market SELL of ``quantity`` shares under ``ref`` (an exit of a flatten)."""
    order = MarketOrder("SELL", quantity, orderRef=str(ref), account=session.account, tif="DAY")
    order.orderId = session.ib.client.getReqId()
    journal.put_order(str(ref), symbol=ref.symbol, trade_id=ref.trade_id, role=ref.role, action="SELL",
                      quantity=quantity, order_type="MKT", price=None, ib_order_id=order.orderId)
    logger.warning("flatten: SELL %g %s at market (%s)", quantity, ref.symbol, ref)
    session.ib.placeOrder(session.contract(ref.symbol), order)
