"""IB's historical-data pacing rules, enforced by ibsim on its simulated clock."""

from __future__ import annotations

import pytest
from ib_async import IB, Stock

from ibsim import IBSim
from ibsim.messages import PACING_TEXT

AAPL = Stock("AAPL", "SMART", "USD")
MSFT = Stock("MSFT", "SMART", "USD")


@pytest.fixture
def errors(ib: IB) -> list[tuple[int, str]]:
    seen: list[tuple[int, str]] = []
    ib.errorEvent += lambda reqId, code, text, *_: seen.append((code, text))
    return seen


def _bars(ib: IB, contract: Stock, duration: str = "1 D") -> int:
    return len(ib.reqHistoricalData(contract, "", duration, "1 min", "TRADES", True, timeout=5))


def test_identical_request_within_15_seconds_gets_162_then_recovers(
        ib: IB, sim: IBSim, errors: list[tuple[int, str]]) -> None:
    assert _bars(ib, AAPL) == 31
    assert _bars(ib, AAPL) == 0
    assert errors == [(162, PACING_TEXT)]
    sim.advance(seconds=14)
    assert _bars(ib, AAPL) == 0
    sim.advance(seconds=1)
    assert _bars(ib, AAPL) == 31
    assert len(errors) == 2


def test_sixth_request_for_one_contract_within_2_seconds_gets_162(
        ib: IB, sim: IBSim, errors: list[tuple[int, str]]) -> None:
    for minutes in range(1, 6):
        assert _bars(ib, AAPL, f"{60 * minutes} S") > 0
    assert _bars(ib, AAPL, "360 S") == 0
    assert errors == [(162, PACING_TEXT)]
    assert _bars(ib, MSFT, "360 S") > 0  # another contract is not affected
    sim.advance(seconds=2)
    assert _bars(ib, AAPL, "360 S") > 0


def test_more_than_60_requests_in_10_minutes_gets_162(ib: IB, sim: IBSim,
                                                      errors: list[tuple[int, str]]) -> None:
    for i in range(60):
        assert _bars(ib, AAPL if i % 2 else MSFT, f"{60 + i} S") > 0
        sim.advance(seconds=1)
    assert _bars(ib, AAPL, "999 S") == 0
    assert errors == [(162, PACING_TEXT)]
    sim.advance(seconds=600)
    assert _bars(ib, AAPL, "999 S") > 0


def test_pacing_can_be_turned_off(ib: IB, sim: IBSim, errors: list[tuple[int, str]]) -> None:
    sim.setPacing(enabled=False)
    for _ in range(8):
        assert _bars(ib, AAPL) == 31
    assert errors == []


def test_injected_pacing_violation_answers_162_for_the_next_requests_only(
        ib: IB, sim: IBSim, errors: list[tuple[int, str]]) -> None:
    sim.violatePacing(count=2, symbol="AAPL")
    assert _bars(ib, MSFT, "60 S") > 0  # another symbol is served
    assert _bars(ib, AAPL, "60 S") == 0
    assert _bars(ib, AAPL, "120 S") == 0
    assert errors == [(162, PACING_TEXT), (162, PACING_TEXT)]
    assert _bars(ib, AAPL, "180 S") > 0
