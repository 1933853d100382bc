"""``OrderJournal``: the interface through which the IB adapter writes our orders and fills before acting.

The adapter defines what it needs and the live engine implements it (``engines.live.state.StateStore``, an
SQLite database), so :class:`~feeds.ib.broker.IBBroker` records every order row **before** ``placeOrder`` and
every execution exactly once (by ``execId``) without knowing where they are kept. Order rows are the
journal's columns as a dict (``order_ref``, ``symbol``, ``trade_id``, ``role``, ``action``, ``quantity``,
``order_type``, ``price``, ``ib_order_id``, ``perm_id``, ``status``, ``filled``); fills are
:class:`~feeds.ib.mapping.ExecutionRecord` objects.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from typing import Any, Protocol

from feeds.ib.mapping import ExecutionRecord

logger = logging.getLogger(__name__)


class OrderJournal(Protocol):
    """Where the broker persists our orders and fills (crash-safe: every write is committed when it returns)."""

    def transaction(self) -> AbstractContextManager[None]:
        """Group several writes into one atomic commit."""
        ...

    def put_order(self, order_ref: str, *, symbol: str, trade_id: str, role: str, action: str, quantity: float,
                  order_type: str, price: float | None, status: str = "Intent",
                  ib_order_id: int | None = None) -> None:
        """Record an order intent before it is sent (a re-sent ``orderRef`` keeps its fills)."""
        ...

    def update_order(self, order_ref: str, **fields: Any) -> None:
        """Update some columns of one order row (unknown refs are ignored)."""
        ...

    def order(self, order_ref: str) -> dict[str, Any] | None:
        """Return one order row, or None."""
        ...

    def record_fill(self, execution: ExecutionRecord) -> bool:
        """Record an execution once; return False when its ``exec_id`` was already recorded."""
        ...

    def fills(self, order_ref: str | None = None) -> list[ExecutionRecord]:
        """Return recorded executions (optionally of one order), in time order."""
        ...
