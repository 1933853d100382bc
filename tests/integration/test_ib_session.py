"""IBSession against ibsim with the real ib_async client: reconnect, backoff, 1100/1102, alerts."""

from __future__ import annotations

import contextlib
import random
import socket
from collections.abc import Callable

import pytest

from config.settings import ConfigError, LiveConfig
from feeds.ib.errors import ErrorKind, NeedsHumanError, TemporaryIBError
from feeds.ib.session import IBSession
from ibsim import IBSim


def make_session(sim: IBSim, **overrides: object) -> IBSession:
    cfg = LiveConfig(port=sim.port, client_id=5, reconnect_initial_seconds=1.0, reconnect_max_seconds=8.0,
                     alert_after_seconds=30.0, request_timeout_seconds=2.0, **overrides)  # type: ignore[arg-type]
    return IBSession(cfg, clock=sim.clock.now, rng=random.Random(7))


def run_loop_until(session: IBSession, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    waited = 0.0
    while not predicate():
        assert waited < timeout, "condition not met"
        session.run_event_loop(0.02)
        waited += 0.02


@pytest.fixture
def session(sim: IBSim) -> IBSession:
    s = make_session(sim)
    s.connect()
    yield s
    s.disconnect()


def test_connect_uses_the_only_managed_account(session: IBSession, sim: IBSim) -> None:
    assert session.connected
    assert session.account == sim.account
    assert not session.entries_paused
    assert 5 in sim.connectedClientIds()


def test_client_id_in_use_needs_a_human(sim: IBSim) -> None:
    sim.holdClientId(5)
    with pytest.raises(NeedsHumanError, match="clientId 5 is already in use"):
        make_session(sim).connect()


def test_refused_connection_is_temporary_once_and_needs_a_human_after_retries(sim: IBSim) -> None:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]
    session = IBSession(LiveConfig(port=free_port, reconnect_initial_seconds=0.01, reconnect_max_seconds=0.02))
    with pytest.raises(TemporaryIBError):
        session.connect()
    with pytest.raises(NeedsHumanError, match="still unreachable after 3 attempts"):
        session.connect(attempts=3)


def test_socket_drop_reconnects_on_the_clock_and_resyncs(session: IBSession, sim: IBSim) -> None:
    resyncs: list[bool] = []
    session.on_resync.append(lambda: resyncs.append(True))
    sim.dropConnections()
    run_loop_until(session, lambda: not session.connected)
    assert session.entries_paused
    assert session.next_attempt_at is not None
    delay = (session.next_attempt_at - sim.now()).total_seconds()
    assert 0.5 <= delay <= 1.0  # U(0.5, 1) × initial
    assert session.maintain() is False  # not due yet: no attempt, no sleep
    assert session.reconnect_attempts == 0
    sim.advance(seconds=delay)
    assert session.maintain() is True
    assert resyncs == [True]
    assert not session.entries_paused
    assert session.reconnects == 1


def test_gateway_restart_backs_off_exponentially_with_jitter_capped_then_reconnects(
        session: IBSession, sim: IBSim) -> None:
    back = sim.restart(downSeconds=2.0, wait=False)
    run_loop_until(session, lambda: not session.connected)
    delays = []
    for _ in range(6):
        assert session.next_attempt_at is not None
        sim.setTime(session.next_attempt_at)
        assert session.maintain() is False  # refused while the gateway is down
        assert session.next_attempt_at is not None
        delays.append((session.next_attempt_at - sim.now()).total_seconds())
    for n, delay in enumerate(delays, start=1):
        cap = min(8.0, 1.0 * 2**n)
        assert 0.5 * cap <= delay <= cap
    assert max(delays) <= 8.0
    assert len(set(delays)) == len(delays)  # jittered
    back.result(5)
    sim.setTime(session.next_attempt_at)
    assert session.maintain() is True
    assert session.reconnects == 1


def test_alert_after_alert_after_seconds_of_disconnection_and_keeps_trying(session: IBSession, sim: IBSim) -> None:
    alerts: list[str] = []
    session.on_alert.append(alerts.append)
    back = sim.restart(downSeconds=2.0, wait=False)
    run_loop_until(session, lambda: not session.connected)
    sim.advance(seconds=29)
    session.maintain()
    assert alerts == []
    sim.advance(seconds=2)
    session.maintain()
    assert len(alerts) == 1
    assert "for 31 s" in alerts[0]
    sim.advance(seconds=60)
    session.maintain()
    assert len(alerts) == 1  # once per outage
    assert session.reconnect_attempts >= 2  # still trying
    back.result(5)
    sim.advance(seconds=60)
    assert session.maintain() is True
    assert not session.alerted


def test_1100_pauses_entries_and_1102_resumes_after_resync(session: IBSession, sim: IBSim) -> None:
    seen: list[tuple[int, ErrorKind]] = []
    resyncs: list[bool] = []
    session.on_error.append(lambda code, kind, req_id, text: seen.append((code, kind)))
    session.on_resync.append(lambda: resyncs.append(True))
    sim.loseConnectivity()
    run_loop_until(session, lambda: session.entries_paused)
    assert session.connected
    assert (1100, ErrorKind.CONNECTIVITY_LOST) in seen
    assert (2105, ErrorKind.WARNING) in seen
    session.maintain()
    assert resyncs == []
    sim.restoreConnectivity()
    run_loop_until(session, lambda: not session.entries_paused)
    assert resyncs == [True]
    assert (1102, ErrorKind.CONNECTIVITY_RESTORED) in seen


def test_a_long_1100_raises_the_alert_too(session: IBSession, sim: IBSim) -> None:
    alerts: list[str] = []
    session.on_alert.append(alerts.append)
    sim.loseConnectivity()
    run_loop_until(session, lambda: session.entries_paused)
    sim.advance(seconds=31)
    session.maintain()
    assert len(alerts) == 1
    assert "1100" in alerts[0]


def test_qualify_looks_contracts_up_once_and_names_unknown_symbols(session: IBSession) -> None:
    contracts = session.qualify(["AAPL", "MSFT"])
    assert contracts["AAPL"].conId > 0
    assert contracts["AAPL"].primaryExchange
    assert session.contract("AAPL") is contracts["AAPL"]
    with pytest.raises(ConfigError, match=r"--symbols: IB has no single US stock .* \['APPL'\]"):
        session.qualify(["AAPL", "APPL"], source="--symbols")
