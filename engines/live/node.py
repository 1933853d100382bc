"""The live node: ``Cerebro`` wired with polling IB feeds, the IB broker, the same ``MLStrategy`` and sizer.

It mirrors the backtest engine (``engines/backtest.py``); only the feeds and the broker differ. backtrader runs
with ``quicknotify=False`` as in the backtest, so an order event reaches the strategy right before the next
bar's decision, exactly when it does in the backtest (the native bracket children protect the position at IB
in the meantime). :class:`LiveHooks` plugs the live concerns into ``MLStrategy``: the entry gate (kill switch,
IB disconnected), restoring books and risk state after a restart (:mod:`engines.live.recovery`), persisting
them after every bar, the daily summary (final at the session's close, provisional at a stop before it) and
bounded runs (``max_bars`` / ``until``).
:func:`run_node` is one run of the process: simulator (rehearsals), safety checks, connection, flatten or trade.
"""

from __future__ import annotations

import logging
import logging.handlers
import math
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import backtrader as bt

from config.settings import AppConfig, bar_size_minutes
from core.calendar import exchange_day, to_exchange, to_utc
from core.costs import IBKRCommission, commission_function
from core.records import BlockReason
from engines.live.heartbeat import Heartbeat, heartbeat_path
from engines.live.notify import post_message
from engines.live.recovery import RecoveryParams, adopt, book_snapshot, restore_books
from engines.live.rehearsal import ControlPortClock, start_sim
from engines.live.reports import DecisionLog, format_summary, summary_from_store, write_daily_summary
from engines.live.safety import KillSwitch, check_account, check_endpoint, flatten_all
from engines.live.state import StateStore, state_path
from feeds.ib.broker import IBBroker
from feeds.ib.budget import RequestBudget
from feeds.ib.feed import BarPoller, IBPollingFeed
from feeds.ib.session import IBSession, quieten_client_logging
from ml.features import live_window_bars
from ml.lifecycle import load_live_model
from strategies.ml_strategy import MLStrategy, strategy_params
from strategies.risk import RiskState
from strategies.sizer import FixedFractionSizer

logger = logging.getLogger(__name__)


@dataclass
class LiveHooks:
    """The live concerns ``MLStrategy`` calls into (``entry_gate``, ``on_start``, ``on_bar``).

    Attributes
    ----------
    strategy
        The running strategy (set by ``on_start``).
    live_bars
        Live bars handled so far (historical and late bars not counted).
    last_live_bar
        backtrader time (UTC) of the newest live bar handled; ``-inf`` before the first.
    """

    broker: IBBroker
    state: StateStore
    session: IBSession
    kill_switch: KillSwitch
    cfg: AppConfig
    max_bars: int | None = None
    until: datetime | None = None
    on_summary: list[Callable[[dict[str, Any]], None]] = field(default_factory=list)
    live_bars: int = 0
    last_live_bar: float = -math.inf
    strategy: Any = None
    _trades_saved: int = 0

    def entry_gate(self, symbol: str) -> BlockReason | None:
        """Block entries while the kill switch is on or IB is down / re-syncing."""
        if self.kill_switch.active:
            return BlockReason.KILL_SWITCH
        if self.session.entries_paused:
            return BlockReason.IB_DISCONNECTED
        return None

    def on_start(self, strategy: Any) -> None:
        """Restore risk state, cooldown clocks and open trades, then reconcile with IB."""
        self.strategy = strategy
        if not self.broker.p.dry_run:  # trades the store lost (a deleted state folder) are adopted from IB first
            adopt(self.session, self.state, self.cfg.live.strategy_id, [d._name for d in strategy.datas],
                  RecoveryParams.of(strategy, self.cfg.data.calendar), equity=self.broker.getvalue())
        stored = self.state.get_value("risk")
        risk = None if stored is None else RiskState.from_dict(stored)
        if risk is not None:
            logger.info("restored risk state: session %s, start equity %.2f, realised P&L %.2f, cooldowns %s",
                        risk.session, risk.start_equity, risk.realized_pnl, risk.cooldowns)
        strategy.restore_state(risk, self.state.get_value("last_bar_time", {}))
        restore_books(strategy, self.broker, self.state)
        self.broker.reconcile()

    def on_bar(self, strategy: Any) -> None:
        """Persist risk state, books, cooldown clocks and new closed trades; stop a bounded run."""
        with self.state.transaction():
            self.state.set_value("risk", strategy.risk.to_dict())
            self.state.set_value("last_bar_time", strategy.last_bar_time)
            for d in strategy.datas:
                book = strategy.books[d._name]
                snap = book_snapshot(book, self.broker.trade_id_of(d._name), len(d)) if book.busy else None
                self.state.save_book(d._name, snap)
            for trade in strategy.trades[self._trades_saved:]:
                self.state.append_trade(trade)
        self._trades_saved = len(strategy.trades)
        newest = max(strategy.last_bar_time.values(), default=-math.inf)
        if newest > self.last_live_bar:
            self.last_live_bar = newest
            self.live_bars += 1
            self._after_live_bar(strategy, newest)

    def _after_live_bar(self, strategy: Any, newest: float) -> None:
        t = to_utc(bt.num2date(newest))  # backtrader's times are naive UTC
        live = [d for d in strategy.datas if not getattr(d, "historical", False) and len(d)]
        if live and min(float(d.minutes_to_close[0]) for d in live) <= 0:
            self.write_summary(exchange_day(t), at_close=True)
        if (self.max_bars is not None and self.live_bars >= self.max_bars) or (
                self.until is not None and t >= to_utc(self.until)):
            logger.info("bounded run: stopping after %d live bars (last bar %s New York)", self.live_bars,
                        to_exchange(t).strftime("%Y-%m-%d %H:%M"))
            strategy.env.runstop()

    def write_summary(self, day: str | None = None, *, at_close: bool = False) -> dict[str, Any] | None:
        """Write the day's trade summary from the state store (the whole day, across restarts); return it.

        At the close (``at_close``) the summary is final: written once per day, logged and posted to the webhook.
        Before it (a stop mid-day: SIGTERM, Ctrl-C, a bounded run) it is provisional: written and logged, marked
        so, not posted, and replaced by the final one. ``day`` is that of the newest bar by default.
        """
        strategy = self.strategy
        if strategy is None:
            return None
        if day is None:
            newest = max(strategy.last_bar_time.values(), default=None)
            if newest is None:
                return None
            day = exchange_day(bt.num2date(newest))
        if self.state.get_value(f"summary:{day}"):  # the final summary is written
            return None
        summary = summary_from_store(self.state, day, provisional=not at_close,
                                     extra={"equity": self.broker.getvalue(), "account": self.session.account,
                                            "dry_run": bool(self.broker.p.dry_run)})
        paths = write_daily_summary(self.cfg.live.log_dir, summary)
        for line in format_summary(summary).splitlines():
            logger.info("%s", line)
        if not at_close:
            logger.info("provisional summary written to %s; the summary at the close replaces it", paths[0])
            return summary
        logger.info("summary written to %s", paths[0])
        self.state.set_value(f"summary:{day}", True)
        post_message(self.cfg.live.webhook, format_summary(summary), summary)
        for callback in self.on_summary:
            callback(summary)
        return summary


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
    feeds = [IBPollingFeed(session=session, symbol=sym, bar_minutes=bar_minutes, budget=budget,
                           warmup_bars=live_window_bars(bar_minutes), clock=clock, exchange=cfg.data.calendar,
                           qcheck=qcheck) for sym in symbols]
    for sym, feed in zip(symbols, feeds, strict=True):
        cerebro.adddata(feed, name=sym)
    broker = IBBroker(  # type: ignore[call-arg]  # backtrader params are declared through a metaclass
        session=session, journal=state, strategy_id=cfg.live.strategy_id, dry_run=cfg.live.dry_run,
        stop_loss=cfg.strategy.stop_loss, take_profit=cfg.strategy.take_profit,
        # order events wait until every feed has replayed its warm-up history
        hold_notifications=lambda: any(getattr(d, "historical", True) for d in feeds))
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


def configure_logging(log_dir: str, quiet: bool) -> None:
    """Log to the console and a daily rotating ``live.log`` in ``log_dir`` (called once, by the entry point)."""
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING if quiet else logging.INFO)
    console.setFormatter(fmt)
    rotating = logging.handlers.TimedRotatingFileHandler(Path(log_dir) / "live.log", when="midnight",
                                                         backupCount=30, encoding="utf-8")
    rotating.setLevel(logging.INFO)
    rotating.setFormatter(fmt)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(console)
    root.addHandler(rotating)
    logging.getLogger("ibsim").setLevel(logging.WARNING)
    quieten_client_logging()


@dataclass(frozen=True)
class LiveOptions:
    """What the command line adds to the config for one run of the node."""

    sim: bool = False  # trade against ibsim started in-process (a rehearsal)
    sim_start: str | None = None  # with sim: simulated start 'YYYY-MM-DD HH:MM' (New York)
    sim_control: str | None = None  # HOST:PORT of an external ibsim's control port: use its clock
    flatten: bool = False  # cancel all our orders, sell all our positions, exit
    max_bars: int | None = None  # stop after this many live bars
    until: datetime | None = None  # stop after the bar starting at this time (tz-aware; naive is UTC)


def run_node(cfg: AppConfig, options: LiveOptions) -> int:
    """Connect, check safety, restore state, trade until stopped (or flatten); return the exit code.

    The model (:func:`ml.lifecycle.load_live_model`; the demo model is trained first under ``--sim``) is loaded
    once every symbol is known to IB, so an unknown symbol is named first.

    Raises
    ------
    NeedsHumanError
        IB unreachable, clientId in use, a live port or a non-paper account not allowed.
    ConfigError
        A symbol IB has no single US stock for.
    """
    sim = None
    clock: Callable[[], datetime] | None = None
    if options.sim:
        sim, cfg = start_sim(cfg, options.sim_start)
        clock = sim.now
    elif options.sim_control:
        host, port = options.sim_control.rsplit(":", 1)
        clock = ControlPortClock(host, int(port))
    check_endpoint(cfg.live.port, cfg.live.allow_live)
    session = IBSession(cfg.live, clock=clock)
    state = StateStore(state_path(cfg))
    try:
        session.connect(attempts=3)
        check_account(session.account, cfg.live.allow_live)
        if options.flatten:
            sold = flatten_all(session, state, cfg.live.strategy_id, session.clock)
            print(f"flattened: {sold or 'nothing of ours was open'}")
            return 0
        session.qualify(cfg.data.symbols)  # a symbol IB does not know is named before a model is loaded
        model = load_live_model(cfg, train_if_missing=options.sim)
        kill = KillSwitch(cfg.live.kill_switch_file, install_signal=True)
        live = build_live(cfg, session, state, model, kill_switch=kill, clock=clock, max_bars=options.max_bars,
                          until=options.until)

        def stop(signum: int, frame: Any) -> None:
            logger.warning("signal %d: stopping after the current step (state is persisted)", signum)
            live.cerebro.runstop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        mode = "DRY RUN (no orders)" if cfg.live.dry_run else "paper trading"
        logger.info("%s %s on %s:%d account %s", mode, ", ".join(cfg.data.symbols), cfg.live.host, cfg.live.port,
                    session.account)
        live.cerebro.run()
        live.hooks.write_summary()
    finally:
        session.disconnect()
        state.close()
        if sim is not None:
            sim.stop()
    return 0
