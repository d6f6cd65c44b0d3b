"""Satellite: a multi-band GeoTIFF to a super-resolved, tiled GeoTIFF with overviews, for QGIS / GDAL.

Each band goes through the network as its own grey image; the georeferencing is carried with pixels
``scale`` times smaller (same origin, same CRS) and the GDAL nodata value is kept. Around lpdask:

- stretch (uint16 input): reflectances fill a few percent of the 16-bit range, which the network,
  trained on photos, sees as a nearly black image and flattens. Each band's valid range is spread
  over 1..65535 in a temporary copy and mapped back after (``--stretch none`` skips it).
- nodata: lpdask fills the nodata pixels before the network, makes an output pixel nodata where its
  input pixel was (per band, as GDAL reads it), moves a valid pixel that came out equal to the
  nodata value one step off it, and averages only valid pixels in the overviews. After a stretch,
  the footprint is restored here once more as the stretch is undone (``--no-mask`` skips both).

Checked with rasterio: CRS, transform, bounds, nodata and its footprint, overviews, band count; and
with rio-cogeo: a valid Cloud Optimized GeoTIFF (lpdask writes one for a GeoTIFF input).

    python pipelines/satellite.py                        # synthetic sample, default model
    python pipelines/satellite.py scene.tif scene_sr.tif --model realesr-animevideov3
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import zarr
from rasterio.windows import Window

from common import close, expect, parser, paths, report, run, upscale
from lpdask.io.omezarr import half
from lpdask.nodata import mark
from lpdask.samples import write_satellite

ROWS = 256
"""Rows handled at once when stretching, masking and checking: memory stays bounded."""
TOP = 65535


def is_nodata(values: np.ndarray, nodata: float | None) -> np.ndarray:
    if nodata is None:
        return np.zeros(values.shape, bool)
    return np.isnan(values) if np.isnan(nodata) else values == nodata


def _row_windows(ds: rasterio.DatasetReader, rows: int) -> list[Window]:
    return [Window(0, top, ds.width, min(rows, ds.height - top)) for top in range(0, ds.height, rows)]


def band_ranges(src: Path) -> list[tuple[float, float]]:
    """Each band's lowest and highest valid value."""
    with rasterio.open(src) as ds:
        low, high = np.full(ds.count, np.inf), np.full(ds.count, -np.inf)
        for window in _row_windows(ds, ROWS):
            values = ds.read(window=window).astype(np.float64)
            values[is_nodata(values, ds.nodata)] = np.nan
            if not np.isnan(values).all():
                low = np.fmin(low, np.nanmin(values, axis=(1, 2)))
                high = np.fmax(high, np.nanmax(values, axis=(1, 2)))
    return [(lo, max(hi, lo + 1)) if np.isfinite(lo) else (0.0, 1.0) for lo, hi in zip(low, high)]


def stretch(src: Path, dst: Path, ranges: list[tuple[float, float]]) -> None:
    """A copy of the uint16 GeoTIFF ``src`` with each band's valid range spread over 1..65535 and its
    nodata pixels 0, so the network sees the contrast it was trained on, not a nearly black image."""
    with rasterio.open(src) as ds:
        profile = ds.profile | {"tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate",
                                "interleave": "band"}
        with rasterio.open(dst, "w", **profile) as out:
            # lpdask carries the copy's tags: keep the input's nodata value, band names and metadata
            out.descriptions, out.scales, out.offsets = ds.descriptions, ds.scales, ds.offsets
            out.update_tags(**ds.tags())
            for band in range(1, ds.count + 1):
                out.update_tags(band, **ds.tags(band))
            for window in _row_windows(ds, ROWS):
                values = ds.read(window=window)
                missing = is_nodata(values, ds.nodata)
                spread = np.stack([(band - lo) / (hi - lo)
                                   for band, (lo, hi) in zip(values.astype(np.float64), ranges)])
                spread = np.clip(spread, 0, 1)  # only a LOW,HIGH given by hand clips
                stretched = np.round(spread * (TOP - 1) + 1).astype(np.uint16)
                stretched[missing] = 0
                out.write(stretched, window=window)


def finish(src: Path, result: Path, ranges: list[tuple[float, float]] | None, mask: bool) -> None:
    """Turn lpdask's OME-Zarr ``result`` into the final pixels: undo the stretch, restore the nodata
    footprint of ``src`` (when ``mask``), rebuild the pyramid from valid pixels only. Row band by
    row band, never the whole image."""
    group = zarr.open_group(str(result), mode="r+")
    paths = [d["path"] for d in group.attrs["ome"]["multiscales"][0]["datasets"]]
    level0 = group[paths[0]]  # (c, y, x)
    with rasterio.open(src) as ds:
        nodata = ds.nodata if mask else None
        scale = level0.shape[-1] // ds.width
        for window in _row_windows(ds, max(1, ROWS // scale)):
            rows = slice(window.row_off * scale, (window.row_off + window.height) * scale)
            block = level0[:, rows, :]
            if ranges is not None:
                values = np.stack([(band - 1) / (TOP - 1) * (hi - lo) + lo
                                   for band, (lo, hi) in zip(block.astype(np.float64), ranges)])
                block = np.clip(np.round(values), 0, TOP).astype(block.dtype)
            if nodata is not None:  # lpdask's own marking, after the stretch is undone
                missing = is_nodata(ds.read(window=window), nodata).repeat(scale, 1).repeat(scale, 2)
                block = mark(block, np.moveaxis(~missing, 0, -1), nodata)
            level0[:, rows, :] = block
    for upper, lower in zip(paths, paths[1:]):
        source, target = group[upper], group[lower]
        for top in range(0, target.shape[-2], ROWS):
            rows = slice(top, min(top + ROWS, target.shape[-2]))
            target[:, rows, :] = half(source[:, 2 * rows.start : 2 * rows.stop, :], nodata)


def super_resolve(src: Path, dst: Path, args: Any) -> list[tuple[float, float]] | None:
    """Stretch (uint16 input), lpdask, undo the stretch and restore the nodata footprint, export to
    GeoTIFF; straight from lpdask to the GeoTIFF when there is nothing to stretch or mask. Returns
    the per-band ranges stretched, if any."""
    from lpdask.export import export

    with rasterio.open(src) as ds:
        nodata, dtypes, count = ds.nodata, set(ds.dtypes), ds.count
    ranges = None
    if args.stretch != "none" and dtypes == {"uint16"}:
        ranges = band_ranges(src) if args.stretch == "auto" else [args.stretch] * count
    mask = args.mask and nodata is not None
    if ranges is None:  # lpdask fills the nodata pixels and restores their footprint itself
        upscale(src, dst, args, **({} if args.mask else {"nodata": "none"}))
        return None
    parts = dst.with_name(dst.name + ".parts")
    parts.mkdir(exist_ok=True)
    try:
        source = src
        if ranges is not None:
            source = parts / "stretched.tif"
            stretch(src, source, ranges)
            print(f"stretched each band's valid range {[(int(lo), int(hi)) for lo, hi in ranges]} to 1..{TOP}")
        upscale(source, parts / "result.zarr", args, ignore=lambda message: "GeoTIFF georeferencing" in message)
        finish(src, parts / "result.zarr", ranges, mask)
        done = ((["undid the stretch"] if ranges else [])
                + ([f"restored the nodata ({nodata:g}) footprint"] if mask else []))
        print(f"{' and '.join(done)}; lpdask.export.export({str(parts / 'result.zarr')!r}, {str(dst)!r})")
        dst.unlink(missing_ok=True)
        export(parts / "result.zarr", dst)
    finally:
        shutil.rmtree(parts, ignore_errors=True)
    return ranges


def check(src: Path, dst: Path, masked: bool = True) -> dict[str, Any]:
    """Compare input and output with rasterio; raise CheckFailed where they disagree."""
    with rasterio.open(src) as a, rasterio.open(dst) as b:
        scale = b.width / a.width
        expect(scale == int(scale) and b.height == a.height * scale, f"size {b.shape} is not a multiple of {a.shape}")
        scale = int(scale)
        expect(b.count == a.count, f"{b.count} bands, the input has {a.count}")
        expect(b.dtypes == a.dtypes, f"band types {b.dtypes}, the input has {a.dtypes}")
        expect(b.descriptions == a.descriptions, f"band names {b.descriptions}, the input has {a.descriptions}")
        expect(a.crs is not None and b.crs == a.crs, f"CRS {b.crs}, the input has {a.crs}")
        ta, tb = a.transform, b.transform
        expect(all(close(x / scale, y) for x, y in zip((ta.a, ta.b, ta.d, ta.e), (tb.a, tb.b, tb.d, tb.e))),
               f"pixel size {tb.a, tb.e} is not the input's {ta.a, ta.e} / {scale}")
        expect(close(ta.c, tb.c, 1e-12) and close(ta.f, tb.f, 1e-12), f"origin {tb.c, tb.f} moved from {ta.c, ta.f}")
        expect(all(close(x, y, 1e-9) for x, y in zip(a.bounds, b.bounds)), f"bounds {b.bounds} != {a.bounds}")
        expect(b.nodata == a.nodata or (a.nodata is not None and np.isnan(a.nodata) and np.isnan(b.nodata)),
               f"nodata {b.nodata}, the input has {a.nodata}")
        expect(bool(b.profile.get("tiled")), "output is not tiled")
        overviews = b.overviews(1)
        if max(b.shape) > 256:
            expect(bool(overviews), "no overviews")
        expect(all(o == 2 ** (k + 1) for k, o in enumerate(overviews)), f"overview factors {overviews}")
        found = _scan(a, b, scale)
        if a.nodata is not None:
            expect(not masked or found["differ"] == 0, f"{found['differ']} output values are nodata where their "
                                                       "input pixel is not, or the other way round")
        from rio_cogeo.cogeo import cog_validate

        valid, errors, _ = cog_validate(str(dst), quiet=True)
        expect(valid, f"output is not a valid Cloud Optimized GeoTIFF: {'; '.join(errors)}")
        rows = [("size (bands x rows x cols)", (a.count, *a.shape), (b.count, *b.shape)),
                ("band names", a.descriptions, b.descriptions),
                ("CRS", a.crs, b.crs),
                ("pixel size", (ta.a, ta.e), (tb.a, tb.e)),
                ("origin", (ta.c, ta.f), (tb.c, tb.f)),
                ("nodata", a.nodata, b.nodata),
                ("nodata values", found["before"],
                 f"{found['after']} (input x {scale}^2 = {found['before'] * scale**2})"),
                ("band means (valid)", *found["means"]),
                ("overviews", a.overviews(1), overviews),
                ("tiles", a.block_shapes[0], b.block_shapes[0]),
                ("Cloud Optimized GeoTIFF", "", "valid (rio-cogeo)")]
    for k in range(len(overviews)):
        with rasterio.open(dst, overview_level=k) as o:
            expect(close(o.transform.a, tb.a * overviews[k]), f"overview {k} pixel size {o.transform.a}")
            expect(o.read(1, window=Window(0, 0, min(64, o.width), min(64, o.height))).size > 0, "empty overview")
    report(f"{src} -> {dst} (x{scale})", rows)
    return {"scale": scale}


def _scan(a: rasterio.DatasetReader, b: rasterio.DatasetReader, scale: int) -> dict[str, Any]:
    """Band by band, row band by row band: nodata values in input and output, output values whose
    nodata-ness differs from their input pixel's, and each band's mean valid value."""
    found = {"before": 0, "after": 0, "differ": 0, "sum a": np.zeros(a.count), "sum b": np.zeros(a.count),
             "count a": np.zeros(a.count), "count b": np.zeros(a.count)}
    for window in _row_windows(a, max(1, ROWS // scale)):
        values = a.read(window=window)
        out = b.read(window=Window(0, window.row_off * scale, b.width, window.height * scale))
        missing, hollow = is_nodata(values, a.nodata), is_nodata(out, b.nodata)
        found["differ"] += int((hollow != missing.repeat(scale, 1).repeat(scale, 2)).sum())
        found["before"] += int(missing.sum())
        found["after"] += int(hollow.sum())
        for key, pixels, mask in (("a", values, missing), ("b", out, hollow)):
            found[f"sum {key}"] += np.where(mask, 0, pixels).sum(axis=(1, 2), dtype=np.float64)
            found[f"count {key}"] += (~mask).sum(axis=(1, 2))
    found["means"] = tuple(np.round(found[f"sum {k}"] / np.maximum(found[f"count {k}"], 1)).astype(int).tolist()
                           for k in "ab")
    return found


def _stretch(text: str) -> str | tuple[float, float]:
    if text in ("auto", "none"):
        return text
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not auto, none or LOW,HIGH") from None
    if not low < high:
        raise argparse.ArgumentTypeError(f"{text!r}: LOW must be below HIGH")
    return low, high


def main(argv: list[str] | None = None) -> int:
    p = parser("satellite", __doc__, "GeoTIFF (.tif)")
    p.add_argument("--no-mask", dest="mask", action="store_false",
                   help="keep the network's values in nodata areas (lpdask's output as it is)")
    p.add_argument("--stretch", default="auto", type=_stretch, metavar="auto|none|LOW,HIGH",
                   help="uint16 input: spread each band's valid range (auto), or LOW..HIGH, over the 16-bit "
                        "range for the network and back after (default: %(default)s)")
    args = p.parse_args(argv)
    src, dst = paths(args, write_satellite, "field.tif", "B, G, R, NIR uint16, EPSG:32633, 10 m, nodata 0", ".tif")
    super_resolve(src, dst, args)
    check(src, dst, args.mask)
    print(f"\nopen it in QGIS (Layer > Add Raster Layer) or: gdalinfo {dst}")
    return 0


if __name__ == "__main__":
    run(main)
