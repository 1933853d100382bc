"""The live engine's reports: the per-bar decision log (``decisions-YYYY-MM-DD.jsonl``) and the daily trade
summary.

The decision log gets one JSON line per symbol per bar (bar time, symbol, ``p_up`` as an exact float,
decision, blocking reason) and one INFO log line; it is what the parity test compares with the backtest.
The daily summary (trades, P&L, win rate, exit reasons, blocked entries by reason) is written as
``summary-YYYY-MM-DD.json`` and ``.txt`` in the log folder. :func:`summary_from_store` builds it from the state
store, so it covers the whole day whatever restarts happened; one written before the close is marked
``provisional`` and replaced by the one at the close.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from core.calendar import exchange_day, session_date, to_exchange, to_utc
from core.files import atomic_write_json, atomic_write_text
from core.records import ExitReason, TradeRecord
from engines.live.state import StateStore

logger = logging.getLogger(__name__)


class DecisionLog:
    """A ``decision_sink`` for :class:`strategies.ml_strategy.MLStrategy` writing JSON lines per day.

    Parameters
    ----------
    log_dir
        Folder of ``decisions-YYYY-MM-DD.jsonl``.
    """

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.records: list[dict[str, Any]] = []

    def __call__(self, decision: dict[str, Any]) -> None:
        """Log one decision and append it to the day's file (flushed at once)."""
        t: datetime = decision["time"]
        t = to_utc(t)
        p_up = float(decision["p_up"])
        record = {"time": t.isoformat(), "symbol": decision["symbol"],
                  "p_up": None if math.isnan(p_up) else p_up,
                  "decision": decision["decision"], "reason": decision["reason"]}
        self.records.append(record)
        path = self.log_dir / f"decisions-{exchange_day(t)}.jsonl"
        with path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        logger.info("decision %s %-6s p_up=%s %s%s", to_exchange(t).strftime("%Y-%m-%d %H:%M"),
                    record["symbol"], "nan" if record["p_up"] is None else f"{p_up:.4f}", record["decision"],
                    f" ({record['reason']})" if record["reason"] else "")


def daily_summary(day: str, trades: Iterable[TradeRecord], blocked: Mapping[str, int],
                  extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Summarise one day's closed trades and blocked entries.

    Parameters
    ----------
    day
        Exchange date ``YYYY-MM-DD``.
    trades
        The day's closed trades.
    blocked
        Blocked entries by reason code.
    extra
        More fields (equity, account, dry run …).
    """
    rows = list(trades)
    pnl = [float(t.pnl) for t in rows]
    wins = sum(1 for p in pnl if p > 0)
    reasons = Counter(str(t.exit_reason) for t in rows)
    summary: dict[str, Any] = {
        "day": day,
        "trades": len(rows),
        "wins": wins,
        "win_rate": round(wins / len(rows), 4) if rows else None,
        "pnl": round(sum(pnl), 2),
        "commission": round(sum(float(t.commission) for t in rows), 2),
        "exit_reasons": {r: reasons.get(r, 0) for r in ExitReason},
        "blocked": {str(k): int(v) for k, v in sorted(blocked.items())},
        "by_symbol": {s: round(sum(float(t.pnl) for t in rows if t.symbol == s), 2)
                      for s in sorted({t.symbol for t in rows})},
    }
    summary.update(extra or {})
    return summary


def summary_from_store(store: StateStore, day: str, *, provisional: bool,
                       extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Summarise ``day`` from the state store: every closed trade of the day, whichever process booked it, and
    the day's blocked entries (the persisted risk state, when it is that day's).

    Parameters
    ----------
    store
        The live state store.
    day
        Exchange date ``YYYY-MM-DD``.
    provisional
        Written before the day's close (a stop mid-day): marked so, and replaced by the summary at the close.
    extra
        More fields (equity, account, dry run …).
    """
    risk = store.get_value("risk") or {}
    same_day = "session" in risk and session_date(int(risk["session"])).date().isoformat() == day
    blocked = risk.get("blocked", {}) if same_day else {}
    return daily_summary(day, store.trades(day), blocked, {"provisional": provisional, **(extra or {})})


def format_summary(summary: Mapping[str, Any]) -> str:
    """Return the summary as a few human-readable lines (log, text file, webhook)."""
    rate = summary["win_rate"]
    kind = "PROVISIONAL daily summary (before the close)" if summary.get("provisional") else "Daily summary"
    lines = [
        f"{kind} {summary['day']}: {summary['trades']} trades, P&L {summary['pnl']:+.2f} USD "
        f"(commission {summary['commission']:.2f}), win rate {'n/a' if rate is None else f'{rate:.0%}'}",
        "exits: " + ", ".join(f"{k} {v}" for k, v in summary["exit_reasons"].items()),
        "blocked entries: " + (", ".join(f"{k} {v}" for k, v in summary["blocked"].items()) or "none"),
    ]
    if summary.get("by_symbol"):
        lines.append("by symbol: " + ", ".join(f"{k} {v:+.2f}" for k, v in summary["by_symbol"].items()))
    if summary.get("dry_run"):
        lines.append("DRY RUN: no orders were sent")
    return "\n".join(lines)


def write_daily_summary(log_dir: str | Path, summary: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``summary-DAY.json`` and ``summary-DAY.txt`` atomically; return both paths."""
    base = Path(log_dir) / f"summary-{summary['day']}"
    json_path, txt_path = base.with_suffix(".json"), base.with_suffix(".txt")
    atomic_write_json(json_path, dict(summary))
    atomic_write_text(txt_path, format_summary(summary) + "\n")
    return json_path, txt_path
