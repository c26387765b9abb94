"""WADO-RS metadata, bulk data and rendered images through `dicomweb-client`.

Metadata is parsed with `pydicom.Dataset.from_json`, every BulkDataURI resolved with the client's
`retrieve_bulkdata`, and the result compared element by element with the dataset sent.
"""

from __future__ import annotations

import io

import pytest
import requests
from dicomweb_client import DICOMwebClient
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.sequence import Sequence

from tests.e2e import samples
from tests.e2e.conftest import Corpus, DevHost

pytestmark = pytest.mark.e2e

STORED_NAMES = [s.name for s in samples.STORED]
PIXEL_DATA = 0x7FE00010
TRAILING_PADDING = 0xFFFCFFFC


class BulkData:
    """A `from_json` BulkDataURI handler that fetches each value with the client."""

    def __init__(self, client: DICOMwebClient) -> None:
        self.client = client
        self.uris: dict[str, str] = {}  # tag -> uri

    def __call__(self, tag: str, vr: str, uri: str) -> bytes:
        self.uris[tag] = uri
        (value,) = self.client.retrieve_bulkdata(uri)
        return bytes(value)  # the client's parts are bytearrays, which from_json would take as int lists


def _metadata(client: DICOMwebClient, ds: Dataset) -> tuple[Dataset, BulkData]:
    raw = client.retrieve_instance_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    bulk = BulkData(client)
    return Dataset.from_json(raw, bulk_data_uri_handler=bulk), bulk


def _assert_same(sent: Dataset, got: Dataset, path: str = "") -> None:
    for elem in sent:
        if elem.tag.element == 0 or elem.tag in (PIXEL_DATA, TRAILING_PADDING):
            continue  # not in DICOM JSON (group lengths, padding); pixel data is checked on its own
        where = f"{path}{elem.keyword or elem.tag}"
        assert elem.tag in got, where
        value = got[elem.tag].value
        if isinstance(elem.value, Sequence):
            assert len(value) == len(elem.value), where
            for number, (mine, theirs) in enumerate(zip(elem.value, value, strict=True)):
                _assert_same(mine, theirs, f"{where}[{number}].")
        elif elem.value in (None, b"", "") or elem.VM == 0:
            assert value in (None, b"", "", []), where
        else:
            assert value == elem.value, where


@pytest.mark.parametrize("name", STORED_NAMES, ids=STORED_NAMES)
def test_retrieve_instance_metadata_holds_every_attribute_sent(
    client: DICOMwebClient, corpus: Corpus, dev_host: DevHost, name: str
) -> None:
    sent = corpus.dataset(name)
    got, bulk = _metadata(client, sent)
    _assert_same(sent, got)
    if PIXEL_DATA in sent:
        assert bulk.uris["7FE00010"] == (
            f"{dev_host.url}/studies/{sent.StudyInstanceUID}/series/{sent.SeriesInstanceUID}"
            f"/instances/{sent.SOPInstanceUID}/bulk/7FE00010"
        )
        syntax = sent.file_meta.TransferSyntaxUID
        if syntax.is_encapsulated:
            frames = generate_frames(sent.PixelData, number_of_frames=int(sent.get("NumberOfFrames", 1) or 1))
            assert got.PixelData == b"".join(frames)
        elif syntax.is_little_endian:
            assert got.PixelData == sent.PixelData[: len(got.PixelData)]
            assert len(sent.PixelData) - len(got.PixelData) in (0, 1)  # at most the padding byte


@pytest.mark.parametrize(
    ("name", "tags"),
    [
        ("ct/eCT_Supplemental.dcm", ["00281201", "00281202", "00281203"]),
        ("us/examples_palette.dcm", ["00281201", "00281202", "00281203"]),
        ("mr/examples_overlay.dcm", ["60003000"]),
    ],
    ids=["palette LUT of Enhanced CT", "palette colour US", "overlay data"],
)
def test_large_binary_values_are_bulk_data_uris_that_resolve(
    client: DICOMwebClient, corpus: Corpus, name: str, tags: list[str]
) -> None:
    sent = corpus.dataset(name)
    got, bulk = _metadata(client, sent)
    for tag in tags:
        assert tag in bulk.uris
        assert got[int(tag, 16)].value == sent[int(tag, 16)].value


def test_bulk_data_inside_a_sequence_resolves(client: DICOMwebClient, corpus: Corpus) -> None:
    sent = corpus.dataset("other/waveform_ecg.dcm")
    got, bulk = _metadata(client, sent)
    assert "54001010" in bulk.uris  # WaveformData in WaveformSequence
    assert got.WaveformSequence[0].WaveformData == sent.WaveformSequence[0].WaveformData


@pytest.mark.parametrize(
    ("sample", "level"),
    [
        ("ct/ct2_series/CT2_17106.dcm", "series"),
        ("ct/ct2_series/CT2_17106.dcm", "study"),
        ("nm_sc/JPEG-LL.dcm", "study"),
    ],
    ids=["ct2 series", "ct2 study", "NM study"],
)
def test_retrieve_series_and_study_metadata_list_every_instance(
    client: DICOMwebClient, corpus: Corpus, sample: str, level: str
) -> None:
    ds = corpus.dataset(sample)
    keyword = "SeriesInstanceUID" if level == "series" else "StudyInstanceUID"
    members = [
        corpus.dataset(n) for n in corpus.samples if corpus.dataset(n)[keyword].value == ds[keyword].value
    ]
    if level == "series":
        raw = client.retrieve_series_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID)
    else:
        raw = client.retrieve_study_metadata(ds.StudyInstanceUID)
    by_uid = {m.SOPInstanceUID: m for m in members}
    found = [Dataset.from_json(item, bulk_data_uri_handler=BulkData(client)) for item in raw]
    assert sorted(f.SOPInstanceUID for f in found) == sorted(by_uid)
    for item in found:
        _assert_same(by_uid[item.SOPInstanceUID], item)


# --- rendered -----------------------------------------------------------------------------------
RENDERED = [
    "ct/CT_small.dcm",
    "ct/ct_brain_jpeg.dcm",
    "ct/eCT_Supplemental.dcm",
    "mr/MR_small.dcm",
    "mr/emri_small.dcm",
    "mr/examples_overlay.dcm",
    "cr_dx/RG3_J2KR.dcm",
    "cr_dx/highdicom_dx_image.dcm",
    "us/US1_J2KR.dcm",
    "us/examples_ybr_color.dcm",
    "us/examples_palette.dcm",
    "us/ExplVR_BigEnd.dcm",
    "nm_sc/JPEG-LL.dcm",
    "nm_sc/JPGExtended.dcm",
    "nm_sc/JPEG2000.dcm",
    "nm_sc/SC_rgb_jpeg_dcmtk.dcm",
    "nm_sc/SC_rgb_rle_2frame.dcm",
    "nm_sc/SC_rgb_small_odd.dcm",
    "nm_sc/image_dfl.dcm",
    "nm_sc/mlut_18.dcm",
    "sm/highdicom_sm_image.dcm",
    "sm/highdicom_sm_image_jpegls.dcm",
    "seg/liver.dcm",
    "seg/seg_image_ct_binary.dcm",
    "rt/rtdose.dcm",
    "charset/chrH31.dcm",
]


@pytest.mark.parametrize("name", RENDERED, ids=RENDERED)
@pytest.mark.parametrize(
    ("media_type", "pil_format"), [("image/jpeg", "JPEG"), ("image/png", "PNG")], ids=["jpeg", "png"]
)
def test_retrieve_instance_rendered_decodes_to_rows_by_columns(
    client: DICOMwebClient, corpus: Corpus, name: str, media_type: str, pil_format: str
) -> None:
    ds = corpus.dataset(name)
    body = client.retrieve_instance_rendered(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, media_types=(media_type,)
    )
    with Image.open(io.BytesIO(body)) as image:
        assert image.format == pil_format
        assert image.size == (ds.Columns, ds.Rows)
        image.load()


def test_retrieve_a_rendered_frame_of_a_multi_frame_instance(client: DICOMwebClient, corpus: Corpus) -> None:
    ds = corpus.dataset("us/examples_ybr_color.dcm")
    first, last = (
        client.retrieve_instance_frames_rendered(
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, [n], media_types=("image/png",)
        )
        for n in (1, 30)
    )
    with Image.open(io.BytesIO(first)) as one, Image.open(io.BytesIO(last)) as thirty:
        assert one.size == thirty.size == (ds.Columns, ds.Rows)
        assert one.tobytes() != thirty.tobytes()


def test_rendering_an_instance_without_pixels_is_refused(client: DICOMwebClient, corpus: Corpus) -> None:
    ds = corpus.dataset("sr/test-SR.dcm")
    with pytest.raises(requests.HTTPError) as caught:
        client.retrieve_instance_rendered(
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, media_types=("image/jpeg",)
        )
    assert caught.value.response.status_code == 404
