"""A wire-level IB Gateway simulator that the unmodified ib_async / ib_insync clients trade against.

Start it in-process with :class:`IBSim` (tests) or as ``python -m ibsim`` (rehearsal); see README.md.
"""

from ibsim.clock import SimClock
from ibsim.market import Market
from ibsim.pacing import PacingRules
from ibsim.server import Gateway, SimConfig
from ibsim.sim import IBSim

__all__ = ["Gateway", "IBSim", "Market", "PacingRules", "SimClock", "SimConfig"]
