"""GPU figures for Real-ESRGAN x4plus, measured side by side in one process:

- throughput (input megapixels per second) of lpdask in fp32, fp16 and bf16 with a given chunk, of
  whole-image inference on the same image in the same precision, and of whole-image inference plus
  writing its 8-bit result to Zarr (what lpdask's output costs on top: it also writes a pyramid);
- peak GPU memory of each lpdask run (torch's reserved and allocated bytes) against the planner's
  prediction, and what the planner picks when left to choose (fp16);
- each precision's error against fp32 whole-image output on a crop (8-bit levels).

Run on a CUDA machine: ``.venv/bin/python benchmarks/gpu.py [--size 1024] [--chunk 512] [--precisions fp16]``.
Prints a table and writes benchmarks/results/gpu.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
import zarr
from skimage import data, transform

import lpdask
from lpdask.device import PRECISIONS, ieee_fp32
from lpdask.planner import measure_machine


def whole(net: torch.nn.Module, image: np.ndarray, dtype: torch.dtype, repeat: int = 2) -> tuple[np.ndarray, float]:
    """Whole-image output in 8-bit levels, and the seconds of the last of ``repeat`` runs (the first
    warms up)."""
    x = torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)[None].cuda()
    net = copy.deepcopy(net).cuda().to(dtype)  # a copy: fp16 would round the caller's weights
    seconds = 0.0
    with torch.inference_mode(), ieee_fp32(torch.device("cuda")):
        for _ in range(repeat):
            torch.cuda.synchronize()
            start = time.perf_counter()
            out = net(x.to(dtype))
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
    pixels = (out[0].float().clamp(0, 1).cpu().numpy() * 255).round().astype(int)
    del out, net
    torch.cuda.empty_cache()
    return pixels, seconds


def whole_and_write(net: torch.nn.Module, image: np.ndarray, dtype: torch.dtype, dst: Path) -> float:
    """Seconds of what a plain script does: whole-image inference, then the 8-bit result written to a
    Zarr array (chunks of 1024, Zarr's default codec; no pyramid)."""
    start = time.perf_counter()
    pixels, _ = whole(net, image, dtype, repeat=1)
    zarr.create_array(str(dst), shape=pixels.shape, chunks=(pixels.shape[0], 1024, 1024), dtype="uint8")[:] = pixels
    return time.perf_counter() - start


def staged(net: torch.nn.Module, src: Path, dst: Path, chunk: int | None, precision: str) -> dict:
    """One lpdask run: seconds, peak GPU memory and the planner's plan."""
    plans: list[str] = []
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.synchronize()
    start = time.perf_counter()
    lpdask.upscale(src, dst, model=net, chunk=chunk, device="cuda", precision=precision, on_plan=plans.append,
                   overwrite=True)
    seconds = time.perf_counter() - start
    plan = plans[0] if plans else ""
    predicted = re.search(r"peak memory ([\d.]+) GiB", plan)
    return {"seconds": seconds, "reserved": torch.cuda.max_memory_reserved(),
            "allocated": torch.cuda.max_memory_allocated(), "plan": plan,
            "predicted": float(predicted.group(1)) * 2**30 if predicted else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=1024, help="input side in pixels")
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--precisions", default="fp32,fp16,bf16", help="comma-separated")
    parser.add_argument("--reference-size", type=int, default=512, help="side of the crop whose error is measured")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA GPU")
    net = lpdask.load_model(None)
    measure_machine("cuda")  # the planner's one-off measurement, outside the timings
    photo = (transform.resize(data.astronaut(), (args.size, args.size), order=3) * 255).round().astype(np.uint8)
    small = np.ascontiguousarray(photo[: args.reference_size, : args.reference_size])
    reference, _ = whole(net, small, torch.float32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src, crop = Path(tmp) / "in.tif", Path(tmp) / "crop.tif"
        tifffile.imwrite(src, photo, tile=(256, 256))
        tifffile.imwrite(crop, small)
        for precision in args.precisions.split(","):
            _, whole_seconds = whole(net, photo, PRECISIONS[precision])
            written = whole_and_write(net, photo, PRECISIONS[precision], Path(tmp) / f"whole-{precision}.zarr")
            run = staged(net, src, Path(tmp) / f"{precision}.zarr", args.chunk, precision)
            lpdask.upscale(crop, Path(tmp) / f"crop-{precision}.zarr", model=net, chunk=args.chunk // 2,
                           device="cuda", precision=precision, overwrite=True)
            out = zarr.open_array(str(Path(tmp) / f"crop-{precision}.zarr" / "0"))[:].astype(int)
            diff = np.abs(out - reference)
            rows.append({"precision": precision, "chunk": args.chunk, **run, "whole_seconds": whole_seconds,
                         "whole_and_write_seconds": written,
                         "input_mp_per_s": args.size**2 / 1e6 / run["seconds"],
                         "whole_mp_per_s": args.size**2 / 1e6 / whole_seconds,
                         "whole_and_write_mp_per_s": args.size**2 / 1e6 / written,
                         "max_error": int(diff.max()), "mean_error": float(diff.mean()),
                         "off_by_more_than_1": float((diff > 1).mean())})
        planned = staged(net, src, Path(tmp) / "planned.zarr", None, "fp16")
        rows.append({"precision": "fp16", "chunk": "planner", **planned,
                     "input_mp_per_s": args.size**2 / 1e6 / planned["seconds"]})
    print(f"{'precision':>9} {'chunk':>7} {'MP/s':>7} {'whole MP/s':>10} {'+write MP/s':>11} {'GiB reserved':>12} "
          f"{'predicted':>9} {'max err':>7} {'mean err':>8} {'>1 level':>8}")
    for r in rows:
        pred = f"{r['predicted'] / 2**30:9.2f}" if r.get("predicted") else f"{'n/a':>9}"
        whole_rate = (f"{r['whole_mp_per_s']:10.3f} {r['whole_and_write_mp_per_s']:11.3f}" if "whole_mp_per_s" in r
                      else f"{'':>10} {'':>11}")
        error = (f"{r['max_error']:7d} {r['mean_error']:8.4f} {r['off_by_more_than_1']:8.3%}"
                 if "max_error" in r else "")
        print(f"{r['precision']:>9} {r['chunk']!s:>7} {r['input_mp_per_s']:7.3f} {whole_rate} "
              f"{r['reserved'] / 2**30:12.2f} {pred} {error}")
    for r in rows:
        print(f"{r['precision']} chunk {r['chunk']}: {r['plan']}")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "gpu.json").write_text(json.dumps({"device": torch.cuda.get_device_name(), "args": vars(args),
                                              "torch": torch.__version__,
                                              "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
                                              "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
