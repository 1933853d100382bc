"""Backtest reports: the run folder (``reports/<run-id>/``) with the resolved config, trades.csv, daily.csv,
model metadata, summary.json, and a quantstats HTML tearsheet on **daily** returns against a benchmark given
as a pandas Series (no network). They read the :class:`engines.backtest.BacktestResult` of a finished run.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from config.settings import AppConfig, dump_config
from core.calendar import exchange_day, local_dates
from core.files import atomic_write, atomic_write_json
from core.records import BACKTEST_BLOCK_REASONS as BLOCK_REASONS
from core.records import ExitReason
from engines.backtest import BacktestResult
from feeds.bars import BarDataError

logger = logging.getLogger(__name__)


def open_run_dir(cfg: AppConfig, run_id: str | None = None) -> Path:
    """Create the run's report folder (``backtest.reports_dir/<run_id>``, default run id: the UTC time) and
    save the resolved config in it as ``config.toml``."""
    run_dir = Path(cfg.backtest.reports_dir) / (run_id or datetime.now(UTC).strftime("%Y%m%d-%H%M%S"))
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, run_dir / "config.toml")
    return run_dir


def daily_close(frame: pd.DataFrame) -> pd.Series:
    """Return the last close of each exchange session, indexed by session date."""
    closes = frame["close"].groupby(local_dates(pd.DatetimeIndex(frame.index))).last()
    closes.index = pd.DatetimeIndex(closes.index, name="date")
    return closes


def daily_returns(equity: pd.Series, starting_cash: float) -> pd.Series:
    """Turn end-of-day equity into daily returns (the first day against the starting cash)."""
    prev = equity.shift(1).fillna(starting_cash)
    return (equity / prev - 1.0).rename("strategy")


def benchmark_returns(close: pd.Series, index: pd.DatetimeIndex) -> pd.Series:
    """Daily buy-and-hold returns of a benchmark close series, aligned to the strategy's days."""
    return close.pct_change().reindex(index).fillna(0.0).rename("benchmark")


def daily_table(result: BacktestResult, starting_cash: float) -> pd.DataFrame:
    """Build the per-day summary: trades, wins, P&L, blocked entries by reason, max drawdown, equity."""
    days = result.daily_equity.index
    table = pd.DataFrame(index=days)
    trades = result.trades
    exit_day = local_dates(pd.DatetimeIndex(trades["exit_time"]))
    grouped = trades.assign(day=exit_day, win=trades["pnl"] > 0).groupby("day")
    table["trades"] = grouped.size().reindex(days).fillna(0).astype(int)
    table["wins"] = grouped["win"].sum().reindex(days).fillna(0).astype(int)
    table["pnl"] = result.daily_equity.diff().fillna(result.daily_equity.iloc[0] - starting_cash)
    table["commission"] = grouped["commission"].sum().reindex(days).fillna(0.0)
    blocked = result.blocked.pivot_table(index="date", columns="reason", values="count", aggfunc="sum")
    for reason in BLOCK_REASONS:
        col = blocked[reason] if reason in blocked.columns else pd.Series(dtype=float)
        table[f"blocked_{reason.lower()}"] = col.reindex(days).fillna(0).astype(int)
    table["max_drawdown"] = result.daily_drawdown
    table["equity"] = result.daily_equity
    table.index.name = "date"
    return table


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else round(float(x), 6)


def performance_summary(returns: pd.Series, bench: pd.Series) -> dict[str, float | None]:
    """Headline metrics from quantstats on daily returns."""
    import quantstats as qs  # noqa: PLC0415 - slow import, only needed for reports

    if len(returns) < 2:
        return {"total_return": _num(float((1 + returns).prod() - 1)) if len(returns) else None}
    return {
        "total_return": _num(qs.stats.comp(returns)),
        "cagr": _num(qs.stats.cagr(returns)),
        "sharpe": _num(qs.stats.sharpe(returns)),
        "sortino": _num(qs.stats.sortino(returns)),
        "max_drawdown": _num(qs.stats.max_drawdown(returns)),
        "volatility": _num(qs.stats.volatility(returns)),
        "benchmark_total_return": _num(qs.stats.comp(bench)),
    }


def trade_summary(trades: pd.DataFrame) -> dict[str, Any]:
    """Counts, win rate, P&L and exit reasons of the closed trades."""
    n = len(trades)
    reasons = trades["exit_reason"].value_counts()
    return {
        "trades": n,
        "win_rate": _num(float((trades["pnl"] > 0).mean())) if n else None,
        "net_pnl": _num(float(trades["pnl"].sum())),
        "avg_pnl_per_trade": _num(float(trades["pnl"].mean())) if n else None,
        "commission": _num(float(trades["commission"].sum())),
        "avg_bars_held": _num(float(trades["bars_held"].mean())) if n else None,
        "exit_reasons": {r: int(reasons.get(r, 0)) for r in ExitReason},
    }


def write_tearsheet(path: Path, returns: pd.Series, bench: pd.Series, title: str) -> None:
    """Write the quantstats HTML tearsheet (headless, no downloads: the benchmark is a Series)."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    import warnings  # noqa: PLC0415

    import quantstats as qs  # noqa: PLC0415

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        atomic_write(path, lambda p: qs.reports.html(returns, benchmark=bench, output=str(p), title=title,
                                                     download_filename=path.name))


def write_reports(
    run_dir: Path,
    result: BacktestResult,
    *,
    starting_cash: float,
    benchmark_close: pd.Series,
    benchmark_name: str,
    data_label: str,
    synthetic: bool,
    model_metadata: dict[str, Any],
    extra: dict[str, Any],
    tearsheet: bool = True,
) -> dict[str, Any]:
    """Write the trade, daily, model and tearsheet files of a run; return the summary (the caller adds
    run-level facts and writes it with :func:`write_summary`)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    trades = result.trades
    atomic_write(run_dir / "trades.csv", lambda p: trades.to_csv(p, index=False, float_format="%.6f"))
    daily = daily_table(result, starting_cash)
    atomic_write(run_dir / "daily.csv", lambda p: daily.to_csv(p, float_format="%.6f"))
    atomic_write_json(run_dir / "model_metadata.json", model_metadata)
    returns = daily_returns(result.daily_equity, starting_cash)
    bench = benchmark_returns(benchmark_close, returns.index)
    blocked = {r.lower(): int(daily[f"blocked_{r.lower()}"].sum()) for r in BLOCK_REASONS}
    summary = {
        "data": data_label,
        "synthetic": synthetic,
        **extra,
        "days": len(daily),
        "bars": result.bars,
        "starting_cash": starting_cash,
        "final_equity": _num(float(result.daily_equity.iloc[-1])) if len(daily) else starting_cash,
        "benchmark": f"buy-and-hold {benchmark_name}",
        **performance_summary(returns, bench),
        **trade_summary(trades),
        "blocked_entries": blocked,
        "worst_intraday_drawdown": _num(float(daily["max_drawdown"].min())) if len(daily) else None,
    }
    if tearsheet and len(returns) >= 2:
        tag = "SYNTHETIC DATA - " if synthetic else ""
        write_tearsheet(run_dir / "tearsheet.html", returns, bench,
                        f"{tag}ML intraday strategy vs {benchmark_name} buy-and-hold")
        summary["tearsheet"] = str(run_dir / "tearsheet.html")
    return summary


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    """Write ``summary.json`` (atomically)."""
    atomic_write_json(run_dir / "summary.json", summary)


def benchmark_series(cfg: AppConfig, frames: Mapping[str, pd.DataFrame]) -> tuple[str, pd.Series]:
    """Return (name, daily close) of the benchmark: the configured symbol or the first symbol.

    Raises
    ------
    BarDataError
        When ``backtest.benchmark`` names a symbol that is not among ``frames``.
    """
    name = cfg.backtest.benchmark or next(iter(frames))
    if name not in frames:
        raise BarDataError(f"backtest.benchmark = {name!r} is not among the loaded symbols {list(frames)}")
    return name, daily_close(frames[name])


def report_backtest(run_dir: Path, cfg: AppConfig, result: BacktestResult, frames: Mapping[str, pd.DataFrame], *,
                    data_label: str, synthetic: bool, model_metadata: dict[str, Any],
                    started: float) -> dict[str, Any]:
    """Write every report of an out-of-sample backtest of ``frames`` (``summary.json`` last); return the summary.

    ``started`` is the run's :func:`time.monotonic` start, for ``runtime_seconds``.
    """
    bench_name, bench_close = benchmark_series(cfg, frames)
    first = min(f.index[0] for f in frames.values())
    last = max(f.index[-1] for f in frames.values())
    extra = {"run_id": run_dir.name, "symbols": list(frames), "bar_size": cfg.data.bar_size,
             "first_day": exchange_day(first), "last_day": exchange_day(last),
             "model": str(cfg.model.path), "model_cv_auc": model_metadata.get("cv", {}).get("mean_auc"),
             "out_of_sample": True}
    summary = write_reports(run_dir, result, starting_cash=cfg.backtest.starting_cash, benchmark_close=bench_close,
                            benchmark_name=bench_name, data_label=data_label, synthetic=synthetic,
                            model_metadata=model_metadata, extra=extra, tearsheet=cfg.backtest.tearsheet)
    summary["runtime_seconds"] = round(time.monotonic() - started, 1)
    write_summary(run_dir, summary)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """Render the compact end-of-run table."""
    def pct(key: str) -> str:
        v = summary.get(key)
        return "n/a" if v is None else f"{100 * v:+.2f}%"

    rows = [
        ("Data", summary["data"]),
        ("Period", f"{summary.get('first_day')} .. {summary.get('last_day')} ({summary['days']} days, "
                   f"{summary['bars']} bars)"),
        ("Symbols", ", ".join(summary.get("symbols", []))),
        ("Total return", f"{pct('total_return')}  (benchmark {pct('benchmark_total_return')})"),
        ("Sharpe / max DD", f"{summary.get('sharpe')} / {pct('max_drawdown')}"),
        ("Trades / win rate", f"{summary['trades']} / {pct('win_rate')}"),
        ("Exit reasons", ", ".join(f"{k} {v}" for k, v in summary["exit_reasons"].items())),
        ("Blocked entries", ", ".join(f"{k} {v}" for k, v in summary["blocked_entries"].items())),
        ("Commission", f"${summary['commission']:,.2f}"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    bar = "-" * max(len(line) for line in lines)
    return "\n".join([bar, *lines, bar])

