"""Helpers for the live tests: a config in a temp folder, a stub model, and a driver that steps ibsim's clock
one bar at a time while ``run_live``'s cerebro runs (each step waits until the engine has handled the bar,
so every order reaches the simulator at the bar boundary: deterministic).
"""

from __future__ import annotations

import json
import logging
import socket
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

    def __post_init__(self) -> None:
        live = self.cfg.live.model_copy(update={"host": self.sim.host, "port": self.sim.port})
        self.cfg = self.cfg.model_copy(update={"live": live})
        self.session = IBSession(self.cfg.live, clock=self.sim.now)
        self.session.connect(timeout=5)
        self.state = StateStore(state_path(self.cfg))
        self.run = build_live(self.cfg, self.session, self.state, self.model,
                              kill_switch=self.kill_switch or KillSwitch(self.cfg.live.kill_switch_file),
                              clock=self.sim.now, qcheck=0.01)

    @property
    def strategy(self) -> Any:
        return self.run.hooks.strategy

    def _settled(self, bars: int) -> bool:
        strat = self.strategy
        if strat is None:
            return False
        if self.session.entries_paused:
            return True  # down: let simulated time pass so the session reconnects and bars accumulate
        feeds = strat.datas
        if not all(d.tracker.warmed_up and not d.tracker.queue for d in feeds):
            return False
        if bars and not self.held_back():
            last_closed = bt.date2num((self.sim.now() - timedelta(minutes=1)).replace(tzinfo=None))
            if self.run.hooks.last_live_bar < last_closed - 1e-9:  # set after the bar's decisions
                return False
        return not self.run.broker.exits_on_hold and len(self.sim.orders()) >= len(self.run.broker.sent)

    def held_back(self) -> bool:
        """True while the request budget backs off after a 162: only simulated time can bring the next bar."""
        return BarPoller.for_session(self.session).budget.backoff_seconds(self.sim.now()) > 0.0

    def _wait(self, bars: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not self._settled(bars):
            if time.monotonic() > deadline:
                raise AssertionError(f"engine did not settle on live bar {bars}")
            time.sleep(0.005)
        time.sleep(0.02)  # let modifications and cancels reach the simulator

    def play(self, bars: int) -> None:
        """Step ``bars`` minutes, one bar at a time, then stop the engine (state persisted)."""
        errors: list[BaseException] = []

        def stepper() -> None:
            try:
                for i in range(bars):
                    self._wait(i)
                    if self.before_step is not None:
                        self.before_step(i, self)
                    if self.stop_requested:
                        return
                    self.sim.advance(seconds=60)
                self._wait(bars)
            except BaseException as exc:  # handed to the test thread
                errors.append(exc)
            finally:
                self.run.cerebro.runstop()

        thread = threading.Thread(target=stepper, daemon=True)
        thread.start()
        self.run.cerebro.run()
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
        assert driver.run.broker.getposition(d).size == (theirs.qty if theirs else 0.0), d._name
        book = driver.strategy.books[d._name]
        assert book.size == (theirs.qty if theirs else 0.0), d._name
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


def step_bar(ctl: Control, log: Path, minutes: int = 1, wait: float = 6.0) -> pd.Timestamp:
    """Advance the simulator by ``minutes`` and wait until the trader decided the closed bar."""
    now = pd.Timestamp(ctl(f"advance {60 * minutes}"))
    deadline = time.monotonic() + wait
    while not bars_decided(log, now - pd.Timedelta(minutes=1)) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.25)  # exits wait for cancel confirmations; let them reach the simulator
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
