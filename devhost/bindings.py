"""Binding expressions of non-HTTP triggers, read as the Functions host reads them.

- `%NAME%` anywhere in a trigger property is the app setting NAME (the environment here, as
  local.settings.json `Values` or the app settings in Azure); one that does not resolve stops
  the function from being indexed.
- A blob trigger `path` is `<container>/<blob pattern>`: the container is literal (after
  `%NAME%` resolution) and `{param}` in the pattern binds part of the blob name; a parameter
  matches any text, slashes included, so `inbox/{name}` takes every blob in every subfolder.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["BlobPath", "UnresolvedSetting", "resolve_settings"]

_SETTING_RE = re.compile(r"%([^%\s]+)%")
_PARAM_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class UnresolvedSetting(LookupError):
    """A `%NAME%` reference to an app setting that is not set."""

    def __init__(self, name: str) -> None:
        super().__init__(f"app setting {name!r} is not set (referenced as %{name}%)")
        self.name = name


def resolve_settings(text: str, environ: Mapping[str, str]) -> str:
    """Replace every `%NAME%` by the value of the app setting NAME; raise UnresolvedSetting."""

    def value(found: re.Match[str]) -> str:
        name = found.group(1)
        resolved = environ.get(name)
        if resolved is None:
            raise UnresolvedSetting(name)
        return resolved

    return _SETTING_RE.sub(value, text)


@dataclass(frozen=True, slots=True)
class BlobPath:
    """A resolved blob trigger path: the container and a matcher for blob names in it."""

    text: str
    container: str
    prefix: str  # the literal start of every matching blob name (a listing prefix)
    pattern: re.Pattern[str]

    @classmethod
    def parse(cls, path: str) -> BlobPath:
        """Parse `<container>/<pattern>` (already resolved); ValueError when malformed."""
        container, slash, blob = path.strip("/").partition("/")
        if not container or "{" in container or "}" in container:
            raise ValueError(f"blob path {path!r}: the container must be a literal name")
        if not slash or not blob:
            blob = "{name}"  # a bare container: every blob in it
        parts: list[str] = []
        position = 0
        names: set[str] = set()
        for found in _PARAM_RE.finditer(blob):
            name = found.group(1)
            if name in names:
                raise ValueError(f"blob path {path!r}: parameter {{{name}}} appears twice")
            names.add(name)
            parts.append(re.escape(blob[position : found.start()]))
            parts.append(f"(?P<{name}>.+)")
            position = found.end()
        parts.append(re.escape(blob[position:]))
        if "{" in _PARAM_RE.sub("", blob) or "}" in _PARAM_RE.sub("", blob):
            raise ValueError(f"blob path {path!r}: unbalanced or invalid {{parameter}}")
        first = _PARAM_RE.search(blob)
        prefix = blob if first is None else blob[: first.start()]
        return cls(path, container, prefix, re.compile("".join(parts), re.DOTALL))

    def match(self, blob_name: str) -> dict[str, str] | None:
        """The bound parameters when `blob_name` (within the container) matches, else None."""
        found = self.pattern.fullmatch(blob_name)
        return None if found is None else found.groupdict()
