"""The state database is lost mid-day: the restarted engine adopts its own trades from IB by ``orderRef``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from engines.live.state import state_path
from ibsim import IBSim, SimConfig
from tests.integration import live_support as ls

DAY = "2024-01-08"
BOOK_FIELDS = ("trade_id", "size", "entry_price", "entry_comm", "entry_time", "stop_bound", "target_bound",
               "exit_pending")
TRADE_FIELDS = ("symbol", "entry_time", "exit_time", "entry_price", "exit_price", "quantity", "exit_reason",
                "commission")


def _stop_out_then_hold(seen: dict[str, Any]) -> ls.Step:
    """Force one position through its stop at IB, then stop once another position is open and protected."""
    def step(i: int, driver: ls.LiveDriver) -> None:
        sym = ls.open_symbol(driver)
        if "stopped" not in seen and sym is not None:
            seen["stopped"] = sym
            driver.sim.setPrice(sym, round(driver.strategy.books[sym].entry_price * 0.98, 2))
        elif "stopped" in seen and sym is not None and driver.strategy.risk.cooldowns and i > seen.get("i", 0):
            driver.stop_requested = True
        seen["i"] = i

    return step


def test_lost_state_db_adopts_open_trade_brackets_closed_trades_and_risk_from_ib(tmp_path: Path) -> None:
    sim = IBSim(ls.frames(5), start=ls.sim_start(DAY, "14:40"), config=SimConfig(initialCash=ls.STARTING_CASH))
    sim.start()
    cfg = ls.make_config(tmp_path, "risk.cooldown_bars_after_stop=30")
    seen: dict[str, Any] = {}
    first = ls.LiveDriver(sim, cfg)
    first.before_step = _stop_out_then_hold(seen)
    first.play(60)
    assert first.stop_requested, seen
    before = {"books": first.state.books(), "trades": first.state.trades(DAY), "risk": first.state.get_value("risk")}
    assert before["books"]
    assert before["trades"]
    assert before["risk"]["cooldowns"]
    first.close()
    db = state_path(cfg)
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        path.unlink(missing_ok=True)

    second = ls.LiveDriver(sim, cfg)
    after: dict[str, Any] = {}

    def capture(i: int, driver: ls.LiveDriver) -> None:
        if i == 0:  # restored, reconciled and warmed up; no live bar yet
            after.update(books=driver.state.books(), trades=driver.state.trades(DAY),
                         risk=driver.state.get_value("risk"),
                         held={s: b.size for s, b in driver.strategy.books.items() if b.size})

    second.before_step = capture
    second.play(20)

    assert set(after["books"]) == set(before["books"])
    for sym, book in before["books"].items():
        theirs = after["books"][sym]
        assert {k: getattr(theirs, k) for k in BOOK_FIELDS} == {k: getattr(book, k) for k in BOOK_FIELDS}, sym
        assert math.isnan(after["books"][sym].entry_p_up)  # not recoverable from IB
    assert [{k: getattr(t, k) for k in TRADE_FIELDS} for t in after["trades"]] == [
        {k: getattr(t, k) for k in TRADE_FIELDS} for t in before["trades"]]
    assert [t.pnl for t in after["trades"]] == pytest.approx([t.pnl for t in before["trades"]], abs=1e-6)
    assert after["risk"]["session"] == before["risk"]["session"]
    assert after["risk"]["start_equity"] == pytest.approx(before["risk"]["start_equity"], abs=0.01)
    assert after["risk"]["realized_pnl"] == pytest.approx(before["risk"]["realized_pnl"], abs=1e-6)
    assert after["risk"]["cooldowns"] == before["risk"]["cooldowns"]
    assert after["held"] == {s: b.size for s, b in before["books"].items()}

    # nothing was sent twice; the adopted positions ended through their brackets or time exits at IB
    assert not set(second.run.broker.sent) & {o.orderRef for o in sim.orders() if o.orderRef in first.run.broker.sent}
    ls.assert_books_match(second, sim)
    stopped = seen["stopped"]
    assert not any(r["symbol"] == stopped and r["decision"] == "ENTER" for r in second.run.decisions.records)
    second.close()
    sim.stop()
