"""A symbol without IB market-data permission (162 that is not pacing), against ibsim."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from feeds.ib.feed import BarPoller
from ibsim import IBSim, SimConfig
from tests.integration import live_support as ls

DAY = "2024-01-08"
RETRY = timedelta(minutes=10)  # a symbol without permission is asked again every 10 minutes (README)


def test_symbol_without_market_data_permission_is_alerted_once_marked_and_asked_again_rarely(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    start = ls.sim_start(DAY, "14:40")
    sim = IBSim(ls.frames(5), start=start, config=SimConfig(initialCash=ls.STARTING_CASH))
    sim.start()
    sim.denyMarketData("SYNB")
    driver = ls.LiveDriver(sim, ls.make_config(tmp_path))
    alerts: list[str] = []
    driver.session.on_alert.append(alerts.append)
    seen: dict[str, Any] = {}

    def step(i: int, d: ls.LiveDriver) -> None:
        if i == 3:
            seen["beat"] = BarPoller.for_session(d.session).on_service[0].snapshot()
            d.sim.grantMarketData("SYNB")  # subscribed meanwhile: the next ask, 10 minutes on, gets the bars

    driver.before_step = step
    with caplog.at_level(logging.INFO):
        driver.play(14)

    retry_at = start + RETRY
    asked = [r.time for r in sim.requests("reqHistoricalData") if " SYNB " in f" {r.summary} "]
    assert [t for t in asked if t < retry_at] == [start], asked  # once at start, not every 5 s
    assert len(alerts) == 1, alerts
    assert "SYNB" in alerts[0]
    assert "permission" in alerts[0]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith(("feeds", "engines"))]
    assert [r.getMessage() for r in errors] == alerts
    beat = seen["beat"]
    assert beat["feeds"] == {"SYNA": "LIVE", "SYNB": "NOTSUBSCRIBED", "SYNC": "LIVE"}
    assert beat["warmed_up"]  # every symbol that can have bars has them
    synb = [pd.Timestamp(r["time"]) for r in driver.run.decisions.records if r["symbol"] == "SYNB"]
    assert synb  # the permission came back: SYNB is traded again
    assert min(synb) >= pd.Timestamp(retry_at) - pd.Timedelta(minutes=1)
    for sym in ("SYNA", "SYNC"):  # the other symbols were never held up
        assert len([r for r in driver.run.decisions.records if r["symbol"] == sym]) == 14, sym
    ls.assert_books_match(driver, sim)
    driver.close()
    sim.stop()
