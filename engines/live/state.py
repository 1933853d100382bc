"""``StateStore``: the live engine's memory across crashes, an embedded SQLite database in WAL mode.

It holds what IB cannot tell us after a restart: which orders are ours and what they are for (by
``orderRef``), which executions we have already applied, each symbol's trade book (entry bar time,
``p_up`` at entry, bars held), the closed trades of the day and the risk state (day, start-of-day equity,
realised P&L, cooldowns, blocked counts). Every intent is written **before** the engine acts on it (an order
row before ``placeOrder``), and every write commits at once, so a ``kill -9`` loses nothing it acted on.

It is the :class:`~feeds.ib.journal.OrderJournal` the IB broker writes through (orders, fills as
:class:`~feeds.ib.mapping.ExecutionRecord`), and it keeps the engine's typed records: books as
:class:`~core.records.BookSnapshot`, closed trades as :class:`~core.records.TradeRecord`.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from config.settings import AppConfig
from core.calendar import exchange_day
from core.records import BookSnapshot, TradeRecord
from feeds.ib.mapping import ExecutionRecord

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    order_ref   TEXT PRIMARY KEY,
    symbol      TEXT NOT NULL,
    trade_id    TEXT NOT NULL,
    role        TEXT NOT NULL,
    action      TEXT NOT NULL,
    quantity    REAL NOT NULL,
    order_type  TEXT NOT NULL,
    price       REAL,
    ib_order_id INTEGER,
    perm_id     INTEGER,
    status      TEXT NOT NULL,
    filled      REAL NOT NULL DEFAULT 0,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_symbol ON orders(symbol, trade_id);
CREATE TABLE IF NOT EXISTS fills (
    exec_id     TEXT PRIMARY KEY,
    order_ref   TEXT NOT NULL,
    symbol      TEXT NOT NULL,
    side        TEXT NOT NULL,
    shares      REAL NOT NULL,
    price       REAL NOT NULL,
    time        TEXT NOT NULL,
    commission  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS fills_ref ON fills(order_ref);
CREATE TABLE IF NOT EXISTS books (
    symbol      TEXT PRIMARY KEY,
    data        TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS trades (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    day         TEXT NOT NULL,
    symbol      TEXT NOT NULL,
    data        TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS kv (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL
);
"""

_ORDER_COLUMNS = ("order_ref", "symbol", "trade_id", "role", "action", "quantity", "order_type", "price",
                  "ib_order_id", "perm_id", "status", "filled", "created_at", "updated_at")


def _now() -> str:
    return datetime.now(UTC).isoformat()  # bookkeeping timestamp only, never used in trading logic


class StateStore:
    """SQLite (WAL) store of orders, fills, trade books, closed trades and risk state.

    Parameters
    ----------
    path
        Database file (its folder is created); ``":memory:"`` for a throw-away store.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path) if str(path) != ":memory:" else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        if self.get_value("schema_version") is None:
            self.set_value("schema_version", SCHEMA_VERSION)

    def close(self) -> None:
        """Close the database (every write is already committed)."""
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group several writes into one atomic commit."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- orders -----------------------------------------------------------------------------------
    def put_order(self, order_ref: str, *, symbol: str, trade_id: str, role: str, action: str, quantity: float,
                  order_type: str, price: float | None, status: str = "Intent",
                  ib_order_id: int | None = None) -> None:
        """Record an order intent (before it is sent); a re-sent ``orderRef`` (a retried exit) keeps its fills."""
        now = _now()
        self._db.execute(
            "INSERT INTO orders (order_ref, symbol, trade_id, role, action, quantity, order_type, price, "
            "ib_order_id, perm_id, status, filled, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, 0, ?, ?) "
            "ON CONFLICT(order_ref) DO UPDATE SET quantity=excluded.quantity, price=excluded.price, "
            "order_type=excluded.order_type, status=excluded.status, ib_order_id=excluded.ib_order_id, "
            "updated_at=excluded.updated_at",
            (order_ref, symbol, trade_id, role, action, float(quantity), order_type, price, ib_order_id, status,
             now, now))

    def update_order(self, order_ref: str, **fields: Any) -> None:
        """Update some columns of one order row (unknown refs are ignored)."""
        bad = set(fields) - set(_ORDER_COLUMNS)
        if bad:
            raise ValueError(f"unknown order columns {sorted(bad)}")
        if not fields:
            return
        fields["updated_at"] = _now()
        assignments = ", ".join(f"{k} = ?" for k in fields)
        self._db.execute(f"UPDATE orders SET {assignments} WHERE order_ref = ?",
                         (*fields.values(), order_ref))

    def order(self, order_ref: str) -> dict[str, Any] | None:
        """Return one order row as a dict, or None."""
        row = self._db.execute("SELECT * FROM orders WHERE order_ref = ?", (order_ref,)).fetchone()
        return None if row is None else dict(row)

    def orders(self, symbol: str | None = None, trade_id: str | None = None) -> list[dict[str, Any]]:
        """Return order rows (optionally of one symbol / trade), oldest first."""
        sql, args = "SELECT * FROM orders WHERE 1=1", list[str]()
        if symbol is not None:
            sql, args = sql + " AND symbol = ?", [*args, symbol]
        if trade_id is not None:
            sql, args = sql + " AND trade_id = ?", [*args, trade_id]
        return [dict(r) for r in self._db.execute(sql + " ORDER BY created_at, rowid", args)]

    # -- fills ------------------------------------------------------------------------------------
    def record_fill(self, execution: ExecutionRecord) -> bool:
        """Record an execution once; return False when its ``exec_id`` was already recorded (a duplicate)."""
        e = execution
        cur = self._db.execute(
            "INSERT OR IGNORE INTO fills (exec_id, order_ref, symbol, side, shares, price, time, commission) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (e.exec_id, e.order_ref, e.symbol, e.side, float(e.shares), float(e.price), e.time.isoformat(),
             float(e.commission)))
        return cur.rowcount == 1

    def fills(self, order_ref: str | None = None) -> list[ExecutionRecord]:
        """Return recorded executions (optionally of one order), in time order."""
        if order_ref is None:
            rows = self._db.execute("SELECT * FROM fills ORDER BY time, rowid")
        else:
            rows = self._db.execute("SELECT * FROM fills WHERE order_ref = ? ORDER BY time, rowid", (order_ref,))
        return [ExecutionRecord(exec_id=r["exec_id"], order_ref=r["order_ref"], symbol=r["symbol"], side=r["side"],
                                shares=r["shares"], price=r["price"], time=datetime.fromisoformat(r["time"]),
                                commission=r["commission"]) for r in rows]

    # -- books, trades, key/values ----------------------------------------------------------------
    def save_book(self, symbol: str, book: BookSnapshot | None) -> None:
        """Store (or with ``None`` delete) one symbol's trade book."""
        if book is None:
            self._db.execute("DELETE FROM books WHERE symbol = ?", (symbol,))
        else:
            self._db.execute("INSERT INTO books (symbol, data) VALUES (?, ?) "
                             "ON CONFLICT(symbol) DO UPDATE SET data = excluded.data",
                             (symbol, json.dumps(book.to_dict(), default=str)))

    def books(self) -> dict[str, BookSnapshot]:
        """Return every stored trade book by symbol."""
        return {r["symbol"]: BookSnapshot.from_dict(json.loads(r["data"]))
                for r in self._db.execute("SELECT * FROM books")}

    def append_trade(self, trade: TradeRecord) -> None:
        """Store one closed trade under the exchange-local day (``YYYY-MM-DD``) of its exit."""
        self._db.execute("INSERT INTO trades (day, symbol, data) VALUES (?, ?, ?)",
                         (exchange_day(trade.exit_time), trade.symbol, json.dumps(trade.to_dict(), default=str)))

    def trades(self, day: str | None = None) -> list[TradeRecord]:
        """Return closed trades (of one day), in closing order."""
        if day is None:
            rows = self._db.execute("SELECT data FROM trades ORDER BY id")
        else:
            rows = self._db.execute("SELECT data FROM trades WHERE day = ? ORDER BY id", (day,))
        return [TradeRecord.from_dict(json.loads(r["data"])) for r in rows]

    def set_value(self, key: str, value: Any) -> None:
        """Store a JSON-ready value under ``key``."""
        self._db.execute("INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = "
                         "excluded.value", (key, json.dumps(value, default=str)))

    def get_value(self, key: str, default: Any = None) -> Any:
        """Return the value stored under ``key``, or ``default``."""
        row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row["value"])


def state_path(cfg: AppConfig) -> Path:
    """Return the SQLite file of the live state."""
    return Path(cfg.live.state_dir) / f"live-{cfg.live.strategy_id}.sqlite"
