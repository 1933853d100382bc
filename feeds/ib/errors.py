"""IB error and notice codes by operational meaning, and the exceptions the rest of the code sees.

IB sends every error, warning and notice on one message (``errorEvent(reqId, code, text, contract)``).
The code alone does not always say what happened: 162 is a pacing violation, a missing market-data
permission, an empty answer, a cancelled query or a competing session depending on its text.
:func:`classify` is the one place that turns ``(code, text)`` into an :class:`ErrorKind`; the named sets below
are what it reads (nautilus_trader ``adapters/interactive_brokers/client/error.py`` keeps the same shape).

Exceptions follow what an operator must do, not where they come from: :class:`TemporaryIBError` is retried
with capped backoff and jitter, :class:`NeedsHumanError` stops and says why. A rejected order is an order
event (backtrader ``Rejected``), never an exception.
"""

from __future__ import annotations

import enum
import logging

logger = logging.getLogger(__name__)


class ErrorKind(enum.Enum):
    """What an IB error code means for the engine."""

    CONNECTIVITY_LOST = "connectivity_lost"  # pause entries; the session reconnects / waits for 1102
    CONNECTIVITY_RESTORED = "connectivity_restored"  # resume and re-sync (feeds backfill, broker reconciles)
    PACING = "pacing"  # historical-data pacing violation: back off, retry later
    ORDER_REJECTED = "order_rejected"  # an order event, not an exception
    NO_DATA = "no_data"  # a data request failed or returned nothing
    NO_PERMISSION = "no_permission"  # no market-data subscription for what was asked: a human must subscribe
    WARNING = "warning"  # log it, carry on
    INFO = "info"  # routine notices (farm connection OK, cancel confirmations)
    FATAL = "fatal"  # needs a human: stop and say why


#: Connection to IB's servers (1100, 2110) or to the API socket (1300) lost.
CONNECTIVITY_LOST_CODES: frozenset[int] = frozenset({1100, 1300, 2110})
#: Connectivity restored: 1101 (data lost: resubscribe), 1102 (data maintained).
CONNECTIVITY_RESTORED_CODES: frozenset[int] = frozenset({1101, 1102})
#: Pacing: 162 only when its text says "pacing"; 420 (real-time query pacing); 100 (message rate).
PACING_CODES: frozenset[int] = frozenset({100, 162, 420})
#: Order rejected or an order request refused (202 is a cancel confirmation and is INFO).
ORDER_REJECTION_CODES: frozenset[int] = frozenset(
    {103, 104, 105, 106, 107, 109, 110, 111, 113, 116, 117, 118, 119, 120, 121, 122, 123, 124, 125, 126,
     129, 131, 132, 133, 134, 135, 136, 137, 140, 141, 144, 146, 147, 148, 151, 152, 153, 154, 155, 156,
     157, 158, 159, 160, 161, 163, 164, 167, 168, 200, 201, 203, 321, 322, 325, 329, 361, 362, 363, 364,
     382, 383, 387, 388, 404, 434, 10147, 10148}
)
#: Historical-data requests that ended without data (162 other than pacing is decided by its text).
NO_DATA_CODES: frozenset[int] = frozenset({166, 366, 10167, 10197})
#: The account has no market-data subscription for the request: 354 not subscribed, 10089 / 10090 (part of) the
#: data needs another subscription, 10168 not subscribed and delayed data not enabled; and 162 whose text says
#: "No market data permissions" (see :func:`classify`). No retry fixes these; a human subscribes.
NO_PERMISSION_CODES: frozenset[int] = frozenset({354, 10089, 10090, 10168})
#: Data-farm notices: routine, sent after every connect and when a farm idles.
FARM_INFO_CODES: frozenset[int] = frozenset({2104, 2106, 2107, 2108, 2119, 2158})
#: Other routine notices.
INFO_CODES: frozenset[int] = FARM_INFO_CODES | frozenset({202})
#: Worth a log line, nothing to do: farm broken (2103/2105/2157), HMDS reconnecting (165), order warnings.
WARNING_CODES: frozenset[int] = frozenset({165, 399, 2100, 2101, 2102, 2103, 2105, 2109, 2137, 2150, 2157,
                                           2168, 2169, 2174, 10225})
#: Needs a human: clientId in use (326), cannot connect / not connected (502, 504), max tickers (101),
#: a competing TWS session (162 text, see :func:`classify`).
FATAL_CODES: frozenset[int] = frozenset({101, 326, 502, 503, 504, 507, 530})

_PACING_TEXT = "pacing violation"
_NO_PERMISSION_TEXTS = ("no market data permission", "not subscribed")
_COMPETING_TEXTS = ("different ip address", "competing session")


def classify(code: int, message: str = "") -> ErrorKind:
    """Return what IB error ``code`` (with its ``message``) means for the engine.

    Parameters
    ----------
    code
        IB error code as delivered on ``errorEvent``.
    message
        The error text; it decides the meaning of 162 (pacing, no market-data permission, no data, cancelled,
        competing session).

    Returns
    -------
    ErrorKind
        The operational meaning; unknown codes are ``WARNING`` (2100–2199 included, as ib_async does).

    Examples
    --------
    >>> classify(162, "Historical Market Data Service error message:Historical data request pacing violation")
    <ErrorKind.PACING: 'pacing'>
    >>> classify(162, "Historical Market Data Service error message:HMDS query returned no data: X@SMART")
    <ErrorKind.NO_DATA: 'no_data'>
    >>> classify(162, "Historical Market Data Service error message:No market data permissions for ISLAND STK")
    <ErrorKind.NO_PERMISSION: 'no_permission'>
    >>> classify(1100)
    <ErrorKind.CONNECTIVITY_LOST: 'connectivity_lost'>
    """
    text = message.lower()
    if code == 162:
        if _PACING_TEXT in text:
            return ErrorKind.PACING
        if any(t in text for t in _COMPETING_TEXTS):
            return ErrorKind.FATAL
        if any(t in text for t in _NO_PERMISSION_TEXTS):
            return ErrorKind.NO_PERMISSION
        return ErrorKind.NO_DATA
    for codes, kind in _TABLE:
        if code in codes:
            return kind
    return ErrorKind.WARNING


_TABLE: tuple[tuple[frozenset[int], ErrorKind], ...] = (
    (CONNECTIVITY_LOST_CODES, ErrorKind.CONNECTIVITY_LOST),
    (CONNECTIVITY_RESTORED_CODES, ErrorKind.CONNECTIVITY_RESTORED),
    (PACING_CODES, ErrorKind.PACING),
    (ORDER_REJECTION_CODES, ErrorKind.ORDER_REJECTED),
    (NO_DATA_CODES, ErrorKind.NO_DATA),
    (NO_PERMISSION_CODES, ErrorKind.NO_PERMISSION),
    (INFO_CODES, ErrorKind.INFO),
    (WARNING_CODES, ErrorKind.WARNING),
    (FATAL_CODES, ErrorKind.FATAL),
)


class IBError(Exception):
    """Base of the exceptions raised by ``feeds.ib``.

    Parameters
    ----------
    message
        What happened and, for :class:`NeedsHumanError`, what to do about it.
    code
        The IB error code behind it, when there is one.
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class TemporaryIBError(IBError):
    """A failure that may go away by itself: retry with capped backoff and jitter (and only these)."""


class NeedsHumanError(IBError):
    """A failure no retry will fix (clientId in use, gateway not running, unknown account): stop and say why."""
