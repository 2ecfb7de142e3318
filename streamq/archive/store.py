"""Where segments live: a local directory, or any fsspec filesystem.

Both give the archive the same few operations. A file appears whole or not
at all: locally it is written under a temporary name in its directory,
fsynced and renamed into place (then the directory is fsynced); on an
fsspec filesystem it is written to a local temporary file and uploaded with
one ``put`` (one PUT, or a multipart upload that is visible only once
complete, on object stores).

fsspec is imported only for a URL, so a local archive needs nothing beyond
streamq's core dependencies.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import IO, Any, Protocol

from streamq.errors import ConfigError

TEMP_PREFIX = ".partial-"
STALE_TEMP_S = 3600.0
"""A temporary file older than this was left by a crash; newer ones may be a live export's."""


class Store(Protocol):
    """The operations the archive needs, on '/'-separated paths below its root."""

    location: str

    def list(self, directory: str) -> list[tuple[str, int]]:
        """(name, size) of the files directly in ``directory``; [] if it does not exist."""
        ...

    def open_read(self, path: str) -> IO[bytes]: ...

    def read_bytes(self, path: str) -> bytes | None:
        """The file's content; None if it does not exist."""
        ...

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write a whole file, replacing any: readers see the old or the new one."""
        ...

    def new_file(self, directory: str) -> PendingFile:
        """A file to write, invisible until ``commit``."""
        ...


class PendingFile(Protocol):
    file: IO[bytes]

    def commit(self, path: str) -> int:
        """Make the written bytes the file ``path`` (whole, durable); returns its size."""
        ...

    def discard(self) -> None: ...


def open_store(location: str | os.PathLike[str]) -> Store:
    """A local path (or ``file://`` URL) → LocalStore; any other URL → FsspecStore."""
    text = os.fspath(location)
    if "://" not in text:
        return LocalStore(Path(text))
    if text.startswith("file://"):
        return LocalStore(Path(text.removeprefix("file://")))
    return FsspecStore(text)


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root.expanduser()
        self.location = str(self.root)
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"archive location {self.location} is a file, not a directory")

    def _path(self, path: str) -> Path:
        return self.root / path

    def list(self, directory: str) -> list[tuple[str, int]]:
        try:
            with os.scandir(self._path(directory)) as entries:
                return [
                    (entry.name, entry.stat().st_size)
                    for entry in entries
                    if entry.is_file(follow_symlinks=False)
                    and not entry.name.startswith(TEMP_PREFIX)
                ]
        except FileNotFoundError:
            return []

    def open_read(self, path: str) -> IO[bytes]:
        return open(self._path(path), "rb")

    def read_bytes(self, path: str) -> bytes | None:
        try:
            return self._path(path).read_bytes()
        except FileNotFoundError:
            return None

    def write_bytes(self, path: str, data: bytes) -> None:
        pending = self.new_file(path.rpartition("/")[0])
        try:
            pending.file.write(data)
        except BaseException:
            pending.discard()
            raise
        pending.commit(path)

    def new_file(self, directory: str) -> PendingFile:
        target = self._path(directory)
        target.mkdir(parents=True, exist_ok=True)
        for stale in target.glob(f"{TEMP_PREFIX}*"):  # left by a crash mid-segment
            _remove_if_stale(stale)
        temp = target / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
        return _LocalPending(temp, open(temp, "xb"))


class _LocalPending:
    def __init__(self, temp: Path, file: IO[bytes]) -> None:
        self.temp = temp
        self.file = file

    def commit(self, path: str) -> int:
        self.file.flush()
        os.fsync(self.file.fileno())
        size = self.file.tell()
        self.file.close()
        final = self.temp.parent / path.rpartition("/")[2]
        os.replace(self.temp, final)
        _fsync_dir(final.parent)
        return size

    def discard(self) -> None:
        self.file.close()
        self.temp.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _remove_if_stale(path: Path) -> None:
    with contextlib.suppress(OSError):
        if time.time() - os.stat(path).st_mtime > STALE_TEMP_S:
            os.unlink(path)


class FsspecStore:
    def __init__(self, url: str) -> None:
        self.location = url
        try:
            # Untyped, and optional: imported by name, only for a URL.
            fsspec_core: Any = importlib.import_module("fsspec.core")
        except ImportError:
            raise ConfigError(
                f"archive location {url!r} needs fsspec: pip install 'streamq[archive]'"
            ) from None
        try:
            fs, root = fsspec_core.url_to_fs(url)
        except ImportError as exc:  # the protocol's own package (s3fs, gcsfs, …)
            raise ConfigError(f"archive location {url!r}: {exc}") from None
        except ValueError as exc:
            raise ConfigError(f"archive location {url!r}: {exc}") from None
        self.fs: Any = fs
        self.root = str(root).rstrip("/")
        self._local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))

    def _path(self, path: str) -> str:
        return f"{self.root}/{path}" if path else self.root

    def list(self, directory: str) -> list[tuple[str, int]]:
        try:
            entries = self.fs.ls(self._path(directory), detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = []
        for entry in entries:
            if entry.get("type") != "file":
                continue
            name = str(entry["name"]).rstrip("/").rpartition("/")[2]
            found.append((name, int(entry.get("size") or 0)))
        return found

    def open_read(self, path: str) -> IO[bytes]:
        file: IO[bytes] = self.fs.open(self._path(path), "rb")
        return file

    def read_bytes(self, path: str) -> bytes | None:
        try:
            data: bytes = self.fs.cat_file(self._path(path))
        except FileNotFoundError:
            return None
        return data

    def write_bytes(self, path: str, data: bytes) -> None:
        if self._local:
            self.fs.makedirs(self._path(path.rpartition("/")[0]), exist_ok=True)
        self.fs.pipe_file(self._path(path), data)

    def new_file(self, directory: str) -> PendingFile:
        file = tempfile.NamedTemporaryFile(prefix=TEMP_PREFIX, delete=False)  # noqa: SIM115
        return _UploadPending(self, file)


class _UploadPending:
    def __init__(self, store: FsspecStore, file: IO[bytes]) -> None:
        self.store = store
        self.file = file

    def commit(self, path: str) -> int:
        size = self.file.tell()
        self.file.close()
        try:
            target = self.store._path(path)
            if self.store._local:
                self.store.fs.makedirs(target.rpartition("/")[0], exist_ok=True)
            self.store.fs.put_file(self.file.name, target)
        finally:
            os.unlink(self.file.name)
        return size

    def discard(self) -> None:
        self.file.close()
        with contextlib.suppress(OSError):
            os.unlink(self.file.name)
