"""WADO-RS instances, series and studies through `dicomweb-client`.

"As stored" is checked on the raw multipart parts: the request goes through the client's own
`requests` session and its multipart decoder (`DICOMwebClient._decode_multipart_message`), since
the public methods hand back parsed Datasets, not bytes. Transcoded instances are checked with the
public methods: pixel data as pydicom decodes the original (which is what the server runs, so
lossy JPEG is compared exactly with the same decoder's output).
"""

from __future__ import annotations

import numpy as np
import pytest
import requests
from dicomweb_client import DICOMwebClient
from pydicom.uid import ExplicitVRLittleEndian

from tests.e2e import samples
from tests.e2e.conftest import Corpus, DevHost
from tests.e2e.wire import ACCEPT_AS_STORED, instance_url, raw_parts

pytestmark = pytest.mark.e2e

AS_STORED = (("application/dicom", "*"),)
EXPLICIT_LE = (("application/dicom", ExplicitVRLittleEndian),)
STORED_NAMES = [s.name for s in samples.STORED]
YBR = {"YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"}
LOSSY = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81"}


def _members(corpus: Corpus, keyword: str, uid: str) -> list[str]:
    return [n for n in corpus.samples if str(corpus.dataset(n)[keyword].value) == uid]


# --- as stored ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", STORED_NAMES, ids=STORED_NAMES)
def test_retrieve_instance_as_stored_is_byte_identical_to_what_was_sent(
    client: DICOMwebClient, corpus: Corpus, dev_host: DevHost, name: str
) -> None:
    ds = corpus.dataset(name)
    response, parts = raw_parts(client, instance_url(dev_host.url, ds), ACCEPT_AS_STORED)
    assert response.headers["content-type"].startswith("multipart/related")
    assert parts == [samples.encoded(name, corpus.samples[name].repair)]
    parsed = client.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert parsed.SOPInstanceUID == ds.SOPInstanceUID
    assert parsed.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID


@pytest.mark.parametrize(
    "sample", ["ct/ct2_series/CT2_17106.dcm", "seg/seg_image_ct_binary.dcm", "sm/highdicom_sm_image.dcm"]
)
def test_retrieve_series_as_stored_returns_every_instance_byte_identical(
    client: DICOMwebClient, corpus: Corpus, dev_host: DevHost, sample: str
) -> None:
    ds = corpus.dataset(sample)
    names = _members(corpus, "SeriesInstanceUID", ds.SeriesInstanceUID)
    url = f"{dev_host.url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
    _, parts = raw_parts(client, url, ACCEPT_AS_STORED)
    assert sorted(parts) == sorted(samples.encoded(n, corpus.samples[n].repair) for n in names)
    parsed = client.retrieve_series(ds.StudyInstanceUID, ds.SeriesInstanceUID, media_types=AS_STORED)
    assert {p.SOPInstanceUID for p in parsed} == {corpus.dataset(n).SOPInstanceUID for n in names}


@pytest.mark.parametrize(
    "sample",
    [
        "ct/ct2_series/CT2_17106.dcm",
        "nm_sc/JPEG-LL.dcm",
        "nm_sc/SC_rgb_rle_2frame.dcm",
        "sm/highdicom_sm_image.dcm",
    ],
    ids=["CT and SEG", "NM in 3 syntaxes", "SC in 3 syntaxes", "SM in 2 syntaxes"],
)
def test_retrieve_study_as_stored_returns_every_instance_byte_identical(
    client: DICOMwebClient, corpus: Corpus, dev_host: DevHost, sample: str
) -> None:
    study = corpus.dataset(sample).StudyInstanceUID
    names = _members(corpus, "StudyInstanceUID", study)
    assert len(names) > 1
    _, parts = raw_parts(client, f"{dev_host.url}/studies/{study}", ACCEPT_AS_STORED)
    assert sorted(parts) == sorted(samples.encoded(n, corpus.samples[n].repair) for n in names)
    parsed = client.retrieve_study(study, media_types=AS_STORED)
    assert {p.SOPInstanceUID for p in parsed} == {corpus.dataset(n).SOPInstanceUID for n in names}


# --- transcoded to Explicit VR Little Endian ----------------------------------------------------
TRANSCODED = [
    "ct/ct_brain_jpeg.dcm",  # JPEG baseline, YBR_FULL_422
    "us/examples_ybr_color.dcm",  # JPEG baseline, 30 frames
    "nm_sc/SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, YBR_FULL
    "nm_sc/JPGExtended.dcm",  # JPEG extended 12-bit
    "nm_sc/JPEG-LL.dcm",  # JPEG lossless SV1
    "sm/highdicom_sm_image_jpegls.dcm",  # JPEG-LS lossless, 25 frames
    "us/US1_J2KR.dcm",  # JPEG 2000 lossless, YBR_RCT
    "nm_sc/JPEG2000.dcm",  # JPEG 2000 (lossy syntax)
    "nm_sc/SC_rgb_rle_2frame.dcm",  # RLE, 2 frames
    "nm_sc/image_dfl.dcm",  # deflated
    "us/ExplVR_BigEnd.dcm",  # big endian, RGB planar configuration 1
    "seg/seg_image_ct_binary.dcm",  # implicit VR, 1-bit
    "rt/rtdose.dcm",  # implicit VR, 32-bit, 15 frames
]
# Attributes a decoder may rewrite when it decompresses (PS3.5 8.2, PS3.3 C.7.6.3.1).
_REWRITTEN = {
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "LossyImageCompression",
    "PixelData",
    "LossyImageCompressionRatio",
    "LossyImageCompressionMethod",
    "NumberOfFrames",
}


@pytest.mark.parametrize("name", TRANSCODED, ids=TRANSCODED)
def test_retrieve_instance_in_explicit_vr_little_endian_keeps_pixels_and_attributes(
    client: DICOMwebClient, corpus: Corpus, name: str
) -> None:
    sent = corpus.dataset(name)
    got = client.retrieve_instance(
        sent.StudyInstanceUID, sent.SeriesInstanceUID, sent.SOPInstanceUID, media_types=EXPLICIT_LE
    )
    assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert got.original_encoding == (False, True)
    assert np.array_equal(got.pixel_array, sent.pixel_array)
    if sent.file_meta.TransferSyntaxUID.is_encapsulated and sent.PhotometricInterpretation in YBR:
        assert got.PhotometricInterpretation == "RGB"
    else:
        assert got.PhotometricInterpretation == sent.PhotometricInterpretation
    if sent.file_meta.TransferSyntaxUID in LOSSY:
        assert got.LossyImageCompression == "01"
    for elem in sent:
        if elem.tag.element == 0 or elem.keyword in _REWRITTEN:
            continue
        assert elem.tag in got, elem.keyword or elem.tag
        assert got[elem.tag].value == elem.value, elem.keyword or elem.tag


@pytest.mark.parametrize(
    "sample",
    ["nm_sc/JPEG-LL.dcm", "nm_sc/SC_rgb_rle_2frame.dcm"],
    ids=["NM in 3 syntaxes", "SC in 3 syntaxes"],
)
def test_retrieve_study_without_a_transfer_syntax_gets_explicit_vr_little_endian(
    client: DICOMwebClient, corpus: Corpus, sample: str
) -> None:
    study = corpus.dataset(sample).StudyInstanceUID
    by_uid = {
        corpus.dataset(n).SOPInstanceUID: corpus.dataset(n)
        for n in _members(corpus, "StudyInstanceUID", study)
    }
    retrieved = client.retrieve_study(study)  # Accept: multipart/related; type="application/dicom"
    assert {ds.SOPInstanceUID for ds in retrieved} == set(by_uid)
    for ds in retrieved:
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert np.array_equal(ds.pixel_array, by_uid[ds.SOPInstanceUID].pixel_array)


# --- errors -------------------------------------------------------------------------------------
def test_retrieve_of_unknown_uids_is_404(client: DICOMwebClient, corpus: Corpus) -> None:
    ds = corpus.dataset("ct/CT_small.dcm")
    with pytest.raises(requests.HTTPError) as caught:
        client.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, "1.2.3.4.5.6.7")
    assert caught.value.response.status_code == 404
    with pytest.raises(requests.HTTPError) as caught:
        client.retrieve_study("1.2.3.4.5.6.7")
    assert caught.value.response.status_code == 404
