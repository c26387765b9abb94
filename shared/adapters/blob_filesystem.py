"""BlobStore on the local filesystem: the embedded default.

Writes go to a temporary file that is then linked into place, so a reader never sees a partial
blob, and a create-only write loses cleanly (Conflict) when the name already exists.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from shared.core.errors import BadRequest, Conflict, NotFound

_CHUNK = 1024 * 1024


class FileSystemBlobStore:
    def __init__(self, root: Path) -> None:
        self._root = root
        self._root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise BadRequest("invalid blob name")
        return self._root / key

    def put(self, key: str, data: BinaryIO, *, overwrite: bool = False) -> int:
        path = self._path(key)
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as tmp:
                shutil.copyfileobj(data, tmp, _CHUNK)
                size = tmp.tell()
            if overwrite:
                os.replace(tmp_name, path)
            else:
                try:
                    os.link(tmp_name, path)
                except FileExistsError:
                    raise Conflict("the blob already exists") from None
                os.unlink(tmp_name)
            return size
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError:
            raise NotFound("the stored file is missing") from None

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        with self.open(key) as fp:
            fp.seek(offset)
            data = fp.read(length)
        if len(data) != length:
            raise NotFound("the stored file is shorter than its index says")
        return data

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def list(self, prefix: str = "") -> Iterator[str]:
        for dirpath, _dirs, files in os.walk(self._root):
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                key = Path(dirpath, name).relative_to(self._root).as_posix()
                if key.startswith(prefix):
                    yield key
