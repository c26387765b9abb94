"""WADO-RS over HTTP: instances, frames, metadata, bulk data and rendered images, streamed."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from shared.core import transfer_syntax as tsx
from shared.core.errors import BadRequest
from shared.core.media import Offer
from shared.core.model import StoredInstance
from shared.core.multipart import MultipartWriter, closing_delimiter, part_header
from shared.core.render import render_frame
from shared.core.service import DicomwebService, Frame
from shared.web.common import JSON_OFFERS, app_for, base_url, guarded, negotiate_request, uids
from shared.web.streaming import prefetched

DICOM = "application/dicom"
MULTIPART = "multipart/related"
OCTET = "application/octet-stream"
_MAX_FRAMES_PER_REQUEST = 10_000


def _part_type(stored: StoredInstance, ts: str) -> str:
    return f"{DICOM}; transfer-syntax={stored.transfer_syntax if ts == '*' else ts}"


def _multipart_instances(
    service: DicomwebService, found: Sequence[StoredInstance], ts: str, writer: MultipartWriter
) -> Iterator[bytes]:
    for stored in found:
        yield writer.start_part(_part_type(stored, ts))
        yield from service.instance_bytes(stored, ts)
    yield writer.end()


def _multipart_length(found: Sequence[StoredInstance], ts: str, boundary: str) -> int:
    """The length of the body `_multipart_instances` writes when every instance goes as stored.

    Sent as Content-Length: the body then goes without chunked framing, which cost the server a
    copy of every chunk (the dev host's HTTP server joins each chunk with its framing) and a
    client the decoding of it, and a client knows how much is coming."""
    header_lengths: dict[tuple[str, bool], int] = {}
    total = 0
    for k, stored in enumerate(found):
        key = (_part_type(stored, ts), k == 0)
        length = header_lengths.get(key)
        if length is None:
            length = header_lengths[key] = len(part_header(boundary, key[0], first=key[1]))
        total += length + stored.size
    return total + len(closing_delimiter(boundary, any_parts=bool(found)))


@guarded
async def retrieve(request: Request) -> Response:
    """WADO-RS: GET /studies/{study}[/series/{series}[/instances/{instance}]]."""
    app = app_for(request)
    study, series, instance = uids(request, "study", "series", "instance")
    assert study is not None
    service = app.service
    found = await run_in_threadpool(service.find, study, series, instance)
    syntaxes = service.instance_syntaxes(found)
    default = tsx.EXPLICIT_VR_LITTLE_ENDIAN if tsx.EXPLICIT_VR_LITTLE_ENDIAN in syntaxes else None
    offers = [Offer(MULTIPART, DICOM, syntaxes, default)]
    if instance is not None:
        offers.append(Offer(DICOM, None, syntaxes, default))
    chosen = negotiate_request(request, offers)
    ts = chosen.transfer_syntax or "*"
    as_stored = all(service.as_stored(stored, ts) for stored in found)  # sizes known before reading
    if chosen.offer.media_type == DICOM:
        length = {"content-length": str(found[0].size)} if as_stored else {}
        return StreamingResponse(
            prefetched(service.instance_bytes(found[0], ts)), media_type=DICOM, headers=length
        )
    writer = MultipartWriter()
    headers = {"content-type": writer.content_type(DICOM, None if ts == "*" else ts)}
    if as_stored:
        headers["content-length"] = str(_multipart_length(found, ts, writer.boundary))
    return StreamingResponse(prefetched(_multipart_instances(service, found, ts, writer)), headers=headers)


def parse_frame_list(text: str) -> list[int]:
    numbers: list[int] = []
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit() or int(item) < 1:
            raise BadRequest("frame numbers are a comma-separated list of integers from 1")
        numbers.append(int(item))
    if len(numbers) > _MAX_FRAMES_PER_REQUEST:
        raise BadRequest(f"at most {_MAX_FRAMES_PER_REQUEST} frames can be asked for at once")
    return numbers


def _frame_part_type(frame: Frame) -> str:
    return f"{tsx.frame_media_type(frame.transfer_syntax)}; transfer-syntax={frame.transfer_syntax}"


@guarded
async def retrieve_frames(request: Request) -> Response:
    """WADO-RS: GET /studies/{study}/series/{series}/instances/{instance}/frames/{frames}."""
    app = app_for(request)
    study, series, instance = uids(request, "study", "series", "instance")
    assert study and series and instance
    numbers = parse_frame_list(request.path_params.get("frames", ""))
    service = app.service
    stored = (await run_in_threadpool(service.find, study, series, instance))[0]
    index = await run_in_threadpool(service.check_frames, stored, numbers)
    syntaxes, as_stored = service.frame_syntaxes(stored)
    media = tsx.frame_media_type(as_stored)
    offers = [
        Offer(
            MULTIPART,
            OCTET,
            syntaxes | {as_stored},
            tsx.EXPLICIT_VR_LITTLE_ENDIAN if tsx.EXPLICIT_VR_LITTLE_ENDIAN in syntaxes else as_stored,
        )
    ]
    if media != OCTET:
        offers.append(Offer(MULTIPART, media, frozenset({as_stored}), as_stored))
    if len(numbers) == 1:
        if tsx.EXPLICIT_VR_LITTLE_ENDIAN in syntaxes:
            offers.append(
                Offer(OCTET, None, frozenset({tsx.EXPLICIT_VR_LITTLE_ENDIAN}), tsx.EXPLICIT_VR_LITTLE_ENDIAN)
            )
        if media != OCTET:
            offers.append(Offer(media, None, frozenset({as_stored}), as_stored))
    chosen = negotiate_request(request, offers)
    ts = chosen.transfer_syntax or "*"
    if ts == "*" and len(chosen.offer.transfer_syntaxes) == 1:
        # "*" means any syntax of the chosen offer: single-part octet-stream is native only
        (ts,) = chosen.offer.transfer_syntaxes
    frames = service.iter_frames(stored, index, numbers, ts)
    if chosen.offer.media_type != MULTIPART:
        frame = await run_in_threadpool(next, frames)
        return Response(frame.data, media_type=_frame_part_type(frame).split(";")[0])
    writer = MultipartWriter()

    def body() -> Iterator[bytes]:
        for frame in frames:
            yield writer.start_part(_frame_part_type(frame))
            yield frame.data
        yield writer.end()

    part_type = chosen.offer.part_type or OCTET
    return StreamingResponse(prefetched(body()), headers={"content-type": writer.content_type(part_type)})


@guarded
async def retrieve_metadata(request: Request) -> Response:
    """WADO-RS: GET .../metadata at study, series and instance level."""
    app = app_for(request)
    study, series, instance = uids(request, "study", "series", "instance")
    assert study is not None
    negotiate_request(request, JSON_OFFERS)
    found = await run_in_threadpool(app.service.find, study, series, instance)
    return StreamingResponse(
        prefetched(app.service.metadata(found, base_url(request, app))), media_type="application/dicom+json"
    )


@guarded
async def retrieve_rendered(request: Request) -> Response:
    """WADO-RS: GET .../instances/{instance}/rendered and .../frames/{frame}/rendered."""
    app = app_for(request)
    study, series, instance = uids(request, "study", "series", "instance")
    assert study and series and instance
    frame_text = request.path_params.get("frame")
    number = parse_frame_list(frame_text)[0] if frame_text is not None else 1
    if frame_text is not None and "," in frame_text:
        raise BadRequest("rendered frames are asked for one at a time")
    quality_text = request.query_params.get("quality", "90")
    if not quality_text.isdigit() or not 1 <= int(quality_text) <= 100:
        raise BadRequest("quality must be an integer from 1 to 100")
    chosen = negotiate_request(request, [Offer("image/jpeg"), Offer("image/png")])
    service = app.service
    stored = (await run_in_threadpool(service.find, study, series, instance))[0]
    await run_in_threadpool(service.check_frames, stored, [number])

    def render() -> bytes:
        with service.open_instance(stored) as fp:
            return render_frame(fp, number, chosen.offer.media_type, int(quality_text))

    return Response(await run_in_threadpool(render), media_type=chosen.offer.media_type)


@guarded
async def retrieve_bulkdata(request: Request) -> Response:
    """WADO-RS: GET .../instances/{instance}/bulk/{path} (the BulkDataURI of the metadata)."""
    app = app_for(request)
    study, series, instance = uids(request, "study", "series", "instance")
    assert study and series and instance
    path = request.path_params.get("path", "")
    service = app.service
    stored = (await run_in_threadpool(service.find, study, series, instance))[0]
    offers = [Offer(MULTIPART, OCTET), Offer(OCTET)]
    chosen = negotiate_request(request, offers)
    value = await run_in_threadpool(service.bulk_value, stored, path)
    if chosen.offer.media_type == OCTET:
        return Response(value, media_type=OCTET)
    writer = MultipartWriter()
    body = writer.start_part(OCTET) + value + writer.end()
    return Response(body, headers={"content-type": writer.content_type(OCTET)})
