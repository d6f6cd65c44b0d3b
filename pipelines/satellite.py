"""Satellite: a multi-band GeoTIFF to a super-resolved, tiled GeoTIFF with overviews, for QGIS / GDAL.

Each band goes through the network as its own grey image; the georeferencing is carried with pixels
``scale`` times smaller (same origin, same CRS) and the GDAL nodata value is kept. Real-ESRGAN knows
nothing of nodata, so the pipeline then restores the footprint: an output pixel is nodata where its
input pixel was (per band, as GDAL reads it), a valid pixel that came out equal to the nodata value is
moved one step off it, and overviews are rebuilt as means of valid pixels only (``--no-mask`` skips
this and writes lpdask's output as it is). Checked with rasterio.

    python pipelines/satellite.py                        # synthetic sample, default model
    python pipelines/satellite.py scene.tif scene_sr.tif --model realesr-animevideov3
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import zarr
from rasterio.windows import Window

from common import close, expect, parser, report, run, upscale
from samples import write_satellite

ROWS = 256
"""Output rows handled at once when masking and checking."""


def is_nodata(values: np.ndarray, nodata: float) -> np.ndarray:
    return np.isnan(values) if np.isnan(nodata) else values == nodata


def off_nodata(values: np.ndarray, nodata: float) -> np.ndarray:
    """``values`` with valid pixels equal to ``nodata`` moved one step off it (in place)."""
    if np.isnan(nodata):
        return values
    hit = values == nodata
    if hit.any():
        top = np.iinfo(values.dtype).max if values.dtype.kind in "iu" else np.inf
        values[hit] = nodata + 1 if nodata < top else nodata - 1
    return values


def restore_nodata(src: Path, result: Path, nodata: float) -> None:
    """Mask level 0 of the OME-Zarr ``result`` with the input's nodata pixels, then rebuild its
    pyramid from valid pixels only. Works through the image a band of rows at a time."""
    group = zarr.open_group(str(result), mode="r+")
    paths = [d["path"] for d in group.attrs["ome"]["multiscales"][0]["datasets"]]
    level0 = group[paths[0]]  # (c, y, x)
    with rasterio.open(src) as ds:
        scale = level0.shape[-1] // ds.width
        step = max(1, ROWS // scale)
        for top in range(0, ds.height, step):
            window = Window(0, top, ds.width, min(step, ds.height - top))
            masked = is_nodata(ds.read(window=window), nodata).repeat(scale, 1).repeat(scale, 2)
            rows = slice(top * scale, (top + window.height) * scale)
            block = off_nodata(level0[:, rows, :], nodata)
            block[masked] = nodata
            level0[:, rows, :] = block
    for upper, lower in zip(paths, paths[1:]):
        source, target = group[upper], group[lower]
        for top in range(0, target.shape[-2], ROWS):
            rows = slice(top, min(top + ROWS, target.shape[-2]))
            target[:, rows, :] = _valid_half(source[:, 2 * rows.start : 2 * rows.stop, :], nodata,
                                             target.shape[-1])


def _valid_half(block: np.ndarray, nodata: float, width: int) -> np.ndarray:
    """2x2 means of the valid pixels of (c, h, w) ``block`` (an odd edge pairs with itself), nodata
    where none is valid."""
    if block.shape[-2] % 2:
        block = np.concatenate([block, block[..., -1:, :]], axis=-2)
    if block.shape[-1] % 2:
        block = np.concatenate([block, block[..., -1:]], axis=-1)
    valid = ~is_nodata(block, nodata)
    values = np.where(valid, block, 0).astype(np.float64)
    sums = values[..., 0::2, 0::2] + values[..., 1::2, 0::2] + values[..., 0::2, 1::2] + values[..., 1::2, 1::2]
    counts = (valid[..., 0::2, 0::2].astype(np.int8) + valid[..., 1::2, 0::2] + valid[..., 0::2, 1::2]
              + valid[..., 1::2, 1::2])
    means = sums / np.maximum(counts, 1)
    if block.dtype.kind in "iu":
        means = np.round(means)
    out = off_nodata(means.astype(block.dtype), nodata)
    out[counts == 0] = nodata
    return out[..., :width]


def super_resolve(src: Path, dst: Path, args: Any) -> None:
    """lpdask straight to the GeoTIFF, or (with a nodata value to keep) through an OME-Zarr that is
    masked and then exported."""
    from lpdask.export import export

    with rasterio.open(src) as ds:
        nodata = ds.nodata
    if nodata is None or not args.mask:
        upscale(src, dst, args)
        return
    work = dst.with_name(dst.name + ".zarr")
    upscale(src, work, args, ignore=lambda message: "GeoTIFF georeferencing" in message)
    try:
        restore_nodata(src, work, nodata)
        print(f"restored the nodata ({nodata:g}) footprint; lpdask.export.export({str(work)!r}, {str(dst)!r})")
        dst.unlink(missing_ok=True)
        export(work, dst)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def check(src: Path, dst: Path, masked: bool = True) -> dict[str, Any]:
    """Compare input and output with rasterio; raise CheckFailed where they disagree."""
    with rasterio.open(src) as a, rasterio.open(dst) as b:
        scale = b.width / a.width
        expect(scale == int(scale) and b.height == a.height * scale, f"size {b.shape} is not a multiple of {a.shape}")
        scale = int(scale)
        expect(b.count == a.count, f"{b.count} bands, the input has {a.count}")
        expect(b.dtypes == a.dtypes, f"band types {b.dtypes}, the input has {a.dtypes}")
        expect(a.crs is not None and b.crs == a.crs, f"CRS {b.crs}, the input has {a.crs}")
        ta, tb = a.transform, b.transform
        expect(all(close(x / scale, y) for x, y in zip((ta.a, ta.b, ta.d, ta.e), (tb.a, tb.b, tb.d, tb.e))),
               f"pixel size {tb.a, tb.e} is not the input's {ta.a, ta.e} / {scale}")
        expect(close(ta.c, tb.c, 1e-12) and close(ta.f, tb.f, 1e-12), f"origin {tb.c, tb.f} moved from {ta.c, ta.f}")
        expect(all(close(x, y, 1e-9) for x, y in zip(a.bounds, b.bounds)), f"bounds {b.bounds} != {a.bounds}")
        expect(b.nodata == a.nodata or (a.nodata is not None and np.isnan(a.nodata) and np.isnan(b.nodata)),
               f"nodata {b.nodata}, the input has {a.nodata}")
        expect(b.is_tiled, "output is not tiled")
        overviews = b.overviews(1)
        if max(b.shape) > 256:
            expect(bool(overviews), "no overviews")
        expect(all(o == 2 ** (k + 1) for k, o in enumerate(overviews)), f"overview factors {overviews}")
        if a.nodata is not None:
            before, after, differ = _footprint(a, b, scale)
            expect(not masked or differ == 0, f"{differ} output values are nodata where their input pixel "
                                              "is not, or the other way round")
        rows = [("size (bands x rows x cols)", (a.count, *a.shape), (b.count, *b.shape)),
                ("CRS", a.crs, b.crs),
                ("pixel size", (ta.a, ta.e), (tb.a, tb.e)),
                ("origin", (ta.c, ta.f), (tb.c, tb.f)),
                ("nodata", a.nodata, b.nodata),
                *([("nodata values", before, f"{after} (input x {scale}^2 = {before * scale**2})")] if a.nodata is not None else []),
                ("overviews", a.overviews(1), overviews),
                ("tiles", a.block_shapes[0], b.block_shapes[0])]
    for k in range(len(overviews)):
        with rasterio.open(dst, overview_level=k) as o:
            expect(close(o.transform.a, tb.a * overviews[k]), f"overview {k} pixel size {o.transform.a}")
            expect(o.read(1, window=Window(0, 0, min(64, o.width), min(64, o.height))).size > 0, "empty overview")
    report(f"{src} -> {dst} (x{scale})", rows)
    return {"scale": scale}


def _footprint(a: rasterio.DatasetReader, b: rasterio.DatasetReader, scale: int) -> tuple[int, int, int]:
    """Nodata values in the input, in the output, and output values whose nodata-ness differs from
    their input pixel's, band by band."""
    step = max(1, ROWS // scale)
    before = after = differ = 0
    for top in range(0, a.height, step):
        window = Window(0, top, a.width, min(step, a.height - top))
        wanted = is_nodata(a.read(window=window), a.nodata)
        got = is_nodata(b.read(window=Window(0, top * scale, b.width, window.height * scale)), b.nodata)
        differ += int((got != wanted.repeat(scale, 1).repeat(scale, 2)).sum())
        before, after = before + int(wanted.sum()), after + int(got.sum())
    return before, after, differ


def main(argv: list[str] | None = None) -> int:
    p = parser("satellite", __doc__, "GeoTIFF (.tif)")
    p.add_argument("--no-mask", dest="mask", action="store_false",
                   help="keep the network's values in nodata areas (lpdask's output as it is)")
    args = p.parse_args(argv)
    args.folder.mkdir(parents=True, exist_ok=True)
    src = args.input
    if src is None:
        src = write_satellite(args.folder / "field.tif")
        print(f"sample: {src} (B, G, R, NIR uint16, EPSG:32633, 10 m, nodata 0)")
    dst = args.output or args.folder / f"{src.name.split('.')[0]}_sr.tif"
    super_resolve(src, dst, args)
    check(src, dst, args.mask)
    print(f"\nopen it in QGIS (Layer > Add Raster Layer) or: gdalinfo {dst}")
    return 0


if __name__ == "__main__":
    run(main)
