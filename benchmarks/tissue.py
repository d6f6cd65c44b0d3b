"""Tissue only on a real slide: ``lpdask upscale --tissue auto`` against computing every pixel, on
tests/data/CMU-1-Small-Region.svs (OpenSlide's CMU-1 small region), and the picture of its mask.

    .venv/bin/python -m benchmarks.tissue [--model NAME] [--series N] [--picture docs/tissue.png]

Series 0 is the slide's level 0 (2220 x 2967), series 1 its thumbnail (574 x 768). Each run is a
fresh ``lpdask upscale`` process, timed whole, the two side by side. The picture is the thumbnail with
the mask's outline in green and the glass outside it dimmed.
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
import tifffile
import zarr

SLIDE = Path(__file__).resolve().parent.parent / "tests" / "data" / "CMU-1-Small-Region.svs"


def upscale(folder: Path, dst: str, model: str, series: int, *extra: str) -> float:
    env = {**os.environ, "LPDASK_CACHE_DIR": str(folder / "cache")}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lpdask", "upscale", str(SLIDE), str(folder / dst), "--model", model,
                           "--series", str(series), "-q", *extra], env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr)
    return time.perf_counter() - started


def picture(label: np.ndarray, cell: int, path: Path, series: int) -> None:
    from PIL import Image

    image = tifffile.imread(SLIDE, series=1).astype(np.float32)
    with tifffile.TiffFile(SLIDE) as tif:
        scale = tif.series[series].shape[0] / image.shape[0]  # the run's pixels per thumbnail pixel
    rows = (np.arange(image.shape[0]) * scale // cell).astype(int).clip(0, label.shape[0] - 1)
    cols = (np.arange(image.shape[1]) * scale // cell).astype(int).clip(0, label.shape[1] - 1)
    inside = label[np.ix_(rows, cols)].astype(bool)
    edge = np.zeros_like(inside)
    edge[1:] |= inside[1:] != inside[:-1]
    edge[:, 1:] |= inside[:, 1:] != inside[:, :-1]
    edge |= np.roll(edge, 1, 0) | np.roll(edge, 1, 1)
    image[~inside] = image[~inside] * 0.6
    image[edge] = (0, 200, 0)
    Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="realesr-animevideov3")
    parser.add_argument("--series", type=int, default=0)
    parser.add_argument("--picture", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        every = upscale(folder, "all.zarr", args.model, args.series)
        tissue = upscale(folder, "tissue.zarr", args.model, args.series, "--tissue", "auto")
        group = zarr.open_group(str(folder / "tissue.zarr"), mode="r")
        label = group["labels/tissue/0"][0]
        out, computed = group["0"], zarr.open_array(str(folder / "all.zarr" / "0"), mode="r")
        cell_out = int(round(group["labels/tissue"].attrs["ome"]["multiscales"][0]["datasets"][0]
                             ["coordinateTransformations"][0]["scale"][-1]
                             / group.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]
                             ["scale"][-1]))
        inside = np.repeat(np.repeat(label, cell_out, 0), cell_out, 1)[: out.shape[1], : out.shape[2]].astype(bool)
        same = bool(np.array_equal(out[:][:, inside], computed[:][:, inside]))
        print(f"model {args.model}, series {args.series} {tuple(out.shape[1:])} out, {os.cpu_count()} cores")
        print(f"| run | time | |\n|---|---|---|\n| every pixel | {every:.1f} s | |")
        print(f"| `--tissue auto` ({label.mean():.0%} of the cells) | {tissue:.1f} s | {tissue / every:.2f}x; "
              f"inside the mask {'bit-identical' if same else 'NOT identical'} |")
        if args.picture:
            scale = out.shape[-1] // tifffile.TiffFile(SLIDE).series[args.series].shape[1]
            picture(label, cell_out // scale, args.picture, args.series)


if __name__ == "__main__":
    main()
