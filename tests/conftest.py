"""Settings shared by every test: the same process-wide pydicom policy as the server's."""

from __future__ import annotations

from shared.bootstrap import configure_pydicom

configure_pydicom()
