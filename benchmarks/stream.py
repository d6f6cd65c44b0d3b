"""The streaming executor against the staged plan and whole-image inference.

- ``--cpu`` (default): three cases, each run as whole-image inference (twice: glibc's allocator as
  PyTorch gets it, and set as lpdask sets it for a CPU run), ``executor="stream"`` and
  ``executor="staged"`` (the planner picks the rest), one fresh process per run: the 2-block
  RRDBNet x4 at 768^2, a 16-feature 1-block RRDBNet at 2048^2 and the real x4plus weights at
  1024^2 (a size of 0 skips a case). Work-time ratios, peak RSS, the plans, their predicted scratch
  and the bytes written. ``--cut-rows N`` adds a streaming run with tiles cut every N rows.
- ``--memory``: streaming's peak RSS at 1x and 16x the area (``--memory-size`` and 4x it, the
  small model, tiles of 256 px and strips of 64 rows) beside the planner's prediction.
- ``--slide``: what a 100k x 100k slide (x4plus) needs, from the planner's model: on this machine's
  CPU (``lpdask.planner.choose``) and on a GPU whose whole-image speed is given (``--gpu-whole-rate``,
  input MP/s; default the H200's fp16 figure): ``choose`` given a Machine made from that speed.
- ``--gpu``: on CUDA, x4plus fp16 streamed on a 4096^2 input (``--gpu-size``) against whole-image
  fp16 inference on 2048^2 without I/O and the staged plan on 2048^2; GPU peak memory against the
  planner's prediction.

``--quick`` runs the smallest cases (the 2-block net only, at 64 px; ``--memory`` at 64 px; a
10k slide; ``--gpu`` at 512 px). Tables on stdout, JSON in ``benchmarks/results/stream_<mode>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from .common import (X4PLUS_MACS, Runner, astronaut, cuda_upscale, fmt, gib, make_image, ratio, save, save_network,
                     table, whole_image)

if TYPE_CHECKING:
    from lpdask.plan import Plan

H200_WHOLE_FP16 = 3.76
"""Input MP/s of whole-image x4plus fp16 inference, no I/O, on one H200 (measured 2026-11-30)."""
SMALL = {"num_feat": 16, "num_block": 1, "num_grow_ch": 16}
"""The light model: its time is mostly the x4 tail's memory-bound passes."""


def lpdask_spec(model: str, src: Path, dst: Path, size: int, **options: object) -> dict:
    return {"kind": "lpdask", "model": model, "src": str(src), "dst": str(dst), "size": size, "options": options}


def cpu(args: argparse.Namespace, tmp: Path) -> dict:
    run = Runner(args.timeout)
    cases = [("2-block RRDBNet", str(save_network(tmp / "two_block.pth")), args.two_block_size),
             ("16-feature 1-block RRDBNet", str(save_network(tmp / "small.pth", **SMALL)), args.small_size),
             ("x4plus", "RealESRGAN_x4plus", args.x4plus_size)]
    rows = []
    for label, model, size in cases:
        if size <= 0:
            continue
        src = make_image(tmp / f"in_{size}.tif", size)
        name = f"{label} {size}"
        runs = {"whole": run({"kind": "whole", "model": model, "src": str(src)}, f"{name}: whole image"),
                "whole_reused": run({"kind": "whole", "model": model, "src": str(src), "reuse_freed_memory": True},
                                    f"{name}: whole image, glibc set as lpdask sets it")}
        for key, options in (("stream", {"executor": "stream"}), ("staged", {"executor": "staged"}),
                             ("cut", {"executor": "stream", "tile_rows": args.cut_rows} if args.cut_rows else None)):
            if options:
                runs[key] = run(lpdask_spec(model, src, tmp / f"{key}.zarr", size, **options), f"{name}: {key}")
        ratios = {f"{a}_over_{b}": ratio(runs.get(a), runs.get(b), "work_seconds")
                  for a in ("stream", "staged", "cut") for b in ("whole", "whole_reused", "stream", "staged") if a != b}
        rows.append({"case": label, "size": size, **runs, **ratios})
    return {"mode": "cpu", "rows": rows, "failures": run.failures}


def memory(args: argparse.Namespace, tmp: Path) -> dict:
    run = Runner(args.timeout)
    model = str(save_network(tmp / "small.pth", **SMALL))
    rows = []
    for size in (args.memory_size, args.memory_size * 4):
        src = make_image(tmp / f"in_{size}.tif", size)
        rows.append({"size": size, **run(lpdask_spec(model, src, tmp / "stream.zarr", size, executor="stream",
                                                     chunk=min(256, size), strip=64), f"stream {size}^2")})
    return {"mode": "memory", "rows": rows, "failures": run.failures,
            "peak_ratio": ratio(rows[1], rows[0], "peak_rss_bytes")}


def gpu(args: argparse.Namespace, tmp: Path) -> dict:
    import tifffile
    import torch

    import lpdask
    from lpdask.planner import measure_machine

    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.stream --gpu needs a CUDA GPU")
    net = lpdask.load_model(None)
    measure_machine("cuda")  # the planner's one-off measurement, outside the timings
    big = astronaut(args.gpu_size)
    side = args.gpu_size // 2
    half = big[:side, :side].copy()
    _, whole_seconds = whole_image(net, half, "cuda", torch.float16, repeat=2)
    src, src_half = tmp / "in.tif", tmp / "half.tif"
    tifffile.imwrite(src, big, tile=(256, 256))
    tifffile.imwrite(src_half, half, tile=(256, 256))
    stream = cuda_upscale(src, tmp / "stream.zarr", net, precision="fp16", executor="stream")
    staged = cuda_upscale(src_half, tmp / "staged.zarr", net, precision="fp16", executor="staged")
    whole_rate = side * side / 1e6 / whole_seconds
    return {"mode": "gpu", "device": torch.cuda.get_device_name(), "whole_half_fp16_mp_per_s": whole_rate,
            "stream": stream, "staged": staged, "stream_over_whole": stream["input_mp_per_s"] / whole_rate,
            "stream_over_staged": stream["input_mp_per_s"] / staged["input_mp_per_s"]}


def slide(args: argparse.Namespace, tmp: Path) -> dict:
    """The plans for a ``--slide-size``^2 x4plus input on this CPU and on the GPU described."""
    import torch

    import lpdask
    import lpdask.planner as planner

    side = args.slide_size
    net = lpdask.load_model(None).eval()
    cpu_budget = planner.default_budget(torch.device("cpu"))
    best, plans = planner.choose(net, side, side, torch.device("cpu"))
    cramped, _ = planner.choose(net, side, side, torch.device("cpu"), scratch=0)
    rows = [{"device": "cpu", "picked": best, "picked_without_scratch": cramped, **fastest(plans, cpu_budget)}]
    disk = planner.measure_machine("cpu", str(tmp))  # this machine's disk prices the staged plan's I/O
    gpu = planner.Machine(args.gpu_whole_rate * 1e6 * X4PLUS_MACS, 1, 1.0, disk.write_bytes_per_s,
                          disk.read_bytes_per_s, int(args.gpu_memory * 2**30 * 0.8), "cuda")
    picked, gpu_plans = planner.choose(net.half(), side, side, torch.device("cpu"), machine=gpu)
    rows.append({"device": "cuda", "picked": picked, **fastest(gpu_plans, gpu.memory_budget)})
    return {"mode": "slide", "side": side, "gpu_whole_rate": args.gpu_whole_rate,
            "rows": [{key: dataclasses.asdict(value) | {"describe": value.describe()} if hasattr(value, "describe") else value
                      for key, value in row.items()} for row in rows]}


def fastest(plans: list[Plan], budget: int) -> dict[str, Plan | None]:
    """The fastest streaming and staged plans within ``budget``."""
    fits = [p for p in plans if p.peak_memory <= budget]
    return {f"fastest_{executor}": min((p for p in fits if p.executor == executor), key=lambda p: p.seconds,
                                       default=None)
            for executor in ("stream", "staged")}


def tables(report: dict) -> list[str]:
    if report["mode"] == "cpu":
        rows = report["rows"]
        lines = table(["case", "whole s", "stream / whole", "staged / whole", "stream / staged",
                       "stream / staged over whole, glibc as lpdask sets it", "peak RSS whole / stream / staged",
                       "scratch predicted stream / staged", "written stream / staged"],
                      [[f"{r['case']} {r['size']}^2", fmt(r["whole"].get("work_seconds"), ".1f"),
                        fmt(r["stream_over_whole"]), fmt(r["staged_over_whole"]), fmt(r["stream_over_staged"]),
                        f"{fmt(r['stream_over_whole_reused'])} / {fmt(r['staged_over_whole_reused'])}",
                        " / ".join(gib(r[k].get("peak_rss_bytes")) for k in ("whole", "stream", "staged")),
                        " / ".join(f"{(r[k].get('planner') or {}).get('scratch_bytes', 0) / 1e9:.2f} GB"
                                   for k in ("stream", "staged")),
                        " / ".join(f"{r[k].get('written_bytes', 0) / 1e9:.2f} GB" for k in ("stream", "staged"))]
                       for r in rows])
        for r in rows:
            lines += [f"- {r['case']} {k}: {(r[k].get('planner') or {}).get('describe', '')}"
                      for k in ("stream", "staged", "cut") if k in r]
            if "cut" in r:
                lines.append(f"- {r['case']}: tiles cut in height {fmt(r['cut_over_whole'])} of whole-image, "
                             f"{fmt(r['cut_over_stream'])} of the planner's streaming plan, peak RSS "
                             f"{gib(r['cut'].get('peak_rss_bytes'))}")
        return lines
    if report["mode"] == "memory":
        return [*table(["size", "peak RSS", "predicted"],
                       [[f"{r['size']}^2", gib(r.get("peak_rss_bytes")), gib((r.get("planner") or {}).get("peak_memory"))]
                        for r in report["rows"]]),
                f"peak at 16x the area over 1x: {fmt(report['peak_ratio'], '.3f')}"]
    if report["mode"] == "slide":
        rows, notes = [], []
        for r in report["rows"]:
            for key, p in r.items():
                if isinstance(p, dict):
                    shape = f"{p['chunk']} x {p['tile_rows'] or 'full height'}" if p["executor"] == "stream" else \
                        f"{p['chunk']} x {p['chunk']}"
                    rows.append([r["device"], f"{key}: {p['executor']}", f"{shape}, {p['chunks']}",
                                 f"{p['seconds'] / 3600:.1f}", gib(p["peak_memory"]), f"{p['scratch_bytes'] / 1e12:.2f} TB"])
                    notes.append(f"- {r['device']} {key}: {p['describe']}")
        return [f"{report['side']} x {report['side']} px, x4plus (GPU priced at {report['gpu_whole_rate']} input MP/s "
                "whole-image, fp16):", *table(["device", "plan", "tiles (chunks), count", "predicted hours",
                                               "peak memory", "scratch"], rows), *notes]
    s, g = report["stream"], report["staged"]
    return [f"{report['device']}: whole-image fp16 on a quarter of the image (no I/O) "
            f"{report['whole_half_fp16_mp_per_s']:.2f} MP/s; stream with OME-Zarr written {s['input_mp_per_s']:.2f} MP/s "
            f"({report['stream_over_whole']:.2f}x whole); staged on the quarter {g['input_mp_per_s']:.3f} MP/s (stream "
            f"{report['stream_over_staged']:.1f}x); GPU peak reserved {gib(s['reserved'])}, allocated "
            f"{gib(s['allocated'])}, predicted {gib(s['predicted'])}", f"stream plan: {s['plan']}",
            f"staged plan: {g['plan']}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    for name in ("cpu", "memory", "gpu", "slide"):
        mode.add_argument(f"--{name}", action="store_const", dest="mode", const=name)
    parser.add_argument("--quick", action="store_true", help="the smallest cases: proves it runs")
    parser.add_argument("--slide-size", type=int, default=100_000)
    parser.add_argument("--gpu-whole-rate", type=float, default=H200_WHOLE_FP16)
    parser.add_argument("--gpu-memory", type=float, default=139, help="GiB")
    parser.add_argument("--two-block-size", type=int, default=768)
    parser.add_argument("--small-size", type=int, default=2048)
    parser.add_argument("--x4plus-size", type=int, default=1024, help="0 skips the x4plus case")
    parser.add_argument("--cut-rows", type=int, default=0, help="--cpu: also stream in tiles this many rows high")
    parser.add_argument("--memory-size", type=int, default=512)
    parser.add_argument("--gpu-size", type=int, default=4096)
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args(argv)
    if args.quick:
        args.two_block_size, args.small_size, args.x4plus_size = 64, 0, 0
        args.memory_size, args.slide_size, args.gpu_size = 64, 10_000, 512
    chosen = args.mode or "cpu"
    with tempfile.TemporaryDirectory() as folder:
        report = {"cpu": cpu, "memory": memory, "gpu": gpu, "slide": slide}[chosen](args, Path(folder))
    save(f"stream_{chosen}", report)
    print("\n".join(tables(report)))
    return 1 if report.get("failures") else 0


if __name__ == "__main__":
    sys.exit(main())
