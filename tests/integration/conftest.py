"""Fixtures for integration tests.

ibsim: a simulated IB Gateway (``sim``) on a free loopback port with a clock stepped by the test, a connected
real ib_async client (``ib``), deterministic bars (``sim_bars``) and ``wait_until`` to let the client's event
loop catch up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

from ibsim import IBSim, SimConfig

logger = logging.getLogger(__name__)

NY = ZoneInfo("America/New_York")
SIM_START = datetime(2024, 1, 4, 10, 0, tzinfo=NY)  # a Thursday, two sessions of history behind it
SIM_DAYS = ("2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05")


def make_bars(symbol: str, seed: int, start_price: float, extended: bool = False) -> pd.DataFrame:
    """Build deterministic 1-minute bars (RTH, or 08:00–17:00 when ``extended``) for SIM_DAYS."""
    rng = np.random.default_rng(seed)
    frames = []
    for day in SIM_DAYS:
        first, last = ("08:00", "16:59") if extended else ("09:30", "15:59")
        index = pd.date_range(f"{day} {first}", f"{day} {last}", freq="1min", tz=NY)
        frames.append(index)
    index = frames[0].append(frames[1:]).tz_convert("UTC")
    steps = np.round(rng.normal(0, 0.05, len(index)), 2)
    close = np.round(start_price + np.cumsum(steps), 2)
    open_ = np.round(np.r_[start_price, close[:-1]], 2)
    high = np.round(np.maximum(open_, close) + 0.03, 2)
    low = np.round(np.minimum(open_, close) - 0.03, 2)
    volume = rng.integers(1_000, 5_000, len(index)).astype(float)
    frame = pd.DataFrame({"open": open_, "high": high, "low": low, "close": close, "volume": volume},
                         index=pd.DatetimeIndex(index, name="datetime"))
    return frame.astype("float64")


@pytest.fixture(scope="session")
def sim_bars() -> dict[str, pd.DataFrame]:
    """Deterministic bars: AAPL with extended hours, MSFT regular hours only."""
    return {"AAPL": make_bars("AAPL", 7, 185.0, extended=True), "MSFT": make_bars("MSFT", 11, 370.0)}


@pytest.fixture
def sim_config() -> SimConfig:
    """Simulator settings for one test (override in a module to change them)."""
    return SimConfig()


@pytest.fixture
def sim(sim_bars: dict[str, pd.DataFrame], sim_config: SimConfig) -> Iterator[IBSim]:
    """A running simulator on a free port, clock stepped by the test, starting at SIM_START."""
    simulator = IBSim(sim_bars, start=SIM_START, config=sim_config).start()
    yield simulator
    simulator.stop()


@pytest.fixture
def ib(sim: IBSim) -> Iterator[object]:
    """A real ib_async client connected to ``sim`` as clientId 1."""
    from ib_async import IB  # noqa: PLC0415  (only the ibsim tests need the client library)

    client = IB()
    client.connect(sim.host, sim.port, clientId=1, timeout=5)
    yield client
    client.disconnect()


@pytest.fixture
def wait_until() -> Callable[..., None]:
    """Return ``wait_until(ib, predicate, timeout=5)``: run the client's loop until the predicate holds."""

    def wait(client: object, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        waited = 0.0
        while not predicate():
            if waited >= timeout:
                raise AssertionError(f"condition not met within {timeout} s")
            client.sleep(0.02)  # type: ignore[attr-defined]
            waited += 0.02

    return wait
