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


def negotiateVersion(hello: ClientHello, serverMax: int, serverMin: int = 157) -> int | None:
    """Choose the server version to announce: never above the client's maximum.

    Parameters
    ----------
    hello
        The client's range.
    serverMax
        The highest version this server can speak.
    serverMin
        The lowest version whose message layouts this server implements.

    Returns
    -------
    int or None
        ``min(hello.maxVersion, serverMax)``, or None (refuse) when that is below the client's minimum
        or below ``serverMin``.
    """
    version = min(hello.maxVersion, serverMax)
    if version < hello.minVersion or version < serverMin:
        return None
    return version


def fieldsAt(fields: Sequence[str], index: int, default: str = "") -> str:
    """Return ``fields[index]`` or ``default`` when the message is shorter."""
    return fields[index] if 0 <= index < len(fields) else default
