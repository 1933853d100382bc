"""Wire ``Cerebro`` for live trading: polling IB feeds, the IB broker, the same ``MLStrategy`` and sizer.

It mirrors :func:`strategies.engine.build_cerebro`; only the feeds and the broker differ. backtrader runs with
``quicknotify=False`` as in the backtest, so an order event reaches the strategy right before the next bar's
decision, exactly when it does in the backtest (the native bracket children protect the position at IB in the
meantime). :class:`LiveHooks` plugs the live concerns into ``MLStrategy``: the entry gate (kill switch, IB
disconnected), restoring books and risk state after a restart, persisting them after every bar, the daily
summary at the session's end and bounded runs (``max_bars`` / ``until``).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import backtrader as bt

from analyzers.live_reports import DecisionLog, daily_summary, format_summary, write_daily_summary
from analyzers.notify import post_message
from config.settings import AppConfig, bar_size_minutes
from core.calendar import exchange_day
from core.costs import IBKRCommission, commission_function
from core.files import atomic_write_json
from core.records import BlockReason
from feeds.ib.adopt import Rules, adopt
from feeds.ib.broker import IBBroker
from feeds.ib.budget import RequestBudget
from feeds.ib.feed import BarPoller, IBPollingFeed
from feeds.ib.safety import KillSwitch
from feeds.ib.session import IBSession
from feeds.ib.state import StateStore
from ml.features import live_window_bars
from strategies import risk as rk
from strategies.ml_strategy import Book, MLStrategy, strategy_params
from strategies.sizer import FixedFractionSizer

logger = logging.getLogger(__name__)


def book_snapshot(book: Book, trade_id: str | None, bars: int) -> dict[str, Any]:
    """Return the JSON-ready part of a strategy book that IB cannot tell us after a restart."""
    return {
        "trade_id": trade_id, "size": book.size, "entry_price": book.entry_price, "entry_comm": book.entry_comm,
        "entry_time": None if book.entry_time is None else book.entry_time.replace(tzinfo=None).isoformat(),
        "entry_p_up": book.entry_p_up, "exit_reason": book.exit_reason, "reserved": book.reserved,
        "bars_held": bars - book.entry_bar + 1 if book.size > 0 and book.entry_bar else 0,
        "entry_pending": book.entry_ref is not None, "stop_bound": book.stop is not None,
        "target_bound": book.target is not None, "exit_pending": book.exit_ref is not None,
    }


@dataclass
class LiveHooks:
    """The live concerns ``MLStrategy`` calls into (``entry_gate``, ``on_start``, ``on_bar``)."""

    broker: IBBroker
    state: StateStore
    session: IBSession
    kill_switch: KillSwitch
    cfg: AppConfig
    max_bars: int | None = None
    until: datetime | None = None
    on_summary: list[Callable[[dict[str, Any]], None]] = field(default_factory=list)
    live_bars: int = 0
    _trades_saved: int = 0
    _last_live: float = -math.inf
    _strategy: Any = None

    def entry_gate(self, symbol: str) -> BlockReason | None:
        """Block entries while the kill switch is on or IB is down / re-syncing."""
        if self.kill_switch.active:
            return BlockReason.KILL_SWITCH
        if self.session.entries_paused:
            return BlockReason.IB_DISCONNECTED
        return None

    def on_start(self, strategy: Any) -> None:
        """Restore risk state, cooldown clocks and open trades, then reconcile with IB."""
        self._strategy = strategy
        if not self.broker.p.dry_run:  # trades the store lost (a deleted state folder) are adopted from IB first
            rules = Rules(strategy.p.bar_minutes, strategy.p.flatten_minutes, strategy.p.cooldown_bars_after_stop,
                          self.cfg.data.calendar)
            adopt(self.session, self.state, self.cfg.live.strategy_id, [d._name for d in strategy.datas], rules,
                  equity=self.broker.getvalue())
        risk = self.state.get_value("risk")
        if risk is not None:
            strategy.risk = rk.RiskState.from_dict(risk)
            logger.info("restored risk state: session %s, start equity %.2f, realised P&L %.2f, cooldowns %s",
                        risk["session"], risk["start_equity"], risk["realized_pnl"], risk["cooldowns"])
        strategy.last_bar_time = dict(self.state.get_value("last_bar_time", {}))
        self.broker.restore(strategy)
        self.broker.hold_notifications = lambda: any(getattr(d, "historical", True) for d in strategy.datas)
        self.broker.reconcile()

    def on_bar(self, strategy: Any) -> None:
        """Persist risk state, books, cooldown clocks and new closed trades; stop a bounded run."""
        with self.state.transaction():
            self.state.set_value("risk", strategy.risk.to_dict())
            self.state.set_value("last_bar_time", strategy.last_bar_time)
            for d in strategy.datas:
                book = strategy.books[d._name]
                snap = book_snapshot(book, self.broker._trade_of.get(d._name), len(d)) if book.busy else None
                self.state.save_book(d._name, snap)
            for trade in strategy.trades[self._trades_saved:]:
                self.state.append_trade(exchange_day(trade.exit_time), trade.to_dict())
        self._trades_saved = len(strategy.trades)
        newest = max(strategy.last_bar_time.values(), default=-math.inf)
        if newest > self._last_live:
            self._last_live = newest
            self.live_bars += 1
            self._after_live_bar(strategy, newest)

    def _after_live_bar(self, strategy: Any, newest: float) -> None:
        t = bt.num2date(newest)
        live = [d for d in strategy.datas if not getattr(d, "historical", False) and len(d)]
        if live and min(float(d.mtc[0]) for d in live) <= 0:
            self.write_summary(exchange_day(t))
        if (self.max_bars is not None and self.live_bars >= self.max_bars) or (
                self.until is not None and t >= self.until.replace(tzinfo=None)):
            logger.info("bounded run: stopping after %d live bars (last bar %s UTC)", self.live_bars, t)
            strategy.env.runstop()

    def write_summary(self, day: str | None = None) -> dict[str, Any] | None:
        """Write (once per day) and post the daily trade summary; return it."""
        strategy = self._strategy
        if strategy is None:
            return None
        if day is None:
            newest = max(strategy.last_bar_time.values(), default=None)
            if newest is None:
                return None
            day = exchange_day(bt.num2date(newest))
        if self.state.get_value(f"summary:{day}"):
            return None
        summary = daily_summary(day, self.state.trades(day), dict(strategy.risk.blocked),
                                {"equity": self.broker.getvalue(), "account": self.session.account,
                                 "dry_run": bool(self.broker.p.dry_run)})
        paths = write_daily_summary(self.cfg.live.log_dir, summary)
        text = format_summary(summary)
        for line in text.splitlines():
            logger.info("%s", line)
        logger.info("summary written to %s", paths[0])
        self.state.set_value(f"summary:{day}", True)
        post_message(self.cfg.live.webhook, text, summary)
        for callback in self.on_summary:
            callback(summary)
        return summary


@dataclass
class Heartbeat:
    """``heartbeat-<strategy_id>.json`` in the state folder: the engine's vital signs for the health check.

    It is rewritten atomically from the engine's main loop (every pass of the poller), at most every
    ``interval`` seconds of wall time, so a hung loop stops it even while the process is alive and the market is
    closed. ``deploy/healthcheck.sh`` fails when it is older than ``HC_MAX_HEARTBEAT_AGE`` or says IB is
    disconnected.
    """

    path: Path
    session: IBSession
    hooks: LiveHooks
    feeds: list[Any]
    interval: float = 10.0
    _last: float = -math.inf

    def __call__(self) -> None:
        """Write the heartbeat if ``interval`` has passed since the last one."""
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        try:
            atomic_write_json(self.path, self.snapshot())
        except OSError as exc:  # a full disk must not stop trading; the health check will notice
            logger.error("heartbeat %s not written: %s", self.path, exc)

    def snapshot(self) -> dict[str, Any]:
        """Return the heartbeat's content."""
        session, hooks = self.session, self.hooks
        last = hooks._last_live
        return {
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "clock": session.now().isoformat(timespec="seconds"),
            "pid": os.getpid(),
            "connected": session.connected,
            "entries_paused": session.entries_paused,
            "down_since": None if session.down_since is None else session.down_since.isoformat(timespec="seconds"),
            "kill_switch": hooks.kill_switch.active,
            "live_bars": hooks.live_bars,
            "last_bar": None if not math.isfinite(last) else bt.num2date(last).replace(tzinfo=UTC).isoformat(),
            "feeds": {d._name: d._getstatusname(d._laststatus) for d in self.feeds},
        }


def heartbeat_path(cfg: AppConfig) -> Path:
    """Return the heartbeat file of ``cfg``'s strategy."""
    return Path(cfg.live.state_dir) / f"heartbeat-{cfg.live.strategy_id}.json"


@dataclass
class LiveRun:
    """What :func:`build_live` wires: cerebro, broker, hooks and the decision log."""

    cerebro: bt.Cerebro
    broker: IBBroker
    hooks: LiveHooks
    decisions: DecisionLog


def alert_to_webhook(session: IBSession, cfg: AppConfig) -> None:
    """Send the session's alerts (IB down longer than ``live.alert_after_seconds``) to the webhook too.

    The session already logs them at ERROR; a failed post is logged by :func:`post_message`, never raised.
    """
    def send(message: str) -> None:
        post_message(cfg.live.webhook, f"ALERT {cfg.live.strategy_id}: {message}", {"alert": message})

    session.on_alert.append(send)


def build_live(cfg: AppConfig, session: IBSession, state: StateStore, model: Any, *,
               kill_switch: KillSwitch | None = None, clock: Callable[[], datetime] | None = None,
               max_bars: int | None = None, until: datetime | None = None, symbols: list[str] | None = None,
               qcheck: float = 0.5) -> LiveRun:
    """Return a live ``Cerebro`` on ``session`` (connected) with the same strategy and sizer as the backtest.

    Raises
    ------
    ConfigError
        A symbol IB has no single US stock for (see :meth:`~feeds.ib.session.IBSession.qualify`).
    """
    bar_minutes = bar_size_minutes(cfg.data.bar_size)
    kwargs = {**strategy_params(cfg), "model": model}
    cerebro = bt.Cerebro(stdstats=False, runonce=False, preload=False, quicknotify=False, live=True)
    budget = RequestBudget.from_config(cfg.live)
    symbols = list(symbols or cfg.data.symbols)
    session.qualify(symbols)  # a symbol IB does not know stops the start here, naming it
    for sym in symbols:
        cerebro.adddata(IBPollingFeed(session=session, symbol=sym, bar_minutes=bar_minutes, budget=budget,
                                      warmup_bars=live_window_bars(bar_minutes), clock=clock,
                                      exchange=cfg.data.calendar, qcheck=qcheck), name=sym)
    broker = IBBroker(  # type: ignore[call-arg]  # backtrader params are declared through a metaclass
        session=session, state=state, strategy_id=cfg.live.strategy_id, dry_run=cfg.live.dry_run,
        stop_loss=cfg.strategy.stop_loss, take_profit=cfg.strategy.take_profit)
    broker.addcommissioninfo(IBKRCommission(fn=commission_function(cfg.costs.commission,
                                                                   cfg.costs.tiered_monthly_shares)))
    cerebro.setbroker(broker)
    alert_to_webhook(session, cfg)
    hooks = LiveHooks(broker, state, session, kill_switch or KillSwitch(cfg.live.kill_switch_file), cfg,
                      max_bars=max_bars, until=until)
    poller = BarPoller.for_session(session, budget)
    poller.on_service.append(Heartbeat(heartbeat_path(cfg), session, hooks, list(cerebro.datas)))
    decisions = DecisionLog(cfg.live.log_dir)
    cerebro.addstrategy(MLStrategy, **kwargs, decision_sink=decisions, entry_gate=hooks.entry_gate,
                        on_start=hooks.on_start, on_bar=hooks.on_bar)
    cerebro.addsizer(FixedFractionSizer, risk_fraction=cfg.risk.risk_per_trade_fraction,
                     stop_loss=cfg.strategy.stop_loss, slippage=cfg.costs.slippage_bps / 10_000.0)
    return LiveRun(cerebro, broker, hooks, decisions)


class ControlPortClock:
    """The clock of an external ``python -m ibsim --control-port`` (rehearsals and restart tests only).

    Parameters
    ----------
    host, port
        The simulator's control port.
    """

    def __init__(self, host: str, port: int) -> None:
        self.address = (host, port)
        self._sock: socket.socket | None = None
        self._last: datetime | None = None

    def __call__(self) -> datetime:
        """Return the simulator's time (the last known one if the control port is unreachable)."""
        try:
            if self._sock is None:
                self._sock = socket.create_connection(self.address, timeout=2.0)
            self._sock.sendall(b"time\n")
            buf = b""
            while not buf.endswith(b"\n\n"):
                chunk = self._sock.recv(4096)
                if not chunk:
                    raise ConnectionError("control port closed")
                buf += chunk
            self._last = datetime.fromisoformat(buf.decode().strip())
        except (OSError, ValueError) as exc:
            if self._sock is not None:
                self._sock.close()
            self._sock = None
            if self._last is None:
                raise ConnectionError(f"simulator control port {self.address} unreachable: {exc}") from exc
        assert self._last is not None  # set above or raised
        return self._last


def state_path(cfg: AppConfig) -> Path:
    """Return the SQLite file of the live state."""
    return Path(cfg.live.state_dir) / f"live-{cfg.live.strategy_id}.sqlite"
