"""Safety rails of live trading: paper account and paper ports only, a kill switch, and flatten-everything.

- :func:`check_endpoint` refuses IB's live ports (4001 Gateway, 7496 TWS) and :func:`check_account` refuses an
  account that is not a paper account (``DU…``), unless ``live.allow_live`` is set.
- :class:`KillSwitch`: while the flag file exists, or after ``SIGUSR1`` (which toggles), no new entries
  (reason ``KILL_SWITCH``); exits and protective orders keep working.
- :func:`flatten_all`: cancel every order of ours and sell every position of ours at market (our positions are
  the net of our own recorded executions; anything else in the account is left alone). Which positions are
  ours is decided here, from the state store; the IB orders themselves are the adapter's
  (:mod:`feeds.ib.account`).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from engines.live.state import StateStore
from feeds.ib import account
from feeds.ib.errors import NeedsHumanError
from feeds.ib.mapping import EXIT, OrderRef, is_paper_account, parse_order_ref, trade_id_for
from feeds.ib.session import IBSession

logger = logging.getLogger(__name__)

LIVE_PORTS = frozenset({4001, 7496})


class UnsafeConfigError(NeedsHumanError):
    """Live trading was not explicitly allowed (a live port or a non-paper account)."""


def check_endpoint(port: int, allow_live: bool) -> None:
    """Refuse IB's live ports unless ``allow_live``."""
    if port in LIVE_PORTS and not allow_live:
        raise UnsafeConfigError(f"live.port = {port} is a LIVE trading port (4001 IB Gateway, 7496 TWS); use the "
                                "paper port 4002 / 7497, or set live.allow_live = true if you really mean it")


def check_account(account_id: str, allow_live: bool) -> None:
    """Refuse an account that is not a paper account (``DU…``) unless ``allow_live``."""
    if not is_paper_account(account_id) and not allow_live:
        raise UnsafeConfigError(f"account {account_id!r} is not a paper account (DU…); refusing to trade it. Set "
                                "live.allow_live = true only if you mean to trade real money")


class KillSwitch:
    """Stops new entries while a flag file exists or after SIGUSR1 (a second SIGUSR1 releases it).

    Parameters
    ----------
    flag_file
        ``cfg.live.kill_switch_file``.
    install_signal
        Install the ``SIGUSR1`` handler (main thread only).
    """

    def __init__(self, flag_file: str | Path, install_signal: bool = False) -> None:
        self.flag_file = Path(flag_file)
        self.toggled = False
        self._last: bool | None = None
        if install_signal:
            signal.signal(signal.SIGUSR1, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.toggled = not self.toggled

    @property
    def active(self) -> bool:
        """Return True while entries must be stopped (logs every change once)."""
        on = self.toggled or self.flag_file.exists()
        if on != self._last:
            if on:
                logger.warning("KILL SWITCH ON (%s): no new entries", "SIGUSR1" if self.toggled else self.flag_file)
            elif self._last is not None:
                logger.warning("kill switch off: entries allowed again")
            self._last = on
        return on


def our_positions(state: StateStore, strategy_id: str) -> dict[str, float]:
    """Return our net position per symbol from our recorded executions."""
    net: dict[str, float] = {}
    for f in state.fills():
        ref = parse_order_ref(f.order_ref, strategy_id)
        if ref is None:
            continue
        net[ref.symbol] = net.get(ref.symbol, 0.0) + f.signed_shares
    return {s: q for s, q in net.items() if abs(q) > 1e-9}


def _record_executions(session: IBSession, state: StateStore, strategy_id: str) -> None:
    for execution in account.executions(session, strategy_id):
        state.record_fill(execution)


def flatten_all(session: IBSession, state: StateStore, strategy_id: str, clock: Callable[[], datetime],
                timeout: float = 30.0) -> dict[str, float]:
    """Cancel all our orders, sell all our positions at market and wait for the fills; return what was sold.

    A position is sold only as far as it is ours (our recorded executions) and IB still holds it.

    Raises
    ------
    NeedsHumanError
        Not everything was flat after ``timeout`` seconds (the message says what is left).
    """
    _record_executions(session, state, strategy_id)
    account.cancel_open_orders(session, strategy_id)
    session.run_event_loop(0.5)
    held = account.positions(session)
    tid = trade_id_for(clock())
    sold: dict[str, float] = {}
    for symbol, ours in our_positions(state, strategy_id).items():
        qty = min(ours, held.get(symbol, 0.0))
        if qty <= 0:
            continue
        account.place_flatten_order(session, state, OrderRef(strategy_id, symbol, tid, EXIT), qty)
        sold[symbol] = qty
    waited = 0.0
    while our_positions(state, strategy_id) and waited < timeout:
        session.run_event_loop(0.2)
        waited += 0.2
        _record_executions(session, state, strategy_id)
    left = our_positions(state, strategy_id)
    if left:
        raise NeedsHumanError(f"flatten: positions still open after {timeout:.0f} s: {left}")
    return sold
