"""Cloud Optimized GeoTIFF output, through GDAL's COG driver (rasterio, the ``lpdask[geo]`` extra).

Two steps, neither holding the image:

1. tifffile writes the pyramid tile by tile (:func:`lpdask.io.tiff.write_tiff` with
   ``layout="pages"``) to a scratch GeoTIFF: tiled like the output, levels 1.. as
   reduced-resolution pages (NewSubfileType 1) of the main IFD chain, which GDAL takes as the
   dataset's overviews. It is compressed losslessly and fast (zstd level 1) whatever the output's
   codec, so a lossy codec (JPEG) is applied once.
2. GDAL's COG driver copies it block by block into ``path`` with ``OVERVIEWS=FORCE_USE_EXISTING``:
   the overviews are the scratch file's levels (lpdask's 2x2 means), never resampled again. It lays
   the file out as a COG (ghost header, every IFD before the data, tile data from the smallest
   overview up to level 0, each tile with a size leader and a trailer). Its block cache is kept
   at ``CACHE_MB``.

GDAL carries the georeferencing (as CRS and geotransform, GCPs or RPCs: its GeoKeys may be written
differently from the input's), nodata, the Software tag and the resolution tags of the scratch file.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import LpdaskError, writing
from . import tiff
from .metadata import ImageMetadata

if TYPE_CHECKING:
    import zarr

INSTALL = "pip install 'lpdask[geo]'"
SCRATCH_CODEC = "zstd"
SCRATCH_LEVEL = 1
CACHE_MB = 64
"""GDAL's block cache while copying; the copy goes a swath of tile rows at a time through it."""

GDAL_CODECS = {"zlib": "DEFLATE", "zstd": "ZSTD", "lzw": "LZW", "jpeg": "JPEG", "none": "NONE"}
_PREDICTABLE = {"zlib", "zstd", "lzw"}


def has_gdal() -> bool:
    """Whether rasterio (and so GDAL's COG driver) can be imported, without importing it."""
    return importlib.util.find_spec("rasterio") is not None


def require_gdal(default: bool = False) -> None:
    """Refuse, in one line, a COG when rasterio is missing; one by ``default`` (for a GeoTIFF)
    says how to do without."""
    if not has_gdal():
        raise LpdaskError(f"a Cloud Optimized GeoTIFF{' (the default .tif output of a GeoTIFF)' if default else ''} "
                          f"is written by GDAL through rasterio, which is not installed: {INSTALL}"
                          f"{'; or ask for pyramid levels as SubIFDs with --no-cog (cog=False)' if default else ''}")


def cog_options(dtype: np.dtype, compression: str, tile: int) -> dict[str, str]:
    """The COG driver's creation options for ``compression`` (an lpdask codec name), as
    :func:`lpdask.io.tiff.write_tiff` compresses: the horizontal predictor for integers with a
    lossless codec."""
    codec = GDAL_CODECS[compression]
    predictor = "STANDARD" if compression in _PREDICTABLE and np.dtype(dtype).kind in "ui" else "NO"
    return {"BLOCKSIZE": str(tile), "COMPRESS": codec, "OVERVIEW_COMPRESS": codec, "PREDICTOR": predictor,
            "OVERVIEW_PREDICTOR": predictor, "OVERVIEWS": "FORCE_USE_EXISTING", "BIGTIFF": "IF_SAFER",
            "STATISTICS": "NO"}


def write_cog(path: str | os.PathLike[str], levels: Sequence[zarr.Array], meta: ImageMetadata, *,
              scratch: str | os.PathLike[str], tile: int = 256, compression: str = "zlib",
              on_tile: Callable[[], None] | None = None, software: str | None = None) -> None:
    """Write the pyramid ``levels`` (one plane, axes ``meta.axis_names``, level 0 first) as a
    Cloud Optimized GeoTIFF at ``path``, through the scratch file ``scratch`` (removed after).

    ``on_tile`` is called once per tile of the scratch file as tifffile takes it; GDAL's copy
    that follows reports nothing. ``software`` goes into the Software tag.
    """
    require_gdal()
    import rasterio
    import rasterio.shutil

    scratch = Path(scratch)
    options = cog_options(levels[0].dtype, compression, tile)
    try:
        with writing(scratch):
            tiff.write_tiff(scratch, levels, meta, layout="pages", tile=tile,
                            compression=(SCRATCH_CODEC, SCRATCH_LEVEL), on_tile=on_tile, software=software)
        needs = scratch.stat().st_size if compression != "none" else sum(a.nbytes for a in levels)
        free = _free(path)
        with rasterio.Env(GDAL_CACHEMAX=CACHE_MB, GDAL_PAM_ENABLED="NO", CPL_TMPDIR=str(scratch.parent)):
            try:
                rasterio.shutil.copy(str(scratch), os.fspath(path), driver="COG", **options)
            except Exception as exc:  # rasterio's RasterioError, or its private CPLE_* errors
                error = _os_error(exc, os.fspath(path), min(free, _free(path)) < needs)
                if error is None:
                    raise
                raise error from exc
    finally:
        scratch.unlink(missing_ok=True)


def _free(path: str | os.PathLike[str]) -> int:
    return shutil.disk_usage(Path(path).parent).free


def _os_error(exc: Exception, path: str, short_of_space: bool) -> OSError | None:
    """The ``OSError`` behind a GDAL write error, for lpdask's fault messages: GDAL reports only
    text, and a full disk as a bare write error (``short_of_space``: the disk had less free
    space than the COG is likely to take)."""
    text = str(exc).lower()
    if "permission denied" in text or "read-only" in text:
        return OSError(errno.EACCES, str(exc), path)
    if "no space" in text or "disk space" in text or ("write error" in text and short_of_space):
        return OSError(errno.ENOSPC, str(exc), path)
    return None
