"""ASP.NET route templates as the Functions host uses them for HTTP triggers.

A template such as `api/studies/{study}/series/{series:guid}/{*rest}` is parsed once into
segments. Matching works on the raw (still percent-encoded) request path so that an encoded
slash stays inside its segment; each captured value is percent-decoded exactly once. Literals
compare case-insensitively. The router tries templates in precedence order: more literal
segments first, then position by position literal < constrained parameter < parameter <
optional < catch-all (each constrained kind just before its unconstrained one).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Generic, TypeVar
from urllib.parse import unquote

from devhost.constraints import Constraint, make_constraint

__all__ = [
    "DEFAULT_ROUTE_PREFIX",
    "MethodNotAllowed",
    "Parameter",
    "Route",
    "RouteMatch",
    "RouteTemplate",
    "Router",
    "join_route",
    "read_route_prefix",
    "split_raw_path",
]

DEFAULT_ROUTE_PREFIX = "api"
_NAME_RE = re.compile(r"[^{}/?*=:\s]+")
_CONSTRAINT_RE = re.compile(r":(?P<name>[A-Za-z_][A-Za-z0-9_]*)")

T = TypeVar("T")


class SegmentKind(IntEnum):
    """Rank of a segment at one position; lower ranks are tried first."""

    LITERAL = 0
    CONSTRAINED = 1  # also complex segments such as `{name}.{ext}`, as in ASP.NET
    PARAMETER = 2
    CONSTRAINED_OPTIONAL = 3
    OPTIONAL = 4
    CONSTRAINED_CATCH_ALL = 5
    CATCH_ALL = 6


@dataclass(frozen=True, slots=True)
class Parameter:
    """One `{...}` parameter: `{name}`, `{name?}`, `{name=default}`, `{name:int}`, `{*name}`."""

    name: str
    constraints: tuple[Constraint, ...] = ()
    optional: bool = False
    catch_all: bool = False
    default: str | None = None

    def accepts(self, value: str) -> bool:
        return all(constraint(value) for constraint in self.constraints)


@dataclass(frozen=True, slots=True)
class _Segment:
    kind: SegmentKind
    literal: str | None = None  # casefolded literal text, for LITERAL
    parameter: Parameter | None = None  # for single-parameter segments
    pattern: re.Pattern[str] | None = None  # for complex segments
    parts: tuple[Parameter, ...] = ()  # the parameters of a complex segment, in order


def _closing_paren(text: str) -> int:
    """Index of the ')' that closes the '(' at text[0] (nesting and backslash escapes count)."""
    depth, i = 0, 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i
        i += 1
    return -1


def _parse_parameter(body: str, template: str) -> Parameter:
    catch_all = body.startswith("*")
    body = body.lstrip("*")
    default: str | None = None
    if "=" in body:
        body, default = body.split("=", 1)
    optional = body.endswith("?")
    body = body.removesuffix("?")
    name_match = _NAME_RE.match(body)
    if name_match is None:
        raise ValueError(f"route template {template!r} has a parameter without a name")
    name, rest = name_match.group(), body[name_match.end() :]
    constraints: list[Constraint] = []
    while rest:
        found = _CONSTRAINT_RE.match(rest)
        if found is None:
            raise ValueError(f"route template {template!r}: cannot parse {rest!r}")
        rest = rest[found.end() :]
        args: str | None = None
        if rest.startswith("("):
            close = _closing_paren(rest)
            if close < 0:
                raise ValueError(f"route template {template!r}: unbalanced '(' in a constraint")
            args, rest = rest[1:close], rest[close + 1 :]
        constraints.append(make_constraint(found.group("name"), args))
    if catch_all and optional:
        raise ValueError(f"route template {template!r}: a catch-all parameter cannot be optional")
    return Parameter(name, tuple(constraints), optional or default is not None, catch_all, default)


def _split_parts(segment: str, template: str) -> list[str | Parameter]:
    """Split one template segment into literal text and parameters; `{{`/`}}` escape braces."""
    parts: list[str | Parameter] = []
    literal: list[str] = []
    i = 0
    while i < len(segment):
        ch = segment[i]
        if segment.startswith(("{{", "}}"), i):
            literal.append(ch)
            i += 2
        elif ch == "{":
            body: list[str] = []
            i += 1
            while i < len(segment) and not (segment[i] == "}" and not segment.startswith("}}", i)):
                body.append(segment[i])
                i += 2 if segment.startswith(("{{", "}}"), i) else 1
            if i >= len(segment):
                raise ValueError(f"route template {template!r} has an unclosed '{{'")
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(_parse_parameter("".join(body), template))
            i += 1
        elif ch == "}":
            raise ValueError(f"route template {template!r} has an unmatched '}}'")
        else:
            literal.append(ch)
            i += 1
    if literal:
        parts.append("".join(literal))
    return parts


def _build_segment(text: str, template: str) -> _Segment:
    parts = _split_parts(text, template)
    if len(parts) == 1 and isinstance(parts[0], str):
        return _Segment(SegmentKind.LITERAL, literal=parts[0].casefold())
    if len(parts) == 1 and isinstance(parts[0], Parameter):
        param = parts[0]
        constrained = bool(param.constraints)
        if param.catch_all:
            kind = SegmentKind.CONSTRAINED_CATCH_ALL if constrained else SegmentKind.CATCH_ALL
        elif param.optional:
            kind = SegmentKind.CONSTRAINED_OPTIONAL if constrained else SegmentKind.OPTIONAL
        else:
            kind = SegmentKind.CONSTRAINED if constrained else SegmentKind.PARAMETER
        return _Segment(kind, parameter=param)
    pattern: list[str] = []
    params: list[Parameter] = []
    for part in parts:
        if isinstance(part, str):
            pattern.append(re.escape(part))
        elif part.catch_all or part.optional:
            raise ValueError(f"route template {template!r}: only plain parameters may share a segment")
        else:
            pattern.append("(.+)")
            params.append(part)
    return _Segment(
        SegmentKind.CONSTRAINED,
        pattern=re.compile("".join(pattern), re.IGNORECASE | re.DOTALL),
        parts=tuple(params),
    )


class RouteTemplate:
    """A parsed route template; `match` returns the decoded path parameters or None."""

    __slots__ = ("_max_segments", "_min_segments", "_segments", "parameters", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        stripped = text.removeprefix("~").strip("/")
        pieces = stripped.split("/") if stripped else []
        if any(piece == "" for piece in pieces):
            raise ValueError(f"route template {text!r} has an empty segment")
        self._segments = tuple(_build_segment(piece, text) for piece in pieces)
        params: list[Parameter] = []
        for segment in self._segments:
            params.extend(segment.parts if segment.pattern is not None else ())
            if segment.parameter is not None:
                params.append(segment.parameter)
        self.parameters = tuple(params)
        names = [param.name.casefold() for param in params]
        if len(set(names)) != len(names):
            raise ValueError(f"route template {text!r} repeats a parameter name")
        self._check_order()
        # How many path segments can match at all: a request path of another length is refused
        # before any segment is compared (the router tries every template of the app in turn).
        required = [segment for segment in self._segments if segment.kind < SegmentKind.CONSTRAINED_OPTIONAL]
        self._min_segments = len(required)
        catch_all = any(segment.kind >= SegmentKind.CONSTRAINED_CATCH_ALL for segment in self._segments)
        self._max_segments = None if catch_all else len(self._segments)

    def _check_order(self) -> None:
        seen_optional = False
        for index, segment in enumerate(self._segments):
            is_last = index == len(self._segments) - 1
            if segment.kind >= SegmentKind.CONSTRAINED_CATCH_ALL and not is_last:
                raise ValueError(f"route template {self.text!r}: a catch-all must be the last segment")
            optional = segment.kind >= SegmentKind.CONSTRAINED_OPTIONAL
            if seen_optional and not optional:
                raise ValueError(f"route template {self.text!r}: a required segment follows an optional one")
            seen_optional = seen_optional or optional

    @property
    def precedence(self) -> tuple[int, tuple[int, ...]]:
        """Sort key: smaller is tried first."""
        literals = sum(1 for segment in self._segments if segment.kind is SegmentKind.LITERAL)
        return (-literals, tuple(int(segment.kind) for segment in self._segments))

    def match(self, raw_segments: list[str], decoded: list[str] | None = None) -> dict[str, str] | None:
        """Match raw (percent-encoded) path segments; values are decoded once (`decoded`: the
        segments already decoded, when the caller tries several templates)."""
        count = len(raw_segments)
        if count < self._min_segments or (self._max_segments is not None and count > self._max_segments):
            return None
        if decoded is None:
            decoded = [unquote(segment) for segment in raw_segments]
        values: dict[str, str] = {}
        for index, segment in enumerate(self._segments):
            param = segment.parameter
            if param is not None and param.catch_all:
                rest = unquote("/".join(raw_segments[index:]))
                if rest or param.default is not None:
                    value = rest or str(param.default)
                    if not param.accepts(value):
                        return None
                    values[param.name] = value
                return values
            if index >= len(raw_segments):
                if param is None or not param.optional:
                    return None
                if param.default is not None:
                    values[param.name] = param.default
                continue
            value = decoded[index]
            if segment.literal is not None:
                if value.casefold() != segment.literal:
                    return None
            elif param is not None:
                if value == "" or not param.accepts(value):
                    return None
                values[param.name] = value
            elif not _match_complex(segment, value, values):
                return None
        if len(raw_segments) > len(self._segments):
            return None
        return values

    def __repr__(self) -> str:
        return f"RouteTemplate({self.text!r})"


def _match_complex(segment: _Segment, decoded: str, values: dict[str, str]) -> bool:
    assert segment.pattern is not None
    found = segment.pattern.fullmatch(decoded)
    if found is None:
        return False
    for param, value in zip(segment.parts, found.groups(), strict=True):
        if not param.accepts(value):
            return False
        values[param.name] = value
    return True


def split_raw_path(raw_path: str) -> list[str]:
    """Split a raw request path (no query string) into segments; one trailing slash is ignored."""
    path = raw_path.lstrip("/")
    path = path.removesuffix("/")
    return path.split("/") if path else []


@dataclass(frozen=True, slots=True)
class Route(Generic[T]):
    """A template, the methods it answers (None: every method) and what it leads to."""

    template: RouteTemplate
    methods: frozenset[str] | None
    target: T

    def allows(self, method: str) -> bool:
        return self.methods is None or method.upper() in self.methods


@dataclass(frozen=True, slots=True)
class RouteMatch(Generic[T]):
    route: Route[T]
    params: dict[str, str]


@dataclass(frozen=True, slots=True)
class MethodNotAllowed:
    """The path matched at least one template, but none for this method."""

    allowed: tuple[str, ...]


class Router(Generic[T]):
    """Routes sorted by precedence (stable, so registration order breaks ties)."""

    def __init__(self, routes: Iterable[Route[T]]) -> None:
        self.routes: tuple[Route[T], ...] = tuple(sorted(routes, key=lambda r: r.template.precedence))

    def resolve(self, method: str, raw_path: str) -> RouteMatch[T] | MethodNotAllowed | None:
        """The first route that matches path and method; MethodNotAllowed; or None (not found)."""
        segments = split_raw_path(raw_path)
        decoded = [unquote(segment) for segment in segments]
        allowed: set[str] = set()
        for route in self.routes:
            params = route.template.match(segments, decoded)
            if params is None:
                continue
            if route.allows(method):
                return RouteMatch(route, params)
            allowed.update(route.methods or ())
        return MethodNotAllowed(tuple(sorted(allowed))) if allowed else None


def join_route(prefix: str, route: str) -> str:
    """The full template the host matches: routePrefix + '/' + the function's route."""
    parts = [piece for piece in (prefix.strip("/"), route.removeprefix("~").strip("/")) if piece]
    return "/".join(parts)


def read_route_prefix(host_json: Path) -> str:
    """`extensions.http.routePrefix` from host.json; "api" when absent, "" means no prefix."""
    if not host_json.is_file():
        return DEFAULT_ROUTE_PREFIX
    settings = json.loads(host_json.read_text(encoding="utf-8-sig"))
    http = settings.get("extensions", {}).get("http", {}) if isinstance(settings, Mapping) else {}
    prefix = http.get("routePrefix", DEFAULT_ROUTE_PREFIX) if isinstance(http, Mapping) else None
    if not isinstance(prefix, str):
        raise ValueError(f"{host_json}: extensions.http.routePrefix must be a string")
    return prefix.strip("/")
