"""Satellite with the lazy API: read a 4-band GeoTIFF as a Dask array, super-resolve it with
``lpdask.upscale_array`` and write it with rasterio, georeferencing rescaled (same origin and CRS,
pixels ``scale`` times smaller), nodata value kept, GDAL overviews built.

``upscale_array`` is lazy: ``da.store`` computes the output block by block and rasterio writes each
block as it comes, so the whole image is never in memory. Pixels in nodata areas are whatever the
network makes of them here; the file-to-file pipeline ``pipelines/satellite.py`` restores the nodata
footprint and checks the result.

Run: ``.venv/bin/python examples/satellite.py`` (writes satellite-output/).
"""

from __future__ import annotations

import sys
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "pipelines"))
from samples import write_satellite  # noqa: E402  (the synthetic sample beside the pipelines)


class RasterBlocks:
    """A ``da.store`` target: writes (y, x, band) blocks into an open rasterio dataset."""

    def __init__(self, dataset: rasterio.io.DatasetWriter) -> None:
        self.dataset = dataset
        self.lock = threading.Lock()  # GDAL datasets are not thread-safe

    def __setitem__(self, index: tuple[slice, slice, slice], block: np.ndarray) -> None:
        rows, cols, _ = index
        with self.lock:
            self.dataset.write(np.moveaxis(block, -1, 0), window=Window.from_slices(rows, cols))


def main(out: Path = Path("satellite-output"), model: str | Path | None = None) -> Path:
    out.mkdir(exist_ok=True)
    src = write_satellite(out / "field.tif")  # B, G, R, NIR; 96 x 96 pixels of 10 m, EPSG:32633
    bands = da.from_zarr(zarr.open(tifffile.imread(src, aszarr=True), mode="r"))  # (band, y, x), lazy
    net = lpdask.load_model(model)
    big = lpdask.upscale_array(bands.transpose(1, 2, 0), net, chunk=48, channels="separate")

    with rasterio.open(src) as ds:
        profile = ds.profile | {
            "width": big.shape[1], "height": big.shape[0], "transform": ds.transform * Affine.scale(1 / net.scale),
            "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate", "BIGTIFF": "IF_SAFER"}
    dst = out / "field_sr.tif"
    with rasterio.open(dst, "w", **profile) as target:
        da.store(big, RasterBlocks(target), lock=False, compute=True)
        target.build_overviews([2, 4], Resampling.average)
    with rasterio.open(dst) as result:
        print(f"wrote {dst}: {result.count} bands {result.shape}, {result.crs}, pixel {result.res} m, "
              f"origin {result.transform.c, result.transform.f}, nodata {result.nodata}, overviews {result.overviews(1)}")
    return dst


if __name__ == "__main__":
    main()
