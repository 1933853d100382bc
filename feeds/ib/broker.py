"""``IBBroker``: backtrader's broker interface on an IB account, with native brackets and crash-safe state.

How ``MLStrategy``'s orders map onto IB (the strategy code is the backtest's, unchanged):

- **Entry** (``buy``, market): one native bracket goes out at once — parent ``MKT BUY`` plus two children,
  ``LMT SELL`` (target) and ``STP SELL`` (stop), linked by ``parentId`` and one OCA group, transmitted by the
  last child only. The children are priced from the signal bar's close, so the position is protected at IB
  from its first fill even if this process dies.
- **Stop / target** (the strategy's ``sell`` Stop and Limit-with-OCO after the entry fill, as in the
  backtest): the broker does not send new orders; it *adopts* the bracket's children for them and modifies
  their prices to the fill-relative ones the strategy asks for.
- **Time exits** (``cancel`` of both children then a market ``sell``): the sell is held until IB confirms
  both children cancelled — if one of them fills first, the exit is dropped (notified ``Canceled``), so a
  race can never leave a short position.
- Every order carries an ``orderRef`` (:mod:`feeds.ib.mapping`) and is written to the order journal
  (:class:`~feeds.ib.journal.OrderJournal`, which the live engine provides) **before** it is sent; an
  ``orderRef`` already known is never sent again.
- Statuses map through :data:`feeds.ib.mapping.IB_TO_BT_STATUS`; fills (:func:`feeds.ib.mapping.execution_record`)
  are applied once per ``execId`` with IB's commission from the commission report; a rejection (201 …) or a
  send that fails is a ``Rejected`` order notification, never an exception.
- Cash and value are IB's ``TotalCashValue`` / ``NetLiquidation``. Positions are *ours* (built from our own
  fills), so anything else in the account is left alone.
- After a restart the live engine hands each open trade's journaled orders to :meth:`IBBroker.restore_orders`,
  which tracks them again, rebooks their fills and returns the backtrader twins the strategy's book points at
  (the broker never touches the strategy). At start and after every re-sync :meth:`IBBroker.reconcile`
  replays today's executions (fills missed while disconnected or dead included), re-binds open orders by
  ``orderRef`` and reports anything it does not recognise.
- ``dry_run``: every order is logged and cancelled at once; nothing is sent.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict, deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import backtrader as bt
from ib_async import Order, Stock, Trade

from core.calendar import to_utc
from feeds.ib.errors import ErrorKind, classify
from feeds.ib.journal import OrderJournal
from feeds.ib.mapping import (
    ENTRY,
    EXIT,
    IB_DONE_STATUSES,
    IB_TO_BT_STATUS,
    PROTECTIVE,
    STOP,
    TAG_CASH,
    TAG_VALUE,
    TARGET,
    OrderRef,
    bracket_prices,
    execution_record,
    order_fields,
    parse_order_ref,
    round_to_tick,
    trade_id_for,
)
from feeds.ib.session import IBSession

logger = logging.getLogger(__name__)

_EPS = 1e-9


@dataclass
class TrackedOrder:
    """One of our IB orders: its ``orderRef``, the IB order, its backtrader twin and the fills not yet told."""

    ref: OrderRef
    data: Any
    ib_order: Order
    status: str = "Intent"
    filled: float = 0.0
    bt_order: bt.Order | None = None
    pending: list[tuple[Any, ...]] = field(default_factory=list)  # executions booked before a bt twin existed
    cancel_sent: bool = False

    @property
    def done(self) -> bool:
        return self.status in IB_DONE_STATUSES or self.status in {"Lost", "DryRun", "SendFailed"}


class IBBroker(bt.BrokerBase):
    """backtrader broker on an IB account (see the module docstring).

    Parameters
    ----------
    session
        The :class:`~feeds.ib.session.IBSession` (connected before ``cerebro.run``).
    journal
        The :class:`~feeds.ib.journal.OrderJournal` orders and fills are written to before the broker acts.
    strategy_id
        ``orderRef`` prefix (``cfg.live.strategy_id``).
    dry_run
        Log orders, send nothing.
    stop_loss, take_profit
        Fractions for the bracket children sent with the entry (the strategy's parameters).
    hold_notifications
        Asked before each order notification is handed out: while it returns True they are held (the engine
        holds them while warm-up history is replayed). Never held by default.
    """

    params = (
        ("session", None),
        ("journal", None),
        ("strategy_id", "mlx"),
        ("dry_run", False),
        ("stop_loss", 0.004),
        ("take_profit", 0.006),
        ("hold_notifications", None),
    )

    def __init__(self) -> None:
        super().__init__()
        self.session: IBSession = self.p.session
        self.journal: OrderJournal = self.p.journal
        self.ib = self.session.ib
        self.notifs: deque[bt.Order] = deque()
        self._hold_notifications: Callable[[], bool] = self.p.hold_notifications or (lambda: False)
        self.positions: defaultdict[Any, bt.Position] = defaultdict(bt.Position)
        self.tracked: dict[str, TrackedOrder] = {}
        self._by_bt: dict[int, TrackedOrder] = {}
        self._by_ib_id: dict[int, TrackedOrder] = {}
        self._trade_of: dict[str, str] = {}
        self._datas: dict[str, Any] = {}
        self._pending_exits: list[TrackedOrder] = []
        self._orphans: list[TrackedOrder] = []  # children of a dead entry, cancelled from next()
        self._warned: set[str] = set()
        self._cash = self._value = math.nan
        self.sent: list[str] = []  # orderRefs sent in this process (tests, duplicate checks)

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Know cerebro's feeds by name; subscribe to IB's order events and the session's errors and re-syncs."""
        super().start()
        cerebro = getattr(self, "cerebro", None)  # set by cerebro.setbroker
        for data in cerebro.datas if cerebro is not None else ():
            self._datas[data._name] = data
        self.startingcash = self.getcash()
        self.startingvalue = self.getvalue()
        self.ib.orderStatusEvent += self._on_order_status
        self.ib.commissionReportEvent += self._on_commission
        self.session.on_error.append(self._on_error)
        self.session.on_resync.append(self.reconcile)

    def stop(self) -> None:
        """Unsubscribe (the state store stays open for the caller)."""
        super().stop()
        self.ib.orderStatusEvent -= self._on_order_status
        self.ib.commissionReportEvent -= self._on_commission
        if self._on_error in self.session.on_error:
            self.session.on_error.remove(self._on_error)
        if self.reconcile in self.session.on_resync:
            self.session.on_resync.remove(self.reconcile)

    # -- account ----------------------------------------------------------------------------------
    def _account_value(self, tag: str) -> float | None:
        for v in self.ib.accountValues(self.session.account):
            if v.tag == tag and v.currency in {"USD", "BASE"}:
                try:
                    return float(v.value)
                except ValueError:
                    return None
        return None

    def getcash(self) -> float:
        """Return IB's ``TotalCashValue`` (the last known value while disconnected)."""
        value = self._account_value(TAG_CASH)
        if value is not None:
            self._cash = value
        return self._cash

    def getvalue(self, datas: Any = None) -> float:
        """Return IB's ``NetLiquidation`` (the last known value while disconnected)."""
        value = self._account_value(TAG_VALUE)
        if value is not None:
            self._value = value
        return self._value

    def get_cash(self) -> float:
        """Alias of :meth:`getcash` (backtrader spells it both ways)."""
        return self.getcash()

    def get_value(self, datas: Any = None) -> float:
        """Alias of :meth:`getvalue`."""
        return self.getvalue(datas)

    def getposition(self, data: Any, clone: bool = True) -> bt.Position:
        """Return *our* position in ``data`` (built from our own fills)."""
        pos = self.positions[data]
        return pos.clone() if clone else pos

    def trade_id_of(self, symbol: str) -> str | None:
        """Return the trade id of ``symbol``'s current (or last) trade, if this broker knows one."""
        return self._trade_of.get(symbol)

    @property
    def exits_on_hold(self) -> int:
        """Return how many market exits wait for IB to confirm their protective children cancelled."""
        return len(self._pending_exits)

    # -- notifications ----------------------------------------------------------------------------
    def notify(self, order: bt.Order) -> None:
        """Queue a copy of ``order`` for the strategy."""
        self.notifs.append(order.clone())

    def get_notification(self) -> bt.Order | None:
        """Return the next notification (none while warm-up history is still being replayed)."""
        if not self.notifs or self._hold_notifications():
            return None
        return self.notifs.popleft()

    def next(self) -> None:
        """Send exits whose protective children are confirmed cancelled (called by cerebro every loop)."""
        if self._pending_exits:
            self._release_exits()
        while self._orphans:
            self._cancel_ib(self._orphans.pop())

    # -- orders from the strategy -----------------------------------------------------------------
    def _accept(self, order: bt.Order) -> bt.Order:
        """Attach commission info, remember the feed, and notify the order as Submitted."""
        order.addcomminfo(self.getcommissioninfo(order.data))
        self._datas[order.data._name] = order.data
        order.submit(self)
        self.notify(order)
        return order

    def buy(self, owner: Any, data: Any, size: float, price: float | None = None, plimit: float | None = None,
            exectype: int | None = None, valid: Any = None, tradeid: int = 0, oco: Any = None,
            trailamount: float | None = None, trailpercent: float | None = None, parent: Any = None,
            transmit: bool = True, **kwargs: Any) -> bt.Order:
        """Submit an entry: a native bracket (market parent, stop and target children)."""
        order = self._accept(bt.BuyOrder(owner=owner, data=data, size=size, price=price, pricelimit=plimit,
                                         exectype=exectype, valid=valid, tradeid=tradeid, oco=oco, parent=parent,
                                         transmit=transmit))
        if order.exectype != bt.Order.Market:
            return self._refuse(order, "only market entries are supported")
        tid = trade_id_for(to_utc(bt.num2date(data.datetime[0])))
        ref = OrderRef(self.p.strategy_id, data._name, tid, ENTRY)
        if str(ref) in self.tracked or self.journal.order(str(ref)) is not None:
            return self._refuse(order, f"{ref} was sent before; never twice")
        if self.p.dry_run:
            return self._dry_run(order, ref)
        if not self.session.connected:
            return self._refuse(order, "not connected to IB")
        self._send_bracket(order, ref, float(data.close[0]))
        return order

    def sell(self, owner: Any, data: Any, size: float, price: float | None = None, plimit: float | None = None,
             exectype: int | None = None, valid: Any = None, tradeid: int = 0, oco: Any = None,
             trailamount: float | None = None, trailpercent: float | None = None, parent: Any = None,
             transmit: bool = True, **kwargs: Any) -> bt.Order:
        """Adopt a bracket child (Stop / Limit) or submit a market exit."""
        order = self._accept(bt.SellOrder(owner=owner, data=data, size=size, price=price, pricelimit=plimit,
                                          exectype=exectype, valid=valid, tradeid=tradeid, oco=oco, parent=parent,
                                          transmit=transmit))
        tid = self._trade_of.get(data._name)
        if tid is None:
            tid = trade_id_for(to_utc(bt.num2date(data.datetime[0])))
            self._trade_of[data._name] = tid
        ref = OrderRef(self.p.strategy_id, data._name, tid, EXIT)
        role = {bt.Order.Stop: STOP, bt.Order.Limit: TARGET}.get(order.exectype)
        if role is not None:
            rec = self.tracked.get(str(ref.with_role(role)))
            if rec is not None and rec.bt_order is None:
                self._adopt(rec, order)
                return order
        if order.exectype != bt.Order.Market:
            return self._refuse(order, "no bracket child to adopt for a stop/limit sell")
        if self.p.dry_run:
            return self._dry_run(order, ref)
        return self._submit_exit(order, ref)

    def cancel(self, order: bt.Order) -> None:
        """Cancel the IB order behind ``order`` (the confirmation arrives as an order event)."""
        rec = self._by_bt.get(order.ref)
        if rec is None or not order.alive():
            return
        if rec in self._pending_exits:
            self._pending_exits.remove(rec)
            rec.status = "Cancelled"
            self.journal.update_order(str(rec.ref), status="Cancelled")
            self._set_status(order, bt.Order.Canceled)
            return
        if self.p.dry_run or rec.done:
            return
        self._cancel_ib(rec)

    def orderstatus(self, order: bt.Order) -> int:
        """Return the status of ``order``."""
        rec = self._by_bt.get(order.ref)
        return order.status if rec is None or rec.bt_order is None else rec.bt_order.status

    # -- sending ----------------------------------------------------------------------------------
    def _contract(self, symbol: str) -> Stock:
        return self.session.contract(symbol)

    def _new_rec(self, ref: OrderRef, data: Any, fields: dict[str, Any], **extra: Any) -> TrackedOrder:
        ib_order = Order(orderId=self.ib.client.getReqId(), orderRef=str(ref), account=self.session.account,
                         **fields, **extra)
        rec = TrackedOrder(ref, data, ib_order)
        self.tracked[str(ref)] = rec
        self._by_ib_id[ib_order.orderId] = rec
        return rec

    def _persist(self, rec: TrackedOrder) -> None:
        o = rec.ib_order
        raw = o.lmtPrice if o.orderType == "LMT" else o.auxPrice if o.orderType == "STP" else None
        price = None if raw is None else float(raw)
        self.journal.put_order(str(rec.ref), symbol=rec.ref.symbol, trade_id=rec.ref.trade_id, role=rec.ref.role,
                             action=o.action, quantity=o.totalQuantity, order_type=o.orderType, price=price,
                             status=rec.status, ib_order_id=o.orderId)

    def _send_bracket(self, order: bt.Order, ref: OrderRef, reference: float) -> None:
        data, qty = order.data, abs(order.size)
        stop_px, target_px = bracket_prices(reference, self.p.stop_loss, self.p.take_profit)
        oca = f"{ref.strategy_id}:{ref.symbol}:{ref.trade_id}:oca"
        parent = self._new_rec(ref, data, order_fields("BUY", qty, bt.Order.Market, None), transmit=False)
        pid = parent.ib_order.orderId
        target = self._new_rec(ref.with_role(TARGET), data,
                               order_fields("SELL", qty, bt.Order.Limit, target_px),
                               parentId=pid, ocaGroup=oca, ocaType=1, transmit=False)
        stop = self._new_rec(ref.with_role(STOP), data, order_fields("SELL", qty, bt.Order.Stop, stop_px),
                             parentId=pid, ocaGroup=oca, ocaType=1, transmit=True)
        parent.bt_order = order
        self._by_bt[order.ref] = parent
        self._trade_of[data._name] = ref.trade_id
        with self.journal.transaction():  # the whole bracket is written before any of it is sent
            for rec in (parent, target, stop):
                self._persist(rec)
        logger.info("%s entry: BUY %g MKT, target %.2f, stop %.2f (bracket %d)", ref, qty, target_px, stop_px,
                    pid)
        self._place(parent, target, stop)

    def _place(self, *recs: TrackedOrder) -> bool:
        contract = self._contract(recs[0].ref.symbol)
        for rec in recs:
            try:
                self.ib.placeOrder(contract, rec.ib_order)
            except (ConnectionError, OSError) as exc:
                logger.error("%s: placeOrder failed: %s", rec.ref, exc)
                for r in recs:
                    r.status = "SendFailed"
                    self.journal.update_order(str(r.ref), status="SendFailed")
                    if r.bt_order is not None:
                        self._set_status(r.bt_order, bt.Order.Rejected)
                return False
            rec.status = "PendingSubmit"
            self.journal.update_order(str(rec.ref), status="PendingSubmit")
            self.sent.append(str(rec.ref))
        return True

    def _submit_exit(self, order: bt.Order, ref: OrderRef) -> bt.Order:
        old = self.tracked.get(str(ref))
        if old is not None and not (old.done and old.filled <= _EPS):
            return self._refuse(order, f"{ref} is already working or filled")
        if not self.session.connected:
            return self._refuse(order, "not connected to IB")
        held = self.positions[order.data].size
        qty = min(abs(order.size), held) if held > 0 else abs(order.size)
        rec = self._new_rec(ref, order.data, order_fields("SELL", qty, bt.Order.Market, None))
        rec.bt_order = order
        self._by_bt[order.ref] = rec
        self._persist(rec)
        for child in self._children(ref):
            if not child.done:
                self._cancel_ib(child)
        self._pending_exits.append(rec)
        self._release_exits()
        return order

    def _release_exits(self) -> None:
        for rec in list(self._pending_exits):
            children = self._children(rec.ref)
            if any(c.filled > _EPS for c in children):
                logger.warning("%s: a protective order filled first; exit dropped", rec.ref)
                self._pending_exits.remove(rec)
                rec.status = "Cancelled"
                self.journal.update_order(str(rec.ref), status="Cancelled")
                if rec.bt_order is not None:
                    self._set_status(rec.bt_order, bt.Order.Canceled)
            elif all(c.done for c in children):
                logger.info("%s: SELL %g MKT", rec.ref, rec.ib_order.totalQuantity)
                self._place(rec)
                self._pending_exits.remove(rec)

    def _children(self, ref: OrderRef) -> list[TrackedOrder]:
        return [r for r in (self.tracked.get(str(ref.with_role(role))) for role in PROTECTIVE) if r is not None]

    def _cancel_ib(self, rec: TrackedOrder) -> None:
        if rec.cancel_sent and self.session.connected:
            return
        rec.cancel_sent = True
        try:
            self.ib.cancelOrder(rec.ib_order)
        except (ConnectionError, OSError) as exc:
            logger.error("%s: cancelOrder failed: %s (retried by the next decision)", rec.ref, exc)

    def _adopt(self, rec: TrackedOrder, order: bt.Order) -> None:
        """Bind a strategy stop/target to the bracket child already at IB and move it to the asked price."""
        rec.bt_order = order
        self._by_bt[order.ref] = rec
        ib_order = rec.ib_order
        price = round_to_tick(float(order.price))
        qty = abs(order.size)
        attr = "auxPrice" if rec.ref.role == STOP else "lmtPrice"
        if not rec.done and not self.p.dry_run and (getattr(ib_order, attr) != price
                                                    or ib_order.totalQuantity != qty):
            setattr(ib_order, attr, price)
            ib_order.totalQuantity = qty
            ib_order.transmit = True
            self.journal.update_order(str(rec.ref), price=price, quantity=qty)
            logger.info("%s: modified to %.2f x %g (fill-relative)", rec.ref, price, qty)
            if self.session.connected:
                try:
                    self.ib.placeOrder(self._contract(rec.ref.symbol), ib_order)
                except (ConnectionError, OSError) as exc:
                    logger.error("%s: modify failed: %s; the signal-bar price stays", rec.ref, exc)
        self._sync_status(rec)
        for args in rec.pending:
            self._execute(order, *args)
        rec.pending.clear()

    def _sync_status(self, rec: TrackedOrder) -> None:
        if rec.ref.role == ENTRY and rec.status in {"Inactive", "Cancelled"} and rec.filled <= _EPS:
            self._orphans.extend(c for c in self._children(rec.ref) if not c.done and not c.cancel_sent)
        order = rec.bt_order
        if order is None:
            return
        target = IB_TO_BT_STATUS.get(rec.status)
        if target == bt.Order.Accepted and order.status == bt.Order.Submitted:
            self._set_status(order, bt.Order.Accepted)
        elif target is not None and target in {bt.Order.Canceled, bt.Order.Rejected} and order.alive() \
                and rec.filled <= _EPS:
            self._set_status(order, target)

    def _set_status(self, order: bt.Order, status: int) -> None:
        if status == bt.Order.Accepted:
            order.accept(self)
        elif status == bt.Order.Canceled:
            order.cancel()
        elif status == bt.Order.Rejected:
            order.reject(self)
        self.notify(order)

    def _refuse(self, order: bt.Order, why: str) -> bt.Order:
        logger.warning("%s %s refused: %s", order.data._name, order.ordtypename(), why)
        self._set_status(order, bt.Order.Rejected)
        return order

    def _dry_run(self, order: bt.Order, ref: OrderRef) -> bt.Order:
        logger.info("DRY-RUN: would send %s %s %g %s (nothing sent)", ref, order.ordtypename(), abs(order.size),
                    bt.Order.ExecTypes[order.exectype])
        self._set_status(order, bt.Order.Canceled)
        return order

    # -- IB events (inside the event loop: record and queue, never request) -----------------------
    def _rec_for(self, trade: Trade) -> TrackedOrder | None:
        rec = self.tracked.get(trade.order.orderRef or "")
        if rec is None:
            rec = self._by_ib_id.get(trade.order.orderId)
            if rec is not None and trade.order.orderRef and trade.order.orderRef != str(rec.ref):
                return None
        return rec

    def _on_order_status(self, trade: Trade) -> None:
        rec = self._rec_for(trade)
        if rec is None:
            return
        status = trade.orderStatus.status
        if status == "Cancelled" and trade.log and classify(trade.log[-1].errorCode or 0) is ErrorKind.ORDER_REJECTED:
            status = "Inactive"  # ib_async marks a rejected order Cancelled before the 201 arrives
        if rec.status == "Inactive" and status == "Cancelled":
            return
        rec.status = status
        self.journal.update_order(str(rec.ref), status=status, perm_id=trade.order.permId or None)
        if status == "Inactive":
            logger.warning("%s rejected by IB (%s)", rec.ref, trade.log[-1].message if trade.log else "")
        self._sync_status(rec)

    def _on_error(self, code: int, kind: ErrorKind, req_id: int, message: str) -> None:
        rec = self._by_ib_id.get(req_id)
        if rec is None or kind is not ErrorKind.ORDER_REJECTED:
            return
        if code in {10147, 10148, 104, 161}:
            logger.info("%s IB %d: %s", rec.ref, code, message)
            return  # a cancel or modify that came too late: the order's own status tells the rest
        logger.warning("%s IB %d: %s", rec.ref, code, message)
        if rec.filled <= _EPS and not rec.done:
            rec.status = "Inactive"
            self.journal.update_order(str(rec.ref), status="Inactive")
            self._sync_status(rec)

    def _on_commission(self, trade: Trade, fill: Any, report: Any) -> None:
        self._apply_fill(fill)

    def _apply_fill(self, fill: Any) -> None:
        """Book one IB execution (with its commission report) once, by ``execId``."""
        execution = execution_record(fill, self.p.strategy_id)
        if execution is None or not self.journal.record_fill(execution):
            return
        rec = self.tracked.get(execution.order_ref)
        if rec is None:
            logger.warning("fill %s for %s: an order of ours this process does not know; position left alone",
                           execution.exec_id, execution.order_ref)
            return
        logger.info("%s fill %s %g @ %.4f commission %.2f", execution.order_ref, execution.side, execution.shares,
                    execution.price, execution.commission)
        self._book_fill(rec, execution.signed_shares, execution.price, execution.commission, execution.time,
                        notify=True)

    def _book_fill(self, rec: TrackedOrder, size: float, price: float, comm: float, time: datetime,
                   notify: bool) -> None:
        rec.filled += abs(size)
        self.journal.update_order(str(rec.ref), filled=rec.filled)
        pos = self.positions[rec.data]
        pprice_orig = pos.price
        psize, pprice, opened, closed = pos.update(size, price)
        closedcomm = comm * abs(closed) / abs(size) if size else 0.0
        ci = self.getcommissioninfo(rec.data)
        args = (bt.date2num(time.replace(tzinfo=None)), size, price, closed, ci.getoperationcost(closed, pprice_orig),
                closedcomm, opened, ci.getoperationcost(opened, price), comm - closedcomm, 0.0,
                ci.profitandloss(-closed, pprice_orig, price) if closed else 0.0, psize, pprice)
        if rec.bt_order is None:
            rec.pending.append(args)
        elif notify:
            self._execute(rec.bt_order, *args)

    def _execute(self, order: bt.Order, *args: Any) -> None:
        order.execute(*args)
        if abs(order.executed.size) >= abs(order.size) - _EPS:
            order.completed()
        else:
            order.partial()
        self.notify(order)

    # -- restart and reconnection -----------------------------------------------------------------
    def reconcile(self) -> None:
        """Re-sync with IB: apply today's executions we missed, re-bind open orders, report strangers."""
        if not self.session.connected or self.p.dry_run:
            return
        try:
            self.ib.reqExecutions()
            trades = self.ib.reqAllOpenOrders()
        except (ConnectionError, OSError, TimeoutError) as exc:
            logger.warning("reconcile postponed: %s", exc)
            return
        for fill in sorted(self.ib.fills(), key=lambda f: f.time):
            if fill.commissionReport.execId:
                self._apply_fill(fill)
        for trade in trades:
            self._adopt_open_order(trade)
        self._check_positions()
        logger.info("reconciled with IB: %d open orders of ours, %d fills known",
                    sum(1 for r in self.tracked.values() if not r.done), len(self.journal.fills()))

    def _adopt_open_order(self, trade: Trade) -> None:
        ref = parse_order_ref(trade.order.orderRef, self.p.strategy_id)
        if ref is None:
            key = f"order:{trade.order.permId}"
            if key not in self._warned:
                self._warned.add(key)
                logger.warning("unrecognised open order at IB (permId %s, orderRef %r, %s %s); left alone",
                               trade.order.permId, trade.order.orderRef, trade.order.action, trade.contract.symbol)
            return
        rec = self.tracked.get(str(ref))
        if rec is None:
            logger.warning("open order %s is ours but unknown to the state store; left alone", ref)
            return
        rec.ib_order.orderId = trade.order.orderId or rec.ib_order.orderId
        self._by_ib_id[rec.ib_order.orderId] = rec
        if rec.status != trade.orderStatus.status:
            self._on_order_status(trade)

    def _check_positions(self) -> None:
        ours = {d._name: self.positions[d].size for d in self._datas.values()}
        for p in self.ib.positions(self.session.account):
            symbol = p.contract.symbol
            mine = ours.get(symbol, 0.0)
            if abs(float(p.position) - mine) > _EPS:
                key = f"pos:{symbol}:{p.position}:{mine}"
                if key not in self._warned:
                    self._warned.add(key)
                    logger.warning("IB position %s %g differs from ours %g: the rest is not ours, left alone",
                                   symbol, p.position, mine)

    def restore_orders(self, owner: Any, data: Any, trade_id: str | None, order_rows: Iterable[Mapping[str, Any]],
                       bound_roles: Collection[str]) -> dict[str, bt.Order]:
        """Track one trade's journaled orders again after a restart; return the twins of ``bound_roles`` by role.

        Each row becomes an order of ours again (IB's events find it by ``orderRef`` and order id) and the
        journal's fills of each are booked into our position once more. The orders of ``bound_roles`` (those the
        strategy's book was tracking) get a backtrader twin owned by ``owner`` and their fills are notified to
        it; the fills of the others only move the position. The broker keeps no reference to the strategy: the
        caller puts the returned twins into the strategy's book.

        Parameters
        ----------
        owner
            The strategy the twins belong to (backtrader routes their notifications to it).
        data
            The symbol's feed.
        trade_id
            The trade the rows belong to (``orderRef``'s trade id; None when the book never learnt it).
        order_rows
            The journal's order rows of the trade.
        bound_roles
            The roles (``entry``, ``stop``, ``target``, ``exit``) whose orders the book was tracking.
        """
        self._datas[data._name] = data
        if trade_id is not None:
            self._trade_of[data._name] = trade_id
        twins: dict[str, bt.Order] = {}
        for row in order_rows:
            ref = parse_order_ref(row["order_ref"])
            if ref is not None:
                twin = self._restore_order(owner, data, ref, row, ref.role in bound_roles)
                if twin is not None:
                    twins[ref.role] = twin
        return twins

    def _restore_order(self, owner: Any, data: Any, ref: OrderRef, row: Mapping[str, Any],
                       bound: bool) -> bt.Order | None:
        extra = {}
        if row["order_type"] == "LMT":
            extra["lmtPrice"] = row["price"]
        elif row["order_type"] == "STP":
            extra["auxPrice"] = row["price"]
        ib_order = Order(orderId=int(row["ib_order_id"] or 0), clientId=self.ib.client.clientId,
                         orderRef=row["order_ref"], action=row["action"],
                         totalQuantity=float(row["quantity"]), orderType=row["order_type"], tif="DAY",
                         account=self.session.account, **extra)
        rec = TrackedOrder(ref, data, ib_order, status=row["status"])
        self.tracked[str(ref)] = rec
        self._by_ib_id[ib_order.orderId] = rec
        twin = self._rebind(owner, rec, row) if bound else None
        for f in self.journal.fills(str(ref)):
            self._book_fill(rec, f.signed_shares, f.price, f.commission, f.time, notify=bound)
        if not bound:
            rec.pending.clear()
        self._sync_status(rec)
        return twin

    def _rebind(self, owner: Any, rec: TrackedOrder, row: Mapping[str, Any]) -> bt.Order:
        """Give a restored order a backtrader twin (the restored book points at it)."""
        role, data = rec.ref.role, rec.data
        cls = bt.BuyOrder if role == ENTRY else bt.SellOrder
        exectype = {"MKT": bt.Order.Market, "LMT": bt.Order.Limit, "STP": bt.Order.Stop}[row["order_type"]]
        order = cls(owner=owner, data=data, size=float(row["quantity"]), price=row["price"], exectype=exectype,
                    simulated=True)
        order.addcomminfo(self.getcommissioninfo(data))
        order.submit(self)
        rec.bt_order = order
        self._by_bt[order.ref] = rec
        if IB_TO_BT_STATUS.get(rec.status) == bt.Order.Accepted:
            order.accept(self)
        return order
