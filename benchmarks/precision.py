"""Error of fp16 and bf16 against fp32 whole-image output, for each named model, on a real photo.

``.venv/bin/python -m benchmarks.precision [--device cuda] [--size 64]``. On a CPU, half precision
is emulated (slow: keep --size small); on CUDA it is what ``lpdask upscale --precision`` computes.
Prints a table (8-bit levels) and writes benchmarks/results/precision.json.
"""

from __future__ import annotations

import argparse

from .common import levels_off, save, table, whole_image


def main() -> None:
    import torch
    from skimage import data

    import lpdask
    from lpdask.models.names import MODELS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=48, help="side of the astronaut crop")
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="default: every named model")
    args = parser.parse_args()
    image = data.astronaut()[100 : 100 + args.size, 180 : 180 + args.size].copy()
    rows = []
    for name in args.models:
        net = lpdask.load_model(name)
        reference, _ = whole_image(net, image, args.device)
        for precision, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
            rows.append({"model": name, "precision": precision, **levels_off(whole_image(net, image, args.device, dtype)[0],
                                                                            reference)})
    print("\n".join(table(["model", "precision", "max", "mean", "> 1 level"],
                          [[r["model"], r["precision"], r["max"], f"{r['mean']:.3f}", f"{r['over_1_level']:.2%}"]
                           for r in rows])))
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    save("precision", {"device": device, "size": args.size, "rows": rows})


if __name__ == "__main__":
    main()
