"""lpdask's fast kernels against the eager forward (basicsr's RRDBNet forward, which Real-ESRGAN
runs), side by side in one process, whole-image inference without I/O.

- ``--cpu`` (default): the 2-block RRDBNet x4 (64 features, growth 32, random weights) at 768^2,
  fp32, on this machine's cores; runs alternate eager / fast ``--repeat`` times each and the median
  of each counts. Also basicsr's own RRDBNet where installed (the same forward as lpdask's eager one).
- ``--gpu``: on CUDA, the real x4plus weights in fp16 at ``--size`` (default 2048^2): eager and
  fast (channels-last, as lpdask runs them, and in NCHW), fast under ``torch.compile`` (default
  mode: it fuses the pointwise work; convolutions stay cuDNN's), and a torch-TensorRT engine where
  ``torch_tensorrt`` is installed
  (the peer a video user would pick); input MP/s and the fraction of the device's dense fp16 peak
  (x4plus: 17.9 M multiply-adds per input pixel).

``.venv/bin/python -m benchmarks.kernels [--gpu [--compile]] [--repeat 3]`` (``--quick``: 64 px, one run
each). Prints a table and writes ``benchmarks/results/kernels_<mode>.json``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable

import torch

from lpdask import RRDBConfig
from lpdask.kernels import use_kernels

from .common import X4PLUS_MACS, network, save, sync, table

DENSE_FP16_TFLOPS = {"H200": 989, "H100": 989, "A100": 312, "L40S": 362, "L4": 121, "RTX 4090": 165,
                     "RTX 5090": 209, "A10": 125, "T4": 65}
"""Dense fp16 tensor-core peak (fp32 accumulate where the vendor states both), by device name part."""


def macs_per_pixel(config: RRDBConfig) -> float:
    """Multiply-adds per input pixel of an x4 RRDBNet (3x3 convs)."""
    nf, gc = config.num_feat, config.num_grow_ch
    rdb = sum((nf + i * gc) * gc for i in range(4)) + (nf + 4 * gc) * nf
    trunk = 3 * rdb * config.num_block + nf * nf
    head = config.num_in_ch * nf
    tail = 4 * nf * nf + 16 * nf * nf + 16 * nf * nf + 16 * nf * config.num_out_ch
    return 9.0 * (head + trunk + tail)


def side_by_side(variants: dict[str, Callable[[], torch.Tensor]], repeat: int, device: str) -> dict[str, float]:
    """Median seconds of each variant, runs interleaved so a noisy neighbour hits them alike."""
    for run in variants.values():
        run()  # warm-up: allocator, cuDNN's algorithm search, compilation
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeat):
        for name, run in variants.items():
            sync(device)
            start = time.perf_counter()
            run()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def forward(net: torch.nn.Module, kernels: str, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        use_kernels(net, kernels)  # type: ignore[arg-type]
        with torch.inference_mode():
            return net(x)
    return run


def basicsr_forward(net: torch.nn.Module, config: RRDBConfig, x: torch.Tensor) -> Callable[[], torch.Tensor] | None:
    """basicsr's own RRDBNet with the same weights, where basicsr (a test dependency) is installed."""
    import torchvision.transforms.functional as functional

    # basicsr 1.4.2 imports a module torchvision removed (Real-ESRGAN issue 768)
    sys.modules.setdefault("torchvision.transforms.functional_tensor", functional)
    try:
        from basicsr.archs.rrdbnet_arch import RRDBNet
    except ImportError:
        return None
    peer = RRDBNet(3, 3, scale=4, num_feat=config.num_feat, num_block=config.num_block,
                   num_grow_ch=config.num_grow_ch).eval().to(x.device, x.dtype)
    peer.load_state_dict(net.state_dict())

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return peer(x)
    return run


def cpu(args: argparse.Namespace) -> dict:
    net = network()
    config = net.config
    x = torch.rand(1, 3, args.size, args.size)
    variants = {"eager": forward(net, "eager", x), "fast": forward(net, "fast", x)}
    peer = basicsr_forward(net, config, x)
    if peer is not None:
        variants["basicsr"] = peer
    with torch.inference_mode():
        use_kernels(net, "eager")
        reference = net(x)
        use_kernels(net, "fast")
        difference = float((net(x) - reference).abs().max())
    seconds = side_by_side(variants, args.repeat, "cpu")
    pixels = args.size * args.size
    rows = {name: {"seconds": s, "input_mp_per_s": pixels / s / 1e6, "vs_eager": seconds["eager"] / s}
            for name, s in seconds.items()}
    return {"mode": "cpu", "size": args.size, "threads": torch.get_num_threads(), "repeat": args.repeat,
            "model": "RRDBNet x4, 2 blocks, 64 features, growth 32 (benchmarks.common.network)",
            "macs_per_pixel": macs_per_pixel(config),
            "fast_vs_eager_max_abs_difference": difference, "variants": rows}


def peak_fraction(rate_mp_per_s: float) -> float | None:
    name = torch.cuda.get_device_name()
    peak = next((tflops for part, tflops in DENSE_FP16_TFLOPS.items() if part in name), None)
    return None if peak is None else rate_mp_per_s * 1e6 * 2 * X4PLUS_MACS / (peak * 1e12)


def gpu(args: argparse.Namespace) -> dict:
    if not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA GPU")
    from lpdask import load_model
    from lpdask.device import network_on

    net = network_on(load_model(None), torch.device("cuda"), torch.float16, owned=True)
    x = torch.rand(1, 3, args.size, args.size, device="cuda", dtype=torch.float16).contiguous(
        memory_format=torch.channels_last)
    variants: dict[str, Callable[[], torch.Tensor]] = {"eager": forward(net, "eager", x), "fast": forward(net, "fast", x)}
    # lpdask lays activations out channels-last on CUDA; there a channel slice of the fast forward's
    # feature buffer is not dense, so cuDNN may copy it. The same forwards in NCHW say whether it does.
    planar = copy.deepcopy(net).to(memory_format=torch.contiguous_format)
    x_planar = x.contiguous()
    variants["eager NCHW"] = forward(planar, "eager", x_planar)
    variants["fast NCHW"] = forward(planar, "fast", x_planar)
    notes = {}
    if args.compile:
        use_kernels(net, "fast")
        compiled = torch.compile(net, dynamic=False)

        def run_compiled() -> torch.Tensor:
            use_kernels(net, "fast")
            with torch.inference_mode():
                return compiled(x)
        variants["fast+compile"] = run_compiled
    try:
        import torch_tensorrt  # type: ignore[import-not-found]

        use_kernels(net, "eager")
        engine = torch_tensorrt.compile(net, inputs=[x], enabled_precisions={torch.float16})

        def run_trt() -> torch.Tensor:
            with torch.inference_mode():
                return engine(x)
        variants["torch-tensorrt"] = run_trt
    except ImportError:
        notes["torch-tensorrt"] = "not installed"
    seconds = side_by_side(variants, args.repeat, "cuda")
    pixels = args.size * args.size
    rows = {}
    for name, s in seconds.items():
        rate = pixels / s / 1e6
        rows[name] = {"seconds": s, "input_mp_per_s": rate, "vs_eager": seconds["eager"] / s,
                      "fraction_of_dense_fp16_peak": peak_fraction(rate)}
    return {"mode": "gpu", "device": torch.cuda.get_device_name(), "size": args.size, "repeat": args.repeat,
            "model": "RealESRGAN_x4plus fp16", "variants": rows, "notes": notes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--cpu", action="store_true", help="the 2-block RRDBNet on the CPU (default)")
    group.add_argument("--gpu", action="store_true", help="x4plus fp16 on CUDA")
    parser.add_argument("--size", type=int, default=None, help="input side [768 on CPU, 2048 on GPU]")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each variant")
    parser.add_argument("--compile", action="store_true", help="(GPU) also torch.compile the fast forward")
    parser.add_argument("--quick", action="store_true", help="64 px, one run each: proves it runs")
    args = parser.parse_args()
    if args.quick:
        args.size, args.repeat = args.size or 64, 1
    args.size = args.size or (2048 if args.gpu else 768)
    result = gpu(args) if args.gpu else cpu(args)
    save(f"kernels_{result['mode']}", result)
    print(f"{result['model']}, {args.size}^2, {result['mode']}, median of {args.repeat}")
    print("\n".join(table(["variant", "seconds", "input MP/s", "vs eager", "of fp16 peak"],
                          [[name, f"{row['seconds']:.2f}", f"{row['input_mp_per_s']:.3f}", f"{row['vs_eager']:.2f}x",
                            "" if (peak := row.get("fraction_of_dense_fp16_peak")) is None else f"{peak:.1%}"]
                           for name, row in result["variants"].items()])))
    if "fast_vs_eager_max_abs_difference" in result:
        print(f"fast vs eager, largest difference: {result['fast_vs_eager_max_abs_difference']:.2e}")


if __name__ == "__main__":
    main()
