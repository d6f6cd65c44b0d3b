"""Error of fp16 and bf16 against fp32 whole-image output, for each named model, on a real photo.

``.venv/bin/python benchmarks/precision.py [--device cuda] [--size 64]``. On a CPU, half precision
is emulated (slow: keep --size small); on CUDA it is what ``lpdask upscale --precision`` computes.
Prints a table (8-bit levels) and writes benchmarks/results/precision.json.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np
import torch
from skimage import data

import lpdask
from lpdask.device import ieee_fp32
from lpdask.models.names import MODELS


def run(net: torch.nn.Module, image: np.ndarray, device: str, dtype: torch.dtype) -> np.ndarray:
    x = torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)[None]
    with torch.inference_mode(), ieee_fp32(torch.device(device)):
        out = copy.deepcopy(net).to(device, dtype)(x.to(device, dtype)).float()  # a copy: fp16 rounds weights
    return (out[0].clamp(0, 1).cpu().numpy() * 255).round().astype(int)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=48, help="side of the astronaut crop")
    args = parser.parse_args()
    image = np.ascontiguousarray(data.astronaut()[100 : 100 + args.size, 180 : 180 + args.size])
    rows = []
    for name in MODELS:
        net = lpdask.load_model(name)
        reference = run(net, image, args.device, torch.float32)
        for precision, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
            diff = np.abs(run(net, image, args.device, dtype) - reference)
            rows.append({"model": name, "precision": precision, "max": int(diff.max()),
                         "mean": float(diff.mean()), "over_1": float((diff > 1).mean())})
            print(f"{name:28} {precision}  max {diff.max():3d}  mean {diff.mean():.3f}  "
                  f">1 level {(diff > 1).mean():.2%}", flush=True)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    (out / "precision.json").write_text(json.dumps({"device": device, "size": args.size, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
