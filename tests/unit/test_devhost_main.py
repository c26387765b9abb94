"""How many worker processes `python -m devhost` runs (DEVHOST_WORKERS, FUNCTIONS_WORKER_PROCESS_COUNT)."""

from __future__ import annotations

import pytest

from devhost.__main__ import _workers


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, 1),
        ({"FUNCTIONS_WORKER_PROCESS_COUNT": "3"}, 3),
        ({"DEVHOST_WORKERS": "2", "FUNCTIONS_WORKER_PROCESS_COUNT": "4"}, 2),
        ({"DEVHOST_WORKERS": " ", "FUNCTIONS_WORKER_PROCESS_COUNT": "4"}, 4),
    ],
)
def test_worker_count_comes_from_the_devhost_setting_then_the_functions_host_setting(
    environ: dict[str, str], expected: int
) -> None:
    assert _workers(environ) == expected


@pytest.mark.parametrize("raw", ["0", "11", "two", "-1", "1.5"])
def test_a_worker_count_out_of_range_stops_the_host_with_a_clear_message(raw: str) -> None:
    with pytest.raises(SystemExit, match="DEVHOST_WORKERS must be a whole number from 1 to 10"):
        _workers({"DEVHOST_WORKERS": raw})
