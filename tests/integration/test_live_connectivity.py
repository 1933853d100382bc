"""IB connectivity faults that keep the socket or come back without the usual notices, against ibsim."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from feeds.ib.feed import BarPoller
from ibsim import IBSim, SimConfig
from tests.integration import live_support as ls

DAY = "2024-01-08"


def _heartbeat(driver: ls.LiveDriver) -> dict[str, Any]:
    return dict(BarPoller.for_session(driver.session).on_service[0].snapshot())


def test_1100_then_a_reconnect_without_1102_resumes_entries_and_the_heartbeat_shows_the_pause(
        tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    def step(i: int, driver: ls.LiveDriver) -> None:
        if i == 2:
            driver.sim.loseConnectivity()  # 1100 with the socket kept
            ls.wait_until(lambda: driver.session.connectivity_lost, "the engine saw the 1100")
        elif i == 5:
            seen["paused"] = _heartbeat(driver)
            driver.sim.dropConnections()  # then the socket goes ...
            driver.sim.restoreConnectivity()  # ... and IB comes back while we are away: nobody gets a 1102
        elif i == 7:
            seen["reconnected_at"] = driver.sim.now()

    sim = IBSim(ls.frames(5), start=ls.sim_start(DAY, "14:40"), config=SimConfig(initialCash=ls.STARTING_CASH))
    sim.start()
    driver = ls.LiveDriver(sim, ls.make_config(tmp_path))
    driver.before_step = step
    driver.play(24)

    assert driver.session.reconnects == 1
    assert not driver.session.entries_paused  # the reconnect and its re-sync resumed entries
    paused = seen["paused"]
    assert paused["connected"]
    assert paused["entries_paused"]
    assert datetime.fromisoformat(paused["paused_since"]) == ls.sim_start(DAY, "14:42")
    assert paused["paused_seconds"] == 3 * 60.0
    now = _heartbeat(driver)
    assert now["connected"]
    assert not now["entries_paused"]
    assert now["paused_since"] is None
    assert now["paused_seconds"] == 0.0
    after: datetime = seen["reconnected_at"]
    later = [r for r in driver.run.decisions.records if pd.Timestamp(r["time"]) >= pd.Timestamp(after)]
    assert later
    assert not [r for r in later if r["reason"] == "IB_DISCONNECTED"]
    assert [r for r in later if r["decision"] == "ENTER"], later  # entries resumed
    ls.assert_books_match(driver, sim)
    driver.close()
    sim.stop()
