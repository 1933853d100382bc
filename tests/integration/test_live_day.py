"""A replayed trading day through run_live's engine against ibsim, and decision parity with the backtest."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import backtrader as bt
import pandas as pd
import pytest

from engines.backtest import build_cerebro
from feeds.ib.mapping import parse_order_ref
from ibsim import IBSim, SimConfig
from strategies.ml_strategy import strategy_params
from tests.integration import live_support as ls

DAY = "2024-01-08"


def _check_books_match_simulator(driver: ls.LiveDriver, sim: IBSim) -> None:
    """Positions, fills and orders of ours equal the simulator's; no orderRef sent twice."""
    refs = [o.orderRef for o in sim.orders()]
    assert len(refs) == len(set(refs)), Counter(refs).most_common(3)
    assert all(parse_order_ref(r, "mlx") for r in refs)
    recorded = {f.exec_id for f in driver.state.fills()}
    assert {e.execId for e in sim.fills()} == recorded  # no lost fill, no invented one
    for d in driver.strategy.datas:
        ours = driver.run.broker.getposition(d).size
        theirs = sim.positions().get(d._name)
        assert ours == (theirs.qty if theirs else 0.0), d._name


@pytest.fixture
def day_sim() -> Any:
    simulator = IBSim(ls.frames(5), start=ls.sim_start(DAY, "14:40"),
                      config=SimConfig(initialCash=ls.STARTING_CASH)).start()
    yield simulator
    simulator.stop()


def test_replayed_day_trades_several_symbols_with_every_exit_reason(day_sim: IBSim, tmp_path: Path) -> None:
    cfg = ls.make_config(tmp_path, "strategy.take_profit=0.002", "strategy.stop_loss=0.003",
                         "strategy.max_hold_bars=12",
                         "strategy.no_new_entries_minutes=7")
    driver = ls.LiveDriver(day_sim, cfg)
    driver.play(80)  # 14:40 → 16:00
    trades = pd.DataFrame(driver.state.trades(DAY))
    assert set(trades["exit_reason"]) == {"STOP", "TARGET", "TIMEOUT", "EOD"}
    assert trades["symbol"].nunique() >= 2
    _check_books_match_simulator(driver, day_sim)
    assert all(p.qty == 0 for p in day_sim.positions().values())  # flat at the close
    # commissions are IB's: each trade's commission is the sum over its two orders at the simulator
    by_ref: Counter[str] = Counter()
    for e in day_sim.fills():
        by_ref[e.orderRef.rsplit(":", 1)[0]] += e.commission
    assert trades["commission"].sum() == pytest.approx(sum(by_ref.values()))
    summary = json.loads((tmp_path / "logs" / f"summary-{DAY}.json").read_text())
    assert summary["trades"] == len(trades)
    assert summary["exit_reasons"]["EOD"] >= 1
    decisions = [json.loads(x) for x in (tmp_path / "logs" / f"decisions-{DAY}.jsonl").read_text().splitlines()]
    assert len(decisions) == 80 * len(ls.SYMBOLS)
    driver.close()


def _backtest_decisions(frames: dict[str, pd.DataFrame], cfg: Any, live_start: pd.Timestamp) -> list[dict]:
    """Backtest on the same bars; entries before the live start are gated off so both start flat."""
    out: list[dict] = []
    holder: dict[str, Any] = {}
    start_num = bt.date2num(live_start.tz_convert("UTC").tz_localize(None).to_pydatetime())

    def gate(symbol: str) -> str | None:
        data = holder["s"].getdatabyname(symbol)
        return "PRE_LIVE" if data.datetime[0] < start_num - 1e-9 else None

    kwargs = {**strategy_params(cfg), "model": ls.StubModel(), "decision_sink": out.append, "entry_gate": gate,
              "on_start": lambda s: holder.update(s=s)}
    cerebro = build_cerebro(frames, kwargs, starting_cash=ls.STARTING_CASH, commission=cfg.costs.commission,
                            risk_per_trade_fraction=cfg.risk.risk_per_trade_fraction, observers=False)
    cerebro.run()
    return out


def test_live_decisions_equal_the_backtest_decisions_on_the_same_bars(tmp_path: Path) -> None:
    frames = ls.frames(5)
    start = pd.Timestamp(f"{DAY} 14:45", tz="America/New_York")
    bars = 60
    cfg = ls.make_config(tmp_path, "strategy.take_profit=0.05", "strategy.stop_loss=0.05")
    with IBSim(frames, start=start.to_pydatetime(), config=SimConfig(initialCash=ls.STARTING_CASH)) as sim:
        driver = ls.LiveDriver(sim, cfg)
        driver.play(bars)
        live = [r for r in driver.run.decisions.records]
        driver.close()
    end = start + pd.Timedelta(minutes=bars)
    cut = {s: f[f.index < end.tz_convert("UTC")] for s, f in frames.items()}
    backtest = [r for r in _backtest_decisions(cut, cfg, start)
                if pd.Timestamp(r["time"], tz="UTC") >= start.tz_convert("UTC")]
    assert len(live) == len(backtest) == bars * len(ls.SYMBOLS)
    assert any(r["decision"] == "ENTER" for r in live)
    key = lambda r: (pd.Timestamp(r["time"]).tz_convert("UTC") if pd.Timestamp(r["time"]).tzinfo  # noqa: E731
                     else pd.Timestamp(r["time"], tz="UTC"), r["symbol"])
    live_sorted = sorted(live, key=key)
    back_sorted = sorted(backtest, key=key)
    for a, b in zip(live_sorted, back_sorted, strict=True):
        assert key(a) == key(b)
        assert (a["p_up"], a["decision"], a["reason"]) == (b["p_up"], b["decision"], b["reason"]), (a, b)
