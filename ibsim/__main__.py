"""``python -m ibsim``: serve a simulated IB Gateway until stopped (Ctrl-C, SIGTERM or ``quit``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from ibsim.clock import SimClock
from ibsim.codec import MAX_SERVER_VERSION, MIN_SERVER_VERSION
from ibsim.control import ControlChannel, readStdin, serveControlPort
from ibsim.data import defaultStart, loadUniverse, parseStart
from ibsim.market import Market
from ibsim.pacing import PacingRules
from ibsim.server import Gateway, SimConfig

logger = logging.getLogger("ibsim")


def buildParser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    p = argparse.ArgumentParser(prog="python -m ibsim", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="listening address (keep it loopback)")
    p.add_argument("--port", type=int, default=4002, help="API port (IB Gateway paper default 4002)")
    p.add_argument("--data", nargs="*", default=None,
                   help="bar files or directories (feeds.bars schema); the SYNTHETIC demo universe if absent")
    p.add_argument("--bar-size", default="1min", choices=["1min", "5min"], help="bar size of the files")
    p.add_argument("--start", default=None,
                   help="simulated start, 'YYYY-MM-DD HH:MM' New York time (default: 09:30, last session)")
    p.add_argument("--speed", type=float, default=1.0,
                   help="simulated seconds per wall second; 0 = stepped only by the 'advance' command")
    p.add_argument("--account", default="DU1234567", help="paper-style account id")
    p.add_argument("--cash", type=float, default=1_000_000.0, help="starting cash (USD)")
    p.add_argument("--slippage", type=float, default=0.0, help="dollars per share on market/stop fills")
    p.add_argument("--partial-fills", type=float, default=None, help="max shares per execution")
    p.add_argument("--no-pacing", action="store_true", help="turn off historical-data pacing (error 162)")
    p.add_argument("--server-version", type=int, default=MAX_SERVER_VERSION,
                   help=f"highest server version to announce ({MIN_SERVER_VERSION}..{MAX_SERVER_VERSION}; "
                        "never above the client's maximum)")
    p.add_argument("--base-currency", default="USD", help="the account's base currency, e.g. GBP")
    p.add_argument("--usd-to-base", type=float, default=1.0,
                   help="value of one USD in the base currency (IB's ExchangeRate for USD), e.g. 0.79 for GBP")
    p.add_argument("--no-day-expiry", action="store_true", help="keep DAY orders working past the close")
    p.add_argument("--control-port", type=int, default=None,
                   help="also accept control commands on this loopback TCP port (stdin always works)")
    p.add_argument("--log-level", default="INFO", help="logging level")
    return p


async def serve(args: argparse.Namespace) -> None:
    """Run the gateway (and its control channels) until asked to stop."""
    bars = loadUniverse(args.data, args.bar_size)
    start = parseStart(args.start) if args.start else defaultStart(bars)
    config = SimConfig(host=args.host, port=args.port, account=args.account, initialCash=args.cash,
                       pacing=PacingRules(enabled=not args.no_pacing), slippage=args.slippage,
                       maxFillQty=args.partial_fills, serverVersion=args.server_version,
                       baseCurrency=args.base_currency.upper(), usdToBase=args.usd_to_base,
                       expireDayOrders=not args.no_day_expiry)
    gateway = Gateway(Market(bars), SimClock(start, args.speed or None), config)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stopped.set)
    await gateway.start()
    channel = ControlChannel(gateway, stopped.set)
    control = None
    if args.control_port is not None:
        control = await serveControlPort(channel, args.host, args.control_port)
        logger.info("control commands on %s:%d (one per line; 'help')", args.host, args.control_port)
    readStdin(channel, loop)
    logger.info("serving %s from %s at %gx; type 'help' for fault commands",
                ", ".join(gateway.market.symbols), start.isoformat(), args.speed)
    await stopped.wait()
    if control is not None:
        control.close()
    await gateway.stop()
    logger.info("ibsim stopped")


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, configure logging once, and serve."""
    parser = buildParser()
    args = parser.parse_args(argv)
    if not MIN_SERVER_VERSION <= args.server_version <= MAX_SERVER_VERSION:
        parser.error(f"--server-version must be within {MIN_SERVER_VERSION}..{MAX_SERVER_VERSION}")
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(args))
    except OSError as exc:
        logger.error("cannot serve: %s", exc)  # a port in use needs no traceback
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
