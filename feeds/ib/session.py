"""The one IB connection: connect, classify errors, reconnect with capped backoff + jitter, alert, re-sync.

backtrader runs its main loop synchronously, so nothing here runs by itself: the engine calls
:meth:`IBSession.maintain` and :meth:`IBSession.run_event_loop` often (the feeds do it from ``_load``, the broker from
its own hooks). :meth:`run_event_loop` runs ib_async's event loop with ``ib.sleep`` — never ``time.sleep`` ("The One
Rule" of ib_async's ``IB``). Reconnect attempts are scheduled on the injected clock, so tests that tie the
clock to the simulator's clock are deterministic.

Lifecycle of a disconnection::

    socket EOF / gateway restart ──> connected False, entries_paused True, down_since = now
        maintain(): at next_attempt_at try connect; on failure next delay = U(0.5, 1) × min(cap, d0 × 2^n)
        maintain(): once down for alert_after_seconds → logger.error + on_alert (once), keep trying
        connect OK ──> on_resync callbacks (feeds backfill, broker reconciles) ──> entries_paused False
    1100 (socket kept) ──> entries_paused True; 1101/1102 ──> on_resync ──> entries_paused False
    1100, then the socket drops and a reconnect succeeds: a new connection starts without the 1100 (a gateway still
        cut off from IB says 1100 / 2110 again in its handshake), so the reconnect's re-sync resumes entries even
        though no 1101/1102 ever comes

:attr:`IBSession.paused_since` says since when new entries have been paused (the heartbeat reports it, so the
health check can flag a pause that lasts).
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from ib_async import IB, Stock, util

from config.settings import ConfigError, LiveConfig
from feeds.ib.errors import ErrorKind, NeedsHumanError, TemporaryIBError, classify

logger = logging.getLogger(__name__)

_REQ_ERRORS_KEPT = 2_000
_CONNECT_TIMEOUT_CAP = 10.0


def quieten_client_logging() -> None:
    """Keep ib_async's own log to warnings, and its wrapper's to nothing: the wrapper logs every cancel
    confirmation (202) as an ERROR, while the session logs IB's errors classified by meaning."""
    logging.getLogger("ib_async").setLevel(logging.WARNING)
    logging.getLogger("ib_async.wrapper").setLevel(logging.CRITICAL)


def wall_clock() -> datetime:
    """Return the wall-clock time (UTC); the production clock."""
    return datetime.now(UTC)


class IBSession:
    """Own the one ``ib_async.IB`` connection of the process.

    Parameters
    ----------
    live_cfg
        ``cfg.live``: host, port, client_id, account, reconnect and alert settings.
    clock
        Returns the current tz-aware time; wall time (UTC) by default. Tests pass the simulator's clock.
    rng
        Random source of the reconnect jitter (seeded in tests).

    Attributes
    ----------
    ib
        The ``ib_async.IB`` instance — for ``feeds.ib`` modules only.
    on_resync
        Called (from :meth:`maintain` / :meth:`run_event_loop`, never from inside the event loop) after a reconnect or
        after 1101/1102: feeds backfill, the broker reconciles.
    on_error
        Called with ``(code, kind, reqId, message)`` for every IB error / notice.
    on_alert
        Called with a message when a disconnection lasts longer than ``alert_after_seconds``, and with every other
        :meth:`alert` (a symbol without market-data permission).
    """

    def __init__(self, live_cfg: LiveConfig, *, clock: Callable[[], datetime] | None = None,
                 rng: random.Random | None = None) -> None:
        self.cfg = live_cfg
        self.clock: Callable[[], datetime] = clock or wall_clock
        self.rng = rng or random.Random()
        self.ib = IB()
        self.on_resync: list[Callable[[], None]] = []
        self.on_error: list[Callable[[int, ErrorKind, int, str], None]] = []
        self.on_alert: list[Callable[[str], None]] = []
        self.account = live_cfg.account or ""
        self.reconnect_attempts = 0
        self.reconnects = 0
        self.next_attempt_at: datetime | None = None
        self.down_since: datetime | None = None
        self.alerted = False
        self._ever_connected = False
        self._closing = False
        self._ib_paused = False  # 1100 seen on this connection, no 1101/1102 yet
        self._resync_pending = False
        self._paused_since: datetime | None = None
        self._in_resync = False
        self._connect_codes: list[tuple[int, str]] = []
        self._connecting = False
        self._req_errors: OrderedDict[int, tuple[int, str]] = OrderedDict()
        self.contracts: dict[str, Stock] = {}
        self.ib.errorEvent += self._on_ib_error
        self.ib.disconnectedEvent += self._on_disconnected

    # -- state ------------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """Return True while the API connection is up."""
        return bool(self.ib.isConnected())

    @property
    def connectivity_lost(self) -> bool:
        """Return True after IB's 1100 (connectivity between IB and the gateway lost) until 1101/1102."""
        return self._ib_paused

    @property
    def entries_paused(self) -> bool:
        """Return True while new entries must wait: disconnected, or after 1100 until 1101/1102 (or a reconnect)
        and the re-sync."""
        return self._ib_paused or self._resync_pending or not self.connected

    @property
    def paused_since(self) -> datetime | None:
        """Return since when (on the session's clock) new entries have been paused; None while they are not."""
        self._note_pause()
        return self._paused_since

    def _note_pause(self) -> None:
        """Record the start or the end of a pause of new entries (called wherever its causes change)."""
        paused = self.entries_paused
        if paused and self._paused_since is None:
            self._paused_since = self.down_since or self.clock()
        elif not paused and self._paused_since is not None:
            logger.info("new entries resumed after a pause of %.0f s",
                        (self.clock() - self._paused_since).total_seconds())
            self._paused_since = None

    def now(self) -> datetime:
        """Return the injected clock's time."""
        return self.clock()

    # -- connecting -------------------------------------------------------------------------------
    def connect(self, timeout: float | None = None, *, attempts: int = 1) -> None:
        """Connect for the first time (blocking, running the event loop while it waits).

        Parameters
        ----------
        timeout
            Seconds per attempt; ``request_timeout_seconds`` (at most 10 s) by default.
        attempts
            Tries before giving up, with the reconnect backoff between them (waited with ``ib.sleep``).

        Raises
        ------
        NeedsHumanError
            The clientId is in use (326), the account is not managed by this login, or the gateway still
            refuses connections after ``attempts`` > 1 tries.
        TemporaryIBError
            Any other failure to connect (refused once, timed out, socket closed).
        """
        self._closing = False
        failure: Exception | None = None
        for attempt in range(max(attempts, 1)):
            if attempt:
                delay = self._backoff_delay(attempt - 1)
                logger.info("connect attempt %d/%d in %.1f s", attempt + 1, attempts, delay)
                self._run_loop_quietly(delay)
            try:
                self._try_connect(timeout)
            except TemporaryIBError as exc:
                failure = exc
                continue
            self._after_connect(first=True)
            return
        if attempts > 1 and failure is not None:
            raise NeedsHumanError(
                f"IB Gateway at {self.cfg.host}:{self.cfg.port} still unreachable after {attempts} attempts "
                f"({failure}); is it running, logged in, with the API enabled on this port?") from failure
        raise failure or TemporaryIBError("no connection attempt made")

    def _try_connect(self, timeout: float | None) -> None:
        """Make one connection attempt; raise NeedsHumanError or TemporaryIBError on failure."""
        cfg = self.cfg
        per_try = timeout if timeout is not None else min(cfg.request_timeout_seconds, _CONNECT_TIMEOUT_CAP)
        self._connect_codes = []
        self._connecting = True
        self._ib_paused = False  # a 1100 belongs to its connection; a gateway still cut off repeats it on connect
        try:
            self.ib.connect(cfg.host, cfg.port, clientId=cfg.client_id, timeout=per_try,
                            account=cfg.account or "")
        except (ConnectionError, OSError, TimeoutError) as exc:
            if any(code == 326 for code, _ in self._connect_codes):
                raise NeedsHumanError(
                    f"clientId {cfg.client_id} is already in use at {cfg.host}:{cfg.port}: another program (or "
                    "a session of ours the gateway has not dropped yet) holds it; stop it or change "
                    "live.client_id", code=326) from exc
            raise TemporaryIBError(f"cannot connect to {cfg.host}:{cfg.port}: {exc!r}") from exc
        finally:
            self._connecting = False
        if not self.connected:
            raise TemporaryIBError(f"connection to {cfg.host}:{cfg.port} closed during start-up")
        accounts = list(self.ib.managedAccounts())
        if cfg.account and cfg.account not in accounts:
            self.ib.disconnect()
            raise NeedsHumanError(f"account {cfg.account} is not managed by this login (managed: {accounts})")
        if not cfg.account:
            if len(accounts) != 1:
                self.ib.disconnect()
                raise NeedsHumanError(f"this login manages {len(accounts)} accounts {accounts}; set live.account")
            self.account = accounts[0]

    def _after_connect(self, first: bool) -> None:
        now = self.clock()
        if self.down_since is not None:
            logger.warning("IB reconnected to %s:%d after %.1f s (%d attempts)", self.cfg.host, self.cfg.port,
                           (now - self.down_since).total_seconds(), self.reconnect_attempts)
        else:
            logger.info("IB connected to %s:%d clientId %d account %s", self.cfg.host, self.cfg.port,
                        self.cfg.client_id, self.account)
        if not first or self._ever_connected:
            self.reconnects += 1
            self._resync_pending = True
        self._ever_connected = True
        if not self._ib_paused:  # connected, but still cut off from IB (1100 in the handshake): still down
            self.down_since = None
            self.alerted = False
        self.next_attempt_at = None
        self.reconnect_attempts = 0
        self._drain()
        self._note_pause()

    def qualify(self, symbols: Iterable[str], source: str = "data.symbols") -> dict[str, Stock]:
        """Look every symbol up at IB once (conId, primary exchange) and keep the contracts for all requests.

        A symbol IB does not know as a US stock (error 200: a typo, a delisting) or knows several of is a
        configuration error naming it, before anything is traded.

        Parameters
        ----------
        symbols
            Ticker symbols.
        source
            Where the symbols came from, for the error (a config key or a command-line option).

        Raises
        ------
        ConfigError
            Naming ``source`` and the symbols IB could not resolve to one contract.
        """
        wanted = [s for s in dict.fromkeys(symbols) if s not in self.contracts]
        contracts = [Stock(s, "SMART", "USD") for s in wanted]
        if contracts:
            self.ib.qualifyContracts(*contracts)  # fills conId / primaryExchange in place
        bad = [c.symbol for c in contracts if not c.conId]
        if bad:
            raise ConfigError(f"{source}: IB has no single US stock (SMART, USD) for {bad}; expected "
                              f"ticker symbols as IB spells them (error 200 'No security definition', or ambiguous)")
        for c in contracts:
            self.contracts[c.symbol] = c
            logger.info("contract %s: conId %d, primary exchange %s", c.symbol, c.conId, c.primaryExchange or "?")
        return {s: self.contracts[s] for s in dict.fromkeys(symbols)}

    def contract(self, symbol: str) -> Stock:
        """Return ``symbol``'s qualified contract (a SMART-routed US stock when :meth:`qualify` was not run)."""
        return self.contracts.get(symbol) or Stock(symbol, "SMART", "USD")

    def disconnect(self) -> None:
        """Disconnect on purpose (no reconnect follows)."""
        self._closing = True
        self.ib.disconnect()

    # -- keeping it up ----------------------------------------------------------------------------
    def maintain(self) -> bool:
        """Reconnect when due, alert when down too long, run pending re-syncs; return :attr:`connected`.

        Never sleeps: a reconnect attempt is made only when the backoff delay has elapsed on the clock.
        """
        if self._closing:
            return self.connected
        now = self.clock()
        if self.connected:
            self._check_alert(now)  # a long 1100 with the socket up is a disconnection too
            self._drain()
            return True
        if self.down_since is None:
            self._mark_down(now, "not connected")
        self._check_alert(now)
        if self.next_attempt_at is not None and now < self.next_attempt_at:
            return False
        self.reconnect_attempts += 1
        try:
            self._try_connect(None)
        except (TemporaryIBError, NeedsHumanError) as exc:
            delay = self._backoff_delay(self.reconnect_attempts)
            self.next_attempt_at = now + timedelta(seconds=delay)
            logger.warning("IB reconnect attempt %d failed (%s); next in %.1f s", self.reconnect_attempts, exc,
                           delay)
            return False
        self._after_connect(first=False)
        return self.connected

    def run_event_loop(self, seconds: float = 0.0) -> None:
        """Run ib_async's event loop for ``seconds`` (``ib.sleep``; a socket drop is absorbed) and re-sync."""
        self._run_loop_quietly(seconds)
        self._drain()

    def _run_loop_quietly(self, seconds: float) -> None:
        # A socket drop surfaces here as ConnectionError; _on_disconnected records it, maintain() reconnects.
        with contextlib.suppress(ConnectionError):
            self.ib.sleep(seconds)

    def _check_alert(self, now: datetime) -> None:
        if self.down_since is None or self.alerted:
            return
        down = (now - self.down_since).total_seconds()
        if down < self.cfg.alert_after_seconds:
            return
        self.alerted = True
        what = "disconnected from" if not self.connected else "without IB server connectivity (1100) at"
        self.alert(f"IB {what} {self.cfg.host}:{self.cfg.port} for {down:.0f} s "
                   f"(alert after {self.cfg.alert_after_seconds:.0f} s); still trying, no new entries")

    def alert(self, message: str) -> None:
        """Log ``message`` at ERROR and hand it to every :attr:`on_alert` channel (the engine's webhook)."""
        logger.error("%s", message)
        for callback in list(self.on_alert):
            try:
                callback(message)
            except Exception:  # an alert channel failing must not stop the caller (reconnect loop, poller)
                logger.exception("alert callback failed")

    def _backoff_delay(self, failures: int) -> float:
        """Return the wait before the next attempt: U(0.5, 1) × min(cap, initial × 2^failures)."""
        cfg = self.cfg
        capped = min(cfg.reconnect_max_seconds, cfg.reconnect_initial_seconds * 2.0 ** min(failures, 30))
        return capped * self.rng.uniform(0.5, 1.0)

    def _mark_down(self, now: datetime, why: str) -> None:
        if self.down_since is None:
            self.down_since = now
            self.alerted = False
            logger.warning("IB connection down (%s) at %s", why, now.isoformat())

    def _drain(self) -> None:
        """Run the re-sync callbacks once, outside the event loop."""
        if not self._resync_pending or self._in_resync or not self.connected or self._ib_paused:
            return
        self._in_resync = True
        try:
            logger.info("IB re-sync: %d callbacks", len(self.on_resync))
            for callback in list(self.on_resync):
                callback()
            self._resync_pending = False
        finally:
            self._in_resync = False
        self._note_pause()

    # -- ib_async events (run inside the event loop: record, never request) -----------------------
    def _on_disconnected(self) -> None:
        if self._closing:
            return
        now = self.clock()
        self._mark_down(now, "socket closed")
        if self.next_attempt_at is None:
            self.next_attempt_at = now + timedelta(seconds=self._backoff_delay(0))
        self._note_pause()

    def _on_ib_error(self, reqId: int, errorCode: int, errorString: str, contract: Any = None) -> None:
        kind = classify(errorCode, errorString)
        if self._connecting:
            self._connect_codes.append((errorCode, errorString))
        if reqId >= 0 and kind not in {ErrorKind.INFO, ErrorKind.WARNING}:
            self._req_errors[reqId] = (errorCode, errorString)
            while len(self._req_errors) > _REQ_ERRORS_KEPT:
                self._req_errors.popitem(last=False)
        if kind is ErrorKind.CONNECTIVITY_LOST:
            logger.warning("IB %d: %s; new entries paused", errorCode, errorString)
            self._ib_paused = True
            self._mark_down(self.clock(), f"IB {errorCode}")
        elif kind is ErrorKind.CONNECTIVITY_RESTORED:
            logger.warning("IB %d: %s; re-sync", errorCode, errorString)
            self._ib_paused = False
            self._resync_pending = True
            if self.connected:
                self.down_since = None
                self.alerted = False
        elif kind is ErrorKind.FATAL:
            logger.error("IB %d reqId %d: %s", errorCode, reqId, errorString)
        if kind in {ErrorKind.CONNECTIVITY_LOST, ErrorKind.CONNECTIVITY_RESTORED}:
            self._note_pause()
        for callback in list(self.on_error):
            callback(errorCode, kind, reqId, errorString)

    def request_error(self, req_id: int) -> tuple[int, str] | None:
        """Return (and forget) the last non-routine error IB sent for request ``req_id``, if any."""
        return self._req_errors.pop(req_id, None)

    def run(self, awaitable: Any, timeout: float | None = None) -> Any:
        """Run ``awaitable`` to completion on ib_async's loop (blocking the caller, not the loop)."""
        return util.run(awaitable, timeout=timeout)
