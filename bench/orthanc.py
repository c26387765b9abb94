"""Orthanc with its DICOMweb plugin as the baseline: our own instance, never the system service.

The benchmark installs nothing; if Orthanc or the plugin is missing it says how to install them.
Orthanc runs with its defaults except what isolation needs (ports, folders, no remote access,
no authentication, no DICOM network listener use).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import urllib3

from bench.servers import ServerError, ServerProcess, free_port

PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc"))
INSTALL_HINT = (
    "Orthanc is not installed. On Debian/Ubuntu: `apt-get install -y orthanc orthanc-dicomweb` "
    "(then `service orthanc stop`: the benchmark runs its own instance)."
)


def find_orthanc() -> str:
    exe = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)
    if exe is None:
        raise ServerError(INSTALL_HINT)
    return exe


def find_plugin_dir() -> Path:
    for folder in PLUGIN_DIRS:
        if any(folder.glob("libOrthancDicomWeb.so*")):
            return folder
    raise ServerError("The Orthanc DICOMweb plugin is missing: `apt-get install -y orthanc-dicomweb`.")


class OrthancServer(ServerProcess):
    """`Orthanc <config.json>` with storage and index in a fresh temporary folder."""

    name = "orthanc"

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicom-web"

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/system"

    def config(self) -> dict[str, object]:
        return {
            "Name": "dwbench-orthanc",
            "HttpPort": self.port,
            "DicomPort": free_port(),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "Plugins": [str(find_plugin_dir())],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "SaveJobs": False,
        }

    def command(self) -> tuple[list[str], dict[str, str], Path]:
        exe = find_orthanc()
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(self.config(), indent=2))
        return [exe, str(path)], dict(os.environ), self.workdir

    def describe(self) -> str:
        http = urllib3.PoolManager(retries=False, timeout=5.0)
        try:
            system = json.loads(http.request("GET", f"http://127.0.0.1:{self.port}/system").data)
            plugin = http.request("GET", f"http://127.0.0.1:{self.port}/plugins/dicom-web")
            plugin_version = json.loads(plugin.data).get("Version", "?") if plugin.status == 200 else "absent"
        except (urllib3.exceptions.HTTPError, ValueError):
            return "Orthanc"
        return f"Orthanc {system.get('Version', '?')} + DICOMweb plugin {plugin_version}"
