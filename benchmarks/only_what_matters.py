"""Compute only what matters: a region of interest against the whole image and against a standalone
image of the region plus its reach; output known without the network (nodata, constant colours)
left out against computing every pixel (``--compute-all``). Every run is ``lpdask upscale`` in a
fresh process, timed whole (imports, model, reading, writing the pyramid), the runs of one comparison
side by side; outputs compared bit for bit where they must be equal.

    .venv/bin/python -m benchmarks.only_what_matters [--model NAME] [--side N] [--cases ...] [--shade PATH]

Cases: ``footprint`` (a satellite scene's footprint, 88% nodata around it), ``background`` (a
slide-like texture on a white background, 75% of the image), ``sparse`` (a GDAL sparse GeoTIFF,
75% of its tiles never written), ``region`` (a 256^2 region of a ``--region-side`` image), and
``shade`` with ``--shade``: rasterio's ``tests/data/shade.tif`` (a hillshade, 88% nodata in thin
gaps all over it).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import tifffile
import zarr
from rasterio.transform import from_origin

from lpdask.samples import smooth_image


def upscale(folder: Path, src: Path, dst: str, model: str, *extra: str) -> float:
    """Seconds of one ``lpdask upscale`` in a fresh process."""
    env = {**os.environ, "LPDASK_CACHE_DIR": str(folder / "cache")}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lpdask", "upscale", str(src), str(folder / dst), "--model", model,
                           "-q", "--overwrite", *extra], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(done.stderr)
    return seconds


def level0(path: Path) -> np.ndarray:
    return zarr.open_array(str(path / "0"), mode="r")[:]


def footprint(path: Path, side: int) -> float:
    """A satellite scene's footprint: a rotated square of data in a nodata frame; returns the nodata share."""
    y, x = np.mgrid[0:side, 0:side] - side / 2
    valid = (np.abs(x + y) < side * 0.245) & (np.abs(x - y) < side * 0.245)
    image = np.maximum(smooth_image(side, side, seed=3), 1)
    image[~valid] = 0
    with rasterio.open(path, "w", driver="GTiff", width=side, height=side, count=3, dtype="uint8", nodata=0,
                       crs="EPSG:32633", transform=from_origin(400000, 5000000, 10, 10), tiled=True) as dst:
        dst.write(np.moveaxis(image, -1, 0))
    return float(1 - valid.mean())


def background(path: Path, side: int) -> float:
    """Texture over a quarter of the image (its middle), on a flat white background."""
    image = np.empty((side, side, 3), np.uint8)
    image[:] = (240, 236, 232)
    quarter = side // 4
    image[quarter:3 * quarter, quarter:3 * quarter] = smooth_image(2 * quarter, 2 * quarter, seed=5)
    tifffile.imwrite(path, image, photometric="rgb", tile=(256, 256))
    return 0.75


def sparse(path: Path, side: int) -> float:
    """A GDAL sparse GeoTIFF: only the middle quarter written, the other tiles missing (read as 0)."""
    quarter = side // 4
    with rasterio.open(path, "w", driver="GTiff", width=side, height=side, count=3, dtype="uint8", tiled=True,
                       blockxsize=256, blockysize=256, sparse_ok=True, crs="EPSG:32633",
                       transform=from_origin(400000, 5000000, 10, 10)) as dst:
        dst.write(np.moveaxis(smooth_image(2 * quarter, 2 * quarter, seed=6), -1, 0),
                  window=rasterio.windows.Window(quarter, quarter, 2 * quarter, 2 * quarter))
    return 0.75


def masked(folder: Path, src: Path, model: str, label: str, share: float) -> str:
    every = upscale(folder, src, "every.zarr", model, "--compute-all")
    left_out = upscale(folder, src, "skip.zarr", model)
    same = np.array_equal(level0(folder / "every.zarr"), level0(folder / "skip.zarr"))
    return (f"| {label} ({share:.0%}) | {every:.1f} s | {left_out:.1f} s | {left_out / every:.2f}x | "
            f"{'yes' if same else 'NO'} |")


def region(folder: Path, model: str, side: int, size: int, reach: int) -> list[str]:
    image = smooth_image(side, side, seed=4)
    tifffile.imwrite(folder / "big.tif", image, photometric="rgb", tile=(256, 256))
    x = y = (side - size) // 2
    window = image[y - reach:y + size + reach, x - reach:x + size + reach]
    tifffile.imwrite(folder / "window.tif", window, photometric="rgb", tile=(256, 256))
    whole = upscale(folder, folder / "big.tif", "whole.zarr", model)
    part = upscale(folder, folder / "big.tif", "region.zarr", model, "--region", f"{x},{y},{size},{size}")
    alone = upscale(folder, folder / "window.tif", "window.zarr", model)
    scale = level0(folder / "region.zarr").shape[-1] // size
    crop = level0(folder / "whole.zarr")[:, y * scale:(y + size) * scale, x * scale:(x + size) * scale]
    diff = np.abs(level0(folder / "region.zarr").astype(np.int64) - crop)
    return [f"| whole {side}^2 image | {whole:.1f} s | 1.00x | |",
            f"| `--region` {size}^2 in its middle | {part:.1f} s | {part / whole:.2f}x | {part / alone:.2f}x the "
            f"standalone window; against the whole run's crop: max {diff.max()} levels, "
            f"{(diff > 0).mean():.4%} of values differ |",
            f"| standalone ({size} + 2 x {reach})^2 image | {alone:.1f} s | {alone / whole:.2f}x | |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="realesr-animevideov3")
    parser.add_argument("--side", type=int, default=1024, help="the footprint, background and sparse images' side")
    parser.add_argument("--region-side", type=int, default=2048, help="the region case's image side")
    parser.add_argument("--cases", nargs="*", default=["footprint", "background", "sparse", "region"])
    parser.add_argument("--shade", type=Path, help="rasterio's tests/data/shade.tif")
    args = parser.parse_args()
    from lpdask import load_model
    from lpdask.geometry import reach

    net = load_model(args.model)
    reach_px = reach(net.stages(1)) * net.input_factor
    makers = {"footprint": (footprint, "footprint {side}^2, nodata"),
              "background": (background, "white background {side}^2, one colour"),
              "sparse": (sparse, "sparse GeoTIFF {side}^2, missing tiles")}
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        print(f"model {args.model} (reach {reach_px} px), {os.cpu_count()} cores")
        print("| input (share known) | every pixel (`--compute-all`) | default | time | output the same |")
        print("|---|---|---|---|---|")
        for case in args.cases:
            if case in makers:
                make, label = makers[case]
                share = make(folder / f"{case}.tif", args.side)
                print(masked(folder, folder / f"{case}.tif", args.model, label.format(side=args.side), share),
                      flush=True)
        if args.shade:
            with rasterio.open(args.shade) as src:
                share = float((src.read_masks(1) == 0).mean())
            print(masked(folder, args.shade, args.model, "rasterio's shade.tif, nodata", share), flush=True)
        if "region" in args.cases:
            print()
            print("| run | time | vs the whole image | |")
            print("|---|---|---|---|")
            for line in region(folder, args.model, args.region_side, 256, reach_px):
                print(line, flush=True)


if __name__ == "__main__":
    main()
