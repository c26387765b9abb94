"""Rendering frames to JPEG and PNG: size, colour, MONOCHROME1, windowing, LUTs and errors."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from shared.core.errors import BadRequest, NotAcceptable, NotFound
from shared.core.render import render_frame

DATA = Path(__file__).resolve().parents[1] / "data"
SKIPPED = {"malformed", "odd"}  # broken on purpose: covered by the frame tests


def _images() -> list[str]:
    names = []
    for path in sorted(DATA.rglob("*.dcm")):
        name = path.relative_to(DATA).as_posix()
        if name.split("/")[0] in SKIPPED:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if "PixelData" in dcmread(path, force=True, stop_before_pixels=False):
                names.append(name)
    return names


IMAGES = _images()


def _render(source: str | bytes, number: int = 1, media_type: str = "image/png", quality: int = 90) -> bytes:
    data = (DATA / source).read_bytes() if isinstance(source, str) else source
    return render_frame(io.BytesIO(data), number, media_type, quality)


def _pixels(rendered: bytes) -> np.ndarray:  # type: ignore[type-arg]
    image = Image.open(io.BytesIO(rendered))
    image.load()
    return np.asarray(image)


def _edited(name: str, edit) -> bytes:  # type: ignore[no-untyped-def]
    ds = dcmread(DATA / name)
    edit(ds)
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


@pytest.mark.parametrize("media_type", ["image/jpeg", "image/png"])
@pytest.mark.parametrize("name", IMAGES, ids=IMAGES)
def test_every_image_renders_to_a_decodable_image_of_its_size(name: str, media_type: str) -> None:
    ds = dcmread(DATA / name, stop_before_pixels=True, force=True)
    count = int(ds.get("NumberOfFrames") or 1)
    rendered = _render(name, count, media_type)
    image = Image.open(io.BytesIO(rendered))
    image.load()
    assert image.format == ("JPEG" if media_type == "image/jpeg" else "PNG")
    assert image.size == (ds.Columns, ds.Rows)
    colour = ds.SamplesPerPixel == 3 or ds.PhotometricInterpretation == "PALETTE COLOR"
    assert image.mode == ("RGB" if colour else "L")


@pytest.mark.parametrize("name", ["cr_dx/RG3_J2KR.dcm", "cr_dx/highdicom_dx_image.dcm"], ids=str)
def test_monochrome1_is_inverted(name: str) -> None:
    def as_monochrome2(ds: Dataset) -> None:
        assert ds.PhotometricInterpretation == "MONOCHROME1"
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.pop("PresentationLUTShape", None)

    monochrome1 = _pixels(_render(name)).astype(int)
    monochrome2 = _pixels(_render(_edited(name, as_monochrome2))).astype(int)
    assert np.array_equal(monochrome1, 255 - monochrome2)


def test_presentation_lut_shape_inverse_inverts_monochrome2() -> None:
    def inverse(ds: Dataset) -> None:
        ds.PresentationLUTShape = "INVERSE"

    plain = _pixels(_render("mr/MR_small.dcm")).astype(int)
    assert np.array_equal(_pixels(_render(_edited("mr/MR_small.dcm", inverse))).astype(int), 255 - plain)


def test_the_window_maps_values_below_to_black_and_above_to_white() -> None:
    ds = dcmread(DATA / "ct/CT_small.dcm")
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    center, width = 40.0, 400.0

    def window(edited: Dataset) -> None:
        edited.WindowCenter, edited.WindowWidth = center, width

    pixels = _pixels(_render(_edited("ct/CT_small.dcm", window)))
    assert (pixels[hu <= center - 0.5 - (width - 1) / 2] == 0).all()
    assert (pixels[hu > center - 0.5 + (width - 1) / 2] == 255).all()
    inside = (hu > center - 150) & (hu < center + 150)
    assert inside.any() and ((pixels[inside] > 0) & (pixels[inside] < 255)).all()


def test_changing_the_window_changes_the_output() -> None:
    def narrow(ds: Dataset) -> None:
        ds.WindowCenter, ds.WindowWidth = 1000, 50

    assert not np.array_equal(
        _pixels(_render("ct/CT_small.dcm")), _pixels(_render(_edited("ct/CT_small.dcm", narrow)))
    )


def test_without_a_window_the_frame_is_stretched_from_its_min_to_its_max() -> None:
    assert "WindowCenter" not in dcmread(DATA / "ct/CT_small.dcm")
    pixels = _pixels(_render("ct/CT_small.dcm"))
    assert pixels.min() == 0 and pixels.max() == 255


def test_the_modality_lut_sequence_is_applied() -> None:
    def reverse_lut(ds: Dataset) -> None:
        item = ds.ModalityLUTSequence[0]
        item.LUTData = list(reversed(item.LUTData))

    as_stored = _pixels(_render("nm_sc/mlut_18.dcm")).astype(int)
    reversed_lut = _pixels(_render(_edited("nm_sc/mlut_18.dcm", reverse_lut))).astype(int)
    assert np.abs(reversed_lut - (255 - as_stored)).max() <= 1


def test_a_voi_lut_sequence_is_used_before_the_window() -> None:
    def add_inverting_lut(ds: Dataset) -> None:
        item = Dataset()
        item.LUTDescriptor = [4096, 0, 12]
        item.LUTData = list(range(4095, -1, -1))
        item["LUTData"].VR = "US"
        ds.VOILUTSequence = Sequence([item])
        ds.WindowCenter, ds.WindowWidth = 1000, 2  # ignored in favour of the LUT

    pixels = _pixels(_render(_edited("mr/MR_small.dcm", add_inverting_lut))).astype(int)
    stored = dcmread(DATA / "mr/MR_small.dcm").pixel_array.astype(int)
    expected = np.rint((4095 - np.clip(stored, 0, 4095)) * 255 / 4095)
    assert np.abs(pixels - expected).max() <= 1


def test_enhanced_multi_frame_uses_shared_and_per_frame_functional_groups() -> None:
    name = "ct/eCT_Supplemental.dcm"
    frame1, frame2 = _pixels(_render(name, 1)), _pixels(_render(name, 2))
    # The shared Pixel Value Transformation (intercept -1024) and window (49/102) give a brain
    # window: a good part of the frame lies strictly inside it.
    assert ((frame1 > 0) & (frame1 < 255)).mean() > 0.05

    def own_window_for_frame_2(ds: Dataset) -> None:
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth = 1000, 4000
        ds.PerFrameFunctionalGroupsSequence[1].FrameVOILUTSequence = Sequence([voi])

    edited = _edited(name, own_window_for_frame_2)
    assert np.array_equal(_pixels(_render(edited, 1)), frame1)
    assert not np.array_equal(_pixels(_render(edited, 2)), frame2)


def test_palette_colour_is_rendered_through_its_lookup_tables() -> None:
    pixels = _pixels(_render("us/examples_palette.dcm")).astype(int)
    assert pixels.shape[-1] == 3
    assert (pixels[..., 0] != pixels[..., 2]).any()  # real colour, not grey


def test_ybr_jpeg_is_rendered_as_rgb() -> None:
    expected = dcmread(DATA / "nm_sc/SC_rgb_jpeg_dcmtk.dcm").pixel_array  # pydicom converts YBR to RGB
    assert np.array_equal(_pixels(_render("nm_sc/SC_rgb_jpeg_dcmtk.dcm")), expected)


def test_jpeg_quality_changes_the_size() -> None:
    low = _render("cr_dx/highdicom_dx_image.dcm", media_type="image/jpeg", quality=5)
    high = _render("cr_dx/highdicom_dx_image.dcm", media_type="image/jpeg", quality=100)
    assert len(low) < len(high)


@pytest.mark.parametrize(
    ("name", "number", "media_type", "quality", "error"),
    [
        ("ct/CT_small.dcm", 1, "image/gif", 90, NotAcceptable),
        ("ct/CT_small.dcm", 1, "application/dicom", 90, NotAcceptable),
        ("ct/CT_small.dcm", 1, "image/jpeg", 0, BadRequest),
        ("ct/CT_small.dcm", 1, "image/jpeg", 101, BadRequest),
        ("ct/CT_small.dcm", 2, "image/png", 90, NotFound),
        ("mr/emri_small.dcm", 11, "image/png", 90, NotFound),
        ("ct/CT_small.dcm", 0, "image/png", 90, BadRequest),
        ("sr/test-SR.dcm", 1, "image/png", 90, NotAcceptable),
    ],
    ids=[
        "gif",
        "dicom",
        "quality-0",
        "quality-101",
        "past-the-only-frame",
        "past-the-tenth-frame",
        "frame-0",
        "no-pixel-data",
    ],
)
def test_bad_requests_are_rejected(
    name: str, number: int, media_type: str, quality: int, error: type[Exception]
) -> None:
    with pytest.raises(error):
        _render(name, number, media_type, quality)
