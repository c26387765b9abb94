"""BlobStore on the local filesystem: the embedded default.

A reader never sees a partial blob under its final name, and a create-only write loses cleanly
(Conflict) when the name already exists, leaving the existing blob as it was. On Linux a put
writes an unnamed file (O_TMPFILE) in the blob's folder and links it into place once complete:
no temporary name, and nothing is left behind if the process dies mid-write. Elsewhere (or on a
filesystem without O_TMPFILE, or without /proc) it writes a `.tmp-*` file, which `list` skips,
and links or renames that into place. Created files are 0o600 (less the umask) on both paths,
as tempfile.mkstemp made them: blobs can carry patient data.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar

from shared.core.errors import BadRequest, Conflict, NotFound

_T = TypeVar("_T")

_CHUNK = 1024 * 1024
_TMP_PREFIX = ".tmp-"
_MODE = 0o600
_O_TMPFILE: int = getattr(os, "O_TMPFILE", 0)
_O_CLOEXEC: int = getattr(os, "O_CLOEXEC", 0)
_O_BINARY: int = getattr(os, "O_BINARY", 0)  # Windows: no newline translation
_UNNAMED_FLAGS = _O_TMPFILE | os.O_WRONLY | _O_CLOEXEC
# What open(O_TMPFILE) fails with where the filesystem or the kernel does not offer it.
_NO_TMPFILE = frozenset({errno.EOPNOTSUPP, errno.ENOTSUP, errno.EISDIR, errno.EINVAL})


class FileSystemBlobStore:
    def __init__(self, root: Path, *, unnamed_files: bool = True) -> None:
        """`unnamed_files=False` always takes the `.tmp-*` path (the fallback where O_TMPFILE fails)."""
        self._root = root
        self._root.mkdir(parents=True, exist_ok=True)
        self._root_name = os.fspath(root)
        # Whether puts write unnamed files; None until the first put has found out.
        self._unnamed: bool | None = None if unnamed_files and _O_TMPFILE else False

    def _check(self, key: str) -> None:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise BadRequest("invalid blob name")

    def _path(self, key: str) -> Path:
        self._check(key)
        return self._root / key

    def put(self, key: str, data: BinaryIO, *, overwrite: bool = False) -> int:
        self._check(key)
        # The name pathlib would make (no ".." is left to resolve), without building Path objects.
        path = os.path.normpath(os.path.join(self._root_name, key))
        folder = os.path.dirname(path)
        if self._unnamed is not False:
            fd = self._open_unnamed(folder)
            if fd is not None:
                return _put_unnamed(fd, path, folder, data, overwrite)
        return _put_named(path, folder, data, overwrite)

    def _open_unnamed(self, folder: str) -> int | None:
        """An unnamed file in `folder` (made if missing), or None if this filesystem has none."""
        try:
            try:
                fd = os.open(folder, _UNNAMED_FLAGS, _MODE)
            except FileNotFoundError:
                _make_folders(folder)
                fd = os.open(folder, _UNNAMED_FLAGS, _MODE)
        except OSError as exc:
            if exc.errno not in _NO_TMPFILE:
                raise
            self._unnamed = False  # also where a folder on another filesystem is mounted in the root
            return None
        if self._unnamed is None:  # the first put: can it be linked to a name? (no /proc, ...)
            self._unnamed = _unnamed_files_work(folder)
            if not self._unnamed:
                os.close(fd)
                return None
        return fd

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
                if name.startswith(_TMP_PREFIX):
                    continue
                key = Path(dirpath, name).relative_to(self._root).as_posix()
                if key.startswith(prefix):
                    yield key


def _put_unnamed(fd: int, path: str, folder: str, data: BinaryIO, overwrite: bool) -> int:
    """Write `data` to the unnamed file `fd`, then give it its name (closes `fd`).

    If anything fails before the link, closing `fd` is all it takes: the file had no name.
    """
    try:
        size = _copy(data, fd)
        if not overwrite:
            try:
                _link_unnamed(fd, path)
            except FileExistsError:
                raise Conflict("the blob already exists") from None
            return size
        # No rename-over for an unnamed file: name it privately, then rename that into place.
        _, tmp = _with_temporary_name(folder, lambda name: _link_unnamed(fd, name))
        try:
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return size
    finally:
        os.close(fd)


def _put_named(path: str, folder: str, data: BinaryIO, overwrite: bool) -> int:
    """The portable path: write a `.tmp-*` file, then link (create-only) or rename it into place."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC | _O_BINARY

    def create(name: str) -> int:
        return os.open(name, flags, _MODE)

    try:
        fd, tmp = _with_temporary_name(folder, create)
    except FileNotFoundError:
        _make_folders(folder)
        fd, tmp = _with_temporary_name(folder, create)
    try:
        try:
            size = _copy(data, fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise Conflict("the blob already exists") from None
        return size
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _with_temporary_name(folder: str, make: Callable[[str], _T]) -> tuple[_T, str]:
    """`make(name)` for a fresh `.tmp-*` name in `folder` (another name if that one exists)."""
    for _ in range(100):
        name = os.path.join(folder, _TMP_PREFIX + os.urandom(8).hex())
        try:
            return make(name), name
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", folder)


def _copy(data: BinaryIO, fd: int) -> int:
    """Write `data` from its position to its end into `fd`; return the number of bytes."""
    if type(data) is io.BytesIO:  # already in memory: write its buffer, no copies, no chunks
        start = data.tell()
        with data.getbuffer() as buffer, buffer[start:] as rest:
            size = _write_all(fd, rest)
        data.seek(0, io.SEEK_END)
        return size
    size = 0
    while chunk := data.read(_CHUNK):  # a stream: bounded chunks
        size += _write_all(fd, chunk)
    return size


def _write_all(fd: int, chunk: bytes | memoryview) -> int:
    size = len(chunk)
    written = os.write(fd, chunk)
    if written < size:
        with memoryview(chunk) as view:
            while written < size:
                written += os.write(fd, view[written:])
    return size


def _link_unnamed(fd: int, path: str) -> None:
    # linkat(AT_SYMLINK_FOLLOW) through /proc links the open file itself; os.link calls plain
    # link() (which does not follow) unless a dir fd is given; src_dir_fd is ignored by the
    # kernel for an absolute source, so `fd` serves.
    os.link(f"/proc/self/fd/{fd}", path, src_dir_fd=fd, follow_symlinks=True)


def _unnamed_files_work(folder: str) -> bool:
    """Whether an unnamed file made in `folder` can be linked to a name (asked once per store).

    It takes a file of its own: an unnamed file linked once cannot be linked again once unlinked.
    """
    try:
        fd = os.open(folder, _UNNAMED_FLAGS, _MODE)
    except OSError:
        return False
    try:
        _, name = _with_temporary_name(folder, lambda name: _link_unnamed(fd, name))
        os.unlink(name)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def _make_folders(folder: str) -> None:
    """mkdir -p, one mkdir per missing level (and one that fails for the first existing one)."""
    try:
        os.mkdir(folder)
    except FileExistsError:
        pass
    except FileNotFoundError:
        parent = os.path.dirname(folder)
        if parent == folder:
            raise
        _make_folders(parent)
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder)
