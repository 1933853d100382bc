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
import logging.handlers
import signal
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from config.settings import CONFIG_DIR, AppConfig, ConfigError, load_config
from feeds.bars import BarDataError
from ml.model import ModelBundle, ModelError

logger = logging.getLogger("run_live")

PAPER_CONFIG = CONFIG_DIR / "paper.toml"
NY = ZoneInfo("America/New_York")


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


def setup_logging(log_dir: str, quiet: bool) -> None:
    """Console plus a daily rotating file in ``log_dir`` (configured once, here)."""
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING if quiet else logging.INFO)
    console.setFormatter(fmt)
    rotating = logging.handlers.TimedRotatingFileHandler(Path(log_dir) / "live.log", when="midnight",
                                                         backupCount=30, encoding="utf-8")
    rotating.setLevel(logging.INFO)
    rotating.setFormatter(fmt)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(console)
    root.addHandler(rotating)
    for noisy in ("ib_async", "ibsim"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # ib_async logs every cancel confirmation (202) as an ERROR; feeds.ib logs IB errors classified by meaning
    logging.getLogger("ib_async.wrapper").setLevel(logging.CRITICAL)


def obtain_model(cfg: AppConfig, train_if_missing: bool) -> ModelBundle:
    """Load the configured model (checked against the config); train the demo model first under --sim."""
    from ml.train import label_params  # noqa: PLC0415 - training code only when needed

    expect = {"bar_size": cfg.data.bar_size, "label_params": label_params(cfg).to_dict()}
    path = Path(cfg.model.path)
    if not (path / "metadata.json").exists() and train_if_missing:
        from feeds.universe import load_universe  # noqa: PLC0415
        from ml.train import split_sessions, train_model  # noqa: PLC0415

        universe = load_universe(cfg)
        train_frames, _ = split_sessions(universe.frames, cfg.model.train_fraction)
        logger.info("no model at %s: training the demo model on %s", path, universe.label)
        train_model(cfg, train_frames, universe.label, progress=False)
    return ModelBundle.load(path, expect=expect)


def start_sim(cfg: AppConfig, args: argparse.Namespace) -> tuple[Any, AppConfig]:
    """Start ibsim in-process on a free port at ``live.sim_speed``; return it and the config pointing at it."""
    from feeds.universe import load_universe  # noqa: PLC0415
    from ibsim import IBSim, SimConfig  # noqa: PLC0415
    from ibsim.data import defaultStart, parseStart  # noqa: PLC0415
    from ibsim.pacing import PacingRules  # noqa: PLC0415

    frames = load_universe(cfg).frames
    start = parseStart(args.start) if args.start else defaultStart(frames)
    # The simulator paces like IB does for the trader's bar size (live.pacing_small_bars_only).
    pacing = PacingRules(smallBarsOnly=cfg.live.pacing_small_bars_only)
    sim = IBSim(frames, start=start, config=SimConfig(port=0, pacing=pacing), speed=cfg.live.sim_speed).start()
    logger.info("ibsim on port %d: %s from %s at %gx", sim.port, ", ".join(frames), start.isoformat(),
                cfg.live.sim_speed)
    live = cfg.live.model_copy(update={"host": sim.host, "port": sim.port})
    return sim, cfg.model_copy(update={"live": live})


def run(cfg: AppConfig, args: argparse.Namespace) -> int:
    """Connect, check safety, restore state, trade until stopped; return the exit code."""
    from engines.live import safety  # noqa: PLC0415
    from engines.live.node import build_live  # noqa: PLC0415 - imports ib_async
    from engines.live.rehearsal import ControlPortClock  # noqa: PLC0415
    from engines.live.state import StateStore, state_path  # noqa: PLC0415
    from feeds.ib.session import IBSession  # noqa: PLC0415

    sim = None
    if args.sim:
        sim, cfg = start_sim(cfg, args)
    clock = None
    if sim is not None:
        clock = sim.now
    elif args.sim_control:
        host, port = args.sim_control.rsplit(":", 1)
        clock = ControlPortClock(host, int(port))
    safety.check_endpoint(cfg.live.port, cfg.live.allow_live)
    session = IBSession(cfg.live, clock=clock)
    state = StateStore(state_path(cfg))
    try:
        session.connect(attempts=3)
        safety.check_account(session.account, cfg.live.allow_live)
        if args.flatten:
            sold = safety.flatten_all(session, state, cfg.live.strategy_id, session.clock)
            print(f"flattened: {sold or 'nothing of ours was open'}")
            return 0
        session.qualify(cfg.data.symbols)  # a symbol IB does not know is named before a model is loaded
        model = obtain_model(cfg, train_if_missing=args.sim)
        until = datetime.strptime(args.until, "%Y-%m-%d %H:%M").replace(tzinfo=NY) if args.until else None
        kill = safety.KillSwitch(cfg.live.kill_switch_file, install_signal=True)
        live = build_live(cfg, session, state, model, kill_switch=kill, clock=clock, max_bars=args.max_bars,
                             until=until)

        def stop(signum: int, frame: Any) -> None:
            logger.warning("signal %d: stopping after the current step (state is persisted)", signum)
            live.cerebro.runstop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        mode = "DRY RUN (no orders)" if cfg.live.dry_run else "paper trading"
        logger.info("%s %s on %s:%d account %s", mode, ", ".join(cfg.data.symbols), cfg.live.host, cfg.live.port,
                    session.account)
        live.cerebro.run()
        live.hooks.write_summary()
    finally:
        session.disconnect()
        state.close()
        if sim is not None:
            sim.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = parse_args(argv)
    try:
        cfg = resolve_config(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    setup_logging(cfg.live.log_dir, args.quiet)
    from feeds.ib.errors import NeedsHumanError, TemporaryIBError  # noqa: PLC0415

    try:
        return run(cfg, args)
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
