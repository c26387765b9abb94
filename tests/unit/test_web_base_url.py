"""shared.web.common.base_url: the DICOMweb root as the client sees it (RetrieveURL, BulkDataURI)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from starlette.requests import Request

from shared.web.common import base_url


def _request(headers: dict[str, str], scheme: str = "http") -> Request:
    scope = {
        "type": "http",
        "method": "GET",
        "scheme": scheme,
        "server": ("10.0.0.5", 7071),
        "path": "/dicomweb/studies",
        "raw_path": b"/dicomweb/studies",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    return Request(scope)


def _app(public: str = "", prefix: str = "dicomweb") -> Any:
    return SimpleNamespace(settings=SimpleNamespace(public_base_url=public), route_prefix=prefix)


@pytest.mark.parametrize(
    ("headers", "scheme", "expected"),
    [
        ({"host": "pacs.example.org:7071"}, "http", "http://pacs.example.org:7071/dicomweb"),
        ({"host": "pacs.example.org"}, "https", "https://pacs.example.org/dicomweb"),
        (
            {"host": "internal:7071", "x-forwarded-proto": "https", "x-forwarded-host": "dicom.example.org"},
            "http",
            "https://dicom.example.org/dicomweb",
        ),
        (
            {
                "host": "internal",
                "x-forwarded-proto": "https, http",
                "x-forwarded-host": "a.example, b.example",
            },
            "http",
            "https://a.example/dicomweb",
        ),
        ({}, "http", "http://10.0.0.5:7071/dicomweb"),
    ],
)
def test_the_root_follows_the_host_and_the_forwarding_proxy(
    headers: dict[str, str], scheme: str, expected: str
) -> None:
    assert base_url(_request(headers, scheme), _app()) == expected


def test_a_configured_public_root_wins_and_no_route_prefix_means_none() -> None:
    request = _request({"host": "internal", "x-forwarded-host": "proxy"})
    assert base_url(request, _app("https://dicom.example.org/pacs/")) == "https://dicom.example.org/pacs"
    assert base_url(request, _app(prefix="")) == "http://proxy"
