"""``run_live.py`` killed with SIGKILL mid-day and restarted, against ``python -m ibsim --control-port``."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pandas as pd
import pytest

from engines.live.state import StateStore, state_path
from tests.integration import live_support as ls

ROOT = Path(__file__).resolve().parents[2]
DAY = "2024-01-08"
pytestmark = pytest.mark.slow


def test_sigkill_mid_day_then_restart_keeps_trades_clocks_and_risk_state(tmp_path: Path) -> None:
    r = ls.prepare_rehearsal(tmp_path)
    port, cport, data, extra, cfg = r.port, r.cport, r.data, r.extra, r.cfg
    sim = subprocess.Popen([sys.executable, "-m", "ibsim", "--port", str(port), "--control-port", str(cport),
                            "--speed", "0", "--data", str(data), "--start", f"{DAY} 14:40", "--cash", "100000",
                            "--log-level", "WARNING"], cwd=ROOT, stdin=subprocess.DEVNULL)
    argv = [sys.executable, "run_live.py", "--sim-control", f"127.0.0.1:{cport}", "--quiet"]
    for item in ls.live_overrides(tmp_path, *extra):
        argv += ["--set", item]
    log = tmp_path / "logs" / f"decisions-{DAY}.jsonl"
    db = state_path(cfg)
    live = None
    try:
        ctl = ls.Control(cport)
        live = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL)
        ls.wait_ready(cfg, live.pid)  # connected and warmed up on the stopped clock
        for _ in range(40):
            ls.step_bar(ctl, log, db)
            if ls.sim_positions(ctl):
                break
        assert ls.sim_positions(ctl), "no entry within 40 bars"
        ls.step_bar(ctl, log, db)
        live.send_signal(signal.SIGKILL)
        assert live.wait(10) == -signal.SIGKILL
        store = StateStore(state_path(cfg))
        before = {"risk": store.get_value("risk"), "books": store.books(), "trades": store.trades(DAY)}
        store.close()
        assert before["books"], "the open trade was persisted"
        ctl("advance 180")  # three bars pass while we are dead
        live = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL)
        ls.wait_ready(cfg, live.pid)
        for _ in range(14):
            ls.step_bar(ctl, log, db)
        live.send_signal(signal.SIGTERM)
        assert live.wait(30) == 0
        store = StateStore(state_path(cfg))
        trades = store.trades(DAY)
        risk = store.get_value("risk")
        fills = store.fills()
        store.close()
        # the trade open at the crash was adopted and closed once, its max-hold clock kept running
        open_syms = set(before["books"])
        closed = [t for t in trades if t.symbol in open_syms and t not in before["trades"]]
        assert closed, trades
        for t in closed:
            held = (pd.Timestamp(t.exit_time) - pd.Timestamp(t.entry_time)) / pd.Timedelta(minutes=1)
            assert t.bars_held == held  # counted from the original entry bar, not from the restart
            if t.exit_reason == "TIMEOUT":
                assert 8 <= t.bars_held <= 8 + 3 + 1  # due at 8; at most late by the bars we were dead
        # the risk state carried over: same session and start-of-day equity, P&L of every trade of the day
        assert risk["session"] == before["risk"]["session"]
        assert risk["start_equity"] == before["risk"]["start_equity"]
        assert risk["realized_pnl"] == pytest.approx(sum(t.pnl for t in trades))
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
        assert {f.execution.execId for f in executions} == {f.exec_id for f in fills}
        net: dict[str, float] = defaultdict(float)
        for f in fills:
            net[f.symbol] += f.shares if f.side == "BOT" else -f.shares
        assert {k: v for k, v in net.items() if v} == ls.sim_positions(ctl)
    finally:
        if live is not None and live.poll() is None:
            live.kill()
        sim.send_signal(signal.SIGTERM)
        sim.wait(10)
