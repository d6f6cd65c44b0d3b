"""`make demo`: upscale a real photo x4 with the built-in Real-ESRGAN x4plus, in chunks, and show
the seams that Real-ESRGAN's tile mode leaves and lpdask does not.

Writes demo-output/ (or --out DIR): sample.tif (the input, a tiled TIFF), lpdask.zarr and tile.zarr
(OME-Zarr results), and seams.png: a crop across a chunk corner, tile mode | lpdask | whole-image,
with each method's |difference from whole-image| below it (amplified). Prints each method's error
against whole-image inference.

`make demo` runs it as it is: a 256 x 256 crop in chunks of 64 px, about 2 minutes on 2 CPU cores.
`--size 32 --chunk 16 --blocks-per-stage 1` makes the same figure in under a minute
(tests/test_examples.py runs that; naming the grouping skips the planner's profiling of the network).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
import zarr
from skimage import data

import lpdask
from lpdask.compare import seam_figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256,
                        help="side of the input crop in pixels, more than --chunk and at most 512 (default 256)")
    parser.add_argument("--chunk", type=int, default=64, help="chunk / tile side in input pixels (default 64)")
    parser.add_argument("--blocks-per-stage", type=int, metavar="K",
                        help="RRDBs per stage of the lpdask run (default: the planner's choice)")
    parser.add_argument("--out", type=Path, default=Path("demo-output"),
                        help="folder for the results and seams.png (default demo-output)")
    args = parser.parse_args()
    if not args.chunk < args.size <= 512:
        parser.error("--size must be more than --chunk (so there is a chunk corner to show) and at most 512")

    args.out.mkdir(parents=True, exist_ok=True)
    photo = data.astronaut()  # 512 x 512 RGB, shipped with scikit-image
    top = max(0, min(512 - args.size, 40))
    image = np.ascontiguousarray(photo[top : top + args.size, 256 - args.size // 2 : 256 + args.size // 2])
    sample = args.out / "sample.tif"
    tifffile.imwrite(sample, image, tile=(64, 64), compression="zlib")
    print(f"input: {sample} {image.shape}, chunks of {args.chunk} px: "
          f"{(-(-args.size // args.chunk)) ** 2} chunks, every border a potential seam")

    net = lpdask.load_model(None)
    results = {}
    for mode in ("exact", "tile"):
        name = "lpdask" if mode == "exact" else "tile"
        given = mode == "exact" and args.blocks_per_stage is not None
        grouping = {"blocks_per_stage": args.blocks_per_stage} if given else {}
        print(f"\n$ lpdask upscale {sample} {args.out / name}.zarr --chunk {args.chunk} --mode {mode}"
              + "".join(f" --blocks-per-stage {k}" for k in grouping.values()))
        summary = lpdask.upscale(sample, args.out / f"{name}.zarr", model=net, chunk=args.chunk,
                                 mode=mode, overwrite=True, progress=True, **grouping)
        print(summary)
        results[name] = zarr.open_array(str(args.out / f"{name}.zarr" / "0"))[:]

    print("\nwhole-image inference (what infinite memory would give), for reference ...")
    start = time.perf_counter()
    with torch.inference_mode():
        out = net(torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)[None])
    whole = (out[0].clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    print(f"done in {time.perf_counter() - start:.1f} s")

    border = 4 * args.chunk  # a chunk corner in output pixels
    for name, result in results.items():
        diff = np.abs(result.astype(int) - whole)
        near = diff[:, border - 4 : border + 4, :].max(0).max()
        print(f"{name:>6} vs whole image: max {diff.max()} levels, mean {diff.mean():.3f}, "
              f"{(diff > 1).mean():.3%} of values off by more than 1, max at a chunk border {near}")
    figure = seam_figure([("tile mode (Real-ESRGAN)", results["tile"]), ("lpdask (exact)", results["lpdask"])],
                         whole, border)
    figure.save(args.out / "seams.png")
    print(f"\nwrote {args.out / 'seams.png'}: a crop across a chunk corner; bottom row: |difference| x 8")


if __name__ == "__main__":
    main()
