"""Write the daily trade summary from the live state when the trader did not (it was down at the close).

    python deploy/daily_summary.py --day 2024-03-01 --config config/paper.toml --set live.state_dir=...

Reads the trader's SQLite state (closed trades of the day, blocked entries) and writes
``summary-DAY.json`` / ``.txt`` into ``live.log_dir``, like the trader does after the last bar. Does nothing
when the trader wrote the final summary; replaces a provisional one (the trader stopped before the close and
was not back for it). Never changes the trader's state and never posts the webhook (the trader does).
Exit codes: 0 written or already there, 2 bad config.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config.settings import CONFIG_DIR, ConfigError, load_config
from engines.live.reports import format_summary, summary_from_store, write_daily_summary
from engines.live.state import StateStore, state_path

logger = logging.getLogger("daily_summary")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--day", required=True, help="exchange date YYYY-MM-DD")
    ap.add_argument("--config", default=str(CONFIG_DIR / "paper.toml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--quiet", action="store_true", help="accepted for symmetry with run_live.py")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        logger.error("%s", exc)
        return 2
    target = Path(cfg.live.log_dir) / f"summary-{args.day}.json"
    if target.exists() and not json.loads(target.read_text(encoding="utf-8")).get("provisional", False):
        logger.info("summary for %s already written: %s", args.day, target)
        return 0
    path = state_path(cfg)
    if not path.exists():
        logger.info("no live state at %s: nothing traded, no summary", path)
        return 0
    store = StateStore(path)
    try:
        summary = summary_from_store(store, args.day, provisional=False,
                                     extra={"dry_run": cfg.live.dry_run, "written_by": "deploy/daily_summary.py"})
    finally:
        store.close()
    paths = write_daily_summary(cfg.live.log_dir, summary)
    for line in format_summary(summary).splitlines():
        logger.info("%s", line)
    logger.info("summary written to %s", paths[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
