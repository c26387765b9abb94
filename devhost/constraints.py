"""Inline route constraints of ASP.NET route templates (`{id:int}`, `{x:regex(...)}`, ...).

Each constraint is a predicate over the percent-decoded parameter value, built once when the
template is parsed. The set follows the constraints the Functions host accepts in `route`:
int, long, bool, alpha, guid, decimal, double, float, datetime, required, length(n),
length(min,max), minlength(n), maxlength(n), min(n), max(n), range(min,max), regex(expr).
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

__all__ = ["Constraint", "make_constraint"]

_INT_RE = re.compile(r"\s*[-+]?\d+\s*", re.ASCII)
_ALPHA_RE = re.compile(r"[a-z]+", re.ASCII | re.IGNORECASE)
_GUID_FORMS = (
    re.compile(r"[0-9a-f]{32}", re.IGNORECASE),
    re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE),
    re.compile(r"\{[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\}", re.IGNORECASE),
    re.compile(r"\([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\)", re.IGNORECASE),
)
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True, slots=True)
class Constraint:
    """One inline constraint: its text as written in the template and its predicate."""

    text: str
    check: Callable[[str], bool]

    def __call__(self, value: str) -> bool:
        return self.check(value)


def _parse_int(value: str) -> int | None:
    if _INT_RE.fullmatch(value) is None:
        return None
    return int(value)


def _int_in(bounds: tuple[int, int]) -> Callable[[str], bool]:
    def check(value: str) -> bool:
        number = _parse_int(value)
        return number is not None and bounds[0] <= number <= bounds[1]

    return check


def _is_number(value: str) -> bool:
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


def _is_bool(value: str) -> bool:
    return value.strip().lower() in ("true", "false")


def _is_guid(value: str) -> bool:
    text = value.strip()
    if not any(form.fullmatch(text) for form in _GUID_FORMS):
        return False
    uuid.UUID(text.strip("{}()"))
    return True


def _is_datetime(value: str) -> bool:
    try:
        datetime.fromisoformat(value.strip())
    except ValueError:
        return False
    return True


def _int_args(name: str, args: str | None, count: tuple[int, ...]) -> list[int]:
    if args is None:
        raise ValueError(f"route constraint {name!r} needs an argument")
    parts = [part.strip() for part in args.split(",")]
    if len(parts) not in count or any(_INT_RE.fullmatch(part) is None for part in parts):
        raise ValueError(f"route constraint {name}({args}) has bad arguments")
    return [int(part) for part in parts]


def _length(args: str | None) -> Callable[[str], bool]:
    bounds = _int_args("length", args, (1, 2))
    low, high = (bounds[0], bounds[0]) if len(bounds) == 1 else (bounds[0], bounds[1])
    return lambda value: low <= len(value) <= high


def _regex(args: str | None) -> Callable[[str], bool]:
    if not args:
        raise ValueError("route constraint 'regex' needs an expression")
    # ASP.NET's regex constraint is case-insensitive and not anchored: use ^...$ to anchor.
    try:
        pattern = re.compile(args, re.IGNORECASE)
    except re.error as error:
        raise ValueError(f"route constraint regex({args}) is not a valid expression: {error}") from error
    return lambda value: pattern.search(value) is not None


def _bounded(name: str, args: str | None) -> Callable[[str], bool]:
    if name == "range":
        low, high = _int_args(name, args, (2,))
    else:
        (limit,) = _int_args(name, args, (1,))
        low, high = (limit, _INT64[1]) if name == "min" else (_INT64[0], limit)

    def check(value: str) -> bool:
        number = _parse_int(value)
        return number is not None and low <= number <= high

    return check


def _min_length(args: str | None) -> Callable[[str], bool]:
    (limit,) = _int_args("minlength", args, (1,))
    return lambda value: len(value) >= limit


def _max_length(args: str | None) -> Callable[[str], bool]:
    (limit,) = _int_args("maxlength", args, (1,))
    return lambda value: len(value) <= limit


_SIMPLE: dict[str, Callable[[str], bool]] = {
    "int": _int_in(_INT32),
    "long": _int_in(_INT64),
    "bool": _is_bool,
    "alpha": lambda value: _ALPHA_RE.fullmatch(value) is not None,
    "guid": _is_guid,
    "decimal": _is_number,
    "double": _is_number,
    "float": _is_number,
    "datetime": _is_datetime,
    "required": lambda value: value != "",
}

_WITH_ARGS: dict[str, Callable[[str | None], Callable[[str], bool]]] = {
    "length": _length,
    "minlength": _min_length,
    "maxlength": _max_length,
    "regex": _regex,
    "min": lambda args: _bounded("min", args),
    "max": lambda args: _bounded("max", args),
    "range": lambda args: _bounded("range", args),
}


def make_constraint(name: str, args: str | None) -> Constraint:
    """Build the constraint `name(args)`; raise ValueError for an unknown name or bad arguments."""
    key = name.lower()
    text = name if args is None else f"{name}({args})"
    if key in _SIMPLE:
        if args is not None:
            raise ValueError(f"route constraint {name!r} takes no argument")
        return Constraint(text, _SIMPLE[key])
    if key in _WITH_ARGS:
        return Constraint(text, _WITH_ARGS[key](args))
    raise ValueError(f"unknown route constraint {name!r}")
