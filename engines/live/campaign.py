"""Randomized fault campaign: whole simulated sessions of the live engine against ibsim, with a seeded fault
schedule per run and invariants checked after every settled bar.

Run ``python -m engines.live.campaign --seeds 20 [--start-seed S] [--bars 60]``: one line per seed, then a
table of totals; exit code 1 when any invariant was violated. A failing seed reruns with the same schedule
(``--seeds 1 --start-seed S``); its temp folder (state store, logs) is kept and printed.

How it runs. The engine (``build_live``: the same cerebro, broker, strategy and state store as ``run_live.py``)
runs in this process against :class:`ibsim.IBSim` with a stepped clock. A stepper thread advances the clock one
minute at a time and, before each step, waits until the engine has handled the bar and the simulator has every
message the engine sent (events, with a generous bound that only a hung engine reaches; never a wall-clock
sleep for correctness). After each settled bar it checks the invariants, then injects the faults drawn for that
bar. The schedule is drawn from ``random.Random(seed)``; the engine's reaction is deterministic on the stepped
clock, except for the ``kill`` races described below.

Faults: socket drop, gateway restart, 1100 → 1102, 1100 then a reconnect without 1102, delayed and dropped
commission reports, partial fills, a 201 rejection, a cancel racing a fill (10148/161), a protective order
cancelled or filled by another client, and an in-process **kill** (after the engine decided, or right after the
clock advanced).

What the in-process kill models, and what it does not. The engine instance is abandoned: its strategy, broker
and feed stop hooks are replaced by no-ops, cerebro's loop is told to stop, the socket is aborted (no orderly
disconnect, no cancel of subscriptions) and the state store's connection is closed as-is (every write the
engine made is already committed, as SQLite would have it after SIGKILL). A fresh engine (new session, new
StateStore on the same file, new cerebro from ``build_live``) continues the session. Unlike SIGKILL: (1)
cerebro's loop finishes the iteration it is in before it returns, so the killed engine may still read a few
messages already in its socket (an ack, a fill) between the kill decision and the abort: "acks unread" and
"fills unread" are likely, not guaranteed; (2) nothing is killed in the middle of a Python statement or of a
SQLite transaction; (3) process-wide state (logging handlers, ib_async's event loop, module caches) survives.
The subprocess SIGKILL test (tests/integration/test_live_restart.py) covers the real signal for one schedule.

Invariants (first violation per seed is reported with its bar):

- ``never_short``: no position at IB below zero.
- ``positions_match``: when connected and settled, the broker's and the strategy book's sizes equal IB's now
  or at the previous settled bar (a market order can fill at IB while the engine is still deciding the bar;
  the strategy's book learns it when it handles the next bar, so a one-bar lag is by design).
- ``protected``: every position at IB has a working stop at IB or an exit in flight, within one bar.
- ``unique_order_ref``: no orderRef on two orders that are working or filled (the engine re-sends an exit
  under the same orderRef after IB refused it (201) or it was cancelled unfilled: that is not a duplicate).
- ``fills_booked_once``: every IB execution of ours is in the state store exactly once (missing ones get one
  bar of grace, duplicates none).
- ``trades_match`` (end): the engine's closed trades equal IB's round trips, by symbol and trade id.
- ``pnl_match`` (end): realised P&L equals the sum of IB's round trips' P&L net of commissions.

Not modelled: a host clock off IB's, a clientId held by a stale session, DAY expiry (sessions end before the
close unless ``--bars`` crosses 16:00), faults while the engine is away other than those at the kill bar, and
the cooldown / daily-loss replay of the issue's last invariant.
"""

from __future__ import annotations

import argparse
import logging
import random
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import backtrader as bt
import numpy as np
import pandas as pd

from config.settings import AppConfig, SyntheticConfig, load_config
from engines.live.node import LiveRun, build_live
from engines.live.safety import KillSwitch
from engines.live.state import StateStore, state_path
from feeds.ib.feed import BarPoller
from feeds.ib.mapping import parse_order_ref, trade_start
from feeds.ib.session import IBSession
from feeds.synthetic import generate_universe
from ibsim import IBSim, SimConfig
from ml.features import FEATURE_NAMES

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "config" / "paper.toml"
SYMBOLS = ("SYNA", "SYNB", "SYNC")
DAY = "2024-01-08"
START = "14:40"
CASH = 100_000.0
CLIENT_ID = 5
STRATEGY_ID = "mlx"
#: Only a hung engine reaches this bound; load makes settling slower, never wrong.
SETTLE_TIMEOUT = 300.0
WORKING = ("PreSubmitted", "Submitted")

FAULTS = ("drop", "restart", "reset_1102", "reset_no_1102", "delay_commission", "drop_commission", "partial",
          "reject", "race_cancel", "cancel_by_other", "fill_by_other", "kill_decided", "kill_advanced")


class StubModel:
    """A deterministic ``p_up`` from the features (mean reversion on the 5-bar return): trades often."""

    def __init__(self, scale: float = 900.0) -> None:
        self.scale = scale
        self._i = FEATURE_NAMES.index("ret_5")

    def predict_p_up(self, X: np.ndarray) -> np.ndarray:
        """Return p_up in (0, 1), high after a 5-bar drop."""
        return 1.0 / (1.0 + np.exp(self.scale * np.asarray(X, dtype="float64")[:, self._i]))


def frames(sessions: int = 5) -> dict[str, pd.DataFrame]:
    """Return the synthetic universe's first ``sessions`` sessions for :data:`SYMBOLS`."""
    cfg = SyntheticConfig(seed=7, symbols=SYMBOLS, start="2024-01-02", sessions=max(sessions, 5))
    out = {}
    for sym, frame in generate_universe(cfg).items():
        days = frame.index.tz_convert("America/New_York").normalize()
        out[sym] = frame.loc[days.isin(days.unique()[:sessions])]
    return out


def make_config(tmp: Path) -> AppConfig:
    """Return config/paper.toml pointed at ``tmp`` with the campaign's settings (short holds, trades often)."""
    return load_config(PAPER, [
        f"live.state_dir='{tmp / 'state'}'", f"live.log_dir='{tmp / 'logs'}'",
        f"live.kill_switch_file='{tmp / 'state' / 'KILL'}'", "live.poll_offset_seconds=0.0",
        "live.reconnect_initial_seconds=0.2", "live.reconnect_max_seconds=1.0", f"live.client_id={CLIENT_ID}",
        f"data.symbols={list(SYMBOLS)!r}", "costs.slippage_bps=0.0", "strategy.max_hold_bars=8",
        "strategy.p_up_entry_threshold=0.7", "risk.max_concurrent_positions=2", "risk.cooldown_bars_after_stop=5",
    ])


def draw_schedule(rng: random.Random, bars: int) -> list[tuple[int, str]]:
    """Return ``(bar, fault)`` pairs, sorted by bar: 2 to 5 faults between bar 3 and 6 bars before the end."""
    last = max(bars - 6, 4)
    n = rng.randint(2, 5)
    return sorted((rng.randrange(3, last), rng.choice(FAULTS)) for _ in range(n))


@dataclass
class Violation:
    invariant: str
    bar: int
    detail: str


@dataclass
class Engine:
    """One engine instance (one "process"): session, state store and cerebro."""

    session: IBSession
    state: StateStore
    run: LiveRun


@dataclass
class Campaign:
    """One seed: a simulator, engines started and killed in turn, checks after every settled bar."""

    seed: int
    bars: int
    tmp: Path
    schedule: list[tuple[int, str]] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    applied: list[tuple[int, str]] = field(default_factory=list)
    plant: Callable[[int, Campaign], None] | None = None  # tests: plant a violation

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.schedule = draw_schedule(self.rng, self.bars)
        self.cfg = make_config(self.tmp)
        start = pd.Timestamp(f"{DAY} {START}", tz="America/New_York").to_pydatetime()
        self.sim = IBSim(frames(5), start=start, config=SimConfig(initialCash=CASH))
        live = self.cfg.live.model_copy(update={"host": "127.0.0.1"})
        self.cfg = self.cfg.model_copy(update={"live": live})
        self.engine: Engine | None = None
        self.later: list[tuple[int, str]] = []  # follow-ups (1102 after a reset), deferred faults
        self.unprotected: dict[str, int] = {}
        self.missing: dict[str, int] = {}
        self.prev_positions: dict[str, float] = {}
        self.kills = 0

    # -- engine lifecycle -------------------------------------------------------------------------
    def _start_engine(self) -> Engine:
        live = self.cfg.live.model_copy(update={"host": self.sim.host, "port": self.sim.port})
        cfg = self.cfg.model_copy(update={"live": live})
        session = IBSession(cfg.live, clock=self.sim.now)
        session.connect(timeout=30, attempts=20)
        state = StateStore(state_path(cfg))
        run = build_live(cfg, session, state, StubModel(), kill_switch=KillSwitch(cfg.live.kill_switch_file),
                         clock=self.sim.now, qcheck=0.01)
        return Engine(session, state, run)

    @staticmethod
    def _abandon(engine: Engine) -> None:
        """Make cerebro's stop a no-op for this instance (the kill): no strategy, broker or feed stop hooks."""
        def noop(*_: Any, **__: Any) -> None:
            return None

        strat = engine.run.hooks.strategy
        if strat is not None:
            strat._stop = noop
            for d in strat.datas:
                d.stop = noop
        engine.run.broker.stop = noop  # type: ignore[method-assign]

    @staticmethod
    def _abort(engine: Engine) -> None:
        """Close the socket without an orderly disconnect and the state store's connection as it is."""
        conn = engine.session.ib.client.conn
        transport = getattr(conn, "transport", None)
        if transport is not None:
            transport.abort()
        engine.state.close()

    # -- waiting ----------------------------------------------------------------------------------
    def _connection_settled(self, e: Engine) -> bool | None:
        s = e.session
        if not s.connected:
            due = s.next_attempt_at
            return due is not None and due > self.sim.now()
        if s.connectivity_lost:
            return True
        if s.entries_paused:
            return False
        return None

    def _settled(self, e: Engine, need_bar: bool) -> bool:
        strat = e.run.hooks.strategy
        if strat is None:
            return False
        conn = self._connection_settled(e)
        if conn is not None:
            return conn
        if not all(d.tracker.warmed_up and not d.tracker.queue for d in strat.datas):
            return False
        held = BarPoller.for_session(e.session).budget.backoff_seconds(self.sim.now()) > 0.0
        if need_bar and not held:
            last_closed = bt.date2num((self.sim.now() - timedelta(minutes=1)).replace(tzinfo=None))
            if e.run.hooks.last_live_bar < last_closed - 1e-9:
                return False
        return not e.run.broker.exits_on_hold and len(self.sim.orders()) >= len(e.run.broker.sent)

    def _delivered(self, e: Engine) -> bool:
        client = e.session.ib.client
        conn = client.conn
        if not conn.isConnected():
            return True
        if client._msgQ:
            return False
        return self.sim.messagesHandled(CLIENT_ID) >= conn.numMsgSent - 1

    def _wait(self, e: Engine, bar: int, need_bar: bool) -> None:
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while not (self._settled(e, need_bar) and self._delivered(e)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"engine did not settle on bar {bar} within {SETTLE_TIMEOUT:.0f} s")
            time.sleep(0.005)

    def _fully_settled(self, e: Engine) -> bool:
        s = e.session
        return s.connected and not s.entries_paused and not s.connectivity_lost

    # -- invariants -------------------------------------------------------------------------------
    def _violate(self, invariant: str, bar: int, detail: str) -> None:
        self.violations.append(Violation(invariant, bar, detail))

    def _ours(self, ref: str) -> Any:
        return parse_order_ref(ref, STRATEGY_ID)

    def _store_fills(self) -> list[str]:
        db = state_path(self.cfg)
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            return [r[0] for r in con.execute("SELECT exec_id FROM fills")]
        except sqlite3.OperationalError:
            return []
        finally:
            con.close()

    def check(self, bar: int, e: Engine) -> None:
        """Check the per-bar invariants (the engine is idle: settled and everything delivered)."""
        positions = {s: p.qty for s, p in self.sim.positions().items() if p.qty}
        orders = [o for o in self.sim.orders() if self._ours(o.orderRef)]
        for sym, qty in positions.items():
            if qty < 0:
                self._violate("never_short", bar, f"{sym} {qty:g} at IB")
        settled = self._fully_settled(e)
        if settled:
            self._check_positions(bar, e, positions)
        self.prev_positions = positions
        self._check_protected(bar, e, positions, orders)
        # an order IB refused or that ended with nothing filled (201, a cancelled exit) may be sent again under
        # its orderRef: only two live-or-filled orders with one orderRef are a duplicate
        live = Counter(o.orderRef for o in orders if o.filled > 0 or o.status not in ("Inactive", "Cancelled"))
        for ref, n in live.items():
            if n > 1:
                self._violate("unique_order_ref", bar, f"{ref}: {n} orders working or filled")
        self._check_fills(bar, settled)

    def _check_positions(self, bar: int, e: Engine, positions: dict[str, float]) -> None:
        strat = e.run.hooks.strategy
        if strat is None:
            return
        for d in strat.datas:
            theirs = {positions.get(d._name, 0.0), self.prev_positions.get(d._name, 0.0)}
            for what, size in (("broker", e.run.broker.getposition(d).size), ("book", strat.books[d._name].size)):
                if size not in theirs:
                    self._violate("positions_match", bar, f"{d._name} {what} {size:g} vs IB "
                                  f"{positions.get(d._name, 0.0):g} (at the previous bar "
                                  f"{self.prev_positions.get(d._name, 0.0):g})")

    def _check_protected(self, bar: int, e: Engine, positions: dict[str, float], orders: list[Any]) -> None:
        for sym, qty in positions.items():
            if qty <= 0:
                continue
            covered = e.run.broker.exits_on_hold > 0 or any(
                o.symbol == sym and o.status in WORKING and o.action == "SELL"
                and self._ours(o.orderRef).role in ("stop", "exit") for o in orders)
            if covered:
                self.unprotected.pop(sym, None)
            elif bar - self.unprotected.setdefault(sym, bar) >= 1:
                self._violate("protected", bar, f"{sym} {qty:g} at IB without a working stop or exit "
                                                f"since bar {self.unprotected[sym]}")
                self.unprotected[sym] = bar  # report again only after another bar
        for sym in [s for s in self.unprotected if s not in positions]:
            del self.unprotected[sym]

    def _check_fills(self, bar: int, settled: bool) -> None:
        booked = Counter(self._store_fills())
        for exec_id, n in booked.items():
            if n > 1:
                self._violate("fills_booked_once", bar, f"execution {exec_id} booked {n} times")
        if not settled:
            return
        ib = {x.execId for x in self.sim.fills() if self._ours(x.orderRef) and x.order[0] == CLIENT_ID}
        for exec_id in ib - set(booked):
            if bar - self.missing.setdefault(exec_id, bar) >= 1:
                self._violate("fills_booked_once", bar, f"execution {exec_id} not booked since bar "
                                                        f"{self.missing[exec_id]}")
                self.missing[exec_id] = bar
        for exec_id in set(self.missing) & set(booked):
            del self.missing[exec_id]

    def _round_trips(self) -> dict[tuple[str, str], float]:
        """Return IB's closed round trips of ours by (symbol, trade id): P&L net of commissions."""
        trips: dict[tuple[str, str], dict[str, float]] = {}
        for x in self.sim.fills():
            ref = self._ours(x.orderRef)
            if ref is None:
                continue
            t = trips.setdefault((ref.symbol, ref.trade_id), {"qty": 0.0, "cash": 0.0, "comm": 0.0, "sold": 0.0})
            sign = 1.0 if x.side in ("BOT", "BUY") else -1.0
            t["qty"] += sign * x.shares
            t["cash"] -= sign * x.shares * x.price
            t["comm"] += x.commission
            t["sold"] += x.shares if sign < 0 else 0.0
        return {k: v["cash"] - v["comm"] for k, v in trips.items() if abs(v["qty"]) < 1e-9 and v["sold"] > 0}

    @staticmethod
    def _trade_key(tr: Any, ids: list[tuple[str, str]]) -> tuple[str, str]:
        """Return the (symbol, trade id) of an engine trade: the id whose bar starts at most 2 min before entry."""
        if tr.entry_time is not None:
            entry = pd.Timestamp(tr.entry_time, tz="UTC")
            for sym, tid in ids:
                start = pd.Timestamp(trade_start(tid))
                if sym == tr.symbol and start <= entry <= start + pd.Timedelta(minutes=2):
                    return (sym, tid)
        return (tr.symbol, f"?{tr.exit_time}")

    def check_end(self, e: Engine) -> int:
        """Check closed trades and realised P&L against IB's round trips; return the number of trades."""
        closed = self._round_trips()
        refs = [self._ours(x.orderRef) for x in self.sim.fills()]
        ids = sorted({(r.symbol, r.trade_id) for r in refs if r is not None})
        trades = e.state.trades()
        engine: dict[tuple[str, str], float] = {}
        for tr in trades:
            key = self._trade_key(tr, ids)
            if key in engine:
                self._violate("trades_match", self.bars, f"trade {key} closed twice in the engine's books")
            engine[key] = tr.pnl
        for key in sorted(set(closed) | set(engine)):
            if key not in engine:
                self._violate("trades_match", self.bars, f"IB round trip {key} ({closed[key]:+.2f}) not closed "
                                                         "in the engine's books")
            elif key not in closed:
                self._violate("trades_match", self.bars, f"engine trade {key} has no closed round trip at IB")
            elif abs(engine[key] - closed[key]) > 0.02:
                self._violate("trades_match", self.bars, f"{key} P&L {engine[key]:+.2f} vs IB {closed[key]:+.2f}")
        strat = e.run.hooks.strategy
        realised = strat.risk.realized_pnl if strat is not None else float("nan")
        total = sum(closed.values())
        if not abs(realised - total) <= 0.05:
            self._violate("pnl_match", self.bars, f"realised {realised:+.2f} vs IB round trips {total:+.2f}")
        return len(trades)

    # -- faults -----------------------------------------------------------------------------------
    def _working_child(self) -> Any:
        for o in self.sim.orders():
            ref = self._ours(o.orderRef)
            if ref is not None and o.status in WORKING and ref.role in ("stop", "target"):
                return o
        return None

    def _lose_connectivity(self, until: int, then: str) -> None:
        self.sim.loseConnectivity()
        self.later.append((until, then))

    def _reconnect_without_1102(self) -> None:
        future = self.sim.restart(downSeconds=0.5, wait=False)  # sockets closed now
        self.sim.restoreConnectivity()  # nobody connected: the outage ends without a 1102 reaching us
        future.result(30)

    def _simple(self, bar: int) -> dict[str, Callable[[], Any]]:
        sim, rng = self.sim, self.rng
        return {
            "drop": sim.dropConnections,
            "restart": lambda: sim.restart(downSeconds=0.5, wait=True),
            "reset_1102": lambda: self._lose_connectivity(bar + 2, "_restore"),
            "reset_no_1102": lambda: self._lose_connectivity(bar + 2, "_reconnect_without_1102"),
            "_restore": sim.restoreConnectivity,
            "_reconnect_without_1102": self._reconnect_without_1102,
            "delay_commission": lambda: sim.delayCommissionReports(30, count=2),
            "drop_commission": lambda: sim.dropCommissionReports(count=1),
            "partial": lambda: sim.setPartialFills(float(rng.choice((10, 25, 40)))),
            "reject": lambda: sim.rejectNextOrder(rng.choice(SYMBOLS)),
            "race_cancel": lambda: sim.raceCancelWithFill(code=rng.choice((10148, 161))),
        }

    def inject(self, bar: int, fault: str) -> str | None:
        """Apply ``fault`` now; return "kill_decided"/"kill_advanced" for kills, None otherwise."""
        if fault in ("kill_decided", "kill_advanced"):
            return fault
        simple = self._simple(bar)
        if fault in simple:
            simple[fault]()
        else:  # cancel_by_other, fill_by_other: act on a working stop or target of ours
            order = self._working_child()
            if order is None:  # nothing to act on yet: try again next bar
                self.later.append((bar + 1, fault))
                return None
            if fault == "cancel_by_other":
                self.sim.cancelByOtherClient(order.orderId, order.clientId)
            else:
                self.sim.fillByOtherClient(order.orderId, clientId=order.clientId)
        self.applied.append((bar, fault))
        return None

    # -- the session ------------------------------------------------------------------------------
    def _bar(self, e: Engine, i: int, first_bar: int) -> str | None:
        """Wait for bar ``i`` to settle, check it, inject its faults; return the kill due now, if any."""
        self._wait(e, i, need_bar=i > first_bar)
        self.check(i, e)
        if self.plant is not None:
            self.plant(i, self)
        kill = None
        due = [f for b, f in self.schedule if b == i] + [f for b, f in self.later if b == i]
        self.later = [(b, f) for b, f in self.later if b != i]
        for fault in due:
            kill = self.inject(i, fault) or kill
        if kill is not None:
            self.applied.append((i, kill))
        return kill

    def _incarnation(self, first_bar: int) -> tuple[int, bool]:
        """Run one engine from ``first_bar``; return (next bar, killed)."""
        e = self._start_engine()
        self.engine = e
        out: dict[str, Any] = {"bar": self.bars, "killed": False}
        errors: list[BaseException] = []

        def stepper() -> None:
            try:
                for i in range(first_bar, self.bars):
                    kill = self._bar(e, i, first_bar)
                    if kill == "kill_decided":
                        out.update(bar=i, killed=True)
                        return
                    self.sim.advance(seconds=60)
                    if kill == "kill_advanced":
                        out.update(bar=i + 1, killed=True)
                        return
                self._wait(e, self.bars, need_bar=True)
                self.check(self.bars, e)
            except BaseException as exc:
                errors.append(exc)
            finally:
                if out["killed"]:
                    self._abandon(e)
                e.run.cerebro.runstop()

        thread = threading.Thread(target=stepper, daemon=True)
        thread.start()
        e.run.cerebro.run()
        thread.join(60)
        if errors:
            raise errors[0]
        if out["killed"]:
            self._abort(e)
            self.kills += 1
        return int(out["bar"]), bool(out["killed"])

    def run(self) -> int:
        """Run the session; return the number of closed trades."""
        self.sim.start()
        try:
            bar, killed = 0, True
            while killed and bar <= self.bars:
                bar, killed = self._incarnation(bar)
            assert self.engine is not None
            trades = self.check_end(self.engine)
            self.engine.session.disconnect()
            self.engine.state.close()
            return trades
        finally:
            self.sim.stop()


@dataclass
class SeedResult:
    seed: int
    schedule: list[tuple[int, str]]
    bars: int
    trades: int
    violations: list[Violation]
    seconds: float
    error: str | None = None
    tmp: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.violations and self.error is None

    def line(self) -> str:
        faults = ",".join(f"{f}@{b}" for b, f in self.schedule)
        verdict = "ok" if self.ok else "FAIL"
        first = ""
        if self.error:
            first = f" error: {self.error}"
        elif self.violations:
            v = self.violations[0]
            first = f" first: {v.invariant} at bar {v.bar}: {v.detail}"
        keep = f" (kept {self.tmp})" if self.tmp else ""
        return (f"seed {self.seed:>5}  faults [{faults}]  bars {self.bars}  trades {self.trades}  "
                f"{verdict}{first}{keep}")


def run_seed(seed: int, bars: int, plant: Callable[[int, Campaign], None] | None = None,
             keep: bool = False, schedule: list[tuple[int, str]] | None = None) -> SeedResult:
    """Run one seed in a temp folder (kept when the seed fails, or with ``keep``); ``schedule`` replaces the
    drawn one (tests)."""
    tmp = Path(tempfile.mkdtemp(prefix=f"campaign-{seed}-"))
    t0 = time.monotonic()
    c = Campaign(seed, bars, tmp, plant=plant)
    if schedule is not None:
        c.schedule = sorted(schedule)
    trades, error = 0, None
    try:
        trades = c.run()
    except Exception as exc:  # a hung or crashed engine is a failed seed, not a crashed campaign
        logger.exception("seed %d crashed", seed)
        error = f"{type(exc).__name__}: {exc}"
    res = SeedResult(seed, c.schedule, bars, trades, c.violations, time.monotonic() - t0, error)
    if res.ok and not keep:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        res.tmp = tmp
    return res


def totals(results: list[SeedResult], seconds: float) -> str:
    """Return the table of totals: violations by invariant (seeds affected and count), time taken."""
    invariants = ("never_short", "positions_match", "protected", "unique_order_ref", "fills_booked_once",
                  "trades_match", "pnl_match")
    lines = [f"{'invariant':<20} {'seeds':>6} {'violations':>11}"]
    for name in invariants:
        seeds = sum(1 for r in results if any(v.invariant == name for v in r.violations))
        count = sum(1 for r in results for v in r.violations if v.invariant == name)
        lines.append(f"{name:<20} {seeds:>6} {count:>11}")
    errors = sum(1 for r in results if r.error)
    lines.append(f"{'engine error/hang':<20} {errors:>6} {errors:>11}")
    failed = sum(1 for r in results if not r.ok)
    lines.append(f"seeds {len(results)}, failed {failed}, trades {sum(r.trades for r in results)}, "
                 f"time {seconds:.1f} s ({seconds / max(len(results), 1):.1f} s/seed)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the campaign; return 1 when any seed violated an invariant."""
    p = argparse.ArgumentParser(prog="python -m engines.live.campaign", description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=10, help="how many seeds (default 10)")
    p.add_argument("--start-seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--bars", type=int, default=60, help="bars per session from 14:40 New York (default 60)")
    p.add_argument("--log-level", default="CRITICAL", help="engine log level (default CRITICAL)")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    t0 = time.monotonic()
    results = []
    for seed in range(args.start_seed, args.start_seed + args.seeds):
        res = run_seed(seed, args.bars)
        print(res.line(), flush=True)
        results.append(res)
    print(totals(results, time.monotonic() - t0))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
