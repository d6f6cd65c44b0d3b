"""GPU figures for Real-ESRGAN x4plus, measured side by side in one process:

- throughput (input megapixels per second) of lpdask in fp32, fp16 and bf16 with a given chunk, of
  whole-image inference on the same image in the same precision, and of whole-image inference plus
  writing its 8-bit result to Zarr (what lpdask's output costs on top: it also writes a pyramid);
- peak GPU memory of each lpdask run (torch's reserved and allocated bytes) against the planner's
  prediction, and what the planner picks when left to choose (fp16);
- each precision's error against fp32 whole-image output on a crop (8-bit levels).

Run on a CUDA machine: ``.venv/bin/python -m benchmarks.gpu [--size 1024] [--chunk 512] [--precisions fp16]``
(``--quick``: 256 px in chunks of 128). Prints a table and writes benchmarks/results/gpu.json.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from .common import astronaut, cuda_upscale, levels_off, save, table, whole_image


def main() -> None:
    import tifffile
    import torch
    import zarr

    import lpdask
    from lpdask.device import PRECISIONS
    from lpdask.planner import measure_machine

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024, help="input side in pixels")
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--precisions", default="fp32,fp16,bf16", help="comma-separated")
    parser.add_argument("--reference-size", type=int, default=512, help="side of the crop whose error is measured")
    parser.add_argument("--quick", action="store_true", help="256 px in chunks of 128, crop 128: proves it runs")
    args = parser.parse_args()
    if args.quick:
        args.size, args.chunk, args.reference_size = 256, 128, 128
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.gpu needs a CUDA GPU")
    net = lpdask.load_model(None)
    measure_machine("cuda")  # the planner's one-off measurement, outside the timings
    photo = astronaut(args.size)
    crop = photo[: args.reference_size, : args.reference_size].copy()
    reference, _ = whole_image(net, crop, "cuda")
    megapixels = args.size**2 / 1e6
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        tifffile.imwrite(tmp / "in.tif", photo, tile=(256, 256))
        tifffile.imwrite(tmp / "crop.tif", crop)
        for precision in args.precisions.split(","):
            dtype = PRECISIONS[precision]
            _, whole_seconds = whole_image(net, photo, "cuda", dtype, repeat=2)
            start = time.perf_counter()  # what a plain script does: whole-image, then the result to Zarr
            pixels, _ = whole_image(net, photo, "cuda", dtype)
            zarr.create_array(str(tmp / f"whole-{precision}.zarr"), shape=pixels.shape,
                              chunks=(pixels.shape[0], 1024, 1024), dtype="uint8")[:] = pixels
            written = time.perf_counter() - start
            run = cuda_upscale(tmp / "in.tif", tmp / f"{precision}.zarr", net, chunk=args.chunk, precision=precision)
            lpdask.upscale(tmp / "crop.tif", tmp / f"crop-{precision}.zarr", model=net, chunk=args.chunk // 2,
                           device="cuda", precision=precision, overwrite=True)
            out = zarr.open_array(str(tmp / f"crop-{precision}.zarr" / "0"))[:]
            rows.append({"precision": precision, "chunk": args.chunk, **run, "whole_mp_per_s": megapixels / whole_seconds,
                         "whole_and_write_mp_per_s": megapixels / written, **levels_off(out, reference)})
        planned = cuda_upscale(tmp / "in.tif", tmp / "planned.zarr", net, precision="fp16")
        rows.append({"precision": "fp16", "chunk": "planner", **planned})
    print("\n".join(table(["precision", "chunk", "MP/s", "whole MP/s", "+write MP/s", "GiB reserved", "predicted",
                           "max err", "mean err", "> 1 level"],
                          [[r["precision"], r["chunk"], f"{r['input_mp_per_s']:.3f}",
                            *(f"{r[k]:.3f}" if k in r else "" for k in ("whole_mp_per_s", "whole_and_write_mp_per_s")),
                            f"{r['reserved'] / 2**30:.2f}", f"{r['predicted'] / 2**30:.2f}" if r["predicted"] else "n/a",
                            r.get("max", ""), f"{r['mean']:.4f}" if "mean" in r else "",
                            f"{r['over_1_level']:.3%}" if "over_1_level" in r else ""] for r in rows])))
    for r in rows:
        print(f"{r['precision']} chunk {r['chunk']}: {r['plan']}")
    save("gpu", {"device": torch.cuda.get_device_name(), "args": vars(args), "torch": torch.__version__,
                 "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"), "rows": rows})


if __name__ == "__main__":
    main()
