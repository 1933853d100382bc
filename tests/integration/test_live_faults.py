"""Faults during live trading against ibsim: each ends with our books equal to the simulator's, no orderRef
sent twice and every execution recorded exactly once."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from engines.live.heartbeat import heartbeat_path
from feeds.ib.feed import BarPoller
from ibsim import IBSim, SimConfig
from tests.integration import live_support as ls

DAY = "2024-01-08"
Step = ls.Step


def _run(tmp_path: Path, step: Step, bars: int = 24, start: str = "14:40", *extra: str) -> tuple[Any, IBSim]:
    sim = IBSim(ls.frames(5), start=ls.sim_start(DAY, start), config=SimConfig(initialCash=ls.STARTING_CASH))
    sim.start()
    driver = ls.LiveDriver(sim, ls.make_config(tmp_path, *extra))
    driver.before_step = step
    driver.play(bars)
    return driver, sim


def _once_with_position(action: Callable[[ls.LiveDriver, str], None]) -> tuple[Step, dict[str, Any]]:
    done: dict[str, Any] = {}

    def step(i: int, driver: ls.LiveDriver) -> None:
        sym = ls.open_symbol(driver)
        if not done and sym is not None:
            done["symbol"], done["step"] = sym, i
            action(driver, sym)

    return step, done


@pytest.mark.parametrize("fault", [
    pytest.param(lambda d, s: d.sim.dropConnections(), id="socket_drop"),
    pytest.param(lambda d, s: d.sim.restart(downSeconds=1.0, wait=True), id="gateway_restart_down_for_a_while"),
])
def test_connection_lost_with_a_position_open_reconnects_and_keeps_the_books(
        tmp_path: Path, fault: Callable[[ls.LiveDriver, str], None]) -> None:
    step, done = _once_with_position(fault)
    driver, sim = _run(tmp_path, step)
    assert done
    assert driver.session.reconnects >= 1
    ls.assert_books_match(driver, sim)
    driver.close()
    sim.stop()


def test_fill_while_disconnected_is_applied_after_the_reconnect(tmp_path: Path) -> None:
    def crash_price(driver: ls.LiveDriver, sym: str) -> None:
        future = driver.sim.restart(downSeconds=1.0, wait=False)
        book = driver.strategy.books[sym]
        driver.sim.setPrice(sym, round(book.entry_price * 0.98, 2))  # through the stop while we are away
        future.result(10)

    step, done = _once_with_position(crash_price)
    driver, sim = _run(tmp_path, step)
    sym = done["symbol"]
    stops = [t for t in driver.state.trades(DAY) if t.symbol == sym and t.exit_reason == "STOP"]
    assert stops, driver.state.trades(DAY)
    assert any(f.order_ref.endswith(":stop") for f in driver.state.fills() if f.symbol == sym)
    ls.assert_books_match(driver, sim)
    driver.close()
    sim.stop()


def test_1100_then_1102_pauses_entries_and_resyncs(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    def step(i: int, driver: ls.LiveDriver) -> None:
        if i == 5:
            driver.sim.loseConnectivity()
            seen["paused"] = True
        elif i == 7:
            seen["paused_seen"] = driver.session.entries_paused
            seen["beat"] = BarPoller.for_session(driver.session).on_service[0].snapshot()
        elif i == 8:
            driver.sim.restoreConnectivity()

    driver, sim = _run(tmp_path, step)
    assert seen["paused"]
    assert seen["paused_seen"]
    assert seen["beat"]["entries_paused"]
    assert not driver.session.entries_paused
    beat = json.loads(heartbeat_path(driver.cfg).read_text())  # written from the engine's loop
    assert beat["connected"]
    assert set(beat["feeds"]) == set(ls.SYMBOLS)
    now = BarPoller.for_session(driver.session).on_service[0].snapshot()
    assert not now["entries_paused"]
    assert set(now["feeds"].values()) == {"LIVE"}
    assert now["last_bar"] is not None
    ls.assert_books_match(driver, sim)
    driver.close()
    sim.stop()


def test_pacing_error_162_backs_off_then_backfills_every_bar_once_and_keeps_the_books(tmp_path: Path) -> None:
    # another client of the login used up the allowance: the next 9 requests (three poll cycles of three
    # symbols) get 162 while a position is open; the budget backs off 15 s, 30 s, 60 s, then the next poll's
    # recent window backfills the gap
    step, done = _once_with_position(lambda d, s: d.sim.violatePacing(count=9))
    driver, sim = _run(tmp_path, step, 30)
    assert done
    poller = BarPoller.for_session(driver.session)
    assert poller.pacing_errors == 9
    assert poller.budget.violations == 9  # none of our own making
    for sym in ls.SYMBOLS:
        rows = [r for r in driver.run.decisions.records if r["symbol"] == sym]
        times = [pd.Timestamp(r["time"]) for r in rows]
        assert times, sym
        steps = {b - a for a, b in itertools.pairwise(times)}
        assert steps == {pd.Timedelta(minutes=1)}, (sym, sorted(steps))  # every bar decided once, in order
        late = [t for t, r in zip(times, rows, strict=True) if r["decision"] == "LATE"]
        assert len(late) == 3, (sym, late)  # the three bars missed live, backfilled
        assert times[-1] - late[-1] >= pd.Timedelta(minutes=5), sym  # and trading went on after the outage
    ls.assert_books_match(driver, sim)
    driver.close()
    sim.stop()


def test_rejected_order_is_an_order_event_and_trading_goes_on(tmp_path: Path) -> None:
    def step(i: int, driver: ls.LiveDriver) -> None:
        if i == 0:
            for sym in ls.SYMBOLS:
                driver.sim.rejectNextOrder(sym, "simulated margin check")

    driver, sim = _run(tmp_path, step, 30)
    rejected = [o for o in sim.orders() if o.status == "Inactive"]
    assert rejected
    assert all(o.orderRef.endswith(":entry") for o in rejected)
    for o in rejected:
        assert driver.state.order(o.orderRef)["status"] == "Inactive"
        children = [c for c in sim.orders() if c.parentId == o.orderId]
        assert all(c.status == "Cancelled" for c in children)  # no orphan left working at IB
    assert any(o.status == "Filled" and o.orderRef.endswith(":entry") for o in sim.orders())
    ls.assert_books_match(driver, sim)
    driver.close()
    sim.stop()


@pytest.mark.parametrize("kind", ["json", "slack"])
def test_webhook_posts_the_summary_to_a_local_http_server(kind: str) -> None:
    import json  # noqa: PLC0415
    import threading  # noqa: PLC0415
    from http.server import BaseHTTPRequestHandler, HTTPServer  # noqa: PLC0415

    from config.settings import WebhookConfig  # noqa: PLC0415
    from engines.live.notify import post_message  # noqa: PLC0415

    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/hook"
    ok = post_message(WebhookConfig(kind=kind), "Daily summary", {"trades": 3}, env={"TRADER_WEBHOOK_URL": url})
    server.shutdown()
    assert ok
    assert received[0]["text"] == "Daily summary"
    assert (received[0].get("trades") == 3) == (kind == "json")
    assert not post_message(WebhookConfig(kind=kind), "x", env={"TRADER_WEBHOOK_URL": "http://127.0.0.1:9/x"})
