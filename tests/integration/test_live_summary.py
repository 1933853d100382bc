"""The daily summary across a mid-day restart, against ibsim, and the after-close job that writes it from the store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from engines.live.safety import KillSwitch
from engines.live.state import StateStore, state_path
from ibsim import IBSim, SimConfig
from tests.integration import live_support as ls

ROOT = Path(__file__).resolve().parents[2]
DAY = "2024-01-08"


def _summary(tmp_path: Path) -> dict[str, Any]:
    return dict(json.loads((tmp_path / "logs" / f"summary-{DAY}.json").read_text()))


def test_summary_at_the_close_covers_the_whole_day_across_a_mid_day_restart(tmp_path: Path) -> None:
    sim = IBSim(ls.frames(5), start=ls.sim_start(DAY, "14:40"), config=SimConfig(initialCash=ls.STARTING_CASH))
    sim.start()
    cfg = ls.make_config(tmp_path)
    kill_file = Path(cfg.live.kill_switch_file)

    def kill_switch_from_bar_10(i: int, driver: ls.LiveDriver) -> None:
        if i == 10:  # no entries after this: the last trade has closed (max hold 8 bars) when we stop
            kill_file.touch()

    first = ls.LiveDriver(sim, cfg, kill_switch=KillSwitch(kill_file))
    posted: list[dict[str, Any]] = []
    first.run.hooks.on_summary.append(posted.append)
    first.before_step = kill_switch_from_bar_10
    first.play(25)  # 14:40 -> 15:05, then stopped (SIGTERM): what run_live.py does at a stop
    first.run.hooks.write_summary()
    morning = first.state.trades(DAY)
    assert morning, "the first run traded"
    assert not any(first.strategy.books[s].busy for s in ls.SYMBOLS), "flat at the restart"
    provisional = _summary(tmp_path)
    assert provisional["trades"] == len(morning)
    killed = provisional["blocked"]["KILL_SWITCH"]
    assert killed > 0
    posted_at_stop = list(posted)
    first.close()
    kill_file.unlink()

    second = ls.LiveDriver(sim, cfg)
    second.run.hooks.on_summary.append(posted.append)
    second.play(55)  # 15:05 -> 16:00: through the close
    second.run.hooks.write_summary()  # stopped after the close: the final summary stays
    day = second.state.trades(DAY)
    final = _summary(tmp_path)
    assert final["trades"] == len(day) > len(morning)  # the morning's trades and the afternoon's
    assert final["pnl"] == round(sum(t.pnl for t in day), 2)
    assert final["blocked"]["KILL_SWITCH"] == killed  # blocked counts carried across the restart
    assert posted == [final]  # the webhook got the final summary, once
    assert posted_at_stop == []  # not the provisional one
    assert provisional["provisional"] is True
    assert final["provisional"] is False
    second.close()
    sim.stop()


def test_after_close_job_replaces_a_provisional_summary_with_the_full_day_from_the_store(tmp_path: Path) -> None:
    cfg = ls.make_config(tmp_path)
    store = StateStore(state_path(cfg))
    store.close()
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / f"summary-{DAY}.json").write_text(json.dumps({"day": DAY, "trades": 1, "provisional": True}))
    argv = [sys.executable, "deploy/daily_summary.py", "--day", DAY]
    for item in ls.live_overrides(tmp_path):
        argv += ["--set", item]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    summary = _summary(tmp_path)
    assert summary["provisional"] is False
    assert summary["trades"] == 0
    assert summary["written_by"] == "deploy/daily_summary.py"
