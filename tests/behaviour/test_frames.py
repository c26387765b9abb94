"""WADO-RS frames through HTTP, as OHIF asks for them, over native, encapsulated, deflated and
big-endian instances: the bytes equal pydicom's frames and the part says which syntax they are in."""

from __future__ import annotations

import numpy as np
import pytest

from tests.behaviour import Instance, expected_frames, fresh, parse_multipart
from tests.behaviour.conftest import Server

OHIF = "multipart/related; type=application/octet-stream; transfer-syntax=*"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
OCTET = "application/octet-stream"

# (id, file, part media type for the stored syntax)
FRAME_FILES = [
    ("native-ct", "ct/CT_small.dcm", OCTET),
    ("native-rgb-odd-length", "nm_sc/SC_rgb_small_odd.dcm", OCTET),
    ("native-multiframe-32bit", "rt/rtdose.dcm", OCTET),
    ("native-multiframe-rgb", "sm/highdicom_sm_image.dcm", OCTET),
    ("jpeg-baseline", "ct/ct_brain_jpeg.dcm", "image/jpeg"),
    ("jpeg-lossless", "nm_sc/JPEG-LL.dcm", "image/jpeg"),
    ("jpeg-ls-multiframe", "sm/highdicom_sm_image_jpegls.dcm", "image/jls"),
    ("rle-2-frames", "nm_sc/SC_rgb_rle_2frame.dcm", "image/dicom-rle"),
    ("rle-multiframe", "mr/emri_small_RLE.dcm", "image/dicom-rle"),
    ("j2k", "us/US1_J2KR.dcm", "image/jp2"),
    ("j2k-multiframe", "mr/emri_small_jpeg_2k_lossless.dcm", "image/jp2"),
    ("deflated", "nm_sc/image_dfl.dcm", OCTET),
    ("big-endian-rgb", "us/ExplVR_BigEnd.dcm", OCTET),
    ("big-endian-16bit", "mr/MR_small_bigendian.dcm", OCTET),
    ("implicit-le", "mr/MR_small_implicit.dcm", OCTET),
]


def _frames(
    server: Server, instance: Instance, frame_list: str, accept: str = OHIF
) -> list[tuple[str, bytes]]:
    response = server.get(f"{instance.path}/frames/{frame_list}", accept)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("multipart/related")
    return [
        (p.content_type, p.data) for p in parse_multipart(response.headers["content-type"], response.content)
    ]


def _native_syntax(instance: Instance) -> bool:
    return instance.transfer_syntax in (
        EXPLICIT_LE,
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.2",
        "1.2.840.10008.1.2.1.99",
    )


@pytest.mark.parametrize(("source", "media"), [f[1:] for f in FRAME_FILES], ids=[f[0] for f in FRAME_FILES])
def test_ohif_frames_equal_pydicom_frames(server: Server, source: str, media: str) -> None:
    instance = fresh(source)
    server.stored(instance)
    ds = instance.dataset()
    expected = expected_frames(ds)
    numbers = sorted({1, len(expected)})
    for number in numbers:
        ((content_type, data),) = _frames(server, instance, str(number))
        assert content_type.split(";")[0].strip() == media
        syntax = EXPLICIT_LE if _native_syntax(instance) else instance.transfer_syntax
        assert f"transfer-syntax={syntax}" in content_type.replace(" ", "")
        assert data == expected[number - 1], f"frame {number}"


@pytest.mark.parametrize(
    "source",
    [
        "ct/CT_small.dcm",
        "mr/MR_small_bigendian.dcm",
        "nm_sc/image_dfl.dcm",
        "rt/rtdose.dcm",
        "mr/MR_small_implicit.dcm",
    ],
    ids=["native", "big-endian", "deflated", "32-bit-multiframe", "implicit"],
)
def test_native_frames_are_little_endian_pixels(server: Server, source: str) -> None:
    """Independent of the byte slicing: the frame decodes to pydicom's pixel array."""
    instance = fresh(source)
    server.stored(instance)
    ds = instance.dataset()
    pixels = ds.pixel_array
    count = int(ds.get("NumberOfFrames") or 1)
    frame = pixels[count - 1] if count > 1 else pixels
    ((_, data),) = _frames(server, instance, str(count))
    got = np.frombuffer(data, dtype=pixels.dtype.newbyteorder("<")).reshape(frame.shape)
    np.testing.assert_array_equal(got, frame)


@pytest.mark.parametrize(
    ("source", "order"),
    [
        ("mr/emri_small_RLE.dcm", [3, 1]),
        ("rt/rtdose.dcm", [3, 1]),
        ("sm/highdicom_sm_image_jpegls.dcm", [25, 2, 2, 7]),
    ],
    ids=["rle", "native", "jpeg-ls-repeated"],
)
def test_frames_come_in_the_order_asked(server: Server, source: str, order: list[int]) -> None:
    instance = fresh(source)
    server.stored(instance)
    expected = expected_frames(instance.dataset())
    parts = _frames(server, instance, ",".join(map(str, order)))
    assert [data for _, data in parts] == [expected[n - 1] for n in order]


def test_explicit_little_endian_frames_decode_encapsulated_data(server: Server) -> None:
    instance = fresh("nm_sc/JPEG-LL.dcm")  # lossless: decoding is exact
    server.stored(instance)
    accept = f"multipart/related; type=application/octet-stream; transfer-syntax={EXPLICIT_LE}"
    ((content_type, data),) = _frames(server, instance, "1", accept)
    assert content_type.split(";")[0] == OCTET
    assert f"transfer-syntax={EXPLICIT_LE}" in content_type.replace(" ", "")
    pixels = instance.dataset().pixel_array
    np.testing.assert_array_equal(
        np.frombuffer(data, dtype=pixels.dtype.newbyteorder("<")).reshape(pixels.shape), pixels
    )


@pytest.mark.parametrize(
    "source", ["ct/CT_small.dcm", "mr/MR_small_bigendian.dcm"], ids=["native", "big-endian"]
)
def test_single_part_octet_stream_for_one_frame(server: Server, source: str) -> None:
    instance = fresh(source)
    server.stored(instance)
    for accept in (OCTET, f"{OCTET}; transfer-syntax={EXPLICIT_LE}", f"{OCTET}; transfer-syntax=*"):
        response = server.get(f"{instance.path}/frames/1", accept)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].split(";")[0] == OCTET
        assert response.content == expected_frames(instance.dataset())[0]


def test_single_part_octet_stream_of_an_encapsulated_frame_is_decoded(server: Server) -> None:
    instance = fresh("nm_sc/JPEG-LL.dcm")
    server.stored(instance)
    pixels = instance.dataset().pixel_array
    for accept in (OCTET, f"{OCTET}; transfer-syntax=*"):
        response = server.get(f"{instance.path}/frames/1", accept)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].split(";")[0] == OCTET, accept
        got = np.frombuffer(response.content, dtype=pixels.dtype.newbyteorder("<")).reshape(pixels.shape)
        np.testing.assert_array_equal(got, pixels)


def test_single_part_in_the_stored_image_type(server: Server) -> None:
    instance = fresh("us/US1_J2KR.dcm")
    server.stored(instance)
    response = server.get(f"{instance.path}/frames/1", "image/jp2")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].split(";")[0] == "image/jp2"
    assert response.content == expected_frames(instance.dataset())[0]


BAD_FRAME_LISTS = [
    ("zero", "0"),
    ("letters", "abc"),
    ("empty-item", "1,,2"),
    ("negative", "-1"),
    ("zero-in-list", "1,0"),
]


@pytest.mark.parametrize("frame_list", [b[1] for b in BAD_FRAME_LISTS], ids=[b[0] for b in BAD_FRAME_LISTS])
def test_bad_frame_lists_are_400(server: Server, frame_list: str) -> None:
    instance = fresh("nm_sc/SC_rgb_rle_2frame.dcm")
    server.stored(instance)
    response = server.get(f"{instance.path}/frames/{frame_list}", OHIF)
    assert response.status_code == 400, response.text


@pytest.mark.parametrize("frame_list", ["3", "1,3", "99999"], ids=["past-last", "one-past-in-list", "far"])
def test_frames_past_the_last_are_404(server: Server, frame_list: str) -> None:
    instance = fresh("nm_sc/SC_rgb_rle_2frame.dcm")
    server.stored(instance)
    response = server.get(f"{instance.path}/frames/{frame_list}", OHIF)
    assert response.status_code == 404, response.text


def test_frames_of_an_instance_without_pixels_are_404(server: Server) -> None:
    instance = fresh("sr/test-SR.dcm")
    server.stored(instance)
    assert server.get(f"{instance.path}/frames/1", OHIF).status_code == 404
