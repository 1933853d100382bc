"""TWS API wire codec: length-prefixed frames of NUL-terminated text fields.

Every message in both directions is a 4-byte big-endian length followed by that many bytes of UTF-8 text
fields, each terminated by ``\\0``. The one exception is the client's opening magic ``API\\0``.
"""

from __future__ import annotations

import logging
import math
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)

API_MAGIC = b"API\0"
MIN_SERVER_VERSION = 157  # the oldest server version whose message layouts ibsim implements
MAX_SERVER_VERSION = 178  # the newest (ib_async 2.1's maximum; IB Gateway 10.30 announces it)
UNSET_INTEGER = 2**31 - 1
UNSET_DOUBLE = 1.7976931348623157e308
MAX_FRAME = 0xFFFFFF

Field = str | int | float | bool | None

_VERSION_RE = re.compile(r"^v(\d+)(?:\.\.(\d+))?(?:\s+(.*))?$")


class CodecError(ValueError):
    """Raise when bytes on the wire do not follow the TWS framing."""


def formatField(value: Field) -> str:  # noqa: PLR0911  (one branch per wire type reads best)
    """Format one field the way TWS and the client libraries write it.

    Parameters
    ----------
    value
        ``None`` and the IB unset sentinels become ``''``; bools become ``'1'``/``'0'``; integral
        ints stay integral; floats use the shortest round-trip text (``inf`` becomes ``'Infinite'``).

    Returns
    -------
    str
        The field text, without its terminator.
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return "" if value == UNSET_INTEGER else str(value)
    if isinstance(value, float):
        if value == UNSET_DOUBLE:
            return ""
        if math.isinf(value):
            return "Infinite"
        return repr(value)
    return str(value)


def decimalText(value: float) -> str:
    """Format a quantity as IB writes its Decimal sizes (server version >= 163): ``100``, ``0.5``.

    Parameters
    ----------
    value
        A share quantity or volume.

    Returns
    -------
    str
        Integral values without a fraction (``'100'``, not ``'100.0'``), others in the shortest round-trip
        form.
    """
    if value == UNSET_DOUBLE:
        return ""
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def encodeFields(fields: Iterable[Field]) -> bytes:
    """Encode fields as one framed message (length prefix + NUL-terminated fields).

    Parameters
    ----------
    fields
        Field values, formatted with :func:`formatField`.

    Returns
    -------
    bytes
        The frame, ready to write to the socket.
    """
    payload = "".join(formatField(f) + "\0" for f in fields).encode()
    return struct.pack(">I", len(payload)) + payload


def decodePayload(payload: bytes) -> list[str]:
    """Split one frame's payload into its text fields (the trailing terminator dropped).

    Parameters
    ----------
    payload
        The bytes after the 4-byte length prefix.

    Returns
    -------
    list of str
        The fields, decoded as the clients do (UTF-8 with backslash escapes for bad bytes).
    """
    fields = payload.decode(errors="backslashreplace").split("\0")
    if fields and fields[-1] == "":
        fields.pop()
    return fields


def splitFrames(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Cut a byte buffer into complete frame payloads and the incomplete rest.

    Parameters
    ----------
    buffer
        Bytes received so far (without the ``API\\0`` magic).

    Returns
    -------
    tuple of (list of bytes, bytes)
        The complete payloads in order, and the bytes of a trailing partial frame.

    Raises
    ------
    CodecError
        If a length prefix exceeds TWS's 16 MB limit.
    """
    payloads: list[bytes] = []
    pos = 0
    while len(buffer) - pos >= 4:
        (size,) = struct.unpack_from(">I", buffer, pos)
        if size > MAX_FRAME:
            raise CodecError(f"frame of {size} bytes exceeds the 16 MB limit")
        if len(buffer) - pos - 4 < size:
            break
        payloads.append(buffer[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return payloads, buffer[pos:]


@dataclass(frozen=True)
class ClientHello:
    """The client's version range from the handshake (``v157..178 +PACEAPI``)."""

    minVersion: int
    maxVersion: int
    options: str = ""


def parseHello(payload: bytes) -> ClientHello:
    """Parse the handshake payload that follows ``API\\0``.

    Parameters
    ----------
    payload
        The framed text, e.g. ``b"v157..178"`` or ``b"v157..176 +PACEAPI"``.

    Returns
    -------
    ClientHello
        The client's minimum and maximum version and any connect options.

    Raises
    ------
    CodecError
        If the text is not a version range.
    """
    text = payload.decode(errors="replace").strip("\0").strip()
    match = _VERSION_RE.match(text)
    if match is None:
        raise CodecError(f"bad handshake version string {text!r}")
    low = int(match.group(1))
    high = int(match.group(2) or low)
    return ClientHello(minVersion=low, maxVersion=high, options=(match.group(3) or "").strip())


@dataclass(frozen=True)
class Negotiation:
    """The outcome of the version handshake.

    Attributes
    ----------
    version
        The server version to announce in the handshake reply.
    refusal
        Empty when the client can be served at ``version``; otherwise the reason it cannot, in which case
        the server announces ``version`` only so that the client can decode the refusal (an error message)
        before the socket closes.
    code
        IB's error code for the refusal (503: the gateway is too old for the client; 506: the client's
        versions are all older than the gateway serves), 0 when served.
    """

    version: int
    refusal: str = ""
    code: int = 0

    @property
    def served(self) -> bool:
        """Return True when the client can be served."""
        return not self.refusal


def negotiateVersion(hello: ClientHello, serverMax: int = MAX_SERVER_VERSION,
                     serverMin: int = MIN_SERVER_VERSION) -> Negotiation:
    """Choose the server version to announce: the highest both sides speak, never above the client's maximum.

    Parameters
    ----------
    hello
        The client's range.
    serverMax
        The highest version this server may announce.
    serverMin
        The lowest version whose message layouts this server implements.

    Returns
    -------
    Negotiation
        ``min(hello.maxVersion, serverMax)`` when that lies in both ranges. Otherwise a refusal: a client
        whose minimum is above ``serverMax`` is told that the gateway must be upgraded (503, at
        ``serverMax``); a client whose maximum is below ``serverMin`` is told its version is unsupported
        (506, at the client's maximum, so that it decodes the message).
    """
    served = f"ibsim speaks server versions {serverMin}..{serverMax}"
    offered = f"v{hello.minVersion}..{hello.maxVersion}"
    if hello.minVersion > serverMax:
        return Negotiation(serverMax, f"The TWS is out of date and must be upgraded. ({served}; the client "
                                      f"offers {offered})", 503)
    if hello.maxVersion < serverMin:
        return Negotiation(hello.maxVersion, f"Unsupported version: {served}; the client offers {offered}", 506)
    return Negotiation(min(hello.maxVersion, serverMax))


def fieldsAt(fields: Sequence[str], index: int, default: str = "") -> str:
    """Return ``fields[index]`` or ``default`` when the message is shorter."""
    return fields[index] if 0 <= index < len(fields) else default
