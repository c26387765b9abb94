"""Raw HTTP next to the client: for checks on bytes, which the public client methods parse away."""

from __future__ import annotations

import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset

ACCEPT_AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def raw_parts(client: DICOMwebClient, url: str, accept: str) -> tuple[requests.Response, list[bytes]]:
    """GET `url` with the client's session and split the multipart body with the client's decoder."""
    response = client._session.get(url, headers={"Accept": accept}, timeout=120)
    response.raise_for_status()
    return response, [bytes(part) for part in client._decode_multipart_message(response, stream=False)]


def instance_url(base: str, ds: Dataset) -> str:
    return f"{base}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
