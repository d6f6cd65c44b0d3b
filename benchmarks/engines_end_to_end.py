"""lpdask end to end against whole-image inference by each engine, on natural images, side by side.

``.venv/bin/python -m benchmarks.engines_end_to_end [--sizes 512 1024] [--peers eager openvino compile]
[--lpdask auto openvino] [--output JSON]``

For each size (scikit-image's astronaut resized to N^2, a real photo, as a TIFF), in this order:

1. ``lpdask upscale`` as a user runs it, each a fresh process timed whole (start, imports, model load,
   planning, engine builds, OME-Zarr written): for each engine in ``--lpdask`` ("auto": the default
   engine and plan), once with an empty cache folder (cold: nothing built, the machine not yet
   measured) and once again with the cache it left (warm).
2. The peers, whole-image inference in this process with real x4plus weights, each timed on one
   run after building (compile excluded): PyTorch eager (the reference forward, as Real-ESRGAN runs
   it), OpenVINO f32 (the whole network, its shape fixed to the image) and ``torch.compile``
   (inductor; its first call compiles and is not timed).

Errors are against the eager peer's 8-bit output (largest level difference, share off by more than
one level). Ratios are to the fastest peer's time in the same run. bf16 is measured only where the
CPU has it (AVX512-BF16 or AMX). Writes benchmarks/results/engines_end_to_end.json and prints the table.
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

from .common import astronaut, machine, save, say, table

PEERS = ("eager", "openvino", "compile")


def levels(out: np.ndarray) -> np.ndarray:
    """(1, 3, H, W) network output to (3, H, W) 8-bit levels, as lpdask and Real-ESRGAN write them."""
    return (np.clip(out[0], 0, 1) * 255).round().astype(np.int16)


def peer(name: str, net: object, x: object, folder: Path) -> tuple[float, float, np.ndarray]:
    """(build seconds, run seconds, output) of whole-image inference by ``name``."""
    import copy

    import torch

    from lpdask.kernels import use_kernels

    reference = copy.deepcopy(net).eval()
    use_kernels(reference, "eager")
    start = time.perf_counter()
    if name == "eager":
        run = reference
    elif name == "compile":
        run = torch.compile(reference)
        with torch.inference_mode():
            run(x)  # compiles
    else:
        import openvino as ov

        from lpdask.engines.compiled import onnx_file, stage_digest

        path = onnx_file(reference, [3], folder, stage_digest(reference, [3]))
        model = ov.Core().read_model(str(path))
        model.reshape({0: ov.PartialShape(list(x.shape))})
        compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                           "PERFORMANCE_HINT": "LATENCY"})

        def run(t: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(compiled.create_infer_request().infer([t.numpy()])[0])
    built = time.perf_counter() - start
    with torch.inference_mode():
        start = time.perf_counter()
        out = run(x)
        seconds = time.perf_counter() - start
    return built, seconds, out.numpy()


def lpdask_run(image: Path, out: Path, cache: Path, engine: str) -> tuple[float, str]:
    """Wall seconds of ``lpdask upscale`` in a fresh process, and what it said of its plan and engine."""
    env = {**os.environ, "LPDASK_CACHE_DIR": str(cache)}
    command = [sys.executable, "-m", "lpdask", "upscale", str(image), str(out), "--overwrite", "-q"]
    command += [] if engine == "auto" else ["--engine", engine]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(done.stderr)
    return seconds, done.stderr.strip()


def main() -> None:
    import torch
    import zarr

    import lpdask

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--peers", nargs="*", default=list(PEERS), choices=PEERS)
    parser.add_argument("--lpdask", nargs="+", default=["auto", "openvino"], help="engines lpdask runs with")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    net = lpdask.load_model(None).eval()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="lpdask-e2e-") as scratch:
        folder = Path(scratch)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder / "inductor")
        for size in args.sizes:
            pixels = astronaut(size)
            image = folder / f"astronaut-{size}.tif"
            import tifffile

            tifffile.imwrite(image, pixels, tile=(256, 256))
            outputs: dict[str, np.ndarray] = {}
            for engine in args.lpdask:
                cache = folder / f"cache-{size}-{engine}"
                for state in ("cold", "warm"):
                    say(f"{size}^2: lpdask, engine {engine}, cache {state}, load {os.getloadavg()[0]:.1f}")
                    out = folder / f"out-{size}-{engine}.zarr"
                    seconds, said = lpdask_run(image, out, cache, engine)
                    outputs[f"lpdask {engine}"] = zarr.open_array(str(out / "0"))[:].astype(np.int16)
                    rows.append({"size": size, "what": f"lpdask upscale, engine {engine}", "cache": state,
                                 "seconds": seconds, "said": said, "load": os.getloadavg()[0]})
                    say(f"  {seconds:.1f} s")
            x = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32) / 255)[None]
            for name in args.peers:
                say(f"{size}^2: whole image, {name}, load {os.getloadavg()[0]:.1f}")
                built, seconds, out = peer(name, net, x, folder / "onnx")
                outputs[name] = levels(out)
                rows.append({"size": size, "what": f"whole image, {name}", "build_seconds": built,
                             "seconds": seconds, "load": os.getloadavg()[0]})
                say(f"  build {built:.1f} s, run {seconds:.1f} s")
            reference = outputs.get("eager")
            fastest = min((r["seconds"] for r in rows if r["size"] == size and r["what"].startswith("whole")),
                          default=None)
            for row in rows:
                if row["size"] != size:
                    continue
                key = row["what"].replace("lpdask upscale, engine ", "lpdask ").replace("whole image, ", "")
                if reference is not None and key in outputs:
                    diff = np.abs(outputs[key] - reference)
                    row.update(max_levels=int(diff.max()), over_1_level=float((diff > 1).mean()))
                if fastest:
                    row["vs_fastest_peer"] = row["seconds"] / fastest
            save("engines_end_to_end", {"machine": machine(), "rows": rows}, args.output)
    print("\n".join(report(rows)))


def report(rows: list[dict]) -> list[str]:
    return table(["size", "what", "cache", "seconds", "vs fastest peer", "max levels vs eager", "> 1 level"],
                 [[f"{r['size']}^2", r["what"], r.get("cache", f"built in {r.get('build_seconds', 0):.1f} s"),
                   f"{r['seconds']:.1f}", f"{r['vs_fastest_peer']:.2f}x" if "vs_fastest_peer" in r else "",
                   r.get("max_levels", ""), f"{r['over_1_level']:.2%}" if "over_1_level" in r else ""]
                  for r in rows])


if __name__ == "__main__":
    main()
