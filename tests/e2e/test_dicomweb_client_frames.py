"""WADO-RS frames through `dicomweb-client`: native, encapsulated, multi-frame, deflated, big endian.

Native frames are compared, as pixel values, with pydicom's decoding of the instance sent
(`pydicom.pixels.pixel_array(ds, index=...)`), in the stored bits (Bits Stored) since pydicom
sign-extends them and the server sends the stored words. Compressed frames asked for as stored are
compared byte for byte with `pydicom.encaps.generate_frames`; frames asked for in Explicit VR
Little Endian are compared with pydicom's decoding (as RGB for YBR colour, as the server decodes).
"""

from __future__ import annotations

import numpy as np
import pytest
import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels import pixel_array, unpack_bits
from pydicom.uid import ExplicitVRLittleEndian

from tests.e2e.conftest import Corpus

pytestmark = pytest.mark.e2e

NATIVE_LE = (("application/octet-stream", ExplicitVRLittleEndian),)
OCTET_AS_STORED = (("application/octet-stream", "*"),)

NATIVE: list[tuple[str, list[int]]] = [
    ("ct/CT_small.dcm", [1]),
    ("ct/ct2_series/CT2_17136.dcm", [1]),
    ("ct/eCT_Supplemental.dcm", [2, 1]),
    ("mr/emri_small.dcm", [1, 5, 10]),
    ("mr/examples_overlay.dcm", [1]),
    ("cr_dx/highdicom_dx_image.dcm", [1]),
    ("us/examples_palette.dcm", [1]),
    ("us/ExplVR_BigEnd.dcm", [1]),  # big endian, RGB planar configuration 1
    ("nm_sc/image_dfl.dcm", [1]),  # deflated
    ("nm_sc/SC_rgb_small_odd.dcm", [1]),  # 27 bytes of pixel data plus a padding byte
    ("nm_sc/mlut_18.dcm", [1]),
    ("sm/highdicom_sm_image.dcm", [1, 13, 25]),
    ("seg/liver.dcm", [3, 1]),  # 1-bit
    ("seg/seg_image_ct_binary.dcm", [1, 2, 3]),  # 1-bit, implicit VR, 16x16: frames share bytes
    ("seg/seg_image_ct_binary_fractional.dcm", [2]),
    ("rt/rtdose.dcm", [1, 15]),  # 32-bit, implicit VR
    ("charset/chrX1.dcm", [1]),
]
ENCAPSULATED: list[tuple[str, list[int], str]] = [
    ("ct/ct_brain_jpeg.dcm", [1], "image/jpeg"),
    ("us/examples_ybr_color.dcm", [1, 30], "image/jpeg"),
    ("us/examples_ybr_color.dcm", [30, 15, 2], "image/jpeg"),
    ("nm_sc/SC_rgb_jpeg_dcmtk.dcm", [1], "image/jpeg"),
    ("nm_sc/JPGExtended.dcm", [1], "image/jpeg"),
    ("nm_sc/JPEG-LL.dcm", [1], "image/jpeg"),
    ("sm/highdicom_sm_image_jpegls.dcm", [1, 25], "image/jls"),
    ("us/US1_J2KR.dcm", [1], "image/jp2"),
    ("nm_sc/JPEG2000.dcm", [1], "image/jp2"),
    ("cr_dx/RG3_J2KR.dcm", [1], "image/jp2"),
    ("nm_sc/SC_rgb_rle_2frame.dcm", [2, 1], "image/dicom-rle"),
]


def _ids(cases: list[tuple[str, list[int]]] | list[tuple[str, list[int], str]]) -> list[str]:
    return [f"{case[0]}:{','.join(map(str, case[1]))}" for case in cases]


def _frames(
    client: DICOMwebClient, ds: Dataset, numbers: list[int], media_types: tuple[tuple[str, str], ...] | None
) -> list[bytes]:
    return client.retrieve_instance_frames(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, numbers, media_types=media_types
    )


def _count(ds: Dataset) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


def _native_array(ds: Dataset, data: bytes) -> np.ndarray:
    """A native frame as returned (little endian, the instance's planar configuration) as pixels."""
    rows, cols, spp = ds.Rows, ds.Columns, ds.SamplesPerPixel
    if ds.BitsAllocated == 1:
        return unpack_bits(data)[: rows * cols].reshape(rows, cols)
    dtype = np.dtype(f"<{'i' if ds.PixelRepresentation else 'u'}{ds.BitsAllocated // 8}")
    values = np.frombuffer(data, dtype)[: rows * cols * spp]
    if spp == 1:
        return values.reshape(rows, cols)
    if ds.get("PlanarConfiguration", 0) == 1:
        return values.reshape(spp, rows, cols).transpose(1, 2, 0)
    return values.reshape(rows, cols, spp)


def _stored_bits(array: np.ndarray, bits: int) -> np.ndarray:
    return array.astype(np.int64) & ((1 << bits) - 1)


@pytest.mark.parametrize(("name", "numbers"), NATIVE, ids=_ids(NATIVE))
@pytest.mark.parametrize("media_types", [None, NATIVE_LE], ids=["default Accept", "octet-stream LE"])
def test_native_frames_equal_pydicom_pixels(
    client: DICOMwebClient,
    corpus: Corpus,
    name: str,
    numbers: list[int],
    media_types: tuple[tuple[str, str], ...] | None,
) -> None:
    ds = corpus.dataset(name)
    frames = _frames(client, ds, numbers, media_types)
    assert len(frames) == len(numbers)
    for number, data in zip(numbers, frames, strict=True):
        expected = pixel_array(ds, index=number - 1, as_rgb=False)
        got = _native_array(ds, data)
        assert got.shape == expected.shape
        bits = 1 if ds.BitsAllocated == 1 else ds.BitsStored
        assert np.array_equal(_stored_bits(got, bits), _stored_bits(expected, bits)), f"frame {number}"


@pytest.mark.parametrize(("name", "numbers", "image_type"), ENCAPSULATED, ids=_ids(ENCAPSULATED))
def test_compressed_frames_as_stored_equal_the_encapsulated_fragments(
    client: DICOMwebClient, corpus: Corpus, name: str, numbers: list[int], image_type: str
) -> None:
    ds = corpus.dataset(name)
    stored = list(generate_frames(ds.PixelData, number_of_frames=_count(ds)))
    expected = [stored[n - 1] for n in numbers]
    assert _frames(client, ds, numbers, OCTET_AS_STORED) == expected
    syntax = str(ds.file_meta.TransferSyntaxUID)
    assert _frames(client, ds, numbers, ((image_type, syntax),)) == expected


@pytest.mark.parametrize(("name", "numbers", "image_type"), ENCAPSULATED, ids=_ids(ENCAPSULATED))
def test_compressed_frames_in_explicit_vr_little_endian_equal_pydicom_decoding(
    client: DICOMwebClient, corpus: Corpus, name: str, numbers: list[int], image_type: str
) -> None:
    ds = corpus.dataset(name)
    frames = _frames(client, ds, numbers, NATIVE_LE)
    for number, data in zip(numbers, frames, strict=True):
        expected = pixel_array(ds, index=number - 1)  # YBR becomes RGB, as the server decodes
        got = np.frombuffer(data, expected.dtype.newbyteorder("<"))
        assert got.size == expected.size, f"frame {number}"
        assert np.array_equal(got.reshape(expected.shape), expected), f"frame {number}"


@pytest.mark.parametrize(
    ("name", "numbers"),
    [("us/examples_ybr_color.dcm", [31]), ("ct/CT_small.dcm", [1, 2]), ("sr/test-SR.dcm", [1])],
    ids=["past the last of 30", "2 of a single frame", "no pixel data"],
)
def test_frames_that_do_not_exist_are_404(
    client: DICOMwebClient, corpus: Corpus, name: str, numbers: list[int]
) -> None:
    with pytest.raises(requests.HTTPError) as caught:
        _frames(client, corpus.dataset(name), numbers, None)
    assert caught.value.response.status_code == 404
