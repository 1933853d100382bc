"""Backtest the ML strategy: load bars, train (or load) the model, run backtrader, write the reports.

    python run_backtest.py                          # SYNTHETIC demo universe, trains the demo model if needed
    python run_backtest.py --data ~/bars --bar-size 5min --symbols SPY QQQ
    python run_backtest.py --set strategy.p_up_entry_threshold=0.6 --retrain

The model is trained on the first ``model.train_fraction`` of the sessions and the backtest runs on the rest,
so the reported performance is out of sample. Exit codes: 0 ok, 2 bad input (config, data, model).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from analyzers.report import format_summary, open_run_dir, report_backtest
from config.settings import AppConfig, ConfigError, load_config
from engines.backtest import run_backtest
from feeds.bars import BarDataError
from feeds.universe import load_universe
from ml.lifecycle import obtain_backtest_model
from ml.model import ModelError
from ml.split import split_sessions

logger = logging.getLogger("run_backtest")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="TOML config (default: config/backtest.toml)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key, e.g. --set risk.max_concurrent_positions=2 (repeatable)")
    ap.add_argument("--data", nargs="+", default=None, metavar="DIR_OR_FILE",
                    help="bar files or directories (CSV, CSV.gz, Parquet; SYMBOL=path allowed) instead of "
                         "the synthetic universe")
    ap.add_argument("--symbols", nargs="+", default=None, help="restrict to these symbols")
    ap.add_argument("--bar-size", choices=("1min", "5min"), default=None)
    ap.add_argument("--model", default=None, help="model bundle directory (default: model.path)")
    ap.add_argument("--retrain", action="store_true", help="train a new model even if one exists")
    ap.add_argument("--no-tearsheet", action="store_true", help="skip the quantstats HTML tearsheet")
    ap.add_argument("--plot", action="store_true",
                    help="record the risk observers and save backtrader's chart as chart.png (slower)")
    ap.add_argument("--run-id", default=None, help="report folder name (default: a timestamp)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    return ap.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> AppConfig:
    """Load the config and apply command-line flags as overrides (so errors name the key)."""
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.source={args.data[0]!r}" if len(args.data) == 1 else f"data.source={args.data!r}")
    if args.symbols:
        overrides.append(f"data.symbols={[s.upper() for s in args.symbols]!r}")
    if args.bar_size:
        overrides.append(f"data.bar_size={args.bar_size!r}")
    if args.model:
        overrides.append(f"model.path={args.model!r}")
    if args.no_tearsheet:
        overrides.append("backtest.tearsheet=false")
    return load_config(args.config, overrides)


def run(cfg: AppConfig, args: argparse.Namespace) -> dict[str, Any]:
    """Train/load, backtest out of sample, write the reports; return the summary."""
    started = time.monotonic()
    run_dir = open_run_dir(cfg, args.run_id)
    universe = load_universe(cfg)
    if universe.synthetic:
        print(f"Data: {universe.label}")
    train_frames, test_frames = split_sessions(universe.frames, cfg.model.train_fraction)
    bundle = obtain_backtest_model(cfg, train_frames, universe.label, run_dir, retrain=args.retrain,
                                   explicit=args.model is not None, progress=not args.quiet)
    chart = run_dir / "chart.png" if args.plot else None
    result = run_backtest(cfg, test_frames, bundle, progress=not args.quiet, chart=chart)
    if chart is not None:
        print(f"Chart: {chart}")
    summary = report_backtest(run_dir, cfg, result, test_frames, data_label=universe.label,
                              synthetic=universe.synthetic, model_metadata=bundle.metadata, started=started)
    print(format_summary(summary))
    print(f"Reports: {run_dir}/")
    if "tearsheet" in summary:
        print(f"Tearsheet: {summary['tearsheet']}")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = resolve_config(args)
        run(cfg, args)
    except (ConfigError, BarDataError, ModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
