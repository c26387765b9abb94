"""devhost.readahead: DEVHOST_READ_AHEAD_BYTES and uvicorn's read-ahead limit."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import uvicorn.protocols.http.h11_impl as h11_impl
import uvicorn.protocols.http.httptools_impl as httptools_impl

from devhost.readahead import DEFAULT, read_ahead_bytes, set_read_ahead


@pytest.fixture
def restore_limits() -> Iterator[None]:
    saved = httptools_impl.HIGH_WATER_LIMIT, h11_impl.HIGH_WATER_LIMIT
    yield
    httptools_impl.HIGH_WATER_LIMIT, h11_impl.HIGH_WATER_LIMIT = saved


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(None, DEFAULT), ("", DEFAULT), (" 65536 ", 65536), ("4194304", 4194304), ("67108864", 67108864)],
)
def test_the_setting_in_bytes_with_1_mib_by_default(raw: str | None, expected: int) -> None:
    environ = {} if raw is None else {"DEVHOST_READ_AHEAD_BYTES": raw}
    assert read_ahead_bytes(environ) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("1MB", "whole number of bytes"),
        ("1.5", "whole number of bytes"),
        ("65535", "from 65536 to 67108864"),
        ("67108865", "from 65536 to 67108864"),
        ("-1", "from 65536 to 67108864"),
    ],
)
def test_a_bad_setting_stops_the_host_with_a_clear_message(raw: str, message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        read_ahead_bytes({"DEVHOST_READ_AHEAD_BYTES": raw})


@pytest.mark.usefixtures("restore_limits")
def test_both_http_protocols_of_uvicorn_read_ahead_as_set() -> None:
    done = set_read_ahead(2 * 1024 * 1024)
    assert done == [httptools_impl.__name__, h11_impl.__name__]
    assert httptools_impl.HIGH_WATER_LIMIT == 2 * 1024 * 1024
    assert h11_impl.HIGH_WATER_LIMIT == 2 * 1024 * 1024


@pytest.mark.usefixtures("restore_limits")
def test_a_protocol_module_without_the_limit_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(h11_impl, "HIGH_WATER_LIMIT")
    assert set_read_ahead(2 * 1024 * 1024) == [httptools_impl.__name__]
    assert not hasattr(h11_impl, "HIGH_WATER_LIMIT")
