"""Media types (RFC 9110 section 8.3.1) and Accept negotiation as DICOMweb clients send it.

`parse_media_type` reads one Content-Type value, `parse_accept` reads an Accept header (or the
`accept` query parameter of PS3.18 8.3.3.1), and `negotiate` picks which of a resource's
representations (`Offer`) to answer with, and in which transfer syntax.

Real clients are lenient about quoting: OHIF sends `multipart/related; type=application/octet-stream;
transfer-syntax=*` with an unquoted `/` in the value, dicomweb-client sends `type="application/dicom"`.
Both are accepted; unquoted values run to the next `;` or `,`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from shared.core.errors import BadRequest, NotAcceptable

__all__ = [
    "MediaType",
    "Negotiated",
    "Offer",
    "negotiate",
    "parse_accept",
    "parse_media_type",
]

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_QVALUE = re.compile(r"(?:0(?:\.[0-9]*)?|1(?:\.0*)?|\.[0-9]+)")
_MAX_LIST_ITEMS = 64
ANY = "*/*"
# Clients send the same few header values request after request: the parse of each is kept
# (values up to this length, this many of them; a malformed value raises again every time).
_CACHED_LENGTH = 512
_CACHED_VALUES = 256


@dataclass(frozen=True, slots=True)
class MediaType:
    """A parsed media type or media range: `type/subtype` lower-cased, parameters in order."""

    type: str
    params: tuple[tuple[str, str], ...] = ()
    q: float = 1.0

    def param(self, name: str) -> str | None:
        """The value of the first parameter called `name` (case-insensitive), or None."""
        wanted = name.lower()
        for key, value in self.params:
            if key == wanted:
                return value
        return None

    @property
    def main_type(self) -> str:
        return self.type.partition("/")[0]

    def __str__(self) -> str:
        parts = [self.type]
        parts.extend(f"{key}={_quote(value)}" for key, value in self.params)
        if self.q != 1.0:
            parts.append(f"q={_format_q(self.q)}")
        return "; ".join(parts)


def _quote(value: str) -> str:
    """A parameter value as a token when it is one, otherwise as an RFC 9110 quoted-string."""
    if _TOKEN.fullmatch(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _format_q(q: float) -> str:
    return f"{q:.3f}".rstrip("0").rstrip(".")


def _split(text: str, separator: str) -> list[str]:
    """Split on `separator` outside quoted strings; quotes and escapes are kept for later."""
    items: list[str] = []
    start = 0
    in_quotes = False
    i = 0
    while i < len(text):
        char = text[i]
        if in_quotes:
            if char == "\\":
                i += 1
            elif char == '"':
                in_quotes = False
        elif char == '"':
            in_quotes = True
        elif char == separator:
            items.append(text[start:i])
            start = i + 1
        i += 1
    if in_quotes:
        raise BadRequest("Unterminated quoted string in a media type parameter")
    items.append(text[start:])
    return items


def _unquote(raw: str) -> str:
    """Resolve a quoted-string (`"a\\"b"` -> `a"b`); unquoted values are returned as they are."""
    if not raw.startswith('"'):
        return raw
    if len(raw) < 2 or not raw.endswith('"'):
        raise BadRequest("Malformed quoted string in a media type parameter")
    out: list[str] = []
    body = raw[1:-1]
    i = 0
    while i < len(body):
        char = body[i]
        if char == "\\" and i + 1 < len(body):
            i += 1
            char = body[i]
        elif char == '"':
            raise BadRequest("Malformed quoted string in a media type parameter")
        out.append(char)
        i += 1
    return "".join(out)


def _parse(value: str, *, weighted: bool) -> MediaType:
    segments = _split(value, ";")
    full_type = segments[0].strip()
    main, slash, sub = full_type.partition("/")
    if not slash or not _TOKEN.fullmatch(main) or not _TOKEN.fullmatch(sub):
        raise BadRequest("Malformed media type: expected type/subtype")
    if main == "*" and sub != "*":
        raise BadRequest("Malformed media range: */subtype is not allowed")
    params: list[tuple[str, str]] = []
    q = 1.0
    for segment in segments[1:]:
        segment = segment.strip()
        if not segment:
            continue
        name, equals, raw = segment.partition("=")
        name = name.strip().lower()
        raw = raw.strip()
        if not equals or not _TOKEN.fullmatch(name) or not raw:
            raise BadRequest("Malformed media type parameter: expected name=value")
        if weighted and name == "q":
            if not _QVALUE.fullmatch(raw):
                raise BadRequest("Malformed q value in Accept: expected a number from 0 to 1")
            q = float(raw)
            continue
        params.append((name, _unquote(raw)))
    return MediaType(full_type.lower(), tuple(params), q)


def parse_media_type(value: str) -> MediaType:
    """Parse one media type such as a Content-Type value; BadRequest when it is malformed."""
    if len(value) <= _CACHED_LENGTH:
        return _parse_media_type_cached(value)
    return _parse(value, weighted=False)


@functools.lru_cache(maxsize=_CACHED_VALUES)
def _parse_media_type_cached(value: str) -> MediaType:
    return _parse(value, weighted=False)


def parse_accept(header: str | None) -> list[MediaType]:
    """Parse an Accept header (or the `accept` query parameter) into media ranges, in order.

    Elements are split on commas outside quoted strings (repeated headers arrive joined with
    ", "), empty elements are skipped, and `q` is read into `MediaType.q` rather than kept as a
    parameter. An absent or blank header means `*/*`.
    """
    if header is not None and len(header) <= _CACHED_LENGTH:
        return list(_parse_accept_cached(header))
    return list(_parse_accept(header))


@functools.lru_cache(maxsize=_CACHED_VALUES)
def _parse_accept_cached(header: str) -> tuple[MediaType, ...]:
    return _parse_accept(header)


def _parse_accept(header: str | None) -> tuple[MediaType, ...]:
    if header is None or not header.strip():
        return (MediaType(ANY),)
    elements = [element for element in _split(header, ",") if element.strip()]
    if not elements:
        return (MediaType(ANY),)
    if len(elements) > _MAX_LIST_ITEMS:
        raise BadRequest(f"Too many media ranges in Accept (at most {_MAX_LIST_ITEMS})")
    return tuple(_parse(element, weighted=True) for element in elements)


def _repair_query_accept(value: str) -> str:
    """Undo form decoding of `+` in an `accept` query value (`application/dicom json`)."""
    repaired = []
    for element in _split(value, ","):
        head, sep, rest = element.partition(";")
        repaired.append(re.sub(r"(?<=\S) (?=\S)", "+", head.strip()) + sep + rest)
    return ",".join(repaired)


@dataclass(frozen=True, slots=True)
class Offer:
    """One representation a resource can be returned as.

    `part_type` is set for multipart offers (the media type of each part); `transfer_syntaxes`
    holds the syntaxes the server can produce (empty when a transfer syntax does not apply), and
    `default_transfer_syntax` is what is answered when the client names none ("*" = as stored).
    """

    media_type: str
    part_type: str | None = None
    transfer_syntaxes: frozenset[str] = field(default_factory=frozenset)
    default_transfer_syntax: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "media_type", self.media_type.lower())
        if self.part_type is not None:
            object.__setattr__(self, "part_type", self.part_type.lower())
        syntaxes: Iterable[str] = self.transfer_syntaxes
        object.__setattr__(self, "transfer_syntaxes", frozenset(syntaxes))
        default = self.default_transfer_syntax
        if default not in (None, "*") and default not in self.transfer_syntaxes:
            raise ValueError("default_transfer_syntax must be one of transfer_syntaxes or '*'")

    def describe(self) -> str:
        if self.part_type is None:
            return self.media_type
        return str(MediaType(self.media_type, (("type", self.part_type),)))


@dataclass(frozen=True, slots=True)
class Negotiated:
    """The outcome of negotiation: the chosen offer and transfer syntax (UID, "*" or None)."""

    offer: Offer
    transfer_syntax: str | None


def _range_matches(media_range: str, media_type: str) -> bool:
    if media_range == ANY:
        return True
    main, _, sub = media_range.partition("/")
    if sub == "*":
        return media_type.partition("/")[0] == main
    return media_range == media_type


def _part_type_of(media_range: MediaType) -> str | None:
    value = media_range.param("type")
    if value is None:
        return None
    # a type parameter may itself carry parameters; only its type/subtype takes part
    return value.partition(";")[0].strip().lower() or None


def _specificity(media_range: MediaType) -> tuple[int, int]:
    level = 0 if media_range.type == ANY else 1 if media_range.type.endswith("/*") else 2
    extra = sum(1 for key in ("type", "transfer-syntax") if media_range.param(key) is not None)
    return level, extra


def _match(
    media_range: MediaType, offer: Offer, index: int, first_multipart: dict[str, int]
) -> Negotiated | None:
    """The result of answering `media_range` with `offer`, or None when it does not fit."""
    if not _range_matches(media_range.type, offer.media_type):
        return None
    if offer.part_type is not None:
        wanted_part = _part_type_of(media_range)
        if wanted_part is None:
            # no type parameter: the resource's default part type, i.e. its first multipart offer
            if media_range.type != ANY and first_multipart.get(offer.media_type) != index:
                return None
        elif not _range_matches(wanted_part, offer.part_type):
            return None
    if not offer.transfer_syntaxes:
        return Negotiated(offer, None)
    wanted_syntax = media_range.param("transfer-syntax")
    if wanted_syntax is None:
        return Negotiated(offer, offer.default_transfer_syntax)
    wanted_syntax = wanted_syntax.strip()
    if wanted_syntax == "*" or wanted_syntax in offer.transfer_syntaxes:
        return Negotiated(offer, wanted_syntax)
    return None


def negotiate(accept: str | None, offers: Sequence[Offer], *, accept_query: str | None = None) -> Negotiated:
    """Choose the representation to answer with, as PS3.18 8.3.3 and RFC 9110 12.5.1 describe.

    The `accept` query parameter, when given, replaces the Accept header. The highest q wins;
    ties go to the earlier media range in the request, then to the earlier offer. A media range
    with q=0 refuses what it matches unless a more specific range accepts it. Raises
    NotAcceptable, naming what the resource can be returned as, when nothing fits.
    """
    if (
        isinstance(offers, tuple)
        and len(accept or "") <= _CACHED_LENGTH
        and len(accept_query or "") <= _CACHED_LENGTH
    ):
        return _negotiate_cached(accept, offers, accept_query)
    return _negotiate(accept, offers, accept_query)


@functools.lru_cache(maxsize=_CACHED_VALUES)
def _negotiate_cached(accept: str | None, offers: tuple[Offer, ...], accept_query: str | None) -> Negotiated:
    return _negotiate(accept, offers, accept_query)


def _negotiate(accept: str | None, offers: Sequence[Offer], accept_query: str | None) -> Negotiated:
    if accept_query is not None and accept_query.strip():
        ranges = parse_accept(_repair_query_accept(accept_query))
    else:
        ranges = parse_accept(accept)
    first_multipart: dict[str, int] = {}
    for index, offer in enumerate(offers):
        if offer.part_type is not None:
            first_multipart.setdefault(offer.media_type, index)

    refusals = [media_range for media_range in ranges if media_range.q <= 0.0]
    best: tuple[float, Negotiated] | None = None
    for media_range in ranges:
        if media_range.q <= 0.0 or (best is not None and media_range.q <= best[0]):
            continue
        for index, offer in enumerate(offers):
            result = _match(media_range, offer, index, first_multipart)
            if result is None or _refused(result, media_range, refusals, index, first_multipart):
                continue
            best = (media_range.q, result)
            break
    if best is None:
        available = ", ".join(dict.fromkeys(offer.describe() for offer in offers)) or "nothing"
        raise NotAcceptable(
            f"None of the requested media types is available; this resource can be returned as: {available}"
        )
    return best[1]


def _refused(
    result: Negotiated,
    accepted_by: MediaType,
    refusals: list[MediaType],
    index: int,
    first_multipart: dict[str, int],
) -> bool:
    """Whether a q=0 range more specific than the accepting one matches the same answer."""
    for refusal in refusals:
        if _specificity(refusal) <= _specificity(accepted_by):
            continue
        refused = _match(refusal, result.offer, index, first_multipart)
        if refused is None:
            continue
        named = refusal.param("transfer-syntax")
        if named is None or refused.transfer_syntax in ("*", result.transfer_syntax):
            return True
    return False
