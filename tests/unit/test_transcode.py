"""Transcoding stored instances to Explicit VR Little Endian: pixels, attributes and frames survive."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import UID

from shared.core import transfer_syntax as tsx
from shared.core.errors import NotAcceptable
from shared.core.frames import decode_frame, decoded_photometric_interpretation, index_frames, read_frame
from shared.core.transcode import transcode_to_explicit_le

DATA = Path(__file__).resolve().parents[1] / "data"
# One sample (or more) of every stored syntax the server can transcode.
SAMPLES = [
    "mr/MR_small_implicit.dcm",
    "seg/seg_image_ct_binary.dcm",
    "rt/rtdose.dcm",
    "mr/MR_small.dcm",
    "ct/eCT_Supplemental.dcm",
    "us/examples_palette.dcm",
    "mr/MR_small_bigendian.dcm",
    "us/ExplVR_BigEnd.dcm",
    "nm_sc/image_dfl.dcm",
    "ct/ct_brain_jpeg.dcm",
    "nm_sc/SC_rgb_jpeg_dcmtk.dcm",
    "us/examples_ybr_color.dcm",
    "nm_sc/JPGExtended.dcm",
    "nm_sc/JPEG-LL.dcm",
    "nm_sc/SC_rgb_jpeg_gdcm.dcm",
    "mr/MR_small_jpeg_ls_lossless.dcm",
    "sm/highdicom_sm_image_jpegls.dcm",
    "nm_sc/JPEGLSNearLossless_16.dcm",
    "mr/MR_small_jp2klossless.dcm",
    "mr/emri_small_jpeg_2k_lossless.dcm",
    "us/US1_J2KR.dcm",
    "nm_sc/JPEG2000.dcm",
    "cr_dx/RG3_J2KR.dcm",
    "mr/MR_small_RLE.dcm",
    "mr/emri_small_RLE.dcm",
    "nm_sc/SC_rgb_rle_2frame.dcm",
]
# rtdose.dcm holds a UI value pydicom finds invalid; it warns when the value is written again.
INVALID_UI = pytest.mark.filterwarnings("ignore:.*Invalid value for VR UI")


def _param(name: str) -> object:
    return pytest.param(name, id=name, marks=[INVALID_UI] if name == "rt/rtdose.dcm" else [])


def _transcode(name: str) -> bytes:
    out = io.BytesIO()
    with open(DATA / name, "rb") as src:
        transcode_to_explicit_le(src, out)
    return out.getvalue()


@pytest.mark.parametrize("name", [_param(n) for n in SAMPLES])
def test_transcoded_pixels_equal_the_stored_pixels(name: str) -> None:
    before = dcmread(DATA / name)
    after = dcmread(io.BytesIO(_transcode(name)))
    assert after.file_meta.TransferSyntaxUID == tsx.EXPLICIT_VR_LITTLE_ENDIAN
    assert not after.original_encoding[0] and after.original_encoding[1]  # explicit VR, little endian
    assert np.array_equal(after.pixel_array, before.pixel_array)
    assert after.SOPInstanceUID == before.SOPInstanceUID
    assert after.file_meta.MediaStorageSOPInstanceUID == before.SOPInstanceUID
    syntax = str(before.file_meta.TransferSyntaxUID)
    expected = decoded_photometric_interpretation(syntax, before.PhotometricInterpretation)
    assert after.PhotometricInterpretation == expected
    if tsx.is_encapsulated(syntax) and before.SamplesPerPixel == 3:
        assert after.PlanarConfiguration == 0


@pytest.mark.parametrize("name", [_param(n) for n in SAMPLES])
def test_frames_of_the_transcoded_instance_equal_decoded_frames(name: str) -> None:
    data = _transcode(name)
    index = index_frames(io.BytesIO(data))
    assert index.direct
    with open(DATA / name, "rb") as src:
        for number in sorted({1, index.number_of_frames}):
            stored = read_frame(lambda offset, length: data[offset : offset + length], index, number)
            assert stored == decode_frame(src, number)


@pytest.mark.parametrize(
    "name",
    ["ct/ct_brain_jpeg.dcm", "nm_sc/JPEG2000.dcm", "nm_sc/JPEGLSNearLossless_16.dcm"],
    ids=lambda value: str(value),
)
def test_lossy_sources_are_marked_lossy(name: str) -> None:
    assert dcmread(io.BytesIO(_transcode(name))).LossyImageCompression == "01"


def test_big_endian_words_other_than_pixel_data_are_swapped_too() -> None:
    after = dcmread(io.BytesIO(_transcode("mr/MR_small_bigendian.dcm")))
    little = dcmread(DATA / "mr/MR_small.dcm")
    assert after.PixelData == little.PixelData
    assert after.Rows == little.Rows and after.WindowCenter == little.WindowCenter


@pytest.mark.parametrize(
    "name", ["sr/test-SR.dcm", "rt/rtplan.dcm", "other/waveform_ecg.dcm"], ids=lambda value: str(value)
)
def test_instances_without_pixel_data_keep_their_attributes(name: str) -> None:
    before = dcmread(DATA / name)
    after = dcmread(io.BytesIO(_transcode(name)))
    assert after.file_meta.TransferSyntaxUID == tsx.EXPLICIT_VR_LITTLE_ENDIAN
    assert [e.tag for e in after] == [e.tag for e in before]
    if "WaveformSequence" in before:
        assert after.WaveformSequence[0].WaveformData == before.WaveformSequence[0].WaveformData


def test_a_syntax_without_a_decoder_is_not_acceptable() -> None:
    ds = dcmread(DATA / "ct/ct_brain_jpeg.dcm")
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")  # MPEG2: no plugin here
    src = io.BytesIO()
    ds.save_as(src)
    with pytest.raises(NotAcceptable):
        transcode_to_explicit_le(src, io.BytesIO())
