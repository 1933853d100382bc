"""python -m feeds.ib.download against ibsim: fills the bar store, resumes, never trips IB's pacing rules."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from config.settings import LiveConfig, SyntheticConfig
from feeds.bars import BarStore, load_bars
from feeds.ib.budget import RequestBudget
from feeds.ib.download import Downloader, main, plan_chunks, plan_sessions
from feeds.ib.errors import ErrorKind, NeedsHumanError
from feeds.ib.session import IBSession
from feeds.synthetic import generate_universe
from ibsim import IBSim, SimConfig
from ibsim.pacing import PacingRules

SYMBOLS = ("AAA", "BBB", "CCC")
SESSIONS = 22  # 3 symbols × 22 sessions = 66 one-day requests: more than 60 per 10 minutes


@pytest.fixture(scope="module")
def universe() -> dict[str, pd.DataFrame]:
    return generate_universe(SyntheticConfig(symbols=SYMBOLS, sessions=SESSIONS + 1))


@pytest.fixture
def strict_sim(universe: dict[str, pd.DataFrame]) -> Iterator[IBSim]:
    """Pacing on for every bar size (smallBarsOnly=False), clock stepped, the evening after the last session."""
    start = (universe["AAA"].index[-1] + pd.Timedelta(hours=3)).to_pydatetime()
    with IBSim(universe, start=start, config=SimConfig(pacing=PacingRules(smallBarsOnly=False))) as sim:
        yield sim


@pytest.fixture
def session(strict_sim: IBSim) -> Iterator[IBSession]:
    cfg = LiveConfig(port=strict_sim.port, client_id=4, pacing_small_bars_only=False, request_timeout_seconds=5)
    s = IBSession(cfg, clock=strict_sim.clock.now, rng=random.Random(2))
    s.connect()
    yield s
    s.disconnect()


def downloader(session: IBSession, sim: IBSim, root: Path) -> Downloader:
    """Waits advance the simulated clock (deterministic), so the 10-minute rule costs no wall time."""
    return Downloader(session, BarStore(root), RequestBudget(False), sleep=lambda s: sim.advance(seconds=s),
                      progress=False)


def test_download_fills_the_store_the_backtest_reads_without_any_pacing_error(
        session: IBSession, strict_sim: IBSim, universe: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    codes: list[ErrorKind] = []
    session.on_error.append(lambda code, kind, req_id, text: codes.append(kind))
    sessions = plan_sessions(SESSIONS, None, strict_sim.now())
    assert len(sessions) == SESSIONS
    report = downloader(session, strict_sim, tmp_path).run(list(SYMBOLS), "1min", sessions)
    assert report.requests == len(SYMBOLS) * SESSIONS > 60
    assert report.pacing_errors == 0
    assert ErrorKind.PACING not in codes
    frames = load_bars(tmp_path / "1min")
    for symbol in SYMBOLS:
        source = universe[symbol]
        expected = source[source.index.tz_convert("America/New_York").normalize().tz_localize(None).isin(sessions)]
        pd.testing.assert_frame_equal(frames[symbol], expected, check_freq=False)
    requests = strict_sim.requests("reqHistoricalData")
    assert all("duration='1 D'" in r.summary and "bar='1 min'" in r.summary for r in requests)
    assert all("end=''" not in r.summary for r in requests)


def test_an_interrupted_download_resumes_where_it_stopped(
        session: IBSession, strict_sim: IBSim, universe: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    sessions = plan_sessions(8, None, strict_sim.now())
    first = downloader(session, strict_sim, tmp_path)
    real_fetch = first.fetch
    calls = {"n": 0}

    def fetch_then_die(chunk: object, bar_size: str) -> pd.DataFrame:
        calls["n"] += 1
        if calls["n"] == 11:
            raise KeyboardInterrupt
        return real_fetch(chunk, bar_size)  # type: ignore[arg-type]

    first.fetch = fetch_then_die  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        first.run(["AAA", "BBB"], "1min", sessions)
    assert len(load_bars(tmp_path / "1min")["BBB"]) == 2 * 390  # stored chunk by chunk
    strict_sim.advance(seconds=601)  # a new process has a new budget: restart after IB's 10-minute window
    second = downloader(session, strict_sim, tmp_path).run(["AAA", "BBB"], "1min", sessions)
    assert second.requests == 16 - 10
    assert second.chunks_skipped == 10
    assert second.pacing_errors == 0
    frames = load_bars(tmp_path / "1min")
    assert {s: len(f) for s, f in frames.items()} == {"AAA": 8 * 390, "BBB": 8 * 390}
    assert not frames["BBB"].index.duplicated().any()
    third = downloader(session, strict_sim, tmp_path).run(["AAA", "BBB"], "1min", sessions)
    assert third.requests == 0


def test_existing_bars_are_merged_and_five_minute_chunks_span_five_sessions(
        session: IBSession, strict_sim: IBSim, tmp_path: Path) -> None:
    sessions = plan_sessions(7, None, strict_sim.now())
    chunks = plan_chunks("AAA", sessions, {sessions[2].date().isoformat()}, "5min")
    assert [len(c.sessions) for c in chunks] == [2, 4]
    downloader(session, strict_sim, tmp_path).run(["AAA"], "5min", sessions[:3])
    report = downloader(session, strict_sim, tmp_path).run(["AAA"], "5min", sessions)
    assert report.requests == 1
    frame = load_bars(tmp_path / "5min", bar_size="5min")["AAA"]
    assert len(frame) == 7 * 78


@pytest.mark.parametrize("argv", [
    ["--symbols", "SPY", "--days", "0"],
    ["--symbols", "SPY", "--days", "3", "--bar-size", "2min"],
    ["--symbols", "SPY", "--days", "3", "--end", "yesterday"],
    ["--symbols", "S P Y", "--days", "3"],
    ["--symbols", "SPY", "--days", "3", "--config", "no/such/file.toml"],
])
def test_bad_input_exits_with_code_2_and_a_message(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--no-progress", "--quiet"]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_missing_days_is_an_argparse_error_exit_2() -> None:
    with pytest.raises(SystemExit) as info:
        main(["--symbols", "SPY"])
    assert info.value.code == 2


def test_unknown_symbol_exits_2(strict_sim: IBSim, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--symbols", "NOPE", "--days", "1", "--port", str(strict_sim.port), "--store", str(tmp_path),
                 "--end", "2024-01-31", "--no-progress", "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--symbols: IB has no single US stock (SMART, USD) for ['NOPE']" in err
    assert "No security definition" in err


def test_a_symbol_without_market_data_permission_stops_the_download_naming_it(
        session: IBSession, strict_sim: IBSim, tmp_path: Path) -> None:
    strict_sim.denyMarketData("BBB")
    sessions = plan_sessions(2, None, strict_sim.now())
    with pytest.raises(NeedsHumanError, match="BBB: IB has no market-data permission"):
        downloader(session, strict_sim, tmp_path).run(list(SYMBOLS), "1min", sessions)
    assert len([r for r in strict_sim.requests("reqHistoricalData") if " BBB " in f" {r.summary} "]) == 1
