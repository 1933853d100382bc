"""The fault campaign (``python -m engines.live.campaign``) runs whole sessions and reports per seed."""

from __future__ import annotations

import sqlite3

import pytest

from engines.live import campaign
from engines.live.state import state_path

pytestmark = pytest.mark.slow


def test_schedule_is_drawn_from_the_seed_alone() -> None:
    a = campaign.draw_schedule(campaign.random.Random(3), 40)
    assert a == campaign.draw_schedule(campaign.random.Random(3), 40)
    assert all(3 <= bar < 34 and fault in campaign.FAULTS for bar, fault in a)


def test_a_planted_lost_fill_is_detected_with_its_bar() -> None:
    planted: dict[str, int] = {}

    def lose_a_fill(bar: int, c: campaign.Campaign) -> None:  # the state store forgets one execution
        if planted:
            return
        con = sqlite3.connect(state_path(c.cfg), timeout=30)
        with con:
            row = con.execute("SELECT exec_id FROM fills ORDER BY rowid LIMIT 1").fetchone()
            if row is not None:
                con.execute("DELETE FROM fills WHERE exec_id = ?", row)
                planted["bar"] = bar
        con.close()

    res = campaign.run_seed(11, 14, plant=lose_a_fill, schedule=[])
    assert planted, "no fill within 14 bars"
    assert not res.ok
    lost = [v for v in res.violations if v.invariant == "fills_booked_once"]
    assert lost, res.violations
    # missing at the next check, reported one bar of grace later
    assert lost[0].bar == planted["bar"] + 2, res.violations
    assert "fills_booked_once" in res.line()
    assert "fills_booked_once" in campaign.totals([res], res.seconds)


@pytest.mark.xfail(strict=False, reason="issue 10 cases not fixed on this branch yet (e.g. a protective order "
                                        "cancelled by another client leaves the engine's position at 0, case 4)")
def test_a_few_seeds_keep_every_invariant(capsys: pytest.CaptureFixture[str]) -> None:
    code = campaign.main(["--seeds", "2", "--start-seed", "0", "--bars", "16"])
    out = capsys.readouterr().out
    assert out.count("seed ") == 2
    assert "invariant" in out
    assert code == 0, out
