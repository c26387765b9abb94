"""Route templates, precedence and method matching of the dev host (ASP.NET rules)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devhost.routing import (
    MethodNotAllowed,
    Route,
    RouteMatch,
    Router,
    RouteTemplate,
    join_route,
    read_route_prefix,
    split_raw_path,
)

GUID = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"

# (template, raw request path, expected path params or None for no match)
MATCHES = [
    ("studies", "/studies", {}, "literal"),
    ("studies", "/STUDIES", {}, "literal-case-insensitive"),
    ("studies", "/studies/", {}, "trailing-slash-ignored"),
    ("studies", "/series", None, "other-literal"),
    ("a b", "/a%20b", {}, "literal-compared-decoded"),
    ("", "/", {}, "empty-template-root"),
    ("studies/{study}", "/studies/1.2.3", {"study": "1.2.3"}, "parameter"),
    ("studies/{study}", "/Studies/ABC", {"study": "ABC"}, "parameter-keeps-case"),
    ("studies/{study}", "/studies/a%2Fb", {"study": "a/b"}, "encoded-slash-stays-in-segment"),
    ("studies/{study}", "/studies/a%2520b", {"study": "a%20b"}, "decoded-once"),
    ("studies/{study}", "/studies/a+b", {"study": "a+b"}, "plus-is-not-space"),
    ("studies/{study}", "/studies", None, "missing-parameter"),
    ("studies/{study}", "/studies//", None, "empty-parameter"),
    ("studies/{study}", "/studies/1/series", None, "extra-segment"),
    ("studies/{study?}", "/studies", {}, "optional-absent"),
    ("studies/{study?}", "/studies/7", {"study": "7"}, "optional-present"),
    ("page/{n=1}", "/page", {"n": "1"}, "default-value"),
    ("page/{n:int=1}", "/page/5", {"n": "5"}, "default-with-constraint"),
    ("{a?}/{b?}", "/x", {"a": "x"}, "two-optionals-one-given"),
    ("f/{x:int}", "/f/12", {"x": "12"}, "int"),
    ("f/{x:int}", "/f/-3", {"x": "-3"}, "int-negative"),
    ("f/{x:int}", "/f/1.5", None, "int-rejects-decimal"),
    ("f/{x:int}", "/f/2147483648", None, "int-is-32-bit"),
    ("f/{x:long}", "/f/2147483648", {"x": "2147483648"}, "long"),
    ("f/{x:alpha}", "/f/AbC", {"x": "AbC"}, "alpha"),
    ("f/{x:alpha}", "/f/ab1", None, "alpha-rejects-digit"),
    ("f/{x:bool}", "/f/True", {"x": "True"}, "bool"),
    ("f/{x:bool}", "/f/yes", None, "bool-rejects-yes"),
    ("f/{x:guid}", f"/f/{GUID}", {"x": GUID}, "guid-d"),
    ("f/{x:guid}", f"/f/{GUID.replace('-', '')}", {"x": GUID.replace("-", "")}, "guid-n"),
    ("f/{x:guid}", f"/f/%7B{GUID}%7D", {"x": "{" + GUID + "}"}, "guid-b"),
    ("f/{x:guid}", "/f/1.2.840.10008", None, "guid-rejects-uid"),
    ("f/{x:double}", "/f/1.5e3", {"x": "1.5e3"}, "double"),
    ("f/{x:datetime}", "/f/2024-01-31", {"x": "2024-01-31"}, "datetime"),
    ("f/{x:length(3)}", "/f/abc", {"x": "abc"}, "length-exact"),
    ("f/{x:length(3)}", "/f/ab", None, "length-short"),
    ("f/{x:length(2,3)}", "/f/abcd", None, "length-range-long"),
    ("f/{x:minlength(2)}", "/f/a", None, "minlength"),
    ("f/{x:maxlength(2)}", "/f/abc", None, "maxlength"),
    ("f/{x:min(10)}", "/f/9", None, "min"),
    ("f/{x:max(10)}", "/f/10", {"x": "10"}, "max-inclusive"),
    ("f/{x:range(1,5)}", "/f/6", None, "range"),
    ("f/{x:int:min(1)}", "/f/0", None, "chained-constraints"),
    ("f/{x:regex(^\\d{{3}}$)}", "/f/123", {"x": "123"}, "regex-escaped-braces"),
    ("f/{x:regex(^\\d{{3}}$)}", "/f/1234", None, "regex-anchored"),
    ("f/{x:regex(ab)}", "/f/xABy", {"x": "xABy"}, "regex-unanchored-case-insensitive"),
    ("f/{x:regex(^(a|b):c$)}", "/f/a:c", {"x": "a:c"}, "regex-with-colon-and-parens"),
    ("files/{*rest}", "/files/a/b%20c", {"rest": "a/b c"}, "catch-all"),
    ("files/{*rest}", "/files", {}, "catch-all-empty"),
    ("files/{**rest}", "/files/a/b", {"rest": "a/b"}, "double-star-catch-all"),
    ("files/{*rest:regex(^x)}", "/files/y/z", None, "constrained-catch-all"),
    ("img/{name}.{ext}", "/img/a.b.png", {"name": "a.b", "ext": "png"}, "complex-segment"),
    ("img/{name}.{ext:alpha}", "/img/a.7", None, "complex-segment-constraint"),
]


@pytest.mark.parametrize(
    ("template", "path", "expected"), [m[:3] for m in MATCHES], ids=[m[3] for m in MATCHES]
)
def test_template_matches_path_like_aspnet(template: str, path: str, expected: dict[str, str] | None) -> None:
    assert RouteTemplate(template).match(split_raw_path(path)) == expected


BAD_TEMPLATES = [
    ("a/{", "unclosed-brace"),
    ("a/}", "unmatched-brace"),
    ("a//b", "empty-segment"),
    ("{x}/{X}", "repeated-name-any-case"),
    ("{*rest}/a", "catch-all-not-last"),
    ("{x?}/a", "required-after-optional"),
    ("{*x?}", "optional-catch-all"),
    ("{x:unknown}", "unknown-constraint"),
    ("{x:length}", "length-without-argument"),
    ("{x:int(3)}", "int-with-argument"),
    ("{x:range(1)}", "range-with-one-bound"),
    ("{a}.{b?}", "optional-in-complex-segment"),
    ("{:int}", "parameter-without-name"),
    ("{x:regex(a(b)}", "unbalanced-constraint-parenthesis"),
    ("{x:regex([)}", "invalid-regex"),
]


@pytest.mark.parametrize("template", [b[0] for b in BAD_TEMPLATES], ids=[b[1] for b in BAD_TEMPLATES])
def test_invalid_template_is_rejected_when_parsed(template: str) -> None:
    with pytest.raises(ValueError):
        RouteTemplate(template)


# (templates in registration order, request path, the template that must win)
PRECEDENCE = [
    (["studies/{study}", "studies/latest"], "/studies/latest", "studies/latest", "literal-before-parameter"),
    (["{x}", "{x:int}"], "/12", "{x:int}", "constrained-before-unconstrained"),
    (["{x}", "{x:int}"], "/ab", "{x}", "constraint-failure-falls-through"),
    (["a/{x?}", "a/{x}"], "/a/b", "a/{x}", "parameter-before-optional"),
    (["a/{*rest}", "a/{x?}"], "/a/b", "a/{x?}", "optional-before-catch-all"),
    (["{*rest}", "studies/{study}"], "/studies/1", "studies/{study}", "catch-all-last"),
    (["a/{x?}", "a"], "/a", "a", "exact-before-optional"),
    (["{a}/b/c", "a/{b}/{c}"], "/a/b/c", "{a}/b/c", "more-literals-first"),
    (["a/{b}/c", "a/b/{c}"], "/a/b/c", "a/b/{c}", "earlier-literal-first"),
    (["x/{a}", "x/{b}"], "/x/1", "x/{a}", "tie-keeps-registration-order"),
    (["img/{any}", "img/{n}.{e}"], "/img/a.png", "img/{n}.{e}", "complex-before-plain-parameter"),
]


@pytest.mark.parametrize(
    ("templates", "path", "winner"), [p[:3] for p in PRECEDENCE], ids=[p[3] for p in PRECEDENCE]
)
def test_router_tries_templates_in_precedence_order(templates: list[str], path: str, winner: str) -> None:
    router: Router[str] = Router(Route(RouteTemplate(t), None, t) for t in templates)
    result = router.resolve("GET", path)
    assert isinstance(result, RouteMatch)
    assert result.route.target == winner


# (routes as (template, methods), method, path, expected: target name, "405:<Allow>" or None)
METHODS = [
    ([("s/{id}", {"GET"})], "GET", "/s/1", "s/{id}", "allowed-method"),
    ([("s/{id}", {"GET"})], "get", "/s/1", "s/{id}", "method-case-insensitive"),
    ([("s/{id}", {"GET"})], "POST", "/s/1", "405:GET", "wrong-method-405"),
    ([("s/{id}", {"GET"}), ("s/{id}", {"DELETE"})], "DELETE", "/s/1", "s/{id}", "second-route-same-template"),
    (
        [("s/{id}", {"GET"}), ("s/{x}", {"DELETE", "PUT"})],
        "POST",
        "/s/1",
        "405:DELETE,GET,PUT",
        "allow-union",
    ),
    ([("s/{id}", None)], "PATCH", "/s/1", "s/{id}", "no-methods-means-all"),
    ([("s/{id}", {"GET"}), ("{*rest}", None)], "POST", "/s/1", "{*rest}", "falls-through-to-catch-all"),
    ([("s/{id}", {"GET"})], "GET", "/t/1", None, "unknown-path-404"),
    ([("s/{id}", {"GET"})], "HEAD", "/s/1", "405:GET", "head-is-not-get"),
]


@pytest.mark.parametrize(
    ("routes", "method", "path", "expected"), [m[:4] for m in METHODS], ids=[m[4] for m in METHODS]
)
def test_router_matches_methods_and_reports_405_with_allow(
    routes: list[tuple[str, set[str] | None]], method: str, path: str, expected: str | None
) -> None:
    router: Router[str] = Router(
        Route(RouteTemplate(t), None if m is None else frozenset(m), t) for t, m in routes
    )
    result = router.resolve(method, path)
    if expected is None:
        assert result is None
    elif expected.startswith("405:"):
        assert isinstance(result, MethodNotAllowed)
        assert ",".join(result.allowed) == expected[4:]
    else:
        assert isinstance(result, RouteMatch)
        assert result.route.target == expected


JOINS = [
    ("api", "studies/{study}", "api/studies/{study}", "prefix"),
    ("", "studies", "studies", "no-prefix"),
    ("/dicomweb/", "/studies/", "dicomweb/studies", "slashes-trimmed"),
    ("api", "", "api", "empty-route"),
    ("api", "~/x", "api/x", "tilde-root"),
]


@pytest.mark.parametrize(("prefix", "route", "full"), [j[:3] for j in JOINS], ids=[j[3] for j in JOINS])
def test_route_prefix_joins_function_route(prefix: str, route: str, full: str) -> None:
    assert join_route(prefix, route) == full


HOST_JSON = [
    (None, "api", "no-host-json"),
    ({"version": "2.0"}, "api", "no-http-section"),
    ({"extensions": {"http": {"maxConcurrentRequests": 5}}}, "api", "no-route-prefix"),
    ({"extensions": {"http": {"routePrefix": ""}}}, "", "empty-prefix"),
    ({"extensions": {"http": {"routePrefix": "/dicomweb/"}}}, "dicomweb", "custom-prefix"),
]


@pytest.mark.parametrize(("document", "prefix"), [h[:2] for h in HOST_JSON], ids=[h[2] for h in HOST_JSON])
def test_route_prefix_is_read_from_host_json(tmp_path: Path, document: object, prefix: str) -> None:
    host_json = tmp_path / "host.json"
    if document is not None:
        host_json.write_text(json.dumps(document), encoding="utf-8")
    assert read_route_prefix(host_json) == prefix


def test_non_string_route_prefix_is_an_error(tmp_path: Path) -> None:
    host_json = tmp_path / "host.json"
    host_json.write_text(json.dumps({"extensions": {"http": {"routePrefix": 5}}}), encoding="utf-8")
    with pytest.raises(ValueError, match="routePrefix"):
        read_route_prefix(host_json)


@pytest.mark.parametrize(
    ("template", "path", "matches"),
    [
        ("api/studies/{study}", "api/studies", False),
        ("api/studies/{study}", "api/studies/1.2/series", False),
        ("api/studies/{study?}", "api/studies", True),
        ("api/studies/{study=1}", "api/studies", True),
        ("api/studies/{study?}", "api/studies/1.2/x", False),
        ("api/files/{*rest}", "api/files/a/b/c/d", True),
        ("api/files/{*rest}", "api/files", True),
        ("api/files/{*rest}", "api", False),
    ],
)
def test_a_path_with_more_or_fewer_segments_than_the_template_allows_does_not_match(
    template: str, path: str, matches: bool
) -> None:
    segments = split_raw_path(path)
    assert (RouteTemplate(template).match(segments) is not None) is matches
