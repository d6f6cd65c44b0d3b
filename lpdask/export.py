"""``lpdask export``: an OME-Zarr result to a tiled, pyramidal (OME-/Geo)TIFF, tile by tile."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import zarr

from .errors import LpdaskError, fault_of
from .options import check_compression
from .io.locations import Location
from .io.metadata import ImageMetadata

TIFF_SUFFIXES = (".tif", ".tiff")


def wants_ome(output: Location, input_ome: bool, meta: ImageMetadata) -> bool:
    """OME-XML for ``.ome.tif`` outputs, and for ``.tif`` ones when the input was OME and not GeoTIFF."""
    return output.name.lower().endswith((".ome.tif", ".ome.tiff")) or (input_ome and meta.geotiff is None)


def partial_tiff_path(output: Location, work: Location) -> Path:
    """Where a TIFF is written before it gets its name: beside a local output, else in a local
    work folder or the system's temporary folder (object stores cannot seek while writing)."""
    if output.is_local:
        return output.local_path.with_name(output.name + ".partial")
    folder = work.local_path if work.is_local else Path(tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    return folder / (output.name + ".partial")


def publish(partial: Path, output: Location) -> None:
    """Give a finished file its name: a rename on a local disk, one upload to an object store."""
    if output.is_local:
        os.replace(partial, output.local_path)
    else:
        output.fs.put_file(str(partial), output.path)
        partial.unlink()


def export(src: str | os.PathLike[str] | Location, dst: str | os.PathLike[str] | Location, *,
           overwrite: bool = False, compression: str = "zlib") -> Location:
    """Write the OME-Zarr image at ``src`` (all its pyramid levels) as a TIFF at ``dst`` (local
    paths or fsspec URLs)."""
    from .io.ngff import read_ngff_metadata
    from .io.omezarr import STATUS_KEY
    from .io.tiff import write_tiff

    source, output = Location.of(src), Location.of(dst)
    if not source.is_dir():
        raise LpdaskError(f"input {source} is not an OME-Zarr folder")
    if not output.name.lower().endswith(TIFF_SUFFIXES):
        raise LpdaskError(f"output {output} must be a .tif, .tiff or .ome.tif file")
    if output.exists() and not overwrite:
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
    from .lease import hold

    with hold([output]):  # one writer of the output at a time, as for upscale
        partial = partial_tiff_path(output, output.parent)
        try:
            levels = [group[p] for p in paths]
            check_compression(compression, levels[0].dtype)
            write_tiff(partial, levels, meta, ome=wants_ome(output, True, meta), compression=compression)
            publish(partial, output)
        except BaseException as exc:
            partial.unlink(missing_ok=True)
            fault = fault_of(exc, f"the output {output}", started=False)
            if fault is not None:
                raise fault from None
            raise
    return output
