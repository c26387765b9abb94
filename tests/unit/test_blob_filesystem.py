"""FileSystemBlobStore's own promises, on both of its write paths.

On Linux a put writes an unnamed file (O_TMPFILE) and links it into place; elsewhere, or with
`unnamed_files=False`, it writes a `.tmp-*` file. The BlobStore contract (tests/contract) runs over
both; these tests look at the folder itself: no file under the final name before the data is all
read, no temporary file left after a failure, the permissions of what it makes, and the fallback.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

import pytest

from shared.adapters.blob_filesystem import FileSystemBlobStore
from shared.core.errors import BadRequest, Conflict

DATA = Path(__file__).resolve().parents[1] / "data"
CT = (DATA / "ct" / "CT_small.dcm").read_bytes()
MR = (DATA / "mr" / "MR_small.dcm").read_bytes()
KEY = "ab/cd/0123456789abcdef/0001.dcm"


def _unnamed_files_here(folder: Path) -> bool:
    """Whether this machine gives unnamed files in `folder` that can be linked to a name."""
    if not hasattr(os, "O_TMPFILE"):
        return False
    try:
        fd = os.open(folder, os.O_TMPFILE | os.O_WRONLY, 0o600)
    except OSError:
        return False
    try:
        os.link(f"/proc/self/fd/{fd}", folder / "probe", src_dir_fd=fd, follow_symlinks=True)
    except OSError:
        return False
    finally:
        os.close(fd)
    (folder / "probe").unlink()
    return True


@pytest.fixture(params=["unnamed", "named"])
def write_path(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "unnamed" and not _unnamed_files_here(tmp_path):
        pytest.skip("no O_TMPFILE (or no /proc) here: only the named path runs")
    return cast(str, request.param)


@pytest.fixture
def store(write_path: str, tmp_path: Path) -> FileSystemBlobStore:
    return FileSystemBlobStore(tmp_path / "blobs", unnamed_files=write_path == "unnamed")


def _files(root: Path) -> list[str]:
    """Every file under `root`, temporary ones included."""
    return sorted(
        Path(dirpath, name).relative_to(root).as_posix()
        for dirpath, _, names in os.walk(root)
        for name in names
    )


def _open_files() -> int | None:
    """How many files this process has open (None where /proc/self/fd does not tell)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def _root(store: FileSystemBlobStore) -> Path:
    return store._root  # the folder under test


class FailingSource(io.RawIOBase):
    """The first `good` bytes of `data`, then the connection drops."""

    def __init__(self, data: bytes, good: int) -> None:
        self._data, self._good, self._position = data, good, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._position >= self._good:
            raise ConnectionResetError("the client went away")
        length = min(len(buffer), self._good - self._position)
        buffer[:length] = self._data[self._position : self._position + length]
        self._position += length
        return length


class WatchingSource(io.RawIOBase):
    """`data` in small reads; before every read it records what the store's folder holds."""

    def __init__(self, data: bytes, store: FileSystemBlobStore, key: str) -> None:
        self._data, self._position = data, 0
        self._root, self._final = _root(store), _root(store) / key
        self.seen_at_final: list[bytes | None] = []
        self.temporary_files: list[list[str]] = []

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self.seen_at_final.append(self._final.read_bytes() if self._final.exists() else None)
        self.temporary_files.append([f for f in _files(self._root) if Path(f).name.startswith(".tmp-")])
        length = min(len(buffer), len(self._data) - self._position, 1000)
        buffer[:length] = self._data[self._position : self._position + length]
        self._position += length
        return length


# --- create-only, overwrite ------------------------------------------------------------------------


def test_a_create_only_put_of_an_existing_name_is_a_conflict_and_the_first_content_stays(
    store: FileSystemBlobStore,
) -> None:
    store.put(KEY, io.BytesIO(CT))
    with pytest.raises(Conflict):
        store.put(KEY, io.BytesIO(MR))
    assert (_root(store) / KEY).read_bytes() == CT
    assert _files(_root(store)) == [KEY], "the losing write left nothing behind"


def test_overwrite_replaces_the_content_and_leaves_no_temporary_file(store: FileSystemBlobStore) -> None:
    store.put(KEY, io.BytesIO(MR))
    assert store.put(KEY, io.BytesIO(CT), overwrite=True) == len(CT)
    assert (_root(store) / KEY).read_bytes() == CT
    assert _files(_root(store)) == [KEY]


@pytest.mark.parametrize("overwrite", [False, True], ids=["create", "overwrite"])
def test_a_source_that_fails_mid_copy_leaves_no_file_behind(
    store: FileSystemBlobStore, overwrite: bool
) -> None:
    if overwrite:
        store.put(KEY, io.BytesIO(MR))
    open_files = _open_files()
    with pytest.raises(ConnectionResetError):
        store.put(KEY, cast(BinaryIO, FailingSource(CT, len(CT) // 2)), overwrite=overwrite)
    assert _files(_root(store)) == ([KEY] if overwrite else [])
    assert _open_files() == open_files, "the half-written file was closed"
    if overwrite:
        assert (_root(store) / KEY).read_bytes() == MR


def test_a_source_that_fails_in_a_new_folder_leaves_no_file_behind(store: FileSystemBlobStore) -> None:
    with pytest.raises(ConnectionResetError):
        store.put("ee/ff/fresh/0001.dcm", cast(BinaryIO, FailingSource(CT, 100)))
    assert _files(_root(store)) == []
    assert store.put("ee/ff/fresh/0001.dcm", io.BytesIO(CT)) == len(CT)  # a retry succeeds


# --- what a reader sees while a put runs ----------------------------------------------------------


def test_the_final_name_does_not_exist_while_the_source_is_read(store: FileSystemBlobStore) -> None:
    store.put("ab/cd/0123456789abcdef/0001.json", io.BytesIO(b"{}"))  # the folder exists already
    source = WatchingSource(CT, store, KEY)
    assert store.put(KEY, cast(BinaryIO, source)) == len(CT)
    assert len(source.seen_at_final) > 2
    assert source.seen_at_final == [None] * len(source.seen_at_final)
    assert (_root(store) / KEY).read_bytes() == CT


def test_an_overwritten_name_holds_the_old_content_while_the_source_is_read(
    store: FileSystemBlobStore,
) -> None:
    store.put(KEY, io.BytesIO(MR))
    source = WatchingSource(CT, store, KEY)
    store.put(KEY, cast(BinaryIO, source), overwrite=True)
    assert len(source.seen_at_final) > 2
    assert source.seen_at_final == [MR] * len(source.seen_at_final)
    assert (_root(store) / KEY).read_bytes() == CT


def test_a_reader_sees_the_old_or_the_new_content_of_an_overwritten_blob_never_none(
    store: FileSystemBlobStore,
) -> None:
    store.put(KEY, io.BytesIO(MR))
    final, seen, done = _root(store) / KEY, set[bytes](), threading.Event()
    missing = 0

    def read() -> None:
        nonlocal missing
        while not done.is_set():
            try:
                seen.add(final.read_bytes())
            except FileNotFoundError:
                missing += 1

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for round_ in range(200):
            store.put(KEY, io.BytesIO(CT if round_ % 2 else MR), overwrite=True)
    finally:
        done.set()
        reader.join()
    assert missing == 0
    assert seen <= {CT, MR}


@pytest.mark.parametrize("overwrite", [False, True], ids=["create", "overwrite"])
def test_the_write_in_progress_has_no_name_on_the_unnamed_path_and_a_hidden_one_on_the_other(
    store: FileSystemBlobStore, write_path: str, overwrite: bool
) -> None:
    source = WatchingSource(CT, store, KEY)
    store.put(KEY, cast(BinaryIO, source), overwrite=overwrite)
    during = {len(names) for names in source.temporary_files}
    assert during == ({0} if write_path == "unnamed" else {1})
    assert _files(_root(store)) == [KEY]


# --- the source ------------------------------------------------------------------------------------


def test_an_in_memory_source_is_written_from_its_position_and_stays_usable(
    store: FileSystemBlobStore,
) -> None:
    source = io.BytesIO(MR + CT)
    source.seek(len(MR))
    assert store.put(KEY, source) == len(CT)
    assert (_root(store) / KEY).read_bytes() == CT
    assert source.tell() == len(MR) + len(CT), "read to its end, as a stream would be"
    source.write(b"more")  # the store let go of its buffer (a BufferError otherwise)
    assert source.getvalue().endswith(b"more")


def test_a_bytesio_subclass_is_read_as_a_stream(store: FileSystemBlobStore) -> None:
    class Counting(io.BytesIO):
        reads = 0

        def read(self, size: int | None = -1) -> bytes:
            Counting.reads += 1
            return super().read(size)

    assert store.put(KEY, Counting(CT)) == len(CT)
    assert Counting.reads >= 1
    assert (_root(store) / KEY).read_bytes() == CT


def test_a_file_source_is_copied_exactly(store: FileSystemBlobStore) -> None:
    with open(DATA / "ct" / "CT_small.dcm", "rb") as fp:
        assert store.put(KEY, fp) == len(CT)
    assert (_root(store) / KEY).read_bytes() == CT


# --- names, folders, permissions ------------------------------------------------------------------


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../outside.dcm", "ab/../../outside.dcm", "ab/.."])
def test_an_invalid_name_is_refused_and_nothing_is_written(store: FileSystemBlobStore, key: str) -> None:
    with pytest.raises(BadRequest):
        store.put(key, io.BytesIO(CT))
    assert _files(_root(store).parent) == []


@pytest.mark.parametrize("spelling", ["ab//cd/x.dcm", "ab/./cd/x.dcm", "ab/cd/x.dcm/"])
def test_redundant_separators_name_the_same_blob(store: FileSystemBlobStore, spelling: str) -> None:
    store.put(spelling, io.BytesIO(CT))
    assert _files(_root(store)) == ["ab/cd/x.dcm"]
    with pytest.raises(Conflict):
        store.put("ab/cd/x.dcm", io.BytesIO(MR))


def test_a_put_makes_the_missing_folders(store: FileSystemBlobStore) -> None:
    keys = [f"{KEY[:-4]}{suffix}" for suffix in (".dcm", ".json", ".frames.json")]
    for key in keys:
        store.put(key, io.BytesIO(key.encode()))
    assert _files(_root(store)) == sorted(keys)


def test_a_put_recreates_a_removed_root(store: FileSystemBlobStore) -> None:
    _root(store).rmdir()
    assert store.put(KEY, io.BytesIO(CT)) == len(CT)
    assert (_root(store) / KEY).read_bytes() == CT


@pytest.mark.parametrize("overwrite", [False, True], ids=["create", "overwrite"])
def test_blobs_are_readable_by_their_owner_only(store: FileSystemBlobStore, overwrite: bool) -> None:
    store.put(KEY, io.BytesIO(CT), overwrite=overwrite)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((_root(store) / KEY).stat().st_mode) == 0o600 & ~umask


# --- the fallback ---------------------------------------------------------------------------------


@pytest.fixture
def tmpfile_opens(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Every open(O_TMPFILE) fails as on a filesystem without it; yields the list of attempts."""
    if not hasattr(os, "O_TMPFILE"):
        pytest.skip("no O_TMPFILE on this platform")
    attempts: list[int] = []
    real_open = os.open

    def fake_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            attempts.append(flags)
            raise OSError(errno.EOPNOTSUPP, "Operation not supported", path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    yield attempts


def test_without_unnamed_files_a_put_falls_back_and_asks_once(
    tmp_path: Path, tmpfile_opens: list[int]
) -> None:
    store = FileSystemBlobStore(tmp_path / "blobs")
    keys = [f"{KEY[:-4]}{suffix}" for suffix in (".dcm", ".json", ".frames.json")]
    for key in keys:
        assert store.put(key, io.BytesIO(CT)) == len(CT)
    assert _files(tmp_path / "blobs") == sorted(keys)
    assert len(tmpfile_opens) == 1, "the store remembers that unnamed files do not work"
    with pytest.raises(Conflict):
        store.put(KEY, io.BytesIO(MR))


def test_without_proc_a_put_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_link = os.link

    def fake_link(src: Any, dst: Any, **kwargs: Any) -> None:
        if str(src).startswith("/proc/"):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", src)
        real_link(src, dst, **kwargs)

    monkeypatch.setattr(os, "link", fake_link)
    store = FileSystemBlobStore(tmp_path / "blobs")
    assert store.put(KEY, io.BytesIO(CT)) == len(CT)
    assert store.put(KEY, io.BytesIO(MR), overwrite=True) == len(MR)
    assert _files(tmp_path / "blobs") == [KEY]
    assert (tmp_path / "blobs" / KEY).read_bytes() == MR
