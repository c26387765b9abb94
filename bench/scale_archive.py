"""A realistic archive for the scale benchmark, generated at run time from a seed (never committed).

Patients have 1-5 studies over ten years (2015-2024); a study has 1-6 series of one main modality
(CT, MR, US, CR, DX, MG, PT, NM, XA, OT at realistic frequencies, sometimes with a secondary
capture or a PET/CT pairing); a series has 1-50 instances (mean about 10). Names are accented and
multi-word ("Müller-Lüdenscheidt^Zoë", "García Márquez^José Luis", "O'Brien^Seán", "van der
Berg^Anna Maria") or plain; about one patient in 50 is "DOE^...".

Each level's attributes are kept once as an `Elements` spec, (tag, VR, values as DICOM strings),
from which both come: the DICOM JSON of the level as `split_levels` gives it (the fast path the
loader uses) and a pydicom Dataset of an instance (to check the fast path against the store
pipeline, see bench/tests/test_scale.py).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from shared.core.model import InstanceRecord, InstanceUids

Elements = tuple[tuple[str, str, tuple[str, ...]], ...]  # (tag "GGGGEEEE", VR, values)

CHARSET = "ISO_IR 192"
FIRST_DATE = dt.date(2015, 1, 1)
DAYS = 3653  # 2015-01-01 .. 2024-12-31

# (modality, weight, SOP class, series per study (low, high), instances per series (low, high, mean))
MODALITIES: tuple[tuple[str, int, str, tuple[int, int], tuple[int, int, float]], ...] = (
    ("CT", 22, "1.2.840.10008.5.1.4.1.1.2", (2, 6), (1, 50, 15.0)),
    ("MR", 14, "1.2.840.10008.5.1.4.1.1.4", (3, 6), (1, 50, 12.0)),
    ("CR", 16, "1.2.840.10008.5.1.4.1.1.1", (1, 2), (1, 3, 0.0)),
    ("DX", 13, "1.2.840.10008.5.1.4.1.1.1.1", (1, 3), (1, 3, 0.0)),
    ("US", 12, "1.2.840.10008.5.1.4.1.1.6.1", (1, 2), (1, 30, 7.0)),
    ("MG", 8, "1.2.840.10008.5.1.4.1.1.1.2", (1, 2), (2, 4, 0.0)),
    ("PT", 3, "1.2.840.10008.5.1.4.1.1.128", (2, 4), (1, 50, 18.0)),
    ("NM", 3, "1.2.840.10008.5.1.4.1.1.20", (1, 3), (1, 12, 0.0)),
    ("XA", 5, "1.2.840.10008.5.1.4.1.1.12.1", (1, 5), (1, 12, 0.0)),
    ("OT", 4, "1.2.840.10008.5.1.4.1.1.7", (1, 1), (1, 6, 0.0)),
)
_BY_MODALITY = {m[0]: m for m in MODALITIES}
_WEIGHTS = [m[1] for m in MODALITIES]
SOP_CLASS = {m[0]: m[2] for m in MODALITIES}
TRANSFER_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.90")

FAMILIES = (
    "Müller-Lüdenscheidt", "García Márquez", "O'Brien", "van der Berg", "Nguyễn", "Smith", "Johnson",
    "Schmidt", "Martin", "Rossi", "Kowalski", "Dubois", "Fernández", "Janssen", "Silva", "Tanaka",
    "Okafor", "Hansen", "Ivanov", "Murphy", "Bauer", "Cohen", "Patel", "Lefèvre", "Søndergaard",
    "Łukasiewicz", "Çelik", "Björklund", "de la Cruz", "Núñez", "Wójcik", "Horváth", "Dvořák",
    "Papadopoulos", "Ó Súilleabháin", "MacDonald", "Da Silva Santos", "Weiß", "Öztürk", "Jensen",
)  # fmt: skip
GIVEN = (
    "Zoë", "José Luis", "Seán", "Anna Maria", "Jean-Pierre", "Björn", "François", "Ana", "John",
    "Mary", "Chloé", "Jürgen", "Ingrid", "Mohammed", "Aoife", "Łucja", "Mateo", "Émilie", "Sven",
    "Noah", "Maria", "Peter", "Olga", "Hiroshi", "Ngozi", "Lucía", "Tomás", "Eva", "Henrik", "Li",
)  # fmt: skip
_SYLLABLES = (
    "ka",
    "ber",
    "lin",
    "mo",
    "ran",
    "tes",
    "vi",
    "dor",
    "el",
    "sta",
    "pol",
    "ne",
    "gri",
    "hau",
    "zu",
)
DESCRIPTIONS = {
    "CT": ("CT HEAD W/O CONTRAST", "CT CHEST ABDOMEN PELVIS", "CT ANGIO PULMONARY", "CT SPINE LUMBAR"),
    "MR": ("MR BRAIN W/WO", "MR KNEE RIGHT", "MR LUMBAR SPINE", "MR PROSTATE MPMRI"),
    "CR": ("XR CHEST 2 VIEWS", "XR HAND LEFT", "XR PELVIS AP"),
    "DX": ("XR CHEST PA", "XR ANKLE RIGHT 3 VIEWS", "XR KNEE BILATERAL"),
    "US": ("US ABDOMEN COMPLETE", "US THYROID", "US OB 2ND TRIMESTER"),
    "MG": ("MAMMO SCREENING BILATERAL", "MAMMO DIAGNOSTIC LEFT"),
    "PT": ("PET/CT WHOLE BODY FDG", "PET/CT PSMA"),
    "NM": ("NM BONE SCAN WHOLE BODY", "NM MYOCARDIAL PERFUSION"),
    "XA": ("CORONARY ANGIOGRAPHY", "CEREBRAL ANGIOGRAPHY"),
    "OT": ("OUTSIDE IMAGES", "SCANNED DOCUMENTS"),
}
REFERRING = ("Grünewald^Käthe^^Dr", "Ferreira^João", "Smith^Alan^^Dr", "Ó Briain^Niamh", "", "Kim^Min-jun")
MANUFACTURERS = ("SIEMENS", "GE MEDICAL SYSTEMS", "Philips", "CANON_MEC", "FUJIFILM")


@dataclass(frozen=True, slots=True)
class Patient:
    name: str  # PN string, "Family^Given"
    id: str
    birth_date: str
    sex: str


@dataclass(frozen=True, slots=True)
class Series:
    uid: str
    modality: str
    number: int
    instances: int
    first_uid: int  # the UID counter of its first instance
    transfer_syntax: str
    elements: Elements


@dataclass(frozen=True, slots=True)
class Study:
    uid: str
    patient: Patient
    date: str
    accession: str
    series: tuple[Series, ...]
    elements: Elements

    @property
    def modalities(self) -> list[str]:
        return sorted({s.modality for s in self.series})

    @property
    def instance_count(self) -> int:
        return sum(s.instances for s in self.series)


class UidMaker:
    """UIDs under 2.25 (PS3.5 B.2): a 96-bit seed-derived prefix and a 32-bit counter."""

    def __init__(self, seed: int) -> None:
        digest = hashlib.sha256(f"scale-{seed}".encode()).digest()
        self._base = int.from_bytes(digest[:12], "big") << 32
        self.counter = 0

    def take(self, n: int = 1) -> int:
        first = self.counter
        self.counter += n
        return first

    def uid(self, number: int) -> str:
        return f"2.25.{self._base + number}"


def _family(rng: random.Random) -> str:
    if rng.random() < 0.6:
        return rng.choice(FAMILIES)
    # Synthetic surnames make the name space realistic: a few thousand distinct families.
    word = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3)))
    return word.capitalize()


def _patient(rng: random.Random, number: int) -> Patient:
    given = rng.choice(GIVEN)
    family = "DOE" if rng.random() < 0.02 else _family(rng)
    birth = dt.date(1930, 1, 1) + dt.timedelta(days=rng.randrange(32000))
    return Patient(f"{family}^{given}", f"PID{number:08d}", birth.strftime("%Y%m%d"), rng.choice("MFO"))


def _instance_count(rng: random.Random, spec: tuple[int, int, float]) -> int:
    low, high, mean = spec
    if not mean:
        return rng.randint(low, high)
    return min(high, low + int(rng.expovariate(1 / (mean - low + 0.5))))


def _study_elements(study_uid: str, patient: Patient, date: str, time: str, accession: str,
                    referring: str, description: str, number: int) -> Elements:  # fmt: skip
    age = int(date[:4]) - int(patient.birth_date[:4])
    elements = [
        ("00080020", "DA", (date,)),
        ("00080030", "TM", (time,)),
        ("00080050", "SH", (accession,)),
        ("00080090", "PN", (referring,) if referring else ()),
        ("00081030", "LO", (description,)),
        ("00100010", "PN", (patient.name,)),
        ("00100020", "LO", (patient.id,)),
        ("00100030", "DA", (patient.birth_date,)),
        ("00100040", "CS", (patient.sex,)),
        ("00101010", "AS", (f"{max(age, 0):03d}Y",)),
        ("0020000D", "UI", (study_uid,)),
        ("00200010", "SH", (str(number),)),
    ]
    return tuple(elements)


def _series_elements(rng: random.Random, uid: str, modality: str, number: int, date: str) -> Elements:
    maker = rng.choice(MANUFACTURERS)
    return (
        ("00080021", "DA", (date,)),
        ("00080060", "CS", (modality,)),
        ("00080070", "LO", (maker,)),
        ("00080080", "LO", ("Hôpital Universitaire Saint-Éloi",)),
        ("00081010", "SH", (f"{modality}{rng.randint(1, 9):02d}",)),
        ("0008103E", "LO", (f"{modality} series {number}",)),
        ("00081090", "LO", (f"{maker.split()[0].title()} {modality}-{rng.randint(100, 999)}",)),
        ("00180015", "CS", (rng.choice(("HEAD", "CHEST", "ABDOMEN", "KNEE", "SPINE")),)),
        ("0020000E", "UI", (uid,)),
        ("00200011", "IS", (str(number),)),
    )


def instance_elements(study: Study, series: Series, index: int, uids: UidMaker) -> Elements:
    """The indexed instance attributes of the `index`-th instance (0-based) of a series."""
    cross = series.modality in ("CT", "MR", "PT", "NM")
    rows = {"CR": 2048, "DX": 2500, "MG": 3328, "US": 600, "XA": 1024, "OT": 1024}.get(series.modality, 512)
    elements: list[tuple[str, str, tuple[str, ...]]] = [
        ("00080008", "CS", ("ORIGINAL", "PRIMARY", "AXIAL") if cross else ("ORIGINAL", "PRIMARY")),
        ("00080016", "UI", (SOP_CLASS[series.modality],)),
        ("00080018", "UI", (uids.uid(series.first_uid + index),)),
        ("00080023", "DA", (study.date,)),
        ("00080033", "TM", (f"{10 + index % 8:02d}{index % 60:02d}00",)),
        ("00200013", "IS", (str(index + 1),)),
        ("00280002", "US", ("1",)),
        ("00280004", "CS", ("MONOCHROME2",)),
        ("00280010", "US", (str(rows),)),
        ("00280011", "US", (str(rows),)),
        ("00280100", "US", ("16",)),
        ("00280101", "US", ("12",)),
    ]
    if cross:
        elements += [
            ("00180050", "DS", ("2.5",)),
            ("00200032", "DS", ("-125", "-125", f"{index * 2.5:g}")),
            ("00200037", "DS", ("1", "0", "0", "0", "1", "0")),
            ("00280030", "DS", ("0.48828125", "0.48828125")),
            ("00281050", "DS", ("40",)),
            ("00281051", "DS", ("400",)),
        ]
    return tuple(sorted(elements))


def _json_value(vr: str, value: str) -> Any:
    if vr == "PN":
        return {"Alphabetic": value}
    if vr == "DS":
        return float(value)
    if vr in ("IS", "US", "UL", "SS", "SL"):
        return int(value)
    return value


def to_json(elements: Elements) -> dict[str, Any]:
    """The DICOM JSON of a level as `split_levels(dataset_to_json(ds))` gives it."""
    out: dict[str, Any] = {}
    for tag, vr, values in elements:
        out[tag] = {"vr": vr, "Value": [_json_value(vr, v) for v in values]} if values else {"vr": vr}
    out["00080005"] = {"vr": "CS", "Value": [CHARSET]}
    return out


def to_dataset(*levels: Elements, transfer_syntax: str = ExplicitVRLittleEndian) -> Dataset:
    """One instance as a pydicom Dataset (with file meta), from its study, series and instance specs."""
    ds = Dataset()
    ds.SpecificCharacterSet = CHARSET
    for elements in levels:
        for tag, vr, values in elements:
            typed = [int(v) if vr in ("US", "UL", "SS", "SL") else v for v in values]
            value: Any = typed if len(typed) > 1 else (typed[0] if typed else None)
            ds.add_new(int(tag, 16), vr, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    return ds


class Archive:
    """The studies of an archive of about `target` instances; instances are made on demand."""

    def __init__(self, seed: int, target: int) -> None:
        self.seed = seed
        self.uids = UidMaker(seed)
        self.studies: list[Study] = []
        self.patients = 0
        self.instances = 0
        rng = random.Random(seed)
        while self.instances < target:
            self._add_patient(rng)

    def _add_patient(self, rng: random.Random) -> None:
        patient = _patient(rng, self.patients)
        self.patients += 1
        for _ in range(rng.choices((1, 2, 3, 4, 5), (30, 25, 20, 15, 10))[0]):
            study = self._study(rng, patient)
            self.studies.append(study)
            self.instances += study.instance_count

    def _study(self, rng: random.Random, patient: Patient) -> Study:
        number = len(self.studies)
        modality = rng.choices(MODALITIES, _WEIGHTS)[0][0]
        uid = self.uids.uid(self.uids.take())
        date = (FIRST_DATE + dt.timedelta(days=rng.randrange(DAYS))).strftime("%Y%m%d")
        time = f"{rng.randint(7, 19):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}"
        accession = f"A{self.seed % 100:02d}{number:09d}"  # unique, at most 16 characters (SH)
        low, high = _BY_MODALITY[modality][3]
        kinds = [modality] * rng.randint(low, high)
        if modality == "PT":
            kinds[-1] = "CT"
        elif modality in ("CT", "MR", "US") and rng.random() < 0.1:
            kinds.append("OT")  # a secondary capture (dose report, key images)
        series = tuple(self._series(rng, kind, n + 1, date) for n, kind in enumerate(kinds[:6]))
        elements = _study_elements(
            uid, patient, date, time, accession, rng.choice(REFERRING),
            rng.choice(DESCRIPTIONS[modality]), number,
        )  # fmt: skip
        return Study(uid, patient, date, accession, series, elements)

    def _series(self, rng: random.Random, modality: str, number: int, date: str) -> Series:
        uid = self.uids.uid(self.uids.take())
        count = _instance_count(rng, _BY_MODALITY[modality][4])
        first = self.uids.take(count)
        syntax = rng.choice(TRANSFER_SYNTAXES)
        elements = _series_elements(rng, uid, modality, number, date)
        return Series(uid, modality, number, count, first, syntax, elements)

    def records(self, study: Study) -> Iterator[InstanceRecord]:
        """The InstanceRecords of a study, as the store pipeline builds them."""
        study_attrs = to_json(study.elements)
        for series in study.series:
            series_attrs = to_json(series.elements)
            for index in range(series.instances):
                attrs = to_json(instance_elements(study, series, index, self.uids))
                yield InstanceRecord(
                    uids=InstanceUids(study.uid, series.uid, self.uids.uid(series.first_uid + index)),
                    sop_class_uid=SOP_CLASS[series.modality],
                    transfer_syntax=series.transfer_syntax,
                    version=f"{series.first_uid + index:032x}",
                    size=200_000 + 37 * index,
                    number_of_frames=1,
                    study_attrs=study_attrs,
                    series_attrs=series_attrs,
                    instance_attrs=attrs,
                )
