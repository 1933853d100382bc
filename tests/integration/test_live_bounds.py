"""Bounded live runs (``run_live.py --until`` / ``--max-bars``) against ibsim."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import run_live
from core.calendar import parse_exchange_time, to_exchange
from ibsim import IBSim, SimConfig
from tests.integration import live_support as ls

DAY = "2024-01-08"  # a Monday in winter: New York is UTC-5


def test_until_stops_after_the_bar_starting_at_that_new_york_time(tmp_path: Path) -> None:
    until = to_exchange(parse_exchange_time(f"{DAY} 14:50"))  # what run_live.py passes on for --until
    sim = IBSim(ls.frames(5), start=ls.sim_start(DAY, "14:40"), config=SimConfig(initialCash=ls.STARTING_CASH))
    sim.start()
    driver = ls.LiveDriver(sim, ls.make_config(tmp_path), until=until)
    driver.play(30)  # more bars than the bound: the engine stops by itself
    last = max(pd.Timestamp(r["time"]) for r in driver.run.decisions.records)
    assert last.tz_convert("America/New_York") == pd.Timestamp(f"{DAY} 14:50", tz="America/New_York")
    assert driver.engine_stopped
    assert sim.now() < ls.sim_start(DAY, "15:10")  # stopped well before the 30 bars were played
    driver.close()
    sim.stop()


def test_until_in_another_format_is_refused_with_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_live.main(["--until", "15:30", "--quiet"]) == 2
    assert "expected 'YYYY-MM-DD HH:MM' (New York time)" in capsys.readouterr().err
