"""The store path's statements, built with SQLAlchemy Core, compiled once, run on the DB-API cursor.

SQLAlchemy's execution of a statement (cached-compile lookup, parameter construction, result and
event set-up) costs several times what SQLite spends running one of these small statements, and a
store runs half a dozen per instance. Here a statement is compiled once for the engine's dialect
and executed on a DB-API cursor (the index's store path takes a connection from SQLAlchemy's pool
and runs its own transaction on it), its values bound through the same type processors SQLAlchemy
would use, so the rows written are the same. `bind` does that binding ahead of the transaction,
leaving only the values the transaction itself produces. DB-API errors are not wrapped: `DbErrors`
says which are which.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Dialect
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.dml import Insert

_REQUIRED = object()


class _Compiled:
    """A statement compiled for one dialect: its SQL and how to bind a parameter dict to it."""

    def __init__(self, compiled: Any, dialect: Dialect) -> None:
        self.sql: str = compiled.string
        self._positional: bool = bool(compiled.positional)
        names: Iterable[str] = compiled.positiontup if self._positional else compiled.binds.keys()
        escaped: Mapping[str, str] = getattr(compiled, "escaped_bind_names", None) or {}
        self._binds: list[tuple[str, str, Any, Callable[[Any], Any] | None]] = []
        for name in names:
            bind = compiled.binds[name]
            default = _REQUIRED if bind.required else bind.effective_value  # a literal (status=...)
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            self._binds.append((name, escaped.get(name, name), default, processor))

    def values(self, params: Mapping[str, Any]) -> Any:
        return self.pack(self.partial(params, ())[0])

    def partial(
        self, params: Mapping[str, Any], late: Sequence[str]
    ) -> tuple[list[Any], list[tuple[int, str, Callable[[Any], Any] | None]]]:
        """The processed values in bind order, with a None in the place of each `late` name, and
        where those go: (position, name, processor)."""
        out: list[Any] = []
        slots: list[tuple[int, str, Callable[[Any], Any] | None]] = []
        for position, (name, _key, default, processor) in enumerate(self._binds):
            if name in late:
                slots.append((position, name, processor))
                out.append(None)
                continue
            value = params.get(name, default)
            if value is _REQUIRED:
                raise KeyError(f"the statement needs a value for {name!r}")
            out.append(processor(value) if processor is not None else value)
        if len(slots) != len(late):  # a late name that no parameter has (or one given twice)
            missing = sorted(set(late) - {name for _, name, _ in slots})
            if missing:
                raise KeyError(f"the statement has no parameter {missing[0]!r}")
        return out, slots

    def pack(self, out: Sequence[Any]) -> Any:
        """Processed values in bind order, as the driver takes them."""
        if self._positional:
            return tuple(out)
        return {key: value for (_n, key, _d, _p), value in zip(self._binds, out, strict=True)}


class Bound:
    """A statement with its values bound ahead of its transaction (type processing done, JSON
    encoded), but for the `late` ones, which come from the transaction itself (a key returned by
    an earlier statement, the time of the commit): `run` binds those alone."""

    __slots__ = ("_compiled", "_late", "_values")

    def __init__(self, compiled: _Compiled, params: Mapping[str, Any], late: Sequence[str]) -> None:
        self._compiled = compiled
        self._values, self._late = compiled.partial(params, late)

    def run(self, cursor: Any, late: Mapping[str, Any] | None = None) -> Any:
        values = list(self._values)
        for position, name, processor in self._late:
            value = late[name] if late is not None else _REQUIRED
            if value is _REQUIRED:
                raise KeyError(f"the statement needs a late value for {name!r}")
            values[position] = processor(value) if processor is not None else value
        cursor.execute(self._compiled.sql, self._compiled.pack(values))
        return cursor


class RawStatement:
    """One statement; `run` binds a parameter dict (names as in the Core statement).

    An INSERT's columns are those of the dict it is given, as with `Connection.execute`: it is
    compiled once per set of keys (the store path always gives the same ones)."""

    def __init__(self, stmt: Executable, dialect: Dialect) -> None:
        self._stmt = stmt
        self._dialect = dialect
        self._by_keys: dict[tuple[str, ...], _Compiled] = {}
        self._fixed = None if isinstance(stmt, Insert) else self._compile(None)

    def _compile(self, keys: Sequence[str] | None) -> _Compiled:
        compiled = self._stmt.compile(dialect=self._dialect, column_keys=keys)  # type: ignore[attr-defined]
        return _Compiled(compiled, self._dialect)

    def _for(self, params: Mapping[str, Any]) -> _Compiled:
        if self._fixed is not None:
            return self._fixed
        keys = tuple(params)
        found = self._by_keys.get(keys)
        if found is None:
            found = self._by_keys[keys] = self._compile(list(keys))
        return found

    def run(self, cursor: Any, params: Mapping[str, Any]) -> Any:
        compiled = self._for(params)
        cursor.execute(compiled.sql, compiled.values(params))
        return cursor

    def bind(self, params: Mapping[str, Any], late: Sequence[str] = ()) -> Bound:
        """`params` bound now, outside any transaction; the `late` names (present in `params`, as
        an INSERT's columns are its keys) when the bound statement runs."""
        return Bound(self._for(params), params, late)

    def run_many(self, cursor: Any, rows: Sequence[Mapping[str, Any]]) -> None:
        """Rows with the same keys (the first row's)."""
        compiled = self._for(rows[0])
        cursor.executemany(compiled.sql, [compiled.values(row) for row in rows])


class DbErrors:
    """The DB-API exception classes of a dialect's driver (raw statements raise them unwrapped)."""

    def __init__(self, dialect: Dialect) -> None:
        dbapi = dialect.dbapi
        self.operational: tuple[type[BaseException], ...] = (dbapi.OperationalError,) if dbapi else ()
        self.integrity: tuple[type[BaseException], ...] = (dbapi.IntegrityError,) if dbapi else ()
