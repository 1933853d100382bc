"""``run_live.py`` killed with SIGKILL mid-day and restarted, against ``python -m ibsim --control-port``."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pandas as pd
import pytest

from feeds.ib.live import state_path
from feeds.ib.state import StateStore
from ml.train import train_model
from tests.integration import live_support as ls

ROOT = Path(__file__).resolve().parents[2]
DAY = "2024-01-08"
pytestmark = pytest.mark.slow


def _free_port() -> int:
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


def _bars_decided(log: Path, bar: pd.Timestamp) -> bool:
    if not log.exists():
        return False
    stamp = bar.tz_convert("UTC").isoformat()
    return sum(1 for line in log.read_text().splitlines() if json.loads(line)["time"] == stamp) >= len(ls.SYMBOLS)


def _step(ctl: Control, log: Path, minutes: int = 1, wait: float = 6.0) -> pd.Timestamp:
    now = pd.Timestamp(ctl(f"advance {60 * minutes}"))
    deadline = time.monotonic() + wait
    while not _bars_decided(log, now - pd.Timedelta(minutes=1)) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.25)  # exits wait for cancel confirmations; let them reach the simulator
    return now


def _positions(ctl: Control) -> dict[str, float]:
    out = {}
    for line in ctl("status").splitlines():
        if line.startswith("position "):
            _, sym, qty, *_ = line.split()
            out[sym] = float(qty)
    return out


def test_sigkill_mid_day_then_restart_keeps_trades_clocks_and_risk_state(tmp_path: Path) -> None:
    frames = ls.frames(5)
    data = tmp_path / "data"
    data.mkdir()
    for sym, frame in frames.items():
        frame.to_csv(data / f"{sym}.csv", index_label="datetime")
    port, cport = _free_port(), _free_port()
    extra = ("model.kind='logreg'", f"model.path='{tmp_path / 'model'}'", "model.cv_folds=2",
             "strategy.p_up_entry_threshold=0.36", "strategy.take_profit=0.05", "strategy.stop_loss=0.05",
             f"live.port={port}", "live.client_id=7")
    cfg = ls.make_config(tmp_path, *extra)
    train_model(cfg, frames, "test bars", progress=False)
    sim = subprocess.Popen([sys.executable, "-m", "ibsim", "--port", str(port), "--control-port", str(cport),
                            "--speed", "0", "--data", str(data), "--start", f"{DAY} 14:40", "--cash", "100000",
                            "--log-level", "WARNING"], cwd=ROOT, stdin=subprocess.DEVNULL)
    argv = [sys.executable, "run_live.py", "--sim-control", f"127.0.0.1:{cport}", "--quiet"]
    for item in ls.live_overrides(tmp_path, *extra):
        argv += ["--set", item]
    log = tmp_path / "logs" / f"decisions-{DAY}.jsonl"
    live = None
    try:
        ctl = Control(cport)
        live = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL)
        time.sleep(4.0)  # connect and warm up on the stopped clock
        for _ in range(40):
            _step(ctl, log)
            if _positions(ctl):
                break
        assert _positions(ctl), "no entry within 40 bars"
        _step(ctl, log)
        live.send_signal(signal.SIGKILL)
        assert live.wait(10) == -signal.SIGKILL
        store = StateStore(state_path(cfg))
        before = {"risk": store.get_value("risk"), "books": store.books(), "trades": store.trades(DAY)}
        store.close()
        assert before["books"], "the open trade was persisted"
        ctl("advance 180")  # three bars pass while we are dead
        live = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL)
        time.sleep(4.0)
        for _ in range(14):
            _step(ctl, log)
        live.send_signal(signal.SIGTERM)
        assert live.wait(30) == 0
        store = StateStore(state_path(cfg))
        trades = store.trades(DAY)
        risk = store.get_value("risk")
        fills = store.fills()
        store.close()
        # the trade open at the crash was adopted and closed once, its max-hold clock kept running
        open_syms = set(before["books"])
        closed = [t for t in trades if t["symbol"] in open_syms and t not in before["trades"]]
        assert closed, trades
        for t in closed:
            held = (pd.Timestamp(t["exit_time"]) - pd.Timestamp(t["entry_time"])) / pd.Timedelta(minutes=1)
            assert t["bars_held"] == held  # counted from the original entry bar, not from the restart
            if t["exit_reason"] == "TIMEOUT":
                assert 8 <= t["bars_held"] <= 8 + 3 + 1  # due at 8; at most late by the bars we were dead
        # the risk state carried over: same session and start-of-day equity, P&L of every trade of the day
        assert risk["session"] == before["risk"]["session"]
        assert risk["start_equity"] == before["risk"]["start_equity"]
        assert risk["realized_pnl"] == pytest.approx(sum(t["pnl"] for t in trades))
        # no order sent twice, no fill lost: every execution at IB is ours, recorded once, one order per ref
        from ib_async import IB  # noqa: PLC0415

        ib = IB()
        ib.connect("127.0.0.1", port, clientId=99, timeout=5)
        executions = ib.reqExecutions()
        ib.disconnect()
        ids: dict[str, set[int]] = defaultdict(set)
        for f in executions:
            ids[f.execution.orderRef].add(f.execution.permId)
        assert all(len(v) == 1 for v in ids.values()), ids
        assert {f.execution.execId for f in executions} == {f["exec_id"] for f in fills}
        net: dict[str, float] = defaultdict(float)
        for f in fills:
            net[f["symbol"]] += f["shares"] if f["side"] == "BOT" else -f["shares"]
        assert {k: v for k, v in net.items() if v} == _positions(ctl)
    finally:
        if live is not None and live.poll() is None:
            live.kill()
        sim.send_signal(signal.SIGTERM)
        sim.wait(10)
