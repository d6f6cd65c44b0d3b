"""``lpdask export``: an OME-Zarr result to a tiled, pyramidal (OME-/Geo)TIFF, tile by tile; and
what a TIFF output becomes (OME-TIFF, plain TIFF with SubIFD levels, Cloud Optimized GeoTIFF)."""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import zarr

from .errors import LpdaskError, MetadataWarning, fault_of
from .options import check_compression
from .io.boundary import reading
from .io.locations import Location
from .io.metadata import ImageMetadata

TIFF_SUFFIXES = (".tif", ".tiff")
OME_SUFFIXES = (".ome.tif", ".ome.tiff")
TiffKind = Literal["ome", "plain", "cog"]


def wants_ome(output: Location, input_ome: bool, meta: ImageMetadata) -> bool:
    """OME-XML for ``.ome.tif`` outputs, and for ``.tif`` ones when the input was OME and not GeoTIFF."""
    return output.name.lower().endswith(OME_SUFFIXES) or (input_ome and meta.geotiff is None)


def tiff_kind(output: Location, input_ome: bool, meta: ImageMetadata, cog: bool | None,
              planes: int = 1, warn: bool = False) -> TiffKind | None:
    """What ``output`` becomes: None (not a TIFF), an OME-TIFF or a plain TIFF with SubIFD levels
    (:func:`wants_ome`), or a Cloud Optimized GeoTIFF: asked for with ``cog``, or by default (``cog``
    None) for a plain ``.tif`` of a georeferenced single-plane image. A COG that cannot be (not a
    plain ``.tif``, ``planes`` t/z planes) or whose rasterio is missing is refused here, in one line.
    ``warn``: a COG asked for in place of an OME-TIFF names the channel names and colours it leaves
    behind (MetadataWarning)."""
    what = "a Cloud Optimized GeoTIFF (cog)"
    name = output.name.lower()
    if not name.endswith(TIFF_SUFFIXES):
        if cog:
            raise LpdaskError(f"{what} needs a .tif output, not {output}")
        return None
    ome = wants_ome(output, input_ome, meta)
    default = cog is None
    if default:
        cog = meta.geotiff is not None and not ome and planes == 1
    if not cog:
        return "ome" if ome else "plain"
    if name.endswith(OME_SUFFIXES):
        raise LpdaskError(f"{what} is not an OME-TIFF: name the output .tif, not {output.name}")
    if planes > 1:
        raise LpdaskError(f"{what} holds one image plane and this one has {planes} (t/z): write a .ome.tif "
                          "or .zarr output")
    from .io.cog import require_gdal

    require_gdal(default)
    if ome and warn and any(c.label or c.color for c in meta.channels):
        warnings.warn("a Cloud Optimized GeoTIFF has no OME-XML: channel names and colours are not carried",
                      MetadataWarning, stacklevel=3)
    return "cog"


def scratch_tiff_path(output: Location, work: Location) -> Path:
    """Where a COG's source pyramid is written first: in a local work folder, else the system's
    temporary folder."""
    folder = work.local_path if work.is_local else Path(tempfile.gettempdir())
    return folder / (output.name + ".pyramid.partial")


def write_pyramid_tiff(path: Path, levels: Sequence[zarr.Array], meta: ImageMetadata, kind: TiffKind, *,
                       scratch: Path, compression: str = "zlib", software: str | None = None,
                       on_tile: Callable[[], None] | None = None) -> None:
    """Write ``levels`` to ``path`` as a TIFF of ``kind``; a COG goes through ``scratch`` first."""
    if kind == "cog":
        from .io.cog import write_cog

        write_cog(path, levels, meta, scratch=scratch, compression=compression, software=software, on_tile=on_tile)
    else:
        from .io.tiff import write_tiff

        write_tiff(path, levels, meta, layout="ome" if kind == "ome" else "subifds", compression=compression, software=software,
                   on_tile=on_tile)


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
           overwrite: bool = False, compression: str = "zlib", cog: bool | None = None) -> Location:
    """Write the OME-Zarr image at ``src`` (all its pyramid levels) as a TIFF at ``dst`` (local
    paths or fsspec URLs): a Cloud Optimized GeoTIFF where ``cog``, or by default for a plain
    ``.tif`` of a georeferenced image (:func:`tiff_kind`)."""
    from .io.ngff import read_ngff_metadata
    from .io.omezarr import STATUS_KEY

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
    with reading(source, "it as an OME-Zarr image"):
        meta, paths = read_ngff_metadata(source)
    from .lease import hold

    with hold([output]):  # one writer of the output at a time, as for upscale
        partial = partial_tiff_path(output, output.parent)
        scratch = scratch_tiff_path(output, output.parent)
        try:
            levels = [group[p] for p in paths]
            check_compression(compression, levels[0].dtype, meta.photometric)
            planes = math.prod(levels[0].shape[meta.axis_names.index(a)] for a in "tz" if a in meta.axis_names)
            kind = tiff_kind(output, True, meta, cog, planes, warn=True)
            write_pyramid_tiff(partial, levels, meta, kind or "plain", scratch=scratch, compression=compression)
            publish(partial, output)
        except BaseException as exc:
            partial.unlink(missing_ok=True)
            scratch.unlink(missing_ok=True)
            fault = fault_of(exc, f"the output {output}", started=False)
            if fault is not None:
                raise fault from None
            raise
    return output
