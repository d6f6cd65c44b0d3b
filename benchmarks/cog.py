"""Peak memory of writing a Cloud Optimized GeoTIFF against the plain pyramidal (SubIFD) TIFF.

Makes a synthetic georeferenced RGB uint8 OME-Zarr pyramid per size (written chunk by chunk with
zarr, levels as lpdask stores them: 2x2 means down to 256 px), then writes it as lpdask export does
(``lpdask.export.write_pyramid_tiff``) twice, plain and COG, each in a fresh process that reports its
peak RSS (``VmHWM``) and seconds. For a COG, the peak of the scratch pyramid (tifffile) and of GDAL's
copy are taken apart: the peak restarts at the scratch's last tile (``on_tile``). Flat memory means
the write's peak does not grow with the image.

    .venv/bin/python -m benchmarks.cog                      # 8192^2 and 16384^2
    .venv/bin/python -m benchmarks.cog --sizes 4096 --keep  # keep the files in --workdir
    .venv/bin/python -m benchmarks.cog --quick              # 1024^2: proves it runs

Results go to stdout (a table) and ``benchmarks/results/cog.json``.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

from .common import Runner, measured, peak_rss, rss_now, save, say, table

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


def reset_peak() -> bool:
    """Restart ``VmHWM`` from the current RSS (Linux >= 4.0), so a later phase's peak shows alone."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child_write(spec: dict) -> dict:
    """One TIFF write in this (fresh) process, as ``lpdask export`` writes it."""
    import tifffile  # noqa: F401  (imported before the clock starts)
    import zarr

    from lpdask.export import write_pyramid_tiff
    from lpdask.io.ngff import read_ngff_metadata

    meta, paths = read_ngff_metadata(spec["src"])
    group = zarr.open_group(spec["src"], mode="r")
    levels = [group[p] for p in paths]
    tiles = sum(math.ceil(a.shape[-2] / 256) * math.ceil(a.shape[-1] / 256) for a in levels)
    phases: dict[str, float] = {}
    done = [0]

    def on_tile() -> None:  # the last of the scratch's tiles: GDAL's copy comes next
        done[0] += 1
        if done[0] == tiles and spec["kind_of_tiff"] == "cog":
            phases["scratch_write_peak"] = peak_rss()
            phases["copy_start"] = time.perf_counter()
            if reset_peak():
                phases["copy_start_rss"] = rss_now()

    def work() -> dict:
        write_pyramid_tiff(Path(spec["dst"]), levels, meta, spec["kind_of_tiff"], compression=spec["compression"],
                           scratch=Path(spec["dst"] + ".scratch"), on_tile=on_tile)
        if "copy_start" in phases:
            phases["gdal_copy_seconds"] = time.perf_counter() - phases.pop("copy_start")
        return {"tiff": spec["kind_of_tiff"], "bytes": os.path.getsize(spec["dst"])}

    result = measured(work)
    if "copy_start_rss" in phases:  # the peak restarted at the copy: VmHWM is then the copy's own
        result["gdal_copy_peak"] = result["peak_rss_bytes"]
    result["peak_rss_bytes"] = max(result["peak_rss_bytes"], phases.get("scratch_write_peak", 0))
    return {**result, **phases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[8192, 16384], help="Image sides (px).")
    parser.add_argument("--compression", default="zlib", help="lpdask codec of both TIFFs.")
    parser.add_argument("--workdir", default=None, help="Where the files go [default: a temporary folder].")
    parser.add_argument("--keep", action="store_true", help="Keep the files.")
    parser.add_argument("--quick", action="store_true", help="1024^2 only: proves it runs")
    args = parser.parse_args()
    sizes = [1024] if args.quick else args.sizes
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lpdask-cog-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    run = Runner(strict=True)
    rows = []
    try:
        for size in sizes:
            src = work / f"synthetic_{size}.zarr"
            started = time.perf_counter()
            synthetic(src, size)
            say(f"made {src} in {time.perf_counter() - started:.0f} s")
            for kind in ("plain", "cog"):
                dst = work / f"{kind}_{size}.tif"
                rows.append({"size": size, **run({"kind": "benchmarks.cog:child_write", "src": str(src), "dst": str(dst),
                                                  "kind_of_tiff": kind, "compression": args.compression},
                                                 f"{kind} {size}^2")})
                if not args.keep:
                    dst.unlink()
            if not args.keep:
                shutil.rmtree(src)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    mib = 2**20
    print("\n".join(table(["size", "output", "raw level 0 (MiB)", "peak RSS (MiB)", "after imports (MiB)",
                           "write's own (MiB)", "GDAL's copy: peak (RSS at its start) (MiB)", "seconds (GDAL's copy)",
                           "file (MiB)"],
                          [[f"{r['size']}^2 RGB", r["tiff"], f"{3 * r['size'] ** 2 / mib:.0f}",
                            f"{r['peak_rss_bytes'] / mib:.0f}", f"{r['rss_after_import_bytes'] / mib:.0f}",
                            f"{(r['peak_rss_bytes'] - r['rss_after_import_bytes']) / mib:.0f}",
                            f"{r['gdal_copy_peak'] / mib:.0f} ({r['copy_start_rss'] / mib:.0f})" if "gdal_copy_peak" in r
                            else "", f"{r['work_seconds']:.1f}" + (f" ({r['gdal_copy_seconds']:.1f})"
                                                                   if "gdal_copy_seconds" in r else ""),
                            f"{r['bytes'] / mib:.0f}"] for r in rows])))
    save("cog", {"compression": args.compression, "cpus": os.cpu_count(), "runs": rows})


if __name__ == "__main__":
    main()
