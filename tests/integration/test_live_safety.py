"""Safety rails against ibsim: paper accounts and ports only, dry run, kill switch, flatten."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

import run_live
from engines.live.safety import KillSwitch, UnsafeConfigError, check_account, check_endpoint, flatten_all
from ibsim import IBSim, SimConfig
from tests.integration import live_support as ls

DAY = "2024-01-08"


def test_live_ports_and_non_paper_accounts_are_refused_unless_allowed() -> None:
    with pytest.raises(UnsafeConfigError, match="LIVE trading port"):
        check_endpoint(4001, allow_live=False)
    with pytest.raises(UnsafeConfigError, match="not a paper account"):
        check_account("U1234567", allow_live=False)
    check_endpoint(4001, allow_live=True)
    check_account("U1234567", allow_live=True)
    check_account("DU1234567", allow_live=False)


def test_run_live_refuses_a_non_paper_account_with_exit_code_3(tmp_path: Path) -> None:
    with IBSim(ls.frames(5), start=ls.sim_start(DAY, "14:40"), config=SimConfig(account="U7654321")) as sim:
        argv = ["--quiet"]
        for item in ls.live_overrides(tmp_path, f"live.port={sim.port}"):
            argv += ["--set", item]
        assert run_live.main(argv) == 3
        assert sim.orders() == []


def test_run_live_names_a_symbol_ib_does_not_know_and_exits_2(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    with IBSim(ls.frames(5), start=ls.sim_start(DAY, "14:40"), config=SimConfig()) as sim:
        argv = ["--quiet"]
        for item in ls.live_overrides(tmp_path, f"live.port={sim.port}", "data.symbols=['SYNA', 'SYNAX']"):
            argv += ["--set", item]
        assert run_live.main(argv) == 2
        assert sim.orders() == []
    assert "data.symbols: IB has no single US stock (SMART, USD) for ['SYNAX']" in caplog.text


def test_dry_run_logs_decisions_and_sends_nothing(tmp_path: Path) -> None:
    with IBSim(ls.frames(5), start=ls.sim_start(DAY, "14:40"),
               config=SimConfig(initialCash=ls.STARTING_CASH)) as sim:
        driver = ls.LiveDriver(sim, ls.make_config(tmp_path, "live.dry_run=true"))
        driver.play(20)
        decisions = driver.run.decisions.records
        driver.close()
        assert sim.orders() == []
        assert [r for r in sim.requests() if r.name in {"placeOrder", "cancelOrder"}] == []
    assert len(decisions) == 20 * len(ls.SYMBOLS)
    assert any(r["decision"] == "ENTER" for r in decisions)


def test_kill_switch_file_stops_new_entries(tmp_path: Path) -> None:
    cfg = ls.make_config(tmp_path)
    flag = Path(cfg.live.kill_switch_file)
    flag.parent.mkdir(parents=True, exist_ok=True)
    flag.touch()
    with IBSim(ls.frames(5), start=ls.sim_start(DAY, "14:40"),
               config=SimConfig(initialCash=ls.STARTING_CASH)) as sim:
        driver = ls.LiveDriver(sim, cfg)
        driver.play(15)
        decisions = driver.run.decisions.records
        blocked = dict(driver.strategy.risk.blocked)
        driver.close()
        assert sim.orders() == []
    assert any(r["reason"] == "KILL_SWITCH" for r in decisions)
    assert not any(r["decision"] == "ENTER" for r in decisions)
    assert blocked["KILL_SWITCH"] >= 1


def test_sigusr1_toggles_the_kill_switch(tmp_path: Path) -> None:
    previous = signal.getsignal(signal.SIGUSR1)
    try:
        switch = KillSwitch(tmp_path / "KILL", install_signal=True)
        assert not switch.active
        os.kill(os.getpid(), signal.SIGUSR1)
        assert switch.active
        os.kill(os.getpid(), signal.SIGUSR1)
        assert not switch.active
        (tmp_path / "KILL").touch()
        assert switch.active
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_flatten_cancels_our_orders_and_sells_our_positions(tmp_path: Path) -> None:
    with IBSim(ls.frames(5), start=ls.sim_start(DAY, "14:40"),
               config=SimConfig(initialCash=ls.STARTING_CASH)) as sim:
        driver = ls.LiveDriver(sim, ls.make_config(tmp_path))

        def stop_when_open(i: int, d: ls.LiveDriver) -> None:
            if any(b.size > 0 and b.stop is not None for b in d.strategy.books.values()):
                d.stop_requested = True

        driver.before_step = stop_when_open
        driver.play(30)
        assert any(p.qty > 0 for p in sim.positions().values())
        sold = flatten_all(driver.session, driver.state, "mlx", sim.now, timeout=10)
        assert sold
        assert all(p.qty == 0 for p in sim.positions().values())
        assert not [o for o in sim.orders() if o.status in {"Submitted", "PreSubmitted"}]
        driver.close()
