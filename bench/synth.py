"""Synthetic DICOM instances for the benchmark, generated at run time.

Every instance gets its own UIDs (``2.25.<128-bit number>`` derived from the run seed), so a run never
collides with a previous one and both servers receive byte-identical data. Nothing here is committed:
callers write the bytes to a temporary folder or keep them in memory.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
IMPLEMENTATION_UID = "2.25.300155114176434839215785862906393861721"

SURNAMES = (
    "DOE", "SMITH", "MULLER", "GARCIA", "ROSSI", "NGUYEN", "KOWALSKI", "JANSSEN", "SILVA", "TANAKA",
    "OKAFOR", "HANSEN", "DUBOIS", "IVANOV", "MURPHY", "LEWIS", "MARTIN", "BAUER", "COHEN", "PATEL",
)  # fmt: skip
GIVEN_NAMES = ("JOHN", "JANE", "ALEX", "MARIA", "PETER", "ANNA", "LUCAS", "EMMA", "NOAH", "MIA")
MODALITIES = ("CT", "MR", "CR", "DX", "US", "MG", "PT", "NM")
QIDO_FIRST_DATE = dt.date(2015, 1, 1)
QIDO_DAYS = 3652  # 2015-01-01 .. 2024-12-31


def make_uid(seed: int, *parts: object) -> str:
    """A deterministic UID under the 2.25 root (UUID-derived), unique per (seed, parts)."""
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


@dataclass(frozen=True, slots=True)
class InstanceRef:
    """Where an instance lives, as a DICOMweb client addresses it."""

    study: str
    series: str
    sop: str


@dataclass(frozen=True, slots=True)
class Patient:
    name: str
    id: str
    birth_date: str
    sex: str


@dataclass(frozen=True, slots=True)
class StudyInfo:
    """The searchable attributes of one generated study."""

    uid: str
    patient: Patient
    date: str
    time: str
    accession: str
    modality: str
    description: str
    series_uids: tuple[str, ...]


def _file_meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    meta.ImplementationVersionName = "DWBENCH_1"
    return meta


def _common(ds: Dataset, study: StudyInfo, series_uid: str, series_number: int) -> None:
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = study.patient.name
    ds.PatientID = study.patient.id
    ds.IssuerOfPatientID = "DWBENCH"
    ds.PatientBirthDate = study.patient.birth_date
    ds.PatientSex = study.patient.sex
    ds.StudyInstanceUID = study.uid
    ds.StudyDate = study.date
    ds.StudyTime = study.time
    ds.StudyID = study.accession[-6:]
    ds.AccessionNumber = study.accession
    ds.ReferringPhysicianName = "WELBY^MARCUS"
    ds.StudyDescription = study.description
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDate = study.date
    ds.SeriesTime = study.time
    ds.Modality = study.modality
    ds.Manufacturer = "DWBENCH"
    ds.InstitutionName = "Benchmark Hospital"
    ds.StationName = "BENCH01"


def _encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


class CtPhantom:
    """512x512 16-bit CT slices: a smooth body phantom plus per-slice noise (compressible, not constant)."""

    size = 512

    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0 : self.size, 0 : self.size].astype(np.float32)
        c = (self.size - 1) / 2
        body = ((xx - c) / 230) ** 2 + ((yy - c) / 180) ** 2 <= 1
        lung_l = ((xx - c + 100) / 70) ** 2 + ((yy - c) / 110) ** 2 <= 1
        lung_r = ((xx - c - 100) / 70) ** 2 + ((yy - c) / 110) ** 2 <= 1
        spine = ((xx - c) / 25) ** 2 + ((yy - c - 120) / 25) ** 2 <= 1
        base = np.zeros((self.size, self.size), np.float32)  # air: -1024 HU -> stored 0
        base[body] = 1064  # soft tissue ~ +40 HU
        base[lung_l | lung_r] = 200  # lung ~ -824 HU
        base[spine] = 2024  # bone ~ +1000 HU
        self._base = base

    def slice(self, index: int) -> bytes:
        """Pixel data bytes for slice `index`: the phantom, slowly varying with index, plus noise."""
        wobble = np.float32(1 + 0.02 * np.sin(index / 7))
        noise = self._rng.integers(-20, 21, size=(self.size, self.size), dtype=np.int16)
        pixels = np.clip(self._base * wobble + noise, 0, 4095).astype("<u2")
        return pixels.tobytes()


def ct_instance(phantom: CtPhantom, study: StudyInfo, series_uid: str, sop_uid: str, number: int) -> bytes:
    """One CT Image Storage instance (Explicit VR Little Endian, ~513 KB) as Part 10 bytes."""
    ds = Dataset()
    ds.file_meta = _file_meta(CT_IMAGE_STORAGE, sop_uid)
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceCreationDate = study.date
    ds.ContentDate = study.date
    ds.ContentTime = study.time
    _common(ds, study, series_uid, 1)
    ds.SeriesDescription = "AXIAL 1.0 SYNTHETIC"
    ds.BodyPartExamined = "CHEST"
    ds.ProtocolName = "CHEST ROUTINE"
    ds.FrameOfReferenceUID = series_uid + ".1" if len(series_uid) < 62 else series_uid
    ds.PositionReferenceIndicator = ""
    ds.InstanceNumber = number
    ds.AcquisitionNumber = 1
    ds.PatientPosition = "HFS"
    ds.ImagePositionPatient = [-250.0, -250.0, -1.0 * number]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation = -1.0 * number
    ds.SliceThickness = 1.0
    ds.PixelSpacing = [0.9765625, 0.9765625]
    ds.KVP = 120
    ds.XRayTubeCurrent = 200
    ds.ConvolutionKernel = "B30f"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = CtPhantom.size
    ds.Columns = CtPhantom.size
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    ds.PixelData = phantom.slice(number)
    return _encode(ds)


def small_instance(study: StudyInfo, series_uid: str, series_number: int, sop_uid: str) -> bytes:
    """A tiny 16x16 8-bit Secondary Capture image carrying the study's searchable attributes."""
    ds = Dataset()
    ds.file_meta = _file_meta(SECONDARY_CAPTURE_STORAGE, sop_uid)
    ds.SOPClassUID = SECONDARY_CAPTURE_STORAGE
    ds.SOPInstanceUID = sop_uid
    _common(ds, study, series_uid, series_number)
    ds.SeriesDescription = f"SERIES {series_number}"
    ds.ConversionType = "WSD"
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 16
    ds.Columns = 16
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes((i * 7 + series_number) % 256 for i in range(256))
    return _encode(ds)


def qido_studies(seed: int, count: int) -> list[StudyInfo]:
    """`count` studies with varied patients, dates, modalities and accession numbers.

    About two studies per patient, 1 in 20 surnames is DOE, 1 or 2 series per study.
    """
    rng = np.random.default_rng(seed + 1)
    patients_n = max(1, count // 2)
    patients = []
    for p in range(patients_n):
        surname = SURNAMES[p % len(SURNAMES)]
        given = GIVEN_NAMES[int(rng.integers(len(GIVEN_NAMES)))]
        birth = QIDO_FIRST_DATE - dt.timedelta(days=int(rng.integers(365 * 5, 365 * 90)))
        patients.append(Patient(f"{surname}^{given}", f"PID{p:06d}", birth.strftime("%Y%m%d"), "MF"[p % 2]))
    studies = []
    for s in range(count):
        patient = patients[int(rng.integers(patients_n))]
        day = QIDO_FIRST_DATE + dt.timedelta(days=int(rng.integers(QIDO_DAYS)))
        modality = MODALITIES[int(rng.integers(len(MODALITIES)))]
        n_series = 1 + int(rng.integers(2))
        uid = make_uid(seed, "qido-study", s)
        studies.append(
            StudyInfo(
                uid=uid,
                patient=patient,
                date=day.strftime("%Y%m%d"),
                time=f"{int(rng.integers(7, 19)):02d}{int(rng.integers(60)):02d}00",
                accession=f"ACC{s:07d}",
                modality=modality,
                description=f"{modality} EXAM {s % 37}",
                series_uids=tuple(make_uid(seed, "qido-series", s, k) for k in range(n_series)),
            )
        )
    return studies


def ct_study(seed: int, tag: str, index: int, series_count: int = 1) -> StudyInfo:
    """A CT study of the STOW / retrieve / big-study sets (patient and dates outside the QIDO set)."""
    patient = Patient(f"PHANTOM^{tag.upper()}", f"CT{tag[:8].upper()}{index:04d}", "19700101", "O")
    return StudyInfo(
        uid=make_uid(seed, "ct-study", tag, index),
        patient=patient,
        date="20250601",
        time="120000",
        accession=f"CT{index:06d}",
        modality="CT",
        description=f"CT CHEST {tag.upper()}",
        series_uids=tuple(make_uid(seed, "ct-series", tag, index, k) for k in range(series_count)),
    )
