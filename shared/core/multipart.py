"""multipart/related (RFC 2046 5.1, RFC 2387) without I/O: a reader fed chunks, and a writer.

`MultipartReader` turns a request body, fed in chunks of any size, into `PartStart`, `PartData`
and `PartEnd` events. It holds back at most one delimiter's worth of bytes between feeds, so a
part of any size streams through in bounded memory, and every byte is scanned a bounded number
of times. It follows RFC 2046 and tolerates bare LF line endings, which hand-built bodies use.

`MultipartWriter` produces the delimiters and part headers of a response; the caller streams
each part's content between them.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from shared.core.errors import BadRequest
from shared.core.media import MediaType

__all__ = [
    "Event",
    "MultipartReader",
    "MultipartWriter",
    "PartData",
    "PartEnd",
    "PartStart",
    "boundary_of",
    "multipart_content_type",
    "new_boundary",
    "part_header",
]

logger = logging.getLogger(__name__)

MAX_BOUNDARY_LENGTH = 70  # RFC 2046 5.1.1
MAX_PREAMBLE_BYTES = 65536
_MAX_PADDING = 64
_CR, _LF, _SP, _HT, _DASH = 0x0D, 0x0A, 0x20, 0x09, 0x2D
_BCHARS = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]*[0-9A-Za-z'()+_,\-./:=?]")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


@dataclass(frozen=True, slots=True)
class PartStart:
    """A part begins; `headers` are (lower-cased name, value) pairs in the order received."""

    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        for key, value in self.headers:
            if key == wanted:
                return value
        return None


@dataclass(frozen=True, slots=True)
class PartData:
    """Some bytes of the current part's content (a part may arrive in many of these)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class PartEnd:
    """The current part is complete."""


Event = PartStart | PartData | PartEnd


def boundary_of(content_type: MediaType) -> bytes:
    """The boundary parameter of a multipart Content-Type, as bytes; BadRequest if unusable."""
    boundary = content_type.param("boundary")
    if not boundary:
        raise BadRequest("The multipart Content-Type has no boundary parameter")
    if len(boundary) > MAX_BOUNDARY_LENGTH:
        raise BadRequest(f"The multipart boundary is longer than {MAX_BOUNDARY_LENGTH} characters")
    if not boundary.isascii() or not boundary.isprintable():
        raise BadRequest("The multipart boundary must be printable ASCII")
    return boundary.encode("ascii")


_PREAMBLE, _HEADERS, _DATA, _EPILOGUE, _CLOSED = range(5)
_MORE, _NOT_DELIMITER, _NEXT_PART, _LAST_PART = range(4)


class MultipartReader:
    """A sans-I/O multipart reader: `feed` chunks, then `close`; both return events."""

    def __init__(self, boundary: bytes, *, max_header_bytes: int = 16384) -> None:
        if not boundary or len(boundary) > MAX_BOUNDARY_LENGTH:
            raise ValueError("boundary must be 1 to 70 bytes")
        # A delimiter starts a line; its CR (if any) is trimmed from the data before it.
        self._needle = b"\n--" + boundary
        self._max_header_bytes = max_header_bytes
        self._state = _PREAMBLE
        # The body starts at the beginning of a line: a virtual LF lets the first delimiter match.
        self._buffer = bytearray(b"\n")
        self._virtual = 1  # leading bytes of the buffer that are not content
        self._seen = 0  # bytes of preamble or of the current header block consumed so far
        self._scanned = 0  # bytes of the current header line already searched for its LF
        self._headers: list[tuple[str, str]] = []
        self._parts = 0

    def feed(self, data: bytes) -> list[Event]:
        """Consume the next chunk of the body and return the events it completes."""
        if self._state == _CLOSED:
            raise ValueError("feed() after close()")
        if self._state == _EPILOGUE:
            return []
        self._buffer += data
        events: list[Event] = []
        while True:
            if self._state == _PREAMBLE:
                progressed = self._read_preamble(events)
            elif self._state == _HEADERS:
                progressed = self._read_headers(events)
            elif self._state == _DATA:
                progressed = self._read_data(events)
            else:
                self._buffer.clear()
                return events
            if not progressed:
                return events

    def close(self) -> list[Event]:
        """The body has ended: BadRequest unless the closing delimiter was seen."""
        state, self._state = self._state, _CLOSED
        self._buffer.clear()
        if state == _EPILOGUE:
            logger.debug("multipart body read: %s parts", self._parts)
            return []
        if state == _PREAMBLE:
            raise BadRequest("The multipart body contains no boundary delimiter")
        if state == _HEADERS:
            raise BadRequest("The multipart body ended inside a part's headers")
        if state == _DATA:
            raise BadRequest("The multipart body ended before its closing boundary delimiter")
        raise ValueError("close() called twice")

    # -- states; each returns True when it changed state and the loop should go on ----------

    def _read_preamble(self, events: list[Event]) -> bool:
        found = self._find_delimiter()
        if found is None:
            keep = len(self._needle)
            cut = len(self._buffer) - keep
            if cut > 0:
                self._seen += cut
                del self._buffer[:cut]
            if self._seen > MAX_PREAMBLE_BYTES:
                raise BadRequest(f"No multipart boundary delimiter in the first {MAX_PREAMBLE_BYTES} bytes")
            return False
        start, kind, end = found
        if kind == _MORE:
            self._seen += start
            del self._buffer[:start]
            return False
        del self._buffer[:end]
        self._virtual = 0
        self._begin(kind)
        return True

    def _read_headers(self, events: list[Event]) -> bool:
        buffer = self._buffer
        while True:
            limit = self._max_header_bytes - self._seen + 1
            newline = buffer.find(b"\n", self._scanned, limit)
            if newline < 0:
                if len(buffer) >= limit:
                    raise BadRequest(f"A multipart part's headers exceed {self._max_header_bytes} bytes")
                self._scanned = len(buffer)
                return False
            self._scanned = 0
            line = bytes(buffer[:newline])
            del buffer[: newline + 1]
            self._seen += newline + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                events.append(PartStart(tuple(self._headers)))
                self._headers = []
                self._state = _DATA
                # the part's content starts a line: a delimiter right away means an empty part
                buffer[0:0] = b"\n"
                self._virtual = 1
                return True
            self._add_header_line(line)

    def _add_header_line(self, line: bytes) -> None:
        text = _decode_header(line)
        if text[0] in " \t":
            if not self._headers:
                raise BadRequest("A multipart part's headers start with a continuation line")
            name, value = self._headers[-1]
            self._headers[-1] = (name, f"{value} {text.strip()}".strip())
            return
        name, colon, value = text.partition(":")
        name = name.strip()
        if not colon or not _HEADER_NAME.fullmatch(name):
            raise BadRequest("A multipart part has a malformed header line (expected Name: value)")
        self._headers.append((name.lower(), value.strip()))

    def _read_data(self, events: list[Event]) -> bool:
        found = self._find_delimiter()
        buffer = self._buffer
        if found is None:
            self._emit(events, len(buffer) - len(self._needle))
            return False
        start, kind, end = found
        if kind == _MORE:
            # keep the delimiter candidate and the CR that may precede it
            self._emit(events, start - 1)
            return False
        content_end = start - 1 if start > 0 and buffer[start - 1] == _CR else start
        self._emit(events, content_end)
        events.append(PartEnd())
        del buffer[: end - content_end]
        self._begin(kind)
        return True

    def _begin(self, kind: int) -> None:
        self._seen = 0
        self._scanned = 0
        if kind == _LAST_PART:
            self._state = _EPILOGUE
            self._buffer.clear()
        else:
            self._parts += 1
            self._state = _HEADERS

    def _emit(self, events: list[Event], cut: int) -> None:
        """Hand out buffer[:cut] as content (minus the virtual LF) and drop it from the buffer."""
        if cut <= 0:
            return
        if cut > self._virtual:
            with memoryview(self._buffer) as view:
                events.append(PartData(bytes(view[self._virtual : cut])))
        self._virtual = 0
        del self._buffer[:cut]

    def _find_delimiter(self) -> tuple[int, int, int] | None:
        """(start, kind, end) of the first delimiter candidate in the buffer, or None.

        `kind` is _MORE when more bytes are needed to tell; `end` is where the delimiter line
        ends. Candidates followed by anything but `--`, padding + line end, are content.
        """
        buffer = self._buffer
        position = 0
        while True:
            start = buffer.find(self._needle, position)
            if start < 0:
                return None
            kind, end = _classify(buffer, start + len(self._needle))
            if kind != _NOT_DELIMITER:
                return start, kind, end
            position = start + 1


def _classify(buffer: bytearray, at: int) -> tuple[int, int]:
    """What follows `--boundary`: `--` (last part), optional padding and a line end, or other."""
    size = len(buffer)
    if at >= size:
        return _MORE, 0
    if buffer[at] == _DASH:
        if at + 1 >= size:
            return _MORE, 0
        return (_LAST_PART, at + 2) if buffer[at + 1] == _DASH else (_NOT_DELIMITER, 0)
    i = at
    while i < size and buffer[i] in (_SP, _HT):
        i += 1
        if i - at > _MAX_PADDING:
            return _NOT_DELIMITER, 0
    if i >= size:
        return _MORE, 0
    if buffer[i] == _LF:
        return _NEXT_PART, i + 1
    if buffer[i] == _CR:
        if i + 1 >= size:
            return _MORE, 0
        return (_NEXT_PART, i + 2) if buffer[i + 1] == _LF else (_NOT_DELIMITER, 0)
    return _NOT_DELIMITER, 0


def _decode_header(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return line.decode("latin-1")


# -- writing ---------------------------------------------------------------------------------


def new_boundary() -> str:
    """A random boundary (32 hex digits): never needs quoting and cannot occur by chance."""
    return secrets.token_hex(16)


def _check_boundary(boundary: str) -> None:
    if len(boundary) > MAX_BOUNDARY_LENGTH or not _BCHARS.fullmatch(boundary):
        raise ValueError("boundary must be 1 to 70 RFC 2046 bchars, not ending in a space")


def _check_header(name: str, value: str) -> None:
    if not _HEADER_NAME.fullmatch(name) or any(char in value for char in "\r\n\0"):
        raise ValueError("header names must be tokens and values must not contain line breaks")


def part_header(
    boundary: str,
    content_type: str,
    extra_headers: Sequence[tuple[str, str]] = (),
    *,
    first: bool,
) -> bytes:
    """The delimiter line and headers that open a part, up to and including the blank line.

    The first part's delimiter starts the body; every later one is preceded by CRLF, which
    belongs to the delimiter (RFC 2046), so pass `first=False` for them.
    """
    _check_boundary(boundary)
    lines = [("" if first else "\r\n") + f"--{boundary}"]
    for name, value in (("Content-Type", content_type), *extra_headers):
        _check_header(name, value)
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def closing_delimiter(boundary: str, *, any_parts: bool = True) -> bytes:
    """The close delimiter that ends the body (CRLF-prefixed unless no part was written)."""
    _check_boundary(boundary)
    return (f"\r\n--{boundary}--\r\n" if any_parts else f"--{boundary}--\r\n").encode("ascii")


def multipart_content_type(boundary: str, part_type: str, transfer_syntax: str | None = None) -> str:
    """`multipart/related; type="<part_type>"[; transfer-syntax=<uid>]; boundary=<boundary>`."""
    _check_boundary(boundary)
    params: list[tuple[str, str]] = [("type", part_type)]
    if transfer_syntax is not None:
        params.append(("transfer-syntax", transfer_syntax))
    params.append(("boundary", boundary))
    return str(MediaType("multipart/related", tuple(params)))


class MultipartWriter:
    """Writes the framing of a multipart/related body; the caller streams each part's content.

    writer = MultipartWriter()
    yield writer.start_part("application/dicom")
    yield content
    yield writer.end()
    """

    def __init__(self, boundary: str | None = None) -> None:
        self.boundary = new_boundary() if boundary is None else boundary
        _check_boundary(self.boundary)
        self._parts = 0
        self._ended = False

    def content_type(self, part_type: str, transfer_syntax: str | None = None) -> str:
        return multipart_content_type(self.boundary, part_type, transfer_syntax)

    def start_part(self, content_type: str, extra_headers: Sequence[tuple[str, str]] = ()) -> bytes:
        if self._ended:
            raise ValueError("start_part() after end()")
        header = part_header(self.boundary, content_type, extra_headers, first=self._parts == 0)
        self._parts += 1
        return header

    def end(self) -> bytes:
        if self._ended:
            raise ValueError("end() called twice")
        self._ended = True
        return closing_delimiter(self.boundary, any_parts=self._parts > 0)
