"""Helpers for the live tests: a config in a temp folder, a stub model, and a driver that steps ibsim's clock
one bar at a time while ``run_live``'s cerebro runs (each step waits until the engine has handled the bar,
so every order reaches the simulator at the bar boundary: deterministic).
"""

from __future__ import annotations

import json
import logging
import socket
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import backtrader as bt
import numpy as np
import pandas as pd

from config.settings import AppConfig, load_config
from engines.live.heartbeat import heartbeat_path
from engines.live.node import LiveRun, build_live
from engines.live.safety import KillSwitch
from engines.live.state import StateStore, state_path
from feeds.ib.feed import BarPoller
from feeds.ib.mapping import parse_order_ref
from feeds.ib.session import IBSession
from ibsim import IBSim
from ml.features import FEATURE_NAMES
from tests.kit import synthetic_frames

logger = logging.getLogger(__name__)

PAPER = Path(__file__).resolve().parents[2] / "config" / "paper.toml"
SYMBOLS = ("SYNA", "SYNB", "SYNC")
STARTING_CASH = 100_000.0
#: How long a test waits for the engine to handle one bar. Only a hung engine reaches it; load does not.
SETTLE_TIMEOUT = 300.0


class StubModel:
    """A deterministic ``p_up`` from the features (mean reversion on the 5-bar return): no training needed."""

    def __init__(self, scale: float = 900.0) -> None:
        self.scale = scale
        self._i = FEATURE_NAMES.index("ret_5")

    def predict_p_up(self, X: np.ndarray) -> np.ndarray:
        """Return p_up in (0, 1), high after a 5-bar drop."""
        return 1.0 / (1.0 + np.exp(self.scale * np.asarray(X, dtype="float64")[:, self._i]))


def frames(sessions: int = 5) -> dict[str, pd.DataFrame]:
    """Return the demo universe's first sessions for :data:`SYMBOLS`."""
    return synthetic_frames(SYMBOLS, sessions)


def make_config(tmp: Path, *extra: str) -> AppConfig:
    """Return config/paper.toml pointed at ``tmp`` with test settings (and ``extra`` overrides)."""
    return load_config(PAPER, live_overrides(tmp, *extra))


def live_overrides(tmp: Path, *extra: str) -> list[str]:
    """Return the ``--set`` overrides of the live tests (temp folders, zero poll offset, short holds)."""
    return [
        f"live.state_dir='{tmp / 'state'}'", f"live.log_dir='{tmp / 'logs'}'",
        f"live.kill_switch_file='{tmp / 'state' / 'KILL'}'", "live.poll_offset_seconds=0.0",
        "live.reconnect_initial_seconds=0.2", "live.reconnect_max_seconds=1.0", "live.client_id=5",
        f"data.symbols={list(SYMBOLS)!r}", "costs.slippage_bps=0.0", "strategy.max_hold_bars=8",
        "strategy.p_up_entry_threshold=0.7", "risk.max_concurrent_positions=2", "risk.cooldown_bars_after_stop=5",
        *extra,
    ]


@dataclass
class LiveDriver:
    """Run the live engine against ``sim`` in this thread while a stepper thread advances the sim clock."""

    sim: IBSim
    cfg: AppConfig
    model: Any = field(default_factory=StubModel)
    kill_switch: KillSwitch | None = None
    session: IBSession = field(init=False)
    state: StateStore = field(init=False)
    run: LiveRun = field(init=False)
    before_step: Callable[[int, LiveDriver], None] | None = None
    stop_requested: bool = False
    until: datetime | None = None  # a bounded run (run_live.py --until): the engine stops by itself
    engine_stopped: bool = False  # cerebro.run returned: the stepper stops waiting for bars

    def __post_init__(self) -> None:
        live = self.cfg.live.model_copy(update={"host": self.sim.host, "port": self.sim.port})
        self.cfg = self.cfg.model_copy(update={"live": live})
        self.session = IBSession(self.cfg.live, clock=self.sim.now)
        self.session.connect(timeout=30)
        self.state = StateStore(state_path(self.cfg))
        self.run = build_live(self.cfg, self.session, self.state, self.model,
                              kill_switch=self.kill_switch or KillSwitch(self.cfg.live.kill_switch_file),
                              clock=self.sim.now, qcheck=0.01, until=self.until)

    @property
    def strategy(self) -> Any:
        return self.run.hooks.strategy

    def _connection_settled(self) -> bool | None:
        """While the connection is not normal, whether simulated time may pass now; None when it is normal."""
        session = self.session
        if not session.connected:  # reconnect attempts are due on the simulated clock: step once one has failed
            due = session.next_attempt_at
            return due is not None and due > self.sim.now()
        if session.connectivity_lost:
            return True  # 1100 with the socket up: the simulator decides when 1101/1102 comes, bars go on
        if session.entries_paused:
            return False  # reconnected: the re-sync (backfill, reconcile) runs on the engine's next pass
        return None

    def _settled(self, bars: int) -> bool:
        strat = self.strategy
        if strat is None:
            return False
        connection = self._connection_settled()
        if connection is not None:
            return connection
        now_ns = int(self.sim.now().timestamp() * 1e9)
        # a feed without its warm-up history waiting for its next ask (a retry, a back-off) needs simulated time
        if not all(not d.tracker.queue and (d.tracker.warmed_up or d.tracker.next_poll_ns > now_ns)
                   for d in strat.datas):
            return False
        if bars and not self.held_back():
            last_closed = bt.date2num((self.sim.now() - timedelta(minutes=1)).replace(tzinfo=None))
            if self.run.hooks.last_live_bar < last_closed - 1e-9:  # set after the bar's decisions
                return False
        return not self.run.broker.exits_on_hold and len(self.sim.orders()) >= len(self.run.broker.sent)

    def held_back(self) -> bool:
        """True while the request budget backs off after a 162: only simulated time can bring the next bar."""
        return BarPoller.for_session(self.session).budget.backoff_seconds(self.sim.now()) > 0.0

    def delivered(self) -> bool:
        """True once the simulator has acted on every message the engine sent (orders, modifications, cancels)."""
        client = self.session.ib.client
        conn = client.conn
        if not conn.isConnected():
            return True
        if client._msgQ:
            return False
        return self.sim.messagesHandled(self.cfg.live.client_id) >= conn.numMsgSent - 1  # - the handshake frame

    def _wait(self, bars: int, timeout: float = SETTLE_TIMEOUT) -> None:
        """Wait until the engine has handled live bar ``bars`` and the simulator has everything it sent.

        The bound is generous on purpose: load makes this slower, never wrong.
        """
        deadline = time.monotonic() + timeout
        while not (self._settled(bars) and self.delivered()):
            if self.engine_stopped:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"engine did not settle on live bar {bars} within {timeout:.0f} s")
            time.sleep(0.005)

    def play(self, bars: int) -> None:
        """Step ``bars`` minutes, one bar at a time, then stop the engine (state persisted)."""
        errors: list[BaseException] = []
        self.engine_stopped = False

        def stepper() -> None:
            try:
                for i in range(bars):
                    self._wait(i)
                    if self.before_step is not None:
                        self.before_step(i, self)
                    if self.stop_requested or self.engine_stopped:
                        return
                    self.sim.advance(seconds=60)
                self._wait(bars)
            except BaseException as exc:  # handed to the test thread
                errors.append(exc)
            finally:
                self.run.cerebro.runstop()

        thread = threading.Thread(target=stepper, daemon=True)
        thread.start()
        try:
            self.run.cerebro.run()
        finally:
            self.engine_stopped = True
        thread.join(30)
        if errors:
            raise errors[0]

    def close(self) -> None:
        self.session.disconnect()
        self.state.close()


Step = Callable[[int, LiveDriver], None]  # LiveDriver.before_step: (bar index, driver)


def assert_books_match(driver: LiveDriver, sim: IBSim) -> None:
    """Our books equal the simulator's: no ``orderRef`` sent twice, every execution recorded once, positions
    (broker and strategy book) equal, and the persisted risk state is the strategy's."""
    refs = [o.orderRef for o in sim.orders()]
    assert len(refs) == len(set(refs)), Counter(refs).most_common(3)
    assert all(parse_order_ref(r, "mlx") for r in refs)
    assert {e.execId for e in sim.fills()} == {f.exec_id for f in driver.state.fills()}
    for d in driver.strategy.datas:
        theirs = sim.positions().get(d._name)
        book = driver.strategy.books[d._name]
        seen = (d._name, driver.run.broker.getposition(d).size, book, theirs)
        assert driver.run.broker.getposition(d).size == (theirs.qty if theirs else 0.0), seen
        assert book.size == (theirs.qty if theirs else 0.0), seen
    assert driver.state.get_value("risk") == driver.strategy.risk.to_dict()


def open_symbol(driver: LiveDriver) -> str | None:
    """Return a symbol with an open position whose stop is bound, if any."""
    for d in driver.strategy.datas:
        if driver.strategy.books[d._name].size > 0 and driver.strategy.books[d._name].stop is not None:
            return d._name
    return None


def sim_start(day: str, hhmm: str) -> datetime:
    """Return a New York time."""
    return pd.Timestamp(f"{day} {hhmm}", tz="America/New_York").to_pydatetime()


def free_port() -> int:
    """Return a free loopback TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Control:
    """The simulator's control port (one command per line, replies end with a blank line)."""

    def __init__(self, port: int) -> None:
        deadline = time.monotonic() + 20
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def __call__(self, command: str) -> str:
        self.sock.sendall(command.encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n\n"):
            buf += self.sock.recv(65536)
        return buf.decode().strip()


def bars_decided(log: Path, bar: pd.Timestamp) -> bool:
    """True when every symbol has a decision line for ``bar`` in the decisions log."""
    if not log.exists():
        return False
    stamp = bar.tz_convert("UTC").isoformat()
    return sum(1 for line in log.read_text().splitlines() if json.loads(line)["time"] == stamp) >= len(SYMBOLS)


#: Journal statuses of an order still in flight: held for a confirmation, sent and not acknowledged, or cancelling.
IN_FLIGHT = ("Intent", "PendingSubmit", "ApiPending", "PendingCancel")


def journal_in_flight(db: Path) -> int:
    """Return how many orders of the trader's journal (``db``, opened read-only) are still in flight."""
    if not db.exists():
        return 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        marks = ", ".join("?" * len(IN_FLIGHT))
        return int(con.execute(f"SELECT count(*) FROM orders WHERE status IN ({marks})", IN_FLIGHT).fetchone()[0])
    except sqlite3.OperationalError:  # no table yet: the trader has not started
        return 0
    finally:
        con.close()


def wait_until(done: Callable[[], bool], what: str, timeout: float = SETTLE_TIMEOUT) -> None:
    """Poll ``done`` until it holds; fail naming ``what`` after ``timeout`` seconds (only a hung trader gets there)."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.02)


def wait_ready(cfg: AppConfig, pid: int) -> None:
    """Wait until the trader process ``pid`` is connected and every feed has its warm-up history (its heartbeat)."""
    path = heartbeat_path(cfg)

    def ready() -> bool:
        try:
            beat = json.loads(path.read_text())
        except (OSError, ValueError):
            return False
        return beat.get("pid") == pid and bool(beat.get("connected")) and bool(beat.get("warmed_up"))

    wait_until(ready, f"trader {pid} connected and warmed up")


def step_bar(ctl: Control, log: Path, db: Path, minutes: int = 1) -> pd.Timestamp:
    """Advance the simulator by ``minutes``; wait until the trader decided the closed bar and nothing is in flight.

    ``db`` is the trader's state store: its orders are in flight while held for a cancel confirmation, sent
    and not acknowledged, or being cancelled.
    """
    now = pd.Timestamp(ctl(f"advance {60 * minutes}"))
    bar = now - pd.Timedelta(minutes=1)
    wait_until(lambda: bars_decided(log, bar), f"decision lines of the bar {bar}")
    wait_until(lambda: journal_in_flight(db) == 0, f"orders in flight after the bar {bar}")
    return now


def sim_positions(ctl: Control) -> dict[str, float]:
    """Positions from the simulator's ``status`` command."""
    out = {}
    for line in ctl("status").splitlines():
        if line.startswith("position "):
            _, sym, qty, *_ = line.split()
            out[sym] = float(qty)
    return out


@dataclass
class Rehearsal:
    """Bars written as CSV files, two free ports and a trained model for a ``python -m ibsim`` subprocess run."""

    frames: dict[str, pd.DataFrame]
    data: Path
    port: int
    cport: int
    extra: tuple[str, ...]
    cfg: AppConfig


def prepare_rehearsal(tmp: Path) -> Rehearsal:
    """Write 5 sessions of bars to ``tmp/data``, pick ports and train a small model (trades readily)."""
    from ml.train import train_model  # noqa: PLC0415

    frames_ = frames(5)
    data = tmp / "data"
    data.mkdir()
    for sym, frame in frames_.items():
        frame.to_csv(data / f"{sym}.csv", index_label="datetime")
    port, cport = free_port(), free_port()
    extra = ("model.kind='logreg'", f"model.path='{tmp / 'model'}'", "model.cv_folds=2",
             "strategy.p_up_entry_threshold=0.36", "strategy.take_profit=0.05", "strategy.stop_loss=0.05",
             f"live.port={port}", "live.client_id=7")
    cfg = make_config(tmp, *extra)
    train_model(cfg, frames_, "test bars", progress=False)
    return Rehearsal(frames_, data, port, cport, extra, cfg)
