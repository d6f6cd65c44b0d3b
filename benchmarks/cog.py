"""Peak memory of writing a Cloud Optimized GeoTIFF against the plain pyramidal (SubIFD) TIFF.

Makes a synthetic georeferenced RGB uint8 OME-Zarr pyramid per size (written chunk by chunk with
zarr, levels as lpdask stores them: 2x2 means down to 256 px), then exports it with
``lpdask.export.export`` twice, ``cog=False`` and ``cog=True``, each in a fresh process. Each child
reports its peak RSS (``VmHWM``) after its imports and after the write, and the write's seconds.
Flat memory means the write's peak does not grow with the image.

    .venv/bin/python benchmarks/cog.py                      # 8192^2 and 16384^2
    .venv/bin/python benchmarks/cog.py --sizes 4096 --keep  # keep the files in --workdir

Results go to stdout (a table) and ``benchmarks/results/cog.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
RESULTS = HERE / "results"
CHUNK = 1024


def synthetic(folder: Path, size: int) -> None:
    """A georeferenced (EPSG:32633) RGB OME-Zarr of ``size``^2 px: smooth waves plus noise, so it
    compresses like a photograph rather than like zeros."""
    import numpy as np
    import zarr

    from lpdask.io.metadata import Axis, GeoTiff, ImageMetadata
    from lpdask.io.ngff import ngff_attributes
    from lpdask.io.omezarr import THUMBNAIL, half

    group = zarr.open_group(str(folder), mode="w")
    rng = np.random.default_rng(0)
    shapes = [(3, size, size)]
    while max(shapes[-1][1:]) > THUMBNAIL:
        shapes.append((3, *(math.ceil(n / 2) for n in shapes[-1][1:])))
    previous = None
    for k, shape in enumerate(shapes):
        level = group.create_array(str(k), shape=shape, chunks=(3, min(CHUNK, shape[1]), min(CHUNK, shape[2])),
                                   dtype="uint8", dimension_names=["c", "y", "x"], fill_value=0)
        for y in range(0, shape[1], CHUNK):
            for x in range(0, shape[2], CHUNK):
                h, w = min(CHUNK, shape[1] - y), min(CHUNK, shape[2] - x)
                if previous is None:
                    rows, columns = np.arange(y, y + h, dtype=np.float32), np.arange(x, x + w, dtype=np.float32)
                    waves = np.stack([np.outer(np.cos(rows / (53 + 7 * c)), np.sin(columns / (37 + 11 * c)))
                                      for c in range(3)])
                    noise = rng.integers(-6, 7, (3, h, w), dtype=np.int16)
                    level[:, y:y + h, x:x + w] = np.clip(waves * 60 + 128 + noise, 0, 255).astype(np.uint8)
                else:
                    level[:, y:y + h, x:x + w] = half(previous[:, 2 * y:2 * (y + h), 2 * x:2 * (x + w)])
        previous = level
    geo = GeoTiff(model_pixel_scale=(0.5, 0.5, 0.0), model_tiepoint=(0, 0, 0, 500000.0, 5000000.0, 0),
                  geo_key_directory=(1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633))
    meta = ImageMetadata(axes=(Axis("c"), Axis("y", "meter", 0.5), Axis("x", "meter", 0.5)), photometric="rgb",
                         geotiff=geo)
    group.attrs.update(ngff_attributes(meta, len(shapes), folder.name, np.dtype("uint8")))


def peak_rss() -> int:
    """This process's peak resident set (bytes): ``VmHWM``, else ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak() -> bool:
    """Restart ``VmHWM`` from the current RSS (Linux >= 4.0), so a later phase's peak shows alone."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(kind: str, src: str, dst: str, compression: str) -> None:
    """One export in this (fresh) process; prints its figures as one JSON line. For a COG, the
    peak of the tifffile write (the scratch pyramid) and of GDAL's copy are also taken apart."""
    import rasterio.shutil
    import tifffile  # noqa: F401

    from lpdask.export import export

    phases: dict[str, float] = {}
    copy = rasterio.shutil.copy

    def timed_copy(*args: object, **kwargs: object) -> None:
        phases["scratch_write_peak"] = peak_rss()
        started = time.perf_counter()
        if reset_peak():
            phases["copy_start_rss"] = peak_rss()
            copy(*args, **kwargs)
            phases["gdal_copy_peak"] = peak_rss()
        else:
            copy(*args, **kwargs)
        phases["gdal_copy_seconds"] = time.perf_counter() - started

    rasterio.shutil.copy = timed_copy
    before = peak_rss()
    started = time.perf_counter()
    export(src, dst, overwrite=True, compression=compression, cog=kind == "cog")
    seconds = time.perf_counter() - started
    peak = max(peak_rss(), phases.get("scratch_write_peak", 0))
    print(json.dumps({"kind": kind, "peak_after_imports": before, "peak": peak, "seconds": seconds,
                      "bytes": os.path.getsize(dst), **phases}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8192, 16384], help="Image sides (px).")
    parser.add_argument("--compression", default="zlib", help="lpdask codec of both TIFFs.")
    parser.add_argument("--workdir", default=None, help="Where the files go [default: a temporary folder].")
    parser.add_argument("--keep", action="store_true", help="Keep the files.")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "SRC", "DST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.compression)
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lpdask-cog-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for size in args.sizes:
            src = work / f"synthetic_{size}.zarr"
            started = time.perf_counter()
            synthetic(src, size)
            print(f"made {src} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
            for kind in ("plain", "cog"):
                dst = work / f"{kind}_{size}.tif"
                done = subprocess.run([sys.executable, __file__, "--compression", args.compression, "--child", kind,
                                       str(src), str(dst)], capture_output=True, text=True, check=True)
                row = {"size": size, **json.loads(done.stdout.strip().splitlines()[-1])}
                rows.append(row)
                print(f"{kind} {size}: {row}", file=sys.stderr)
                if not args.keep:
                    dst.unlink()
            if not args.keep:
                shutil.rmtree(src)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    mib = 2**20
    print("| size | output | raw level 0 (MiB) | peak RSS (MiB) | after imports (MiB) | write's own (MiB) "
          "| GDAL's copy: peak (RSS at its start) (MiB) | seconds (GDAL's copy) | file (MiB) |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        copy = (f"{row['gdal_copy_peak'] / mib:.0f} ({row['copy_start_rss'] / mib:.0f})"
                if "gdal_copy_peak" in row else "")
        seconds = f"{row['seconds']:.1f}" + (f" ({row['gdal_copy_seconds']:.1f})" if "gdal_copy_seconds" in row else "")
        print(f"| {row['size']}^2 RGB | {row['kind']} | {3 * row['size'] ** 2 / mib:.0f} | {row['peak'] / mib:.0f} "
              f"| {row['peak_after_imports'] / mib:.0f} | {(row['peak'] - row['peak_after_imports']) / mib:.0f} "
              f"| {copy} | {seconds} | {row['bytes'] / mib:.0f} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cog.json").write_text(json.dumps({"command": sys.argv, "compression": args.compression,
                                                  "cpus": os.cpu_count(), "runs": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
