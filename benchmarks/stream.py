"""The streaming executor against the staged plan and whole-image inference, side by side in one run.

- ``--cpu`` (default): three cases, each run as whole-image inference (twice: with glibc's
  allocator as PyTorch gets it, and set as lpdask sets it for a CPU run, large blocks kept for
  reuse), ``executor="stream"`` and ``executor="staged"`` (each with the planner's choice of the
  rest), one fresh process per run (``suite.py``'s children): the 2-block RRDBNet x4 at 768^2, a
  16-feature 1-block RRDBNet at 2048^2, and the real x4plus weights at 1024^2. Prints work-time
  ratios to whole-image inference, peak RSS, the plan, its predicted scratch space and the bytes each run wrote. ``--cut-rows N``
  adds a streaming run with tiles cut in height every N rows.
- ``--memory``: streaming's peak RSS at 1x and 16x the area (512^2 and 2048^2, the small model,
  tiles of 256 px and strips of 64 rows fixed) beside the planner's prediction for each.
- ``--slide``: what a 100k x 100k slide (x4plus) needs with the plan the planner picks: on this
  machine's CPU (its measured speed) and on a GPU whose whole-image speed is given
  (``--gpu-whole-rate``, input MP/s; default: the H200's fp16 figure), from the planner's model;
  streaming against the staged plan.
- ``--gpu``: on CUDA, x4plus fp16 streamed on a 4096^2 input (OME-Zarr written, pyramid included)
  against whole-image fp16 inference on 2048^2 without I/O and the staged plan on 2048^2, in one
  process; GPU peak memory against the planner's prediction.

Results go to stdout (a table) and ``benchmarks/results/stream_<mode>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import memory_and_time as mt  # noqa: E402
import suite  # noqa: E402

RESULTS = HERE / "results"


def make_small(path: Path, seed: int = 0) -> None:
    """A 16-feature 1-block RRDBNet x4 (growth 16), lively as the tests make theirs: its time is
    mostly the x4 tail's memory-bound passes."""
    import torch

    from lpdask import RRDBConfig, RRDBNet
    from tests.reference import lively

    torch.manual_seed(seed)
    torch.save(lively(RRDBNet(RRDBConfig(num_feat=16, num_block=1, num_grow_ch=16)), seed=seed).state_dict(), path)


def lpdask_spec(model: str, src: Path, dst: Path, size: int, **options: object) -> dict:
    return {"kind": "lpdask", "model": model, "src": str(src), "dst": str(dst), "size": size, "options": options}


def cpu(args: argparse.Namespace, tmp: Path) -> dict:
    run = suite.Runner(timeout=args.timeout)
    two_block, small = tmp / "two_block.pth", tmp / "small.pth"
    suite.make_model(two_block, 0)
    make_small(small)
    cases = [("2-block RRDBNet", str(two_block), args.two_block_size),
             ("16-feature 1-block RRDBNet", str(small), args.small_size),
             ("x4plus", "RealESRGAN_x4plus", args.x4plus_size)]
    rows = []
    for label, model, size in cases:
        if size <= 0:
            continue
        src = tmp / f"in_{size}.tif"
        mt.make_image(src, size, seed=0)
        whole = run({"kind": "whole", "model": model, "src": str(src)}, f"{label} {size}: whole image")
        reused = run({"kind": "whole", "model": model, "src": str(src), "reuse_freed_memory": True},
                     f"{label} {size}: whole image, glibc set as lpdask sets it")
        stream = run(lpdask_spec(model, src, tmp / "stream.zarr", size, executor="stream"), f"{label} {size}: stream")
        staged = run(lpdask_spec(model, src, tmp / "staged.zarr", size, executor="staged"), f"{label} {size}: staged")
        row = {"case": label, "size": size, "whole": whole, "whole_reused": reused, "stream": stream, "staged": staged,
               "stream_over_whole": suite.ratio(stream, whole, "work_seconds"),
               "stream_over_whole_reused": suite.ratio(stream, reused, "work_seconds"),
               "staged_over_whole_reused": suite.ratio(staged, reused, "work_seconds"),
               "staged_over_whole": suite.ratio(staged, whole, "work_seconds"),
               "stream_over_staged": suite.ratio(stream, staged, "work_seconds")}
        if args.cut_rows:
            cut = run(lpdask_spec(model, src, tmp / "cut.zarr", size, executor="stream", tile_rows=args.cut_rows),
                      f"{label} {size}: stream, tiles {args.cut_rows} rows high")
            row.update(cut=cut, cut_over_whole=suite.ratio(cut, whole, "work_seconds"),
                       cut_over_stream=suite.ratio(cut, stream, "work_seconds"))
        rows.append(row)
    return {"mode": "cpu", "rows": rows, "failures": run.failures}


def memory(args: argparse.Namespace, tmp: Path) -> dict:
    run = suite.Runner(timeout=args.timeout)
    model = tmp / "small.pth"
    make_small(model)
    rows = []
    for size in (args.memory_size, args.memory_size * 4):
        src = tmp / f"in_{size}.tif"
        mt.make_image(src, size, seed=0)
        result = run(lpdask_spec(str(model), src, tmp / "stream.zarr", size, executor="stream", chunk=256, strip=64),
                     f"stream {size}^2")
        rows.append({"size": size, **result})
    small, large = rows
    return {"mode": "memory", "rows": rows, "failures": run.failures,
            "peak_ratio": suite.ratio(large, small, "peak_rss_bytes")}


def gpu(args: argparse.Namespace, tmp: Path) -> dict:
    import numpy as np
    import tifffile
    import torch
    from skimage import data, transform

    import lpdask
    from lpdask.planner import measure_machine

    sys.path.insert(0, str(HERE))
    from gpu import whole

    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/stream.py --gpu needs a CUDA GPU")
    net = lpdask.load_model(None)
    measure_machine("cuda")
    big = (transform.resize(data.astronaut(), (args.gpu_size, args.gpu_size), order=3) * 255).round().astype(np.uint8)
    side = args.gpu_size // 2
    half = np.ascontiguousarray(big[:side, :side])
    _, whole_seconds = whole(net, half, torch.float16)
    src, src_half = tmp / "in.tif", tmp / "half.tif"
    tifffile.imwrite(src, big, tile=(256, 256))
    tifffile.imwrite(src_half, half, tile=(256, 256))

    def timed(source: Path, dst: Path, **options: object) -> dict:
        plans: list[str] = []
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        summary = lpdask.upscale(source, dst, model=net, device="cuda", precision="fp16", on_plan=plans.append,
                                 overwrite=True, **options)
        seconds = time.perf_counter() - start
        pixels = summary.input_megapixels
        return {"seconds": seconds, "input_mp_per_s": pixels / seconds, "plan": plans[0] if plans else "",
                "reserved": torch.cuda.max_memory_reserved(), "allocated": torch.cuda.max_memory_allocated(),
                "summary": str(summary)}

    stream = timed(src, tmp / "stream.zarr", executor="stream")
    staged = timed(src_half, tmp / "staged.zarr", executor="staged")
    whole_rate = side * side / 1e6 / whole_seconds
    import re

    predicted = re.search(r"peak memory ([\d.]+) GiB", stream["plan"])
    return {"mode": "gpu", "device": torch.cuda.get_device_name(), "whole_2048_fp16_mp_per_s": whole_rate,
            "stream": stream, "staged": staged, "stream_over_whole": stream["input_mp_per_s"] / whole_rate,
            "stream_over_staged": stream["input_mp_per_s"] / staged["input_mp_per_s"],
            "stream_predicted_gpu_bytes": float(predicted.group(1)) * 2**30 if predicted else None}


X4PLUS_MACS = 17.9e6
"""x4plus's multiply-adds per input pixel (profiled: 16.5 M in the trunk, 1.4 M in the x4 tail)."""
H200_WHOLE_FP16 = 3.76
"""Input MP/s of whole-image x4plus fp16 inference, no I/O, on one H200 (measured 2026-11-30)."""


def slide(args: argparse.Namespace, tmp: Path) -> dict:
    import dataclasses

    import torch

    import lpdask
    import lpdask.planner as planner

    side = args.slide_size
    rows = []
    for device in ("cpu", "cuda"):
        net = lpdask.load_model(None).eval()
        if device == "cuda":  # a GPU's plan, priced on this machine: fp16 weights, the given speed
            net = net.half()
            disk = planner.measure_machine("cpu", str(tmp))  # this machine's disk, for the staged plan's I/O
            machine = planner.Machine(args.gpu_whole_rate * 1e6 * X4PLUS_MACS, 1, 1.0, disk.write_bytes_per_s,
                                      disk.read_bytes_per_s, int(args.gpu_memory * 2**30 * 0.8), "cuda")
            measured = planner.measure_machine
            planner.measure_machine = lambda *a, **k: machine  # type: ignore[assignment]
        try:
            best, plans = planner.choose(net, side, side, torch.device("cpu"))
            cramped, _ = planner.choose(net, side, side, torch.device("cpu"), scratch=0)
        finally:
            if device == "cuda":
                planner.measure_machine = measured  # type: ignore[assignment]
        fits = [p for p in plans if p.peak_memory <= (machine.memory_budget if device == "cuda"
                                                       else planner.default_budget(torch.device("cpu")))]
        staged = min((p for p in fits if p.storage == "zarr"), key=lambda p: p.seconds, default=None)
        stream = min((p for p in fits if p.storage == "stream"), key=lambda p: p.seconds, default=None)
        rows.append({"device": device, "picked": dataclasses.asdict(best), "picked_without_scratch":
                     dataclasses.asdict(cramped), "best_staged": dataclasses.asdict(staged) if staged else None,
                     "best_stream": dataclasses.asdict(stream) if stream else None,
                     "describe": {"picked": best.describe(), "without_scratch": cramped.describe(),
                                  "staged": staged.describe() if staged else "", "stream": stream.describe()
                                  if stream else ""}})
    return {"mode": "slide", "side": side, "gpu_whole_rate": args.gpu_whole_rate, "rows": rows}


def table(report: dict) -> str:
    gib = suite.gib
    lines = []
    if report["mode"] == "cpu":
        lines.append("| case | size | whole s | stream / whole | staged / whole | stream / staged | stream / staged "
                     "over whole, glibc as lpdask sets it | peak RSS whole / stream / staged | scratch predicted "
                     "stream / staged | written stream / staged |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        for r in report["rows"]:
            w, s, g = r["whole"], r["stream"], r["staged"]
            scratch = "/".join(f"{(x.get('planner') or {}).get('scratch_bytes', 0) / 1e9:.2f} GB" for x in (s, g))
            written = "/".join(f"{x.get('written_bytes', 0) / 1e9:.2f} GB" for x in (s, g))
            lines.append(f"| {r['case']} | {r['size']}^2 | {suite.fmt(w.get('work_seconds'), '.1f')} | "
                         f"{suite.fmt(r['stream_over_whole'])} | {suite.fmt(r['staged_over_whole'])} | "
                         f"{suite.fmt(r['stream_over_staged'])} | {suite.fmt(r.get('stream_over_whole_reused'))} / "
                         f"{suite.fmt(r.get('staged_over_whole_reused'))} | "
                         f"{' / '.join(gib(x.get('peak_rss_bytes')) for x in (w, s, g))} | {scratch} | {written} |")
        for r in report["rows"]:
            for key in ("stream", "staged", "cut"):
                if key in r:
                    plan = (r[key].get("planner") or {}).get("describe", "")
                    lines.append(f"- {r['case']} {key}: {plan}")
            if "cut" in r:
                lines.append(f"- {r['case']}: tiles cut in height {suite.fmt(r['cut_over_whole'])} of whole-image, "
                             f"{suite.fmt(r['cut_over_stream'])} of the planner's streaming plan, peak RSS "
                             f"{gib(r['cut'].get('peak_rss_bytes'))}")
    elif report["mode"] == "slide":
        lines.append(f"{report['side']} x {report['side']} px, x4plus (GPU priced at "
                     f"{report['gpu_whole_rate']} input MP/s whole-image, fp16):")
        lines.append("| device | executor | tiles (chunks) | predicted hours | peak memory | scratch |")
        lines.append("|---|---|---|---|---|---|")
        for r in report["rows"]:
            for key in ("picked", "best_stream", "best_staged"):
                p = r[key] if key != "picked" else r["picked"]
                if p:
                    shape = (f"{p['chunk']} x {p['tile_rows'] or 'full height'}" if p["storage"] == "stream"
                             else f"{p['chunk']} x {p['chunk']}")
                    lines.append(f"| {r['device']} | {key.replace('best_', '')}: {p['storage']} | {shape}, "
                                 f"{p['chunks']} | {p['seconds'] / 3600:.1f} | {gib(p['peak_memory'])} | "
                                 f"{p['scratch_bytes'] / 1e12:.2f} TB |")
        for r in report["rows"]:
            for key, text in r["describe"].items():
                lines.append(f"- {r['device']} {key}: {text}")
    elif report["mode"] == "memory":
        lines.append("| size | peak RSS | predicted |")
        lines.append("|---|---|---|")
        for r in report["rows"]:
            lines.append(f"| {r['size']}^2 | {gib(r.get('peak_rss_bytes'))} | "
                         f"{gib((r.get('planner') or {}).get('peak_memory'))} |")
        lines.append(f"peak at 16x the area over 1x: {suite.fmt(report['peak_ratio'], '.3f')}")
    else:
        s = report["stream"]
        lines.append(f"{report['device']}: whole-image fp16 2048^2 (no I/O) {report['whole_2048_fp16_mp_per_s']:.2f} MP/s; "
                     f"stream 4096^2 with OME-Zarr written {s['input_mp_per_s']:.2f} MP/s "
                     f"({report['stream_over_whole']:.2f}x whole); staged 2048^2 "
                     f"{report['staged']['input_mp_per_s']:.3f} MP/s (stream {report['stream_over_staged']:.1f}x); "
                     f"GPU peak reserved {s['reserved'] / 2**30:.2f} GiB, allocated {s['allocated'] / 2**30:.2f} GiB, "
                     f"predicted {(report['stream_predicted_gpu_bytes'] or 0) / 2**30:.2f} GiB")
        lines.append(f"stream plan: {s['plan']}")
        lines.append(f"staged plan: {report['staged']['plan']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--cpu", action="store_const", dest="mode", const="cpu")
    mode.add_argument("--memory", action="store_const", dest="mode", const="memory")
    mode.add_argument("--gpu", action="store_const", dest="mode", const="gpu")
    mode.add_argument("--slide", action="store_const", dest="mode", const="slide")
    parser.add_argument("--slide-size", type=int, default=100_000)
    parser.add_argument("--gpu-whole-rate", type=float, default=H200_WHOLE_FP16)
    parser.add_argument("--gpu-memory", type=float, default=139, help="GiB")
    parser.add_argument("--two-block-size", type=int, default=768)
    parser.add_argument("--small-size", type=int, default=2048)
    parser.add_argument("--x4plus-size", type=int, default=1024, help="0 skips the x4plus case")
    parser.add_argument("--cut-rows", type=int, default=0,
                        help="--cpu: also stream each case in tiles this many rows high (the planner picks the rest)")
    parser.add_argument("--memory-size", type=int, default=512)
    parser.add_argument("--gpu-size", type=int, default=4096)
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return suite.child_main(args.child)
    chosen = args.mode or "cpu"
    with tempfile.TemporaryDirectory() as folder:
        report = {"cpu": cpu, "memory": memory, "gpu": gpu, "slide": slide}[chosen](args, Path(folder))
    report["command"] = " ".join(sys.argv)
    report["date"] = time.strftime("%Y-%m-%d %H:%M")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"stream_{chosen}.json").write_text(json.dumps(report, indent=1, default=str))
    print(table(report))
    return 1 if report.get("failures") else 0


if __name__ == "__main__":
    raise SystemExit(main())
