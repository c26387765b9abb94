"""Media type parsing and Accept negotiation, driven by what OHIF and dicomweb-client send."""

from __future__ import annotations

import pytest

from shared.core.errors import BadRequest, NotAcceptable
from shared.core.media import MediaType, Negotiated, Offer, negotiate, parse_accept, parse_media_type

EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
JPEG = "1.2.840.10008.1.2.4.50"
J2K = "1.2.840.10008.1.2.4.90"

# Headers as recorded in /work/shared/CLIENTS.md and read from dicomweb-client's source.
OHIF_FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"
OHIF_BULK = 'multipart/related; type="application/octet-stream"'
OHIF_QIDO = "application/dicom+json"
DWC_RETRIEVE = 'multipart/related; type="application/dicom"'
DWC_RETRIEVE_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
DWC_FRAMES = 'multipart/related; type="application/octet-stream"'
DWC_METADATA = "application/dicom+json, application/json"
BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"

# A JPEG baseline instance: frames as stored (image/jpeg) or decoded (octet-stream, explicit LE).
FRAMES = (
    Offer("multipart/related", "application/octet-stream", frozenset({EXPLICIT}), EXPLICIT),
    Offer("multipart/related", "image/jpeg", frozenset({JPEG}), JPEG),
)
INSTANCE = (
    Offer("multipart/related", "application/dicom", frozenset({EXPLICIT, IMPLICIT, JPEG}), EXPLICIT),
    Offer("application/dicom", None, frozenset({EXPLICIT, IMPLICIT, JPEG}), EXPLICIT),
)
METADATA = (Offer("application/dicom+json"), Offer("application/json"))
RENDERED = (Offer("image/jpeg"), Offer("image/png"))
BULK = (Offer("multipart/related", "application/octet-stream"),)


# -- parse_media_type -----------------------------------------------------------------------

PARSE_CASES = [
    ("application/dicom", "application/dicom", ()),
    ('Application/DICOM+JSON; Charset="UTF-8"', "application/dicom+json", (("charset", "UTF-8"),)),
    (OHIF_FRAMES, "multipart/related", (("type", "application/octet-stream"), ("transfer-syntax", "*"))),
    (
        'multipart/related; type="application/dicom"; boundary="0f3cf5c0-70e0-41ef-baef-c6f9f65ec3e1"',
        "multipart/related",
        (("type", "application/dicom"), ("boundary", "0f3cf5c0-70e0-41ef-baef-c6f9f65ec3e1")),
    ),
    (
        'multipart/related;type="application/dicom";boundary=abc',
        "multipart/related",
        (("type", "application/dicom"), ("boundary", "abc")),
    ),
    ('text/plain; title="a \\"quoted\\" \\\\ word"', "text/plain", (("title", 'a "quoted" \\ word'),)),
    (
        'multipart/related; type="application/dicom; x=1, y"; boundary=b',
        "multipart/related",
        (("type", "application/dicom; x=1, y"), ("boundary", "b")),
    ),
    ("application/dicom;", "application/dicom", ()),
    (
        "  image/jpeg ;  ; transfer-syntax = 1.2.840.10008.1.2.4.50 ",
        "image/jpeg",
        (("transfer-syntax", JPEG),),
    ),
    ("application/json; q=0.5", "application/json", (("q", "0.5"),)),
    ("*/*", "*/*", ()),
    ("image/*", "image/*", ()),
]
PARSE_IDS = [
    "plain",
    "case-folded-quoted-charset",
    "ohif-unquoted-type",
    "dicomweb-client-stow",
    "no-spaces",
    "backslash-escapes",
    "separators-inside-quotes",
    "trailing-semicolon",
    "extra-whitespace-and-empty-param",
    "q-is-an-ordinary-param-outside-accept",
    "any",
    "subtype-wildcard",
]


@pytest.mark.parametrize(("value", "media_type", "params"), PARSE_CASES, ids=PARSE_IDS)
def test_parse_media_type_reads_type_and_params(value: str, media_type: str, params: tuple) -> None:
    parsed = parse_media_type(value)
    assert (parsed.type, parsed.params, parsed.q) == (media_type, params, 1.0)


GARBAGE = [
    "",
    "   ",
    "application",
    "application/",
    "/dicom",
    "*/dicom",
    "app lication/dicom",
    "application/dicom; foo",
    "application/dicom; =x",
    "application/dicom; a=",
    'application/dicom; a="x',
    'application/dicom; a="x"y',
    'application/dicom; a="x"y"',
    "application/dicom/x",
    "appli(cation/dicom",
]


@pytest.mark.parametrize("value", GARBAGE, ids=[repr(v) for v in GARBAGE])
def test_parse_media_type_rejects_garbage_as_bad_request(value: str) -> None:
    with pytest.raises(BadRequest):
        parse_media_type(value)


def test_param_is_case_insensitive_and_returns_the_first() -> None:
    parsed = parse_media_type("a/b; Type=x; type=y")
    assert parsed.param("TYPE") == "x"
    assert parsed.param("boundary") is None


STR_CASES = [
    (MediaType("application/dicom"), "application/dicom"),
    (
        MediaType("multipart/related", (("type", "application/dicom"), ("boundary", "abc"))),
        'multipart/related; type="application/dicom"; boundary=abc',
    ),
    (MediaType("text/plain", (("title", 'say "hi" \\o/'),)), 'text/plain; title="say \\"hi\\" \\\\o/"'),
    (MediaType("text/plain", (("empty", ""),)), 'text/plain; empty=""'),
    (MediaType("text/plain", (("sp", "a b"),)), 'text/plain; sp="a b"'),
    (MediaType("image/jpeg", (), 0.5), "image/jpeg; q=0.5"),
    (MediaType("image/jpeg", (), 0.0), "image/jpeg; q=0"),
    (MediaType("image/jpeg", (("transfer-syntax", JPEG),)), f"image/jpeg; transfer-syntax={JPEG}"),
]


@pytest.mark.parametrize(
    ("media_type", "text"),
    STR_CASES,
    ids=["plain", "slash-quoted", "escapes", "empty-value", "space", "q", "q-zero", "uid-token"],
)
def test_str_quotes_only_what_needs_quoting_and_parses_back(media_type: MediaType, text: str) -> None:
    assert str(media_type) == text
    assert parse_accept(text) == [media_type]


# -- parse_accept ---------------------------------------------------------------------------

ACCEPT_CASES = [
    (None, [("*/*", (), 1.0)]),
    ("", [("*/*", (), 1.0)]),
    (" , ,", [("*/*", (), 1.0)]),
    (
        OHIF_FRAMES,
        [("multipart/related", (("type", "application/octet-stream"), ("transfer-syntax", "*")), 1.0)],
    ),
    (
        DWC_RETRIEVE_ANY,
        [("multipart/related", (("type", "application/dicom"), ("transfer-syntax", "*")), 1.0)],
    ),
    (DWC_METADATA, [("application/dicom+json", (), 1.0), ("application/json", (), 1.0)]),
    (
        "image/jpeg;q=0.9, image/png; Q=0.80 ,*/*;q=.1",
        [("image/jpeg", (), 0.9), ("image/png", (), 0.8), ("*/*", (), 0.1)],
    ),
    (
        'multipart/related; type="a/b,c"; q=0.5, image/jpeg',
        [("multipart/related", (("type", "a/b,c"),), 0.5), ("image/jpeg", (), 1.0)],
    ),
    (
        f"{OHIF_QIDO}, {DWC_RETRIEVE}",
        [("application/dicom+json", (), 1.0), ("multipart/related", (("type", "application/dicom"),), 1.0)],
    ),
    ("application/json;q=1.000;charset=utf-8", [("application/json", (("charset", "utf-8"),), 1.0)]),
    ("application/json;q=0", [("application/json", (), 0.0)]),
]
ACCEPT_IDS = [
    "absent",
    "empty",
    "only-commas",
    "ohif-frames",
    "dicomweb-client-retrieve-any",
    "dicomweb-client-metadata",
    "q-values",
    "comma-inside-quotes",
    "repeated-headers-joined",
    "q-before-other-param",
    "q-zero",
]


@pytest.mark.parametrize(("header", "expected"), ACCEPT_CASES, ids=ACCEPT_IDS)
def test_parse_accept_splits_ranges_and_reads_q(header: str | None, expected: list) -> None:
    assert [(m.type, m.params, m.q) for m in parse_accept(header)] == expected


BAD_Q = [
    "application/json;q=2",
    "application/json;q=abc",
    "application/json;q=-0.5",
    "application/json;q=0.5.1",
    "application/json;q=1.5",
    "application/json;q=",
]


@pytest.mark.parametrize("header", BAD_Q, ids=BAD_Q)
def test_parse_accept_rejects_invalid_q(header: str) -> None:
    with pytest.raises(BadRequest, match="Malformed"):
        parse_accept(header)


def test_parse_accept_bounds_the_number_of_ranges() -> None:
    with pytest.raises(BadRequest, match="Too many"):
        parse_accept(", ".join(["image/jpeg"] * 65))


# -- negotiate ------------------------------------------------------------------------------

NEGOTIATE_CASES = [
    # (accept header, accept query, offers, (media type, part type, transfer syntax))
    (OHIF_FRAMES, None, FRAMES, ("multipart/related", "application/octet-stream", "*")),
    (OHIF_BULK, None, BULK, ("multipart/related", "application/octet-stream", None)),
    (OHIF_QIDO, None, METADATA, ("application/dicom+json", None, None)),
    (OHIF_FRAMES, "image/jpeg", RENDERED, ("image/jpeg", None, None)),
    (OHIF_FRAMES, "image/png,image/jpeg;q=0.5", RENDERED, ("image/png", None, None)),
    ("image/jpeg", "image/png, image/jpeg", RENDERED, ("image/png", None, None)),
    ("image/png", "  ", RENDERED, ("image/png", None, None)),
    (None, "application/dicom json", METADATA, ("application/dicom+json", None, None)),
    (DWC_RETRIEVE, None, INSTANCE, ("multipart/related", "application/dicom", EXPLICIT)),
    (DWC_RETRIEVE_ANY, None, INSTANCE, ("multipart/related", "application/dicom", "*")),
    (
        f"{DWC_RETRIEVE}; transfer-syntax={JPEG}",
        None,
        INSTANCE,
        ("multipart/related", "application/dicom", JPEG),
    ),
    (DWC_FRAMES, None, FRAMES, ("multipart/related", "application/octet-stream", EXPLICIT)),
    (
        f'multipart/related; type="image/jpeg"; transfer-syntax={JPEG}',
        None,
        FRAMES,
        ("multipart/related", "image/jpeg", JPEG),
    ),
    ("multipart/related; type=image/*", None, FRAMES, ("multipart/related", "image/jpeg", JPEG)),
    (
        "multipart/related; type=*/*",
        None,
        FRAMES,
        ("multipart/related", "application/octet-stream", EXPLICIT),
    ),
    ("multipart/related", None, FRAMES, ("multipart/related", "application/octet-stream", EXPLICIT)),
    (
        "multipart/*; type=application/dicom",
        None,
        INSTANCE,
        ("multipart/related", "application/dicom", EXPLICIT),
    ),
    (DWC_METADATA, None, METADATA, ("application/dicom+json", None, None)),
    ("application/dicom+json; charset=utf-8", None, METADATA, ("application/dicom+json", None, None)),
    ("*/*", None, INSTANCE, ("multipart/related", "application/dicom", EXPLICIT)),
    (None, None, INSTANCE, ("multipart/related", "application/dicom", EXPLICIT)),
    ("", None, METADATA, ("application/dicom+json", None, None)),
    ("application/*", None, METADATA, ("application/dicom+json", None, None)),
    ("application/dicom; transfer-syntax=*", None, INSTANCE, ("application/dicom", None, "*")),
    (
        "application/json;q=0.5, application/dicom+json;q=0.9",
        None,
        METADATA,
        ("application/dicom+json", None, None),
    ),
    ("application/dicom+json;q=0.4, application/json", None, METADATA, ("application/json", None, None)),
    ("application/json, application/dicom+json", None, METADATA, ("application/json", None, None)),
    ("application/dicom+json;q=0, */*;q=0.1", None, METADATA, ("application/json", None, None)),
    (f"{OHIF_QIDO}, {DWC_RETRIEVE}", None, INSTANCE, ("multipart/related", "application/dicom", EXPLICIT)),
    (BROWSER, None, METADATA, ("application/dicom+json", None, None)),
    (BROWSER, None, RENDERED, ("image/jpeg", None, None)),
    (f"image/jpeg; transfer-syntax={JPEG}", None, RENDERED, ("image/jpeg", None, None)),
    (
        f"{DWC_RETRIEVE}; transfer-syntax={J2K}, {DWC_RETRIEVE};q=0.5",
        None,
        INSTANCE,
        ("multipart/related", "application/dicom", EXPLICIT),
    ),
]
NEGOTIATE_IDS = [
    "ohif-frames-as-stored",
    "ohif-bulkdata",
    "ohif-qido",
    "ohif-rendered-query-beats-header",
    "ohif-thumbnail-query-list",
    "query-list-beats-header",
    "blank-query-falls-back-to-header",
    "query-plus-decoded-as-space",
    "dicomweb-client-retrieve-default",
    "dicomweb-client-retrieve-any",
    "explicit-transfer-syntax",
    "dicomweb-client-frames-default",
    "dicomweb-client-frames-jpeg",
    "type-image-wildcard",
    "type-any",
    "multipart-without-type-is-default-part",
    "multipart-wildcard",
    "dicomweb-client-metadata",
    "charset-ignored",
    "any",
    "no-accept",
    "empty-accept",
    "subtype-wildcard",
    "single-part-any-syntax",
    "highest-q",
    "lower-q-first-loses",
    "tie-goes-to-header-order",
    "q-zero-specific-beats-wildcard",
    "repeated-headers-joined",
    "browser-default-json",
    "browser-default-image",
    "transfer-syntax-not-applicable",
    "fallback-to-lower-q",
]


@pytest.mark.parametrize(("accept", "query", "offers", "expected"), NEGOTIATE_CASES, ids=NEGOTIATE_IDS)
def test_negotiate_picks_the_best_acceptable_offer(
    accept: str | None, query: str | None, offers: tuple[Offer, ...], expected: tuple
) -> None:
    result = negotiate(accept, offers, accept_query=query)
    assert isinstance(result, Negotiated)
    assert (result.offer.media_type, result.offer.part_type, result.transfer_syntax) == expected
    assert result.offer in offers


NOT_ACCEPTABLE = [
    ("application/pdf", None, METADATA),
    (OHIF_FRAMES, None, RENDERED),
    (f"{DWC_RETRIEVE}; transfer-syntax={J2K}", None, INSTANCE),
    ('multipart/related; type="image/png"', None, FRAMES),
    (f"multipart/related; transfer-syntax={JPEG}", None, FRAMES),
    ("application/dicom+json;q=0", None, METADATA),
    ("*/*;q=0", None, METADATA),
    ("application/dicom+json", "image/jpeg", METADATA),
    ("image/*", None, METADATA),
    ("application/dicom+json", None, INSTANCE),
    ("*/*", None, ()),
]
NOT_ACCEPTABLE_IDS = [
    "unknown-type",
    "ohif-frames-header-on-rendered-without-query",
    "syntax-not-offered",
    "part-type-not-offered",
    "no-type-means-default-part-only",
    "only-refusal",
    "refuse-everything",
    "query-wins-even-when-it-fails",
    "wildcard-without-match",
    "metadata-asked-of-instance",
    "no-offers",
]


@pytest.mark.parametrize(("accept", "query", "offers"), NOT_ACCEPTABLE, ids=NOT_ACCEPTABLE_IDS)
def test_negotiate_raises_not_acceptable_naming_the_offers(
    accept: str | None, query: str | None, offers: tuple[Offer, ...]
) -> None:
    with pytest.raises(NotAcceptable) as caught:
        negotiate(accept, offers, accept_query=query)
    assert caught.value.status == 406
    for offer in offers:
        assert offer.describe() in caught.value.message


def test_not_acceptable_message_names_multipart_part_types() -> None:
    with pytest.raises(NotAcceptable, match='multipart/related; type="application/octet-stream"'):
        negotiate("application/pdf", FRAMES)


@pytest.mark.parametrize("query", ["image/jpeg;q=5", "image"], ids=["bad-q-in-query", "garbage-query"])
def test_negotiate_reports_a_malformed_accept_query_as_bad_request(query: str) -> None:
    with pytest.raises(BadRequest):
        negotiate("image/jpeg", RENDERED, accept_query=query)


def test_offer_normalises_case_and_sets() -> None:
    offer = Offer("Multipart/Related", "Application/DICOM", {EXPLICIT}, EXPLICIT)  # type: ignore[arg-type]
    assert (offer.media_type, offer.part_type) == ("multipart/related", "application/dicom")
    assert isinstance(offer.transfer_syntaxes, frozenset)


def test_offer_default_syntax_must_be_offered() -> None:
    with pytest.raises(ValueError, match="default_transfer_syntax"):
        Offer("application/dicom", None, frozenset({EXPLICIT}), JPEG)


def test_a_repeated_accept_header_gets_the_same_answer_and_a_list_of_its_own() -> None:
    """Parses are kept per header value: what a caller does with its list reaches no later caller,
    and a long header (not kept) is answered alike."""
    header = "multipart/related; type=application/octet-stream; transfer-syntax=*"
    first = parse_accept(header)
    first.clear()
    again = parse_accept(header)
    assert [(media_range.type, media_range.params) for media_range in again] == [
        ("multipart/related", (("type", "application/octet-stream"), ("transfer-syntax", "*")))
    ]
    long_header = ", ".join(["image/png;q=0.1"] * 40 + ["image/jpeg"])
    assert len(long_header) > 512
    assert negotiate(long_header, RENDERED).offer.media_type == "image/jpeg"
    assert negotiate(long_header, tuple(RENDERED)) == negotiate(long_header, list(RENDERED))


def test_a_malformed_value_is_refused_every_time_it_is_sent() -> None:
    for _ in range(2):
        with pytest.raises(BadRequest):
            parse_media_type("multipart/related; type")
        with pytest.raises(BadRequest):
            negotiate("image/jpeg;q=5", RENDERED)
