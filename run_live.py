"""Trade the ML strategy live on an IB paper account (or on the simulator) with the backtest's Strategy.

    python run_live.py                         # IB Gateway paper port on loopback, config/paper.toml
    python run_live.py --sim                   # offline rehearsal: ibsim on the demo universe, accelerated
    python run_live.py --sim --data ~/bars --start '2024-03-01 09:35'
    python run_live.py --dry-run               # log every decision, send no orders
    python run_live.py --flatten               # cancel all our orders, sell all our positions, exit
    touch state/KILL  (or kill -USR1 <pid>)    # kill switch: no new entries

Exit codes: 0 ok, 2 bad input (config, data, model), 3 refused for safety or needs a human (IB unreachable,
clientId in use, non-paper account), 130 interrupted before the run started.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from config.settings import CONFIG_DIR, AppConfig, ConfigError, load_config
from core.calendar import parse_exchange_time, to_exchange
from feeds.bars import BarDataError
from ml.model import ModelError

logger = logging.getLogger("run_live")

PAPER_CONFIG = CONFIG_DIR / "paper.toml"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(PAPER_CONFIG), help="TOML config (default: config/paper.toml)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key, e.g. --set live.client_id=18 (repeatable)")
    ap.add_argument("--sim", action="store_true", help="trade against the simulator (ibsim), started in-process")
    ap.add_argument("--data", nargs="+", default=None, help="--sim: replay these bar files instead of the demo")
    ap.add_argument("--start", default=None, help="--sim: simulated start 'YYYY-MM-DD HH:MM' (New York)")
    ap.add_argument("--sim-control", default=None, metavar="HOST:PORT",
                    help="use the clock of an external `python -m ibsim --control-port` (rehearsals, tests)")
    ap.add_argument("--dry-run", action="store_true", help="log every decision, send no orders")
    ap.add_argument("--flatten", action="store_true", help="cancel all our orders, sell our positions, exit")
    ap.add_argument("--max-bars", type=int, default=None, help="stop after this many live bars")
    ap.add_argument("--until", default=None, help="stop after the bar starting at 'YYYY-MM-DD HH:MM' (New York)")
    ap.add_argument("--quiet", action="store_true", help="warnings only on the console")
    return ap.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> AppConfig:
    """Load the config with the command-line flags as overrides (errors name the key)."""
    overrides = list(args.overrides)
    if args.dry_run:
        overrides.append("live.dry_run=true")
    if args.data:
        overrides.append(f"data.source={args.data[0]!r}" if len(args.data) == 1 else f"data.source={args.data!r}")
    return load_config(args.config, overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = parse_args(argv)
    try:
        cfg = resolve_config(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from engines.live.node import LiveOptions, configure_logging, run_node  # noqa: PLC0415 - imports ib_async
    from feeds.ib.errors import NeedsHumanError, TemporaryIBError  # noqa: PLC0415

    try:
        until = to_exchange(parse_exchange_time(args.until)) if args.until else None  # New York time, as typed
    except ValueError:
        print(f"error: --until {args.until!r}: expected 'YYYY-MM-DD HH:MM' (New York time)", file=sys.stderr)
        return 2
    configure_logging(cfg.live.log_dir, args.quiet)
    options = LiveOptions(sim=args.sim, sim_start=args.start, sim_control=args.sim_control, flatten=args.flatten,
                          max_bars=args.max_bars, until=until)
    try:
        return run_node(cfg, options)
    except (ConfigError, BarDataError, ModelError) as exc:
        logger.error("%s", exc)
        return 2
    except (NeedsHumanError, TemporaryIBError) as exc:
        logger.error("%s", exc)
        return 3
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
