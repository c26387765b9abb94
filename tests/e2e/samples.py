"""The sample files the end-to-end tests send, and what the server is expected to do with each.

`dicomweb-client` encodes every dataset it stores with `pydicom.dcmwrite` (it takes Datasets, not
bytes), so "the bytes sent" are that encoding; for most samples it equals the file byte for byte
(pydicom drops group length elements and re-deflates, which changes a few). `encoded(sample)`
reproduces it, and retrieved instances are compared with it.

Some real files break PS3.10 in ways a server may refuse: their Media Storage SOP Instance UID
differs from the SOP Instance UID, or they have no file meta at all. They are sent once as they are
(and must be refused), and once repaired the way a careful client would (meta fixed, nothing else
changed) so that their modality is still covered by the stored corpus.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

DATA = Path(__file__).resolve().parent.parent / "data"

# PS3.4 / PS3.18 failure reasons the server is expected to use.
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000


@dataclass(frozen=True, slots=True)
class Sample:
    name: str  # path under tests/data; also the test id
    batch: str = ""  # the store_instances call it is sent in
    repair: bool = False  # the client fixes the file meta before sending

    @property
    def path(self) -> Path:
        return DATA / self.name


# One sample per SOP Instance UID, stored in four store_instances calls.
STORED: tuple[Sample, ...] = (
    Sample("ct/CT_small.dcm", "ct-mr-cr"),
    Sample("ct/ct2_series/CT2_17106.dcm", "ct-mr-cr"),
    Sample("ct/ct2_series/CT2_17136.dcm", "ct-mr-cr"),
    Sample("ct/ct2_series/CT2_17166.dcm", "ct-mr-cr"),
    Sample("ct/ct2_series/CT2_17196.dcm", "ct-mr-cr"),
    Sample("ct/ct_brain_jpeg.dcm", "ct-mr-cr"),
    Sample("ct/eCT_Supplemental.dcm", "ct-mr-cr"),
    Sample("mr/MR_small.dcm", "ct-mr-cr"),
    Sample("mr/emri_small.dcm", "ct-mr-cr"),
    Sample("mr/examples_overlay.dcm", "ct-mr-cr"),
    Sample("cr_dx/RG3_J2KR.dcm", "ct-mr-cr"),
    Sample("cr_dx/highdicom_dx_image.dcm", "ct-mr-cr"),
    Sample("us/US1_J2KR.dcm", "us-nm-sc"),
    Sample("us/examples_ybr_color.dcm", "us-nm-sc"),
    Sample("us/examples_palette.dcm", "us-nm-sc"),
    Sample("us/ExplVR_BigEnd.dcm", "us-nm-sc"),
    Sample("nm_sc/JPEG-LL.dcm", "us-nm-sc"),
    Sample("nm_sc/JPGExtended.dcm", "us-nm-sc"),
    Sample("nm_sc/JPEG2000.dcm", "us-nm-sc"),
    Sample("nm_sc/SC_rgb_jpeg_dcmtk.dcm", "us-nm-sc"),
    Sample("nm_sc/SC_rgb_rle_2frame.dcm", "us-nm-sc"),
    Sample("nm_sc/SC_rgb_small_odd.dcm", "us-nm-sc"),
    Sample("nm_sc/image_dfl.dcm", "us-nm-sc"),
    Sample("nm_sc/mlut_18.dcm", "us-nm-sc"),
    Sample("sm/highdicom_sm_image.dcm", "sm-seg-sr-rt"),
    Sample("sm/highdicom_sm_image_jpegls.dcm", "sm-seg-sr-rt"),
    Sample("seg/liver.dcm", "sm-seg-sr-rt"),
    Sample("seg/seg_image_ct_binary.dcm", "sm-seg-sr-rt"),
    Sample("seg/seg_image_ct_binary_fractional.dcm", "sm-seg-sr-rt"),
    Sample("sr/test-SR.dcm", "sm-seg-sr-rt"),
    Sample("sr/reportsi.dcm", "sm-seg-sr-rt"),
    Sample("sr/highdicom_sr_document.dcm", "sm-seg-sr-rt"),
    Sample("rt/rtdose.dcm", "sm-seg-sr-rt", repair=True),
    Sample("rt/rtplan.dcm", "sm-seg-sr-rt", repair=True),
    Sample("rt/rtstruct.dcm", "sm-seg-sr-rt", repair=True),
    Sample("other/waveform_ecg.dcm", "sm-seg-sr-rt"),
    Sample("charset/chrArab.dcm", "charset"),
    Sample("charset/chrFrenMulti.dcm", "charset"),
    Sample("charset/chrGreek.dcm", "charset"),
    Sample("charset/chrH31.dcm", "charset"),
    Sample("charset/chrHbrw.dcm", "charset"),
    Sample("charset/chrJapMulti.dcm", "charset", repair=True),
    Sample("charset/chrKoreanMulti.dcm", "charset"),
    Sample("charset/chrRuss.dcm", "charset"),
    Sample("charset/chrX1.dcm", "charset"),
    Sample("charset/chrX2.dcm", "charset"),
)
BY_NAME = {s.name: s for s in STORED}
BATCHES: dict[str, tuple[Sample, ...]] = {}
for _sample in STORED:
    BATCHES[_sample.batch] = (*BATCHES.get(_sample.batch, ()), _sample)

# Same Study/Series/SOP Instance UIDs as a stored sample (another syntax or a copy): refused 0x0111.
DUPLICATES: dict[str, str] = {
    "mr/MR_small_implicit.dcm": "mr/MR_small.dcm",
    "mr/MR_small_bigendian.dcm": "mr/MR_small.dcm",
    "mr/MR_small_RLE.dcm": "mr/MR_small.dcm",
    "mr/MR_small_jp2klossless.dcm": "mr/MR_small.dcm",
    "mr/MR_small_jpeg_ls_lossless.dcm": "mr/MR_small.dcm",
    "mr/emri_small_RLE.dcm": "mr/emri_small.dcm",
    "mr/emri_small_jpeg_2k_lossless.dcm": "mr/emri_small.dcm",
    "ct/highdicom_ct_image.dcm": "ct/CT_small.dcm",
    "nm_sc/SC_rgb_jpeg_gdcm.dcm": "nm_sc/SC_rgb_rle_2frame.dcm",
    "us/color3d_jpeg_baseline.dcm": "us/examples_ybr_color.dcm",
}

# Real files refused as they are: (file, failure reason).
REFUSED: tuple[tuple[str, int], ...] = (
    ("rt/rtdose.dcm", DATASET_DOES_NOT_MATCH_SOP_CLASS),  # meta SOP Instance UID differs
    ("rt/rtplan.dcm", DATASET_DOES_NOT_MATCH_SOP_CLASS),
    ("charset/chrJapMulti.dcm", DATASET_DOES_NOT_MATCH_SOP_CLASS),
    ("charset/chrSQEncoding1.dcm", DATASET_DOES_NOT_MATCH_SOP_CLASS),  # no UIDs at all
    ("nm_sc/JPEGLSNearLossless_16.dcm", DATASET_DOES_NOT_MATCH_SOP_CLASS),  # no Study/Series UID
    ("rt/rtstruct.dcm", CANNOT_UNDERSTAND),  # no preamble, no file meta
)


def read(name: str, *, repair: bool = False) -> Dataset:
    """The sample as the test hands it to the client (a fresh Dataset every call)."""
    ds = pydicom.dcmread(DATA / name, force=True)
    if repair:
        _repair_meta(ds)
    return ds


@functools.cache
def encoded(name: str, repair: bool = False) -> bytes:
    """The bytes `dicomweb-client` sends for the sample: `pydicom.dcmwrite` of the dataset."""
    with io.BytesIO() as buffer:
        pydicom.dcmwrite(buffer, read(name, repair=repair))
        return buffer.getvalue()


def sent(sample: Sample) -> Dataset:
    """The dataset the server received, parsed back from the bytes sent."""
    return pydicom.dcmread(io.BytesIO(encoded(sample.name, sample.repair)))


def _repair_meta(ds: Dataset) -> None:
    """Make the file meta agree with the dataset (PS3.10 7.1), changing nothing else."""
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        implicit, little = ds.original_encoding
        assert little, "only little endian files without meta are repaired"
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        ds.file_meta = meta
        ds.preamble = b"\x00" * 128
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
