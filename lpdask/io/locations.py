"""Where files live: local paths or fsspec URLs (``s3://``, ``gs://``, ``az://``...), one interface.

Workers on different hosts share an object store the same way one machine shares a disk. Zarr opens
the URLs itself (credentials and endpoints come from the usual places: environment variables such
as ``AWS_ENDPOINT_URL``, or fsspec's configuration files).
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem


@dataclass(frozen=True)
class Location:
    """A file or folder: ``url`` is a local path or an fsspec URL."""

    url: str

    @classmethod
    def of(cls, where: str | os.PathLike[str] | Location) -> Location:
        if isinstance(where, Location):
            return where
        text = os.fspath(where)
        return cls(text if "://" in text else str(Path(text)))

    @property
    def is_local(self) -> bool:
        return "://" not in self.url or self.url.startswith("file://")

    @cached_property
    def _fs(self) -> tuple[fsspec.AbstractFileSystem, str]:
        if self.is_local:
            return LocalFileSystem(), str(Path(self.url.removeprefix("file://")).absolute())
        return fsspec.core.url_to_fs(self.url)

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url}  # the filesystem object is made again where it is needed

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return self._fs[0]

    @property
    def path(self) -> str:
        """The path inside the filesystem (absolute for local files)."""
        return self._fs[1]

    @property
    def local_path(self) -> Path:
        if not self.is_local:
            raise ValueError(f"{self.url} is not a local path")
        return Path(self.path)

    @property
    def name(self) -> str:
        return posixpath.basename(self.url.rstrip("/")) if not self.is_local else Path(self.url).name

    @property
    def parent(self) -> Location:
        if self.is_local:
            return Location(str(Path(self.url).parent))
        return Location(self.url.rstrip("/").rsplit("/", 1)[0])

    def __truediv__(self, name: str) -> Location:
        if self.is_local:
            return Location(str(Path(self.url) / name))
        return Location(self.url.rstrip("/") + "/" + name)

    def with_name(self, name: str) -> Location:
        return self.parent / name

    def __str__(self) -> str:
        return self.url

    def exists(self) -> bool:
        if self.is_local:
            path = Path(self.path)
            return path.exists() or path.is_symlink()
        return bool(self.fs.exists(self.path))

    def is_dir(self) -> bool:
        return bool(self.fs.isdir(self.path))

    def is_file(self) -> bool:
        return bool(self.fs.isfile(self.path))

    def remove(self) -> None:
        """Delete the file or folder, if there is one."""
        if self.is_local:
            path = Path(self.path)
            if path.is_dir() and not path.is_symlink():
                import shutil

                shutil.rmtree(path, ignore_errors=True)
            elif path.exists() or path.is_symlink():
                path.unlink()
            return
        try:
            self.fs.rm(self.path, recursive=True)
        except FileNotFoundError:
            pass

    def mkdir(self) -> None:
        self.fs.makedirs(self.path, exist_ok=True)

    def touch(self) -> None:
        if self.is_local:
            Path(self.path).touch()
        else:
            self.fs.pipe_file(self.path, b"")

    def names(self) -> list[str]:
        """The names of the entries of a folder (none if it does not exist)."""
        try:
            return [posixpath.basename(p.rstrip("/")) for p in self.fs.ls(self.path, detail=False)]
        except FileNotFoundError:
            return []

    def read_text(self) -> str:
        with self.fs.open(self.path, "rt") as f:
            return f.read()

    def write_text(self, text: str) -> None:
        with self.fs.open(self.path, "wt") as f:
            f.write(text)

    def open(self, mode: str = "rb") -> IO[Any]:
        return self.fs.open(self.path, mode)

    def size_and_mtime(self) -> tuple[int, str]:
        """Size in bytes and a modification stamp, for job identity."""
        if self.is_local:
            stat = Path(self.path).stat()
            return stat.st_size, str(stat.st_mtime_ns)
        info = self.fs.info(self.path)
        stamp = info.get("LastModified") or info.get("mtime") or info.get("ETag") or ""
        return int(info.get("size") or 0), str(stamp)


def find_input(path: str | os.PathLike[str]) -> Location:
    """The input at ``path``, or the one-line error that it is not there (or cannot be reached)."""
    from ..errors import LpdaskError

    where = Location.of(path)
    try:
        exists = where.exists()
    except OSError as exc:  # an object store that cannot be reached, or refuses us
        raise LpdaskError(f"cannot reach input {where}: {exc}") from None
    if not exists:
        raise LpdaskError(f"input not found: {where}")
    return where


def existing_folder(path: Path) -> Path:
    """``path``, or the nearest of its parents that exists (where it will be created)."""
    return next(p for p in (path, *path.parents) if p.exists())
