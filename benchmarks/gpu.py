"""GPU figures: Real-ESRGAN x4plus throughput (input megapixels per second) with lpdask in fp32,
fp16 and bf16, and each precision's error against fp32 whole-image output, measured side by side.

Run on a CUDA machine: ``.venv/bin/python benchmarks/gpu.py [--size 1024] [--chunk 512]``.
Prints a table and writes benchmarks/results/gpu.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
import zarr
from skimage import data, transform

import lpdask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=1024, help="input side in pixels")
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--reference-size", type=int, default=512, help="side of the crop whose error is measured")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA GPU")
    net = lpdask.load_model(None)
    photo = (transform.resize(data.astronaut(), (args.size, args.size), order=3) * 255).round().astype(np.uint8)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.tif"
        tifffile.imwrite(src, photo, tile=(256, 256))
        crop = Path(tmp) / "crop.tif"
        small = np.ascontiguousarray(photo[: args.reference_size, : args.reference_size])
        tifffile.imwrite(crop, small)
        with torch.inference_mode():
            x = torch.from_numpy(small.astype(np.float32) / 255).permute(2, 0, 1)[None].cuda()
            whole = net.cuda().float()(x)[0].clamp(0, 1).cpu().numpy()
        reference = (whole * 255).round().astype(int)
        for precision in ("fp32", "fp16", "bf16"):
            torch.cuda.synchronize()
            start = time.perf_counter()
            lpdask.upscale(src, Path(tmp) / f"{precision}.zarr", model=net, chunk=args.chunk,
                           device="cuda", precision=precision)
            seconds = time.perf_counter() - start
            lpdask.upscale(crop, Path(tmp) / f"crop-{precision}.zarr", model=net, chunk=args.chunk // 2,
                           device="cuda", precision=precision, overwrite=True)
            out = zarr.open_array(str(Path(tmp) / f"crop-{precision}.zarr" / "0"))[:].astype(int)
            diff = np.abs(out - reference)
            rows.append({"precision": precision, "seconds": seconds,
                         "input_mp_per_s": args.size**2 / 1e6 / seconds, "max_error": int(diff.max()),
                         "mean_error": float(diff.mean()), "off_by_more_than_1": float((diff > 1).mean())})
            net.float()
    print(f"{'precision':>9} {'MP/s':>8} {'max err':>8} {'mean err':>9} {'>1 level':>9}")
    for r in rows:
        print(f"{r['precision']:>9} {r['input_mp_per_s']:8.3f} {r['max_error']:8d} {r['mean_error']:9.4f} "
              f"{r['off_by_more_than_1']:9.3%}")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "gpu.json").write_text(json.dumps({"device": torch.cuda.get_device_name(), "args": vars(args),
                                              "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
