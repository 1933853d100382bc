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
- Every order carries an ``orderRef`` (:mod:`feeds.ib.mapping`) and is written to the
  :class:`~feeds.ib.state.StateStore` **before** it is sent; an ``orderRef`` already known is never sent again.
- Statuses map through :data:`feeds.ib.mapping.IB_TO_BT_STATUS`; fills are applied once per ``execId`` with
  IB's commission from the commission report; a rejection (201 …) or a send that fails is a ``Rejected``
  order notification, never an exception.
- Cash and value are IB's ``TotalCashValue`` / ``NetLiquidation``. Positions are *ours* (built from our own
  fills), so anything else in the account is left alone.
- At start and after every re-sync :meth:`IBBroker.reconcile` replays today's executions (fills missed
  while disconnected or dead included), re-binds open orders by ``orderRef`` and reports anything it does
  not recognise. Trades of ours the state store lost are adopted before :meth:`IBBroker.restore` by
  :mod:`feeds.ib.adopt`.
- ``dry_run``: every order is logged and cancelled at once; nothing is sent.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import backtrader as bt
from ib_async import Order, Stock, Trade

from feeds.ib import mapping as mp
from feeds.ib.errors import ErrorKind, classify
from feeds.ib.session import IBSession
from feeds.ib.state import StateStore

logger = logging.getLogger(__name__)

_EPS = 1e-9


@dataclass
class _Rec:
    """One of our IB orders: its ``orderRef``, the IB order, its backtrader twin and the fills not yet told."""

    ref: mp.OrderRef
    data: Any
    ib_order: Order
    status: str = "Intent"
    filled: float = 0.0
    bt_order: bt.Order | None = None
    pending: list[tuple[Any, ...]] = field(default_factory=list)  # executions booked before a bt twin existed
    cancel_sent: bool = False

    @property
    def done(self) -> bool:
        return self.status in mp.IB_DONE_STATUSES or self.status in {"Lost", "DryRun", "SendFailed"}


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


class IBBroker(bt.BrokerBase):
    """backtrader broker on an IB account (see the module docstring).

    Parameters
    ----------
    session
        The :class:`~feeds.ib.session.IBSession` (connected before ``cerebro.run``).
    state
        The :class:`~feeds.ib.state.StateStore`.
    strategy_id
        ``orderRef`` prefix (``cfg.live.strategy_id``).
    dry_run
        Log orders, send nothing.
    stop_loss, take_profit
        Fractions for the bracket children sent with the entry (the strategy's parameters).
    """

    params = (
        ("session", None),
        ("state", None),
        ("strategy_id", "mlx"),
        ("dry_run", False),
        ("stop_loss", 0.004),
        ("take_profit", 0.006),
    )

    def __init__(self) -> None:
        super().__init__()
        self.session: IBSession = self.p.session
        self.state: StateStore = self.p.state
        self.ib = self.session.ib
        self.notifs: deque[bt.Order] = deque()
        self.hold_notifications: Callable[[], bool] = lambda: False
        self.positions: defaultdict[Any, bt.Position] = defaultdict(bt.Position)
        self.recs: dict[str, _Rec] = {}
        self._by_bt: dict[int, _Rec] = {}
        self._by_ib_id: dict[int, _Rec] = {}
        self._trade_of: dict[str, str] = {}
        self._datas: dict[str, Any] = {}
        self._pending_exits: list[_Rec] = []
        self._orphans: list[_Rec] = []  # children of a dead entry, cancelled from next()
        self._warned: set[str] = set()
        self._cash = self._value = math.nan
        self.sent: list[str] = []  # orderRefs sent in this process (tests, duplicate checks)

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Subscribe to IB's order events and the session's errors and re-syncs."""
        super().start()
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
        value = self._account_value(mp.TAG_CASH)
        if value is not None:
            self._cash = value
        return self._cash

    def getvalue(self, datas: Any = None) -> float:
        """Return IB's ``NetLiquidation`` (the last known value while disconnected)."""
        value = self._account_value(mp.TAG_VALUE)
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

    # -- notifications ----------------------------------------------------------------------------
    def notify(self, order: bt.Order) -> None:
        """Queue a copy of ``order`` for the strategy."""
        self.notifs.append(order.clone())

    def get_notification(self) -> bt.Order | None:
        """Return the next notification (none while warm-up history is still being replayed)."""
        if not self.notifs or self.hold_notifications():
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
        tid = mp.trade_id_for(_utc(bt.num2date(data.datetime[0])))
        ref = mp.OrderRef(self.p.strategy_id, data._name, tid, mp.ENTRY)
        if str(ref) in self.recs or self.state.order(str(ref)) is not None:
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
            tid = mp.trade_id_for(_utc(bt.num2date(data.datetime[0])))
            self._trade_of[data._name] = tid
        ref = mp.OrderRef(self.p.strategy_id, data._name, tid, mp.EXIT)
        role = {bt.Order.Stop: mp.STOP, bt.Order.Limit: mp.TARGET}.get(order.exectype)
        if role is not None:
            rec = self.recs.get(str(ref.with_role(role)))
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
            self.state.update_order(str(rec.ref), status="Cancelled")
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

    def _new_rec(self, ref: mp.OrderRef, data: Any, fields: dict[str, Any], **extra: Any) -> _Rec:
        ib_order = Order(orderId=self.ib.client.getReqId(), orderRef=str(ref), account=self.session.account,
                         **fields, **extra)
        rec = _Rec(ref, data, ib_order)
        self.recs[str(ref)] = rec
        self._by_ib_id[ib_order.orderId] = rec
        return rec

    def _persist(self, rec: _Rec) -> None:
        o = rec.ib_order
        raw = o.lmtPrice if o.orderType == "LMT" else o.auxPrice if o.orderType == "STP" else None
        price = None if raw is None else float(raw)
        self.state.put_order(str(rec.ref), symbol=rec.ref.symbol, trade_id=rec.ref.trade_id, role=rec.ref.role,
                             action=o.action, quantity=o.totalQuantity, order_type=o.orderType, price=price,
                             status=rec.status, ib_order_id=o.orderId)

    def _send_bracket(self, order: bt.Order, ref: mp.OrderRef, reference: float) -> None:
        data, qty = order.data, abs(order.size)
        stop_px, target_px = mp.bracket_prices(reference, self.p.stop_loss, self.p.take_profit)
        oca = f"{ref.strategy_id}:{ref.symbol}:{ref.trade_id}:oca"
        parent = self._new_rec(ref, data, mp.order_fields("BUY", qty, bt.Order.Market, None), transmit=False)
        pid = parent.ib_order.orderId
        target = self._new_rec(ref.with_role(mp.TARGET), data,
                               mp.order_fields("SELL", qty, bt.Order.Limit, target_px),
                               parentId=pid, ocaGroup=oca, ocaType=1, transmit=False)
        stop = self._new_rec(ref.with_role(mp.STOP), data, mp.order_fields("SELL", qty, bt.Order.Stop, stop_px),
                             parentId=pid, ocaGroup=oca, ocaType=1, transmit=True)
        parent.bt_order = order
        self._by_bt[order.ref] = parent
        self._trade_of[data._name] = ref.trade_id
        with self.state.transaction():  # the whole bracket is written before any of it is sent
            for rec in (parent, target, stop):
                self._persist(rec)
        logger.info("%s entry: BUY %g MKT, target %.2f, stop %.2f (bracket %d)", ref, qty, target_px, stop_px,
                    pid)
        self._place(parent, target, stop)

    def _place(self, *recs: _Rec) -> bool:
        contract = self._contract(recs[0].ref.symbol)
        for rec in recs:
            try:
                self.ib.placeOrder(contract, rec.ib_order)
            except (ConnectionError, OSError) as exc:
                logger.error("%s: placeOrder failed: %s", rec.ref, exc)
                for r in recs:
                    r.status = "SendFailed"
                    self.state.update_order(str(r.ref), status="SendFailed")
                    if r.bt_order is not None:
                        self._set_status(r.bt_order, bt.Order.Rejected)
                return False
            rec.status = "PendingSubmit"
            self.state.update_order(str(rec.ref), status="PendingSubmit")
            self.sent.append(str(rec.ref))
        return True

    def _submit_exit(self, order: bt.Order, ref: mp.OrderRef) -> bt.Order:
        old = self.recs.get(str(ref))
        if old is not None and not (old.done and old.filled <= _EPS):
            return self._refuse(order, f"{ref} is already working or filled")
        if not self.session.connected:
            return self._refuse(order, "not connected to IB")
        held = self.positions[order.data].size
        qty = min(abs(order.size), held) if held > 0 else abs(order.size)
        rec = self._new_rec(ref, order.data, mp.order_fields("SELL", qty, bt.Order.Market, None))
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
                self.state.update_order(str(rec.ref), status="Cancelled")
                if rec.bt_order is not None:
                    self._set_status(rec.bt_order, bt.Order.Canceled)
            elif all(c.done for c in children):
                logger.info("%s: SELL %g MKT", rec.ref, rec.ib_order.totalQuantity)
                self._place(rec)
                self._pending_exits.remove(rec)

    def _children(self, ref: mp.OrderRef) -> list[_Rec]:
        return [r for r in (self.recs.get(str(ref.with_role(role))) for role in mp.PROTECTIVE) if r is not None]

    def _cancel_ib(self, rec: _Rec) -> None:
        if rec.cancel_sent and self.session.connected:
            return
        rec.cancel_sent = True
        try:
            self.ib.cancelOrder(rec.ib_order)
        except (ConnectionError, OSError) as exc:
            logger.error("%s: cancelOrder failed: %s (retried by the next decision)", rec.ref, exc)

    def _adopt(self, rec: _Rec, order: bt.Order) -> None:
        """Bind a strategy stop/target to the bracket child already at IB and move it to the asked price."""
        rec.bt_order = order
        self._by_bt[order.ref] = rec
        ib_order = rec.ib_order
        price = mp.round_to_tick(float(order.price))
        qty = abs(order.size)
        attr = "auxPrice" if rec.ref.role == mp.STOP else "lmtPrice"
        if not rec.done and not self.p.dry_run and (getattr(ib_order, attr) != price
                                                    or ib_order.totalQuantity != qty):
            setattr(ib_order, attr, price)
            ib_order.totalQuantity = qty
            ib_order.transmit = True
            self.state.update_order(str(rec.ref), price=price, quantity=qty)
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

    def _sync_status(self, rec: _Rec) -> None:
        if rec.ref.role == mp.ENTRY and rec.status in {"Inactive", "Cancelled"} and rec.filled <= _EPS:
            self._orphans.extend(c for c in self._children(rec.ref) if not c.done and not c.cancel_sent)
        order = rec.bt_order
        if order is None:
            return
        target = mp.IB_TO_BT_STATUS.get(rec.status)
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

    def _dry_run(self, order: bt.Order, ref: mp.OrderRef) -> bt.Order:
        logger.info("DRY-RUN: would send %s %s %g %s (nothing sent)", ref, order.ordtypename(), abs(order.size),
                    bt.Order.ExecTypes[order.exectype])
        self._set_status(order, bt.Order.Canceled)
        return order

    # -- IB events (inside the event loop: record and queue, never request) -----------------------
    def _rec_for(self, trade: Trade) -> _Rec | None:
        rec = self.recs.get(trade.order.orderRef or "")
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
        self.state.update_order(str(rec.ref), status=status, perm_id=trade.order.permId or None)
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
            self.state.update_order(str(rec.ref), status="Inactive")
            self._sync_status(rec)

    def _on_commission(self, trade: Trade, fill: Any, report: Any) -> None:
        self._apply_fill(fill)

    def _apply_fill(self, fill: Any) -> None:
        """Book one IB execution (with its commission report) once, by ``execId``."""
        ex = fill.execution
        ref = mp.parse_order_ref(ex.orderRef, self.p.strategy_id)
        if ref is None:
            return
        rec = self.recs.get(str(ref))
        shares = float(ex.shares)
        time = _utc(ex.time) if isinstance(ex.time, datetime) else datetime.now(UTC)
        if not self.state.record_fill(ex.execId, order_ref=str(ref), symbol=ref.symbol, side=ex.side,
                                      shares=shares, price=float(ex.price), time=time,
                                      commission=float(fill.commissionReport.commission or 0.0)):
            return
        if rec is None:
            logger.warning("fill %s for %s: an order of ours this process does not know; position left alone",
                           ex.execId, ref)
            return
        logger.info("%s fill %s %g @ %.4f commission %.2f", ref, ex.side, shares, ex.price,
                    fill.commissionReport.commission)
        self._book_fill(rec, shares if ex.side == "BOT" else -shares, float(ex.price),
                        float(fill.commissionReport.commission or 0.0), time, notify=True)

    def _book_fill(self, rec: _Rec, size: float, price: float, comm: float, time: datetime, notify: bool) -> None:
        rec.filled += abs(size)
        self.state.update_order(str(rec.ref), filled=rec.filled)
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
                    sum(1 for r in self.recs.values() if not r.done), len(self.state.fills()))

    def _adopt_open_order(self, trade: Trade) -> None:
        ref = mp.parse_order_ref(trade.order.orderRef, self.p.strategy_id)
        if ref is None:
            key = f"order:{trade.order.permId}"
            if key not in self._warned:
                self._warned.add(key)
                logger.warning("unrecognised open order at IB (permId %s, orderRef %r, %s %s); left alone",
                               trade.order.permId, trade.order.orderRef, trade.order.action, trade.contract.symbol)
            return
        rec = self.recs.get(str(ref))
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

    def restore(self, strategy: Any) -> None:
        """Rebuild open trades from the state store into ``strategy`` (books, bound orders, positions)."""
        from strategies.ml_strategy import Book  # noqa: PLC0415 - the broker only needs it on restart

        books = self.state.books()
        for data in strategy.datas:
            self._datas[data._name] = data
        for symbol, snap in books.items():
            data = self._datas.get(symbol)
            if data is None:
                logger.warning("state has a trade in %s, which this run does not trade; left alone", symbol)
                continue
            tid = snap["trade_id"]
            self._trade_of[symbol] = tid
            book = Book(size=float(snap["size"]), entry_price=float(snap["entry_price"]),
                        entry_comm=float(snap["entry_comm"]), entry_p_up=float(snap["entry_p_up"]),
                        entry_time=datetime.fromisoformat(snap["entry_time"]) if snap.get("entry_time") else None,
                        reserved=float(snap.get("reserved", 0.0)), exit_reason=snap.get("exit_reason"))
            book.entry_bar = 0
            strategy.restored_bars_held[symbol] = int(snap.get("bars_held", 0))
            for row in self.state.orders(symbol, tid):
                self._restore_order(strategy, data, book, snap, row)
            strategy.books[symbol] = book
            strategy.reserved_cash += book.reserved
            logger.info("restored %s trade %s: %g shares, %s", symbol, tid, book.size,
                        ", ".join(f"{r}={self.recs[str(mp.OrderRef(self.p.strategy_id, symbol, tid, r))].status}"
                                  for r in mp.ROLES
                                  if str(mp.OrderRef(self.p.strategy_id, symbol, tid, r)) in self.recs))

    def _restore_order(self, strategy: Any, data: Any, book: Any, snap: dict[str, Any], row: dict[str, Any]) -> None:
        ref = mp.parse_order_ref(row["order_ref"])
        if ref is None:
            return
        extra = {}
        if row["order_type"] == "LMT":
            extra["lmtPrice"] = row["price"]
        elif row["order_type"] == "STP":
            extra["auxPrice"] = row["price"]
        ib_order = Order(orderId=int(row["ib_order_id"] or 0), clientId=self.ib.client.clientId,
                         orderRef=row["order_ref"], action=row["action"],
                         totalQuantity=float(row["quantity"]), orderType=row["order_type"], tif="DAY",
                         account=self.session.account, **extra)
        rec = _Rec(ref, data, ib_order, status=row["status"])
        self.recs[str(ref)] = rec
        self._by_ib_id[ib_order.orderId] = rec
        seen_entry = book.size > 0
        bound = {mp.ENTRY: not seen_entry, mp.STOP: snap.get("stop_bound", False),
                 mp.TARGET: snap.get("target_bound", False), mp.EXIT: snap.get("exit_pending", False)}[ref.role]
        if bound:
            self._rebind(strategy, rec, book, row)
        for f in self.state.fills(str(ref)):
            size = f["shares"] if f["side"] == "BOT" else -f["shares"]
            self._book_fill(rec, size, f["price"], f["commission"], datetime.fromisoformat(f["time"]),
                            notify=bound)
        if not bound:
            rec.pending.clear()
        self._sync_status(rec)

    def _rebind(self, strategy: Any, rec: _Rec, book: Any, row: dict[str, Any]) -> None:
        """Give a restored order a backtrader twin the restored book points at."""
        role, data = rec.ref.role, rec.data
        cls = bt.BuyOrder if role == mp.ENTRY else bt.SellOrder
        exectype = {"MKT": bt.Order.Market, "LMT": bt.Order.Limit, "STP": bt.Order.Stop}[row["order_type"]]
        order = cls(owner=strategy, data=data, size=float(row["quantity"]), price=row["price"], exectype=exectype,
                    simulated=True)
        order.addcomminfo(self.getcommissioninfo(data))
        order.submit(self)
        rec.bt_order = order
        self._by_bt[order.ref] = rec
        if role == mp.ENTRY:
            book.entry_ref = order.ref
        elif role == mp.STOP:
            book.stop = order
        elif role == mp.TARGET:
            book.target = order
        else:
            book.exit_ref = order.ref
        if mp.IB_TO_BT_STATUS.get(rec.status) == bt.Order.Accepted:
            order.accept(self)

    # -- flatten ----------------------------------------------------------------------------------
    def flatten(self) -> dict[str, float]:
        """Cancel all our working orders and sell all our positions at market; return what was sold."""
        for rec in self.recs.values():
            if not rec.done:
                self._cancel_ib(rec)
        sold: dict[str, float] = {}
        for data, pos in list(self.positions.items()):
            if pos.size > _EPS:
                tid = self._trade_of.get(data._name, "00000000-0000")
                ref = mp.OrderRef(self.p.strategy_id, data._name, tid, mp.EXIT)
                if str(ref) in self.recs and not self.recs[str(ref)].done:
                    continue
                rec = self._new_rec(ref, data, mp.order_fields("SELL", pos.size, bt.Order.Market, None))
                self._persist(rec)
                if self._place(rec):
                    sold[data._name] = pos.size
        return sold
