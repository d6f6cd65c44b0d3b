"""Satellite with the lazy API: read a 4-band uint16 GeoTIFF as a Dask array, stretch each band to
[0, 1], super-resolve it with ``lpdask.upscale_array``, map it back, keep the nodata footprint, and
write it with rasterio: georeferencing rescaled (same origin and CRS, pixels ``scale`` times smaller),
nodata value and band names kept, GDAL overviews built.

Everything before ``da.store`` is lazy: it computes the output block by block and rasterio writes
each block as it comes, so the whole image is never in memory. The file-to-file version, with checks,
is ``pipelines/satellite.py``.

Run: ``.venv/bin/python examples/satellite.py`` (writes satellite-output/).
"""

from __future__ import annotations

import threading
from pathlib import Path

import dask.array as da
import numpy as np
import rasterio
import tifffile
import zarr
from rasterio.enums import Resampling
from rasterio.transform import Affine
from rasterio.windows import Window

import lpdask
from lpdask.samples import write_satellite


class RasterBlocks:
    """A ``da.store`` target: writes (y, x, band) blocks into an open rasterio dataset."""

    def __init__(self, dataset: rasterio.io.DatasetWriter) -> None:
        self.dataset = dataset
        self.lock = threading.Lock()  # GDAL datasets are not thread-safe

    def __setitem__(self, index: tuple[slice, slice, slice], block: np.ndarray) -> None:
        rows, cols, bands = index
        with self.lock:
            self.dataset.write(np.moveaxis(block, -1, 0), indexes=list(range(bands.start + 1, bands.stop + 1)),
                               window=Window.from_slices(rows, cols))


def main(out: Path = Path("satellite-output"), model: str | Path | None = None) -> Path:
    out.mkdir(exist_ok=True)
    src = write_satellite(out / "field.tif")  # B, G, R, NIR; 96 x 96 pixels of 10 m, EPSG:32633, nodata 0
    bands = da.from_zarr(zarr.open(tifffile.imread(src, aszarr=True), mode="r"))  # (band, y, x) uint16, lazy
    valid = bands != 0

    # Reflectances fill a few percent of the 16-bit range, a nearly black image to a network trained on
    # photos: give it each band's valid range as float32 in [0, 1] instead, and map it back after.
    low, high = da.compute(da.where(valid, bands, 65535).min(axis=(1, 2)), da.where(valid, bands, 0).max(axis=(1, 2)))
    low, high = (v.astype(np.float32)[:, None, None] for v in (low, high))
    unit = da.where(valid, (bands - low) / (high - low), 0).astype(np.float32)
    net = lpdask.load_model(model)
    big = lpdask.upscale_array(unit.transpose(1, 2, 0), net, chunk=48, channels="separate").transpose(2, 0, 1)
    back = da.clip(da.round(big * (high - low) + low), 1, 65535).astype(np.uint16)
    footprint = da.repeat(da.repeat(valid, net.scale, axis=1), net.scale, axis=2)  # nodata stays nodata
    pixels = da.where(footprint, back, 0).astype(np.uint16).transpose(1, 2, 0)  # (y, x, band), still lazy

    with rasterio.open(src) as ds:
        names = ds.descriptions
        profile = ds.profile | {
            "width": big.shape[2], "height": big.shape[1], "transform": ds.transform @ Affine.scale(1 / net.scale),
            "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate", "BIGTIFF": "IF_SAFER"}
    dst = out / "field_sr.tif"
    with rasterio.open(dst, "w", **profile) as target:
        target.descriptions = names
        da.store(pixels, RasterBlocks(target), lock=False, compute=True)
        target.build_overviews([2, 4], Resampling.average)
    with rasterio.open(dst) as result:
        print(f"wrote {dst}: bands {result.descriptions} {result.shape}, {result.crs}, pixel {result.res} m, "
              f"origin {result.transform.c, result.transform.f}, nodata {result.nodata}, "
              f"overviews {result.overviews(1)}")
    return dst


if __name__ == "__main__":
    main()
