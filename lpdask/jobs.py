"""The work folder: one uncompressed Zarr array per intermediate activation, removed when done."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import zarr

from .errors import LpdaskError


def default_workdir(output: str | os.PathLike[str]) -> Path:
    """``OUTPUT.work`` beside the output: activations are large (256 bytes per input pixel each for
    Real-ESRGAN), so they go on the output's disk rather than a small system temp folder."""
    out = Path(output)
    return out.with_name(out.name + ".work")


class WorkFolder:
    """Intermediate stage outputs as float32 (c, y, x) Zarr v3 arrays, chunked like the stage grid."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._arrays: dict[str, zarr.Array] = {}

    def create(self, name: str, channels: int, height: int, width: int, chunk: int) -> zarr.Array:
        self.path.mkdir(parents=True, exist_ok=True)
        array = zarr.create_array(
            str(self.path / f"{name}.zarr"), shape=(channels, height, width),
            chunks=(channels, chunk, chunk), dtype="float32", compressors=None, fill_value=0.0,
            overwrite=True)
        self._arrays[name] = array
        return array

    def __getitem__(self, name: str) -> zarr.Array:
        return self._arrays[name]

    def remove(self, name: str) -> None:
        self._arrays.pop(name, None)
        shutil.rmtree(self.path / f"{name}.zarr", ignore_errors=True)

    def clear(self) -> None:
        self._arrays.clear()
        shutil.rmtree(self.path, ignore_errors=True)


def check_output(src: Path, dst: Path, overwrite: bool) -> Path:
    """Refuse an output that is not .zarr / .tif / .tiff, exists (without ``overwrite``), or would hold
    the input."""
    if not dst.name.lower().endswith((".zarr", ".tif", ".tiff")):
        raise LpdaskError(f"output {dst} must be a .zarr folder (OME-Zarr) or a .tif / .ome.tif file")
    if dst.exists() or dst.is_symlink():
        if not overwrite:
            raise LpdaskError(f"output {dst} already exists; use --overwrite to replace it")
        resolved, source = dst.resolve(), src.resolve()
        if resolved == source or resolved in source.parents:
            raise LpdaskError(f"output {dst} is or holds the input; refusing to overwrite it")
    return dst
