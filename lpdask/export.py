"""``lpdask export``: an OME-Zarr result to a tiled, pyramidal (OME-/Geo)TIFF, tile by tile."""

from __future__ import annotations

import os
from pathlib import Path

import zarr

from .errors import LpdaskError
from .io.metadata import ImageMetadata

TIFF_SUFFIXES = (".tif", ".tiff")


def wants_ome(output: Path, input_ome: bool, meta: ImageMetadata) -> bool:
    """OME-XML for ``.ome.tif`` outputs, and for ``.tif`` ones when the input was OME and not GeoTIFF."""
    return output.name.lower().endswith((".ome.tif", ".ome.tiff")) or (input_ome and meta.geotiff is None)


def export(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write the OME-Zarr image at ``src`` (all its pyramid levels) as a TIFF at ``dst``."""
    from .io.ngff import read_ngff_metadata
    from .io.omezarr import STATUS_KEY
    from .io.tiff import write_tiff

    source, output = Path(src), Path(dst)
    if not source.is_dir():
        raise LpdaskError(f"input {source} is not an OME-Zarr folder")
    if output.suffix.lower() not in TIFF_SUFFIXES:
        raise LpdaskError(f"output {output} must be a .tif, .tiff or .ome.tif file")
    if (output.exists() or output.is_symlink()) and not overwrite:
        raise LpdaskError(f"output {output} already exists; use --overwrite to replace it")
    try:
        group = zarr.open_group(str(source), mode="r")
    except Exception as exc:  # zarr raises several types for a folder that is not a store
        raise LpdaskError(f"{source} is not a Zarr group ({type(exc).__name__})") from None
    status = group.attrs.get(STATUS_KEY)
    if isinstance(status, dict) and status.get("complete") is False:
        raise LpdaskError(f"{source} is an unfinished lpdask result; run the upscale again to finish it")
    try:
        meta, paths = read_ngff_metadata(source)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise LpdaskError(f"{source} is not an OME-Zarr image ({exc})") from None
    partial = output.with_name(output.name + ".partial")
    try:
        write_tiff(partial, [group[p] for p in paths], meta, ome=wants_ome(output, True, meta))
        os.replace(partial, output)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return output
