"""Peak memory and run time of lpdask with the chunk, grouping and threads given by hand, against
whole-image inference, each run in its own process (the suite lets the planner choose instead).

    .venv/bin/python -m benchmarks.memory_and_time            # memory (512 vs 1024) + time (768)
    .venv/bin/python -m benchmarks.memory_and_time --quick    # small smoke run (about a minute)
    .venv/bin/python -m benchmarks.memory_and_time --sweep    # also threads x chunk x blocks-per-stage
    .venv/bin/python -m benchmarks.memory_and_time --skip-memory --skip-time --sweep \\
        --sweep-settings 2,256,1 1,256,1 --sweep-rounds 2     # chosen settings, twice
    .venv/bin/python -m benchmarks.memory_and_time --thp      # torch on transparent huge pages

1. Memory: lpdask on two images, the second 4x the area of the first. Target: larger <= 1.2x smaller.
2. Time: whole-image inference and lpdask on one image, interleaved ``--repeat`` times. Target:
   lpdask / whole <= 1.3x. ``--stage-times``: lpdask's stages' chunks, wall and task seconds (dask's
   profiler) beside the same stages run one after the other on the whole image.
3. ``--sweep``: lpdask settings (threads, chunk, blocks per stage) on the time image, each ratio
   against the mean of the whole-image runs either side of it (a whole-image run every
   ``--whole-every`` settings), plus CPU seconds, which swing much less than wall time.

``--quick`` (chunk 64 on 192 px) only checks that everything runs. Tables on stdout, JSON in
``benchmarks/results/memory_and_time.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from .common import Runner, fmt, gib, machine, make_image, save, save_network, say, table


def lpdask_spec(args: argparse.Namespace, src: Path, dst: Path, size: int, threads: int, chunk: int,
                blocks: int) -> dict:
    return {"kind": "lpdask", "src": str(src), "dst": str(dst), "model": str(args.model), "size": size,
            "stage_log": args.stage_times,
            "options": {"chunk": chunk, "blocks_per_stage": blocks, "threads": threads}}


def measure_memory(args: argparse.Namespace, run: Runner, tmp: Path) -> dict:
    runs = []
    for size in args.memory_sizes:
        src = make_image(tmp / f"mem_{size}.tif", size, args.seed)
        r = run(lpdask_spec(args, src, tmp / "mem.zarr", size, args.threads, args.chunk, args.blocks_per_stage),
                f"memory: lpdask {size}x{size}")
        runs.append({"size": size, **r})
    small, large = runs
    peak = large["peak_rss_bytes"] / small["peak_rss_bytes"]
    above = [r["peak_rss_bytes"] - r["rss_after_import_bytes"] for r in runs]
    return {"runs": runs, "area_ratio": (large["size"] / small["size"]) ** 2, "peak_ratio": peak,
            "peak_above_imports_ratio": above[1] / above[0] if above[0] > 0 else None, "pass": peak <= 1.2}


def measure_time(args: argparse.Namespace, run: Runner, tmp: Path, src: Path) -> dict:
    pairs = []
    for k in range(args.repeat):
        whole = run({"kind": "whole", "src": str(src), "model": str(args.model)}, f"time {k + 1}: whole image")
        lp = run(lpdask_spec(args, src, tmp / "time.zarr", args.time_size, args.threads, args.chunk,
                             args.blocks_per_stage), f"time {k + 1}: lpdask")
        pairs.append({"whole": whole, "lpdask": lp, "work_ratio": lp["work_seconds"] / whole["work_seconds"],
                      "process_ratio": lp["process_seconds"] / whole["process_seconds"]})
    stages = None
    if args.stage_times:  # its own, untimed child: the stage breakdown doubles its run time
        stages = run({"kind": "whole", "src": str(src), "model": str(args.model),
                      "stage_times": args.blocks_per_stage}, "whole image, stage by stage")["stages"]
    work = statistics.median(p["work_ratio"] for p in pairs)
    return {"pairs": pairs, "whole_stages": stages, "median_work_ratio": work,
            "median_process_ratio": statistics.median(p["process_ratio"] for p in pairs), "pass": work <= 1.3}


def measure_sweep(args: argparse.Namespace, run: Runner, tmp: Path, src: Path) -> dict:
    settings = args.sweep_settings or [(t, c, b) for t in args.sweep_threads for c in args.sweep_chunks
                                       for b in args.sweep_bps]
    sequence: list[tuple | None] = []
    for k in range(args.sweep_rounds):  # later rounds in reverse, so drift favours no setting
        for n, setting in enumerate(settings if k % 2 == 0 else settings[::-1]):
            sequence += [None, setting] if n % args.whole_every == 0 else [setting]
    runs = []
    for n, setting in enumerate([*sequence, None]):
        if setting is None:
            r = run({"kind": "whole", "src": str(src), "model": str(args.model)}, f"sweep {n + 1}: whole image")
        else:
            r = run(lpdask_spec(args, src, tmp / "sweep.zarr", args.time_size, *setting),
                    f"sweep {n + 1}: lpdask threads {setting[0]} chunk {setting[1]} blocks/stage {setting[2]}")
        runs.append({"setting": setting, "order": n, **r})
    wholes = [r for r in runs if r["setting"] is None]
    mean_cpu = statistics.mean(w["cpu_seconds"] for w in wholes)
    rows = []
    for r in runs:
        if r["setting"] is not None:
            near = [max((w for w in wholes if w["order"] < r["order"]), key=lambda w: w["order"]),
                    min((w for w in wholes if w["order"] > r["order"]), key=lambda w: w["order"])]
            rows.append({"setting": list(r["setting"]), "work_seconds": r["work_seconds"],
                         "peak_rss_bytes": r["peak_rss_bytes"], "cpu_seconds": r["cpu_seconds"],
                         "work_ratio_near": r["work_seconds"] / statistics.mean(w["work_seconds"] for w in near),
                         "cpu_ratio_all": r["cpu_seconds"] / mean_cpu})
    return {"runs": runs, "rows": rows, "whole_work_seconds": [w["work_seconds"] for w in wholes]}


def tables(report: dict, args: argparse.Namespace) -> list[str]:
    lines = []
    if mem := report.get("memory"):
        lines += [f"Memory (lpdask, chunk {args.chunk}, threads {args.threads}, blocks/stage {args.blocks_per_stage}):",
                  *table(["size", "peak RSS", "after imports", "work s", "chunks"],
                         [[f"{r['size']}^2", gib(r["peak_rss_bytes"]), gib(r["rss_after_import_bytes"]),
                           f"{r['work_seconds']:.1f}", r["chunks"]] for r in mem["runs"]]),
                  f"{mem['area_ratio']:.0f}x the area: peak ratio {mem['peak_ratio']:.3f} (target <= 1.2: "
                  f"{'PASS' if mem['pass'] else 'FAIL'}); of peak minus RSS after imports "
                  f"{fmt(mem['peak_above_imports_ratio'], '.3f')}", ""]
    if tm := report.get("time"):
        lines += [f"Time ({args.time_size}^2, same settings; CPU = user + system seconds):",
                  *table(["#", "whole work s (net)", "lpdask work s", "ratio", "process ratio", "whole / lpdask CPU s",
                          "whole / lpdask peak RSS"],
                         [[k + 1, f"{p['whole']['work_seconds']:.1f} ({p['whole']['net_seconds']:.1f})",
                           f"{p['lpdask']['work_seconds']:.1f}", f"{p['work_ratio']:.3f}", f"{p['process_ratio']:.3f}",
                           f"{p['whole']['cpu_seconds']:.1f} / {p['lpdask']['cpu_seconds']:.1f}",
                           f"{gib(p['whole']['peak_rss_bytes'])} / {gib(p['lpdask']['peak_rss_bytes'])}"]
                          for k, p in enumerate(tm["pairs"])]),
                  f"median ratio: work {tm['median_work_ratio']:.3f}, process {tm['median_process_ratio']:.3f} "
                  f"(target <= 1.3: {'PASS' if tm['pass'] else 'FAIL'})", ""]
        if log := tm["pairs"][0]["lpdask"].get("stage_log"):
            whole = {s["stage"]: s["seconds"] for s in tm["whole_stages"] or []}
            lines += ["lpdask's stages (first repeat; task seconds summed over threads) and whole-image stages:",
                      *table(["stage", "chunks", "wall s", "task s", "whole-image s"],
                             [[s["stage"], s["chunks"], f"{s['wall_seconds']:.2f}", f"{s['task_seconds']:.2f}",
                               fmt(whole.get(s["stage"].rsplit("-r", 1)[0]))] for s in log]), ""]
    if sw := report.get("sweep"):
        lines += ["Sweep (ratio: against the mean of the whole-image runs either side; CPU: against all of them):",
                  *table(["threads", "chunk", "blocks/stage", "work s", "ratio", "CPU s", "CPU ratio", "peak RSS"],
                         [[*r["setting"], f"{r['work_seconds']:.1f}", f"{r['work_ratio_near']:.3f}",
                           f"{r['cpu_seconds']:.1f}", f"{r['cpu_ratio_all']:.3f}", gib(r["peak_rss_bytes"])]
                          for r in sorted(sw["rows"], key=lambda r: r["work_ratio_near"])]),
                  "whole-image work seconds: " + ", ".join(f"{s:.1f}" for s in sw["whole_work_seconds"])]
    return lines


def _setting(text: str) -> tuple[int, int, int]:
    try:
        threads, chunk, bps = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not THREADS,CHUNK,BLOCKS_PER_STAGE") from None
    return threads, chunk, bps


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--memory-sizes", type=int, nargs=2, metavar=("SMALL", "LARGE"),
                   help="image sides for the memory runs (default 512 1024; --quick 128 256)")
    p.add_argument("--time-size", type=int, help="image side for the time runs (default 768; --quick 192)")
    p.add_argument("--chunk", type=int, help="lpdask chunk (default 256; --quick 64)")
    p.add_argument("--threads", type=int, default=0, help="lpdask threads (0: one per core)")
    p.add_argument("--blocks-per-stage", type=int, default=1)
    p.add_argument("--repeat", type=int, default=1, help="whole/lpdask time pairs, interleaved")
    p.add_argument("--quick", action="store_true", help="small images: a smoke run")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-time", action="store_true")
    p.add_argument("--sweep", action="store_true", help="also try lpdask settings on the time image")
    p.add_argument("--sweep-threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--sweep-chunks", type=int, nargs="+", help="default 256 384 512 (--quick 64 96)")
    p.add_argument("--sweep-bps", type=int, nargs="+", default=[1, 2], help="blocks per stage to try")
    p.add_argument("--sweep-settings", type=_setting, nargs="+", metavar="THREADS,CHUNK,BPS",
                   help="explicit settings instead of the threads x chunks x bps grid")
    p.add_argument("--sweep-rounds", type=int, default=1, help="times through the settings (alternating order)")
    p.add_argument("--whole-every", type=int, default=2, help="a whole-image run before every N sweep runs")
    p.add_argument("--stage-times", action="store_true", help="log per-stage times of the lpdask runs")
    p.add_argument("--thp", action="store_true", help="THP_MEM_ALLOC_ENABLE=1 for every child (torch puts "
                   "tensors of 2 MiB and more on transparent huge pages)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", help="folder for images, weights and outputs (default: a temporary folder)")
    p.add_argument("--output", help="JSON results file")
    args = p.parse_args(argv)
    q = args.quick
    args.memory_sizes = args.memory_sizes or ([128, 256] if q else [512, 1024])
    args.time_size = args.time_size or (192 if q else 768)
    args.chunk = args.chunk or (64 if q else 256)
    args.sweep_chunks = args.sweep_chunks or ([64, 96] if q else [256, 384, 512])
    if min(args.repeat, args.whole_every, args.sweep_rounds) < 1:
        p.error("--repeat, --whole-every and --sweep-rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = Runner(env={"THP_MEM_ALLOC_ENABLE": "1"} if args.thp else None, strict=True)
    report: dict = {"machine": machine(), "args": vars(args).copy(),
                    "model": "RRDBNet x4, 2 blocks, 64 features, growth 32, lively random weights (benchmarks.common)"}
    with tempfile.TemporaryDirectory(prefix="lpdask-bench-", dir=args.workdir) as folder:
        tmp = Path(folder)
        args.model = save_network(tmp / "rrdbnet_2block.pth", seed=args.seed)
        src = make_image(tmp / f"time_{args.time_size}.tif", args.time_size, args.seed)
        for key, skip, measure in (("memory", args.skip_memory, lambda: measure_memory(args, run, tmp)),
                                   ("time", args.skip_time, lambda: measure_time(args, run, tmp, src)),
                                   ("sweep", not args.sweep, lambda: measure_sweep(args, run, tmp, src))):
            if not skip:
                report[key] = measure()
                save("memory_and_time", report, args.output)
    print("\n".join(tables(report, args)))
    say(f"results: {save('memory_and_time', report, args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
