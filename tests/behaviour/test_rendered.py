"""WADO-RS rendered resources through HTTP: JPEG by default, PNG on request, OHIF's `accept` query
parameter, quality, frames of multi-frame instances, grey (MONOCHROME1/2) and colour images."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.behaviour import Instance, fresh
from tests.behaviour.conftest import Server

OHIF_MULTIPART = "multipart/related; type=application/octet-stream; transfer-syntax=*"


def _image(
    server: Server, path: str, accept: str | None, expected_type: str, query: dict[str, str] | None = None
) -> Image.Image:
    response = server.get(path, accept, params=query)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].split(";")[0] == expected_type
    image = Image.open(io.BytesIO(response.content))
    image.load()
    assert image.format == expected_type.split("/")[1].upper()
    return image


@pytest.fixture
def ct(server: Server) -> Instance:
    instance = fresh("ct/CT_small.dcm")
    server.stored(instance)
    return instance


@pytest.mark.parametrize(
    "accept", [None, "*/*", "image/*", "image/jpeg"], ids=["none", "any", "image-any", "jpeg"]
)
def test_jpeg_is_the_default(server: Server, ct: Instance, accept: str | None) -> None:
    image = _image(server, f"{ct.path}/rendered", accept, "image/jpeg")
    assert image.size == (128, 128)
    assert image.mode == "L"


def test_png_on_request(server: Server, ct: Instance) -> None:
    assert _image(server, f"{ct.path}/rendered", "image/png", "image/png").size == (128, 128)
    assert _image(server, f"{ct.path}/rendered", "image/jpeg;q=0.5, image/png", "image/png").size == (
        128,
        128,
    )


def test_accept_query_parameter_beats_the_accept_header(server: Server, ct: Instance) -> None:
    """OHIF sends `?accept=image%2Fjpeg` with a multipart Accept header."""
    response = server.get(f"{ct.path}/rendered?accept=image%2Fjpeg", OHIF_MULTIPART)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    _image(server, f"{ct.path}/rendered", OHIF_MULTIPART, "image/png", {"accept": "image/png"})


def test_unacceptable_rendered_type_is_406(server: Server, ct: Instance) -> None:
    assert server.get(f"{ct.path}/rendered", "image/gif").status_code == 406
    assert server.get(f"{ct.path}/rendered", OHIF_MULTIPART).status_code == 406


@pytest.mark.parametrize("quality", ["0", "101", "abc", "-5", "50.5"])
def test_bad_quality_is_400(server: Server, ct: Instance, quality: str) -> None:
    response = server.get(f"{ct.path}/rendered", "image/jpeg", params={"quality": quality})
    assert response.status_code == 400, response.text


def test_quality_changes_the_jpeg(server: Server, ct: Instance) -> None:
    low = server.get(f"{ct.path}/rendered", "image/jpeg", params={"quality": "5"})
    high = server.get(f"{ct.path}/rendered", "image/jpeg", params={"quality": "100"})
    assert low.status_code == high.status_code == 200
    assert len(low.content) < len(high.content)


def test_a_frame_of_a_multiframe_instance(server: Server) -> None:
    instance = fresh("mr/emri_small_RLE.dcm")  # 10 frames of 64x64
    server.stored(instance)
    first = _image(server, f"{instance.path}/frames/1/rendered", None, "image/png", {"accept": "image/png"})
    last = _image(server, f"{instance.path}/frames/10/rendered", None, "image/png", {"accept": "image/png"})
    assert first.size == last.size == (64, 64)
    assert first.tobytes() != last.tobytes()
    assert server.get(f"{instance.path}/frames/11/rendered", "image/jpeg").status_code == 404
    assert server.get(f"{instance.path}/frames/0/rendered", "image/jpeg").status_code == 400
    assert server.get(f"{instance.path}/frames/1,2/rendered", "image/jpeg").status_code == 400


# (id, file, size (width, height), PIL mode)
RENDERED = [
    ("monochrome1-dx", "cr_dx/highdicom_dx_image.dcm", (211, 169), "L"),
    ("monochrome2-jpeg-lossless", "nm_sc/JPEG-LL.dcm", (256, 1024), "L"),
    ("rgb-jpeg", "nm_sc/SC_rgb_jpeg_gdcm.dcm", (100, 100), "RGB"),
    ("ybr-j2k", "us/US1_J2KR.dcm", (640, 480), "RGB"),
    ("palette", "us/examples_palette.dcm", None, "RGB"),
    ("big-endian-rgb", "us/ExplVR_BigEnd.dcm", (80, 60), "RGB"),
    ("deflated", "nm_sc/image_dfl.dcm", (512, 512), "L"),
    ("rtdose-32bit", "rt/rtdose.dcm", (10, 10), "L"),
]


@pytest.mark.parametrize(("source", "size", "mode"), [r[1:] for r in RENDERED], ids=[r[0] for r in RENDERED])
def test_grey_and_colour_images_render(
    server: Server, source: str, size: tuple[int, int] | None, mode: str
) -> None:
    instance = fresh(source)
    server.stored(instance)
    ds = instance.dataset()
    expected_size = size or (int(ds.Columns), int(ds.Rows))
    for media in ("image/jpeg", "image/png"):
        image = _image(server, f"{instance.path}/rendered", media, media)
        assert image.size == expected_size
        assert image.mode == mode


def test_monochrome1_is_inverted(server: Server) -> None:
    """MONOCHROME1: the lowest stored value is white. Rendering the same pixels as MONOCHROME2
    gives the inverse picture."""
    mono1 = fresh("cr_dx/highdicom_dx_image.dcm")
    mono2 = fresh(
        "cr_dx/highdicom_dx_image.dcm",
        PhotometricInterpretation="MONOCHROME2",
        PresentationLUTShape="IDENTITY",
    )
    server.stored(mono1, mono2)
    a = _image(server, f"{mono1.path}/rendered", "image/png", "image/png")
    b = _image(server, f"{mono2.path}/rendered", "image/png", "image/png")
    pairs = list(zip(a.tobytes(), b.tobytes(), strict=True))
    assert sum(1 for x, y in pairs if abs(x + y - 255) <= 2) > 0.95 * len(pairs)


def test_rendering_an_instance_without_pixels_is_4xx(server: Server) -> None:
    instance = fresh("sr/test-SR.dcm")
    server.stored(instance)
    response = server.get(f"{instance.path}/rendered", "image/jpeg")
    assert 400 <= response.status_code < 500
