"""The benchmark suite: lpdask against whole-image inference, tile mode, the neighbour-patch method,
image size, schedulers and (on CUDA) x4plus throughput; a markdown table on stdout and every raw
number in a JSON file. Cases (see benchmarks/README.md):

1. lpdask with the planner's defaults (``upscale(src, dst, model=PATH)``) against whole-image
   inference (``net(x)`` once) on one image (768 x 768): time and peak-memory ratios per round and
   the median. Target: time <= 1.15x.
2. Real-ESRGAN's tile mode (``mode="tile"``, the planner's chunk as tile) in the same rounds, and a
   seam report (``lpdask.compare.compare``) on smaller images: errors against whole-image output.
3. Scaling: lpdask at three sizes spanning 16x the area. Target: peak memory at 16x <= 1.2x.
4. ``workers=1`` and ``workers=2`` (a local dask.distributed cluster) in the same rounds as 1.
5. On CUDA only: x4plus throughput in fp32 and fp16, from ``benchmarks.gpu``.

Rounds are interleaved (round 2 runs the cases in reverse order), so each ratio compares runs made
side by side. ``--quick`` (tiny sizes) only proves that every case runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import (RESULTS, ROOT, Runner, fmt, gib, machine, make_image, median, ok, ratio, save, save_network,
                     say, table)

TIME_TARGET, MEMORY_TARGET = 1.15, 1.2


def child_seams(spec: dict) -> dict:
    """The seam report (``lpdask.compare.compare``): tile mode, the neighbour-patch run and lpdask
    exact against whole-image inference on one image cut into a 3 x 3 grid; errors only."""
    import lpdask.compare as compare

    report = compare.compare(spec["src"], model=spec["model"], chunk=spec["patch"], size=spec["size"],
                             tile_pad=spec["tile_pad"], patch=spec["patch"], out=spec["figure"])
    rows = [{"method": m.label, "seconds": m.seconds,
             "errors": {"max": m.max_error, "mean": m.mean_error, "over_1_level": m.off_by_more_than_1,
                        "max_at_border": m.max_at_border}} for m in report.methods]
    return {"kind": "seams", "model": spec["model_label"], "size": spec["size"], "patch": spec["patch"],
            "rows": [{"method": "whole image (reference)", "seconds": report.whole_seconds}, *rows],
            "figure": report.figure}


def main_rounds(args: argparse.Namespace, run: Runner, tmp: Path, model: Path, src: Path) -> dict:
    """Cases 1, 2 (time) and 4: whole, lpdask (planner defaults), tile mode, workers=1, workers=2."""
    size, reference = args.size, tmp / "whole.npy"
    order = ["whole", "lpdask", "tile"] + ([] if args.skip_workers else ["workers1", "workers2"])
    rounds, tile = [], None
    for k in range(args.repeat):
        runs: dict[str, dict] = {}
        for case in order if k % 2 == 0 else order[::-1]:
            spec: dict = {"kind": "lpdask", "src": str(src), "dst": str(tmp / f"{case}.zarr"), "model": str(model),
                          "size": size, "options": {}, "label": case}
            if case == "whole":
                spec = {"kind": "whole", "src": str(src), "model": str(model)}
                if not reference.exists():
                    spec["save"] = str(reference)
            elif case == "tile":
                if tile is None:  # the planner's chunk where that cuts the image, else 256 (quick: 64)
                    chunk = runs["lpdask"].get("chunk_used") if ok(runs.get("lpdask")) else None
                    tile = next((t for t in (chunk, 64 if args.quick else 256) if t and t < size), size // 8 * 4)
                spec["options"] = {"mode": "tile", "chunk": tile, "tile_pad": args.tile_pad}
            elif case.startswith("workers"):
                spec["options"] = {"workers": int(case[-1])}
            if case != "whole" and reference.exists():
                spec["reference"] = str(reference)
            runs[case] = run(spec, f"round {k + 1}/{args.repeat}: {case} {size}x{size}")
        rounds.append(runs)
    pairs = [{"round": k + 1, **{f"{a}_over_{b}_{key}": ratio(runs.get(a), runs.get(b), f"{field}_seconds")
                                 for a, b, key, field in RATIOS},
              "lpdask_over_whole_peak_rss": ratio(runs.get("lpdask"), runs.get("whole"), "peak_rss_bytes")}
             for k, runs in enumerate(rounds)]
    medians = {key: median(p[key] for p in pairs) for key in pairs[0] if key != "round"}
    time_ratio = medians["lpdask_over_whole_work"]
    return {"size": size, "order": order, "tile": tile, "tile_pad": args.tile_pad, "rounds": rounds, "pairs": pairs,
            "medians": medians, "time_pass": time_ratio is not None and time_ratio <= TIME_TARGET}


RATIOS = [("lpdask", "whole", "work", "work"), ("lpdask", "whole", "process", "process"),
          ("lpdask", "whole", "cpu", "cpu"), ("tile", "whole", "work", "work"), ("tile", "lpdask", "work", "work"),
          ("workers1", "lpdask", "work", "work"), ("workers2", "lpdask", "work", "work"),
          ("workers2", "workers1", "work", "work")]
"""(run, over run, name, figure) of the per-round ratios: ``lpdask`` is the threaded scheduler."""


def scaling(args: argparse.Namespace, run: Runner, tmp: Path, model: Path, main: dict) -> dict:
    """Case 3: lpdask (planner defaults) at each of ``--scaling-sizes``; the main size's runs reused."""
    rows = []
    for size in args.scaling_sizes:
        runs = [r["lpdask"] for r in main["rounds"] if ok(r.get("lpdask"))] if size == main["size"] else []
        source = "main rounds"
        if not runs:
            src = make_image(tmp / f"scale_{size}.tif", size, args.seed)
            runs, source = [run({"kind": "lpdask", "src": str(src), "dst": str(tmp / "scale.zarr"), "model": str(model),
                                 "size": size, "options": {}}, f"scaling: lpdask {size}x{size}")], "own run"
        good = [r for r in runs if ok(r)]
        rows.append({"size": size, "from": source, "runs": runs,
                     "work_seconds": median(r["work_seconds"] for r in good),
                     "peak_rss_bytes": max((r["peak_rss_bytes"] for r in good), default=None),
                     **({key: good[0].get(key) for key in ("chunk_used", "chunks", "written_bytes")} if good else {})})

    def over(a: dict, b: dict, key: str) -> float | None:
        return a[key] / b[key] if a.get(key) and b.get(key) else None

    first, mid, last = rows[0], rows[-2], rows[-1]
    peak = over(last, first, "peak_rss_bytes")
    return {"rows": rows, "area_ratio": (last["size"] / first["size"]) ** 2, "peak_ratio": peak,
            "peak_ratio_last_two": over(last, mid, "peak_rss_bytes"), "time_ratio": over(last, first, "work_seconds"),
            "pass": peak is not None and peak <= MEMORY_TARGET}


def command(cmd: list[str], timeout: float) -> dict:
    """Run a command from the repository root; what it printed."""
    say(f"[{time.strftime('%H:%M:%S')}] {shlex.join(cmd)} ...")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        return {"command": shlex.join(cmd), "returncode": proc.returncode, "stdout": proc.stdout[-6000:],
                "stderr": proc.stderr[-3000:]}
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"command": shlex.join(cmd), "returncode": None, "error": repr(exc)}


def seams(args: argparse.Namespace, run: Runner, tmp: Path, model: Path) -> list[dict]:
    cases = [("2-block RRDBNet (suite's)", str(model), args.seam_size, "2block")]
    if args.x4plus_seams:
        cases.append(("RealESRGAN_x4plus", None, args.x4plus_size, "x4plus"))
    folder = Path(args.figures) if args.figures else tmp
    folder.mkdir(parents=True, exist_ok=True)
    results = []
    for label, model_arg, size, name in cases:
        src = make_image(tmp / f"seams_{size}.tif", size, args.seed)
        patch = max(16, size // 3 // 4 * 4)
        results.append(run({"kind": "benchmarks.suite:child_seams", "src": str(src), "model": model_arg,
                            "model_label": label, "patch": patch, "size": size, "tile_pad": args.tile_pad,
                            "figure": str(folder / f"seams_{name}_{size}.png")},
                           f"seams: {label} {size}x{size}, patch {patch}"))
    return results


def gpu(args: argparse.Namespace) -> dict:
    """Case 5: ``benchmarks.gpu`` where CUDA is available."""
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "torch.cuda.is_available() is False on this machine: no GPU figures"}
    size, chunk = (256, 128) if args.quick else (1024, 512)
    result = command([sys.executable, "-m", "benchmarks.gpu", "--size", str(size), "--chunk", str(chunk),
                      "--reference-size", str(min(512, size))], args.child_timeout)
    if result["returncode"] == 0:
        data = json.loads((RESULTS / "gpu.json").read_text())
        result.update(device=data.get("device"), rows=data.get("rows"))
    return result


# --------------------------------------------------------------------------- the tables


def err_text(e: dict | None) -> str:
    if not e:
        return "n/a"
    border = f", max at borders {e['max_at_border']}" if e.get("max_at_border") is not None else ""
    return f"max {e['max']}, mean {e['mean']:.4f}, >1 level {e['over_1_level']:.3%}{border}"


def plan_text(r: dict | None) -> str:
    pl = (r or {}).get("planner")
    if not pl:
        return f"chunk {r.get('chunk_used')}" if r and r.get("chunk_used") else "n/a"
    grouping = "whole net" if pl["blocks_per_stage"] == 0 else f"{pl['blocks_per_stage']} RRDB/stage"
    return f"{pl['executor']}, chunk {pl['chunk']}, {grouping}, {pl['workers']} at once"


def tables(report: dict) -> str:
    m, sc, mach = report["main"], report["scaling"], report["machine"]
    med, size = m["medians"], m["size"]
    first = {case: next((r[case] for r in m["rounds"] if ok(r.get(case))), None) for case in ("lpdask", "tile")}

    def row(n: int, what: str, key: str, target: str = "") -> list[object]:
        return [n, what, f"{fmt(med[key])}x", ", ".join(fmt(p[key]) for p in m["pairs"]), target]

    rows = [row(1, f"time, lpdask / whole-image, {size}^2 (work)", "lpdask_over_whole_work",
                f"<= {TIME_TARGET}x: {'PASS' if m['time_pass'] else 'FAIL'}"),
            row(1, "time, lpdask / whole-image (whole process)", "lpdask_over_whole_process"),
            row(1, "CPU seconds, lpdask / whole-image", "lpdask_over_whole_cpu"),
            row(1, "peak memory, lpdask / whole-image", "lpdask_over_whole_peak_rss"),
            row(2, f"time, tile mode (tile {m['tile']}, tile_pad {m['tile_pad']}) / whole-image", "tile_over_whole_work"),
            row(2, "time, tile mode / lpdask", "tile_over_lpdask_work"),
            [2, f"error vs whole-image, tile mode, {size}^2", err_text((first["tile"] or {}).get("errors")), "", ""],
            [2, f"error vs whole-image, lpdask, {size}^2", err_text((first["lpdask"] or {}).get("errors")), "",
             "max 1 (exact)"]]
    for s in report["seams"]:
        rows += ([[2, f"error, {s['model']}, {s['size']}^2, {r['method']}", err_text(r["errors"]), "", ""]
                  for r in s["rows"] if "errors" in r] if ok(s) else [[2, f"seam report: {s['label']}", "failed", "", ""]])
    sizes = [r["size"] for r in sc["rows"]]
    rows += [[3, f"peak memory, {sizes[-1]}^2 / {sizes[0]}^2 ({sc['area_ratio']:.0f}x area)", f"{fmt(sc['peak_ratio'])}x",
              " / ".join(gib(r.get("peak_rss_bytes")) for r in sc["rows"]),
              f"<= {MEMORY_TARGET}x: {'PASS' if sc['pass'] else 'FAIL'}"],
             [3, f"peak memory, {sizes[-1]}^2 / {sizes[-2]}^2", f"{fmt(sc['peak_ratio_last_two'])}x", "", ""],
             [3, f"time, {sizes[-1]}^2 / {sizes[0]}^2", f"{fmt(sc['time_ratio'])}x",
              " / ".join(fmt(r.get("work_seconds"), ".1f", " s") for r in sc["rows"]), ""]]
    if "workers1" in m["order"]:
        rows += [row(4, "time, workers=1 / threads", "workers1_over_lpdask_work"),
                 row(4, "time, workers=2 / threads", "workers2_over_lpdask_work"),
                 row(4, "time, workers=2 / workers=1", "workers2_over_workers1_work")]
    g = report["gpu"]
    if "skipped" in g or not g.get("rows"):
        rows.append([5, "GPU, x4plus MP/s fp32 / fp16", g.get("skipped") or f"failed (exit {g.get('returncode')})", "", ""])
    else:
        by = {r["precision"]: r["input_mp_per_s"] for r in g["rows"] if r.get("chunk") != "planner"}
        rows.append([5, f"GPU ({g['device']}), x4plus MP/s fp32 / fp16", f"{fmt(by.get('fp32'), '.3f')} / "
                     f"{fmt(by.get('fp16'), '.3f')}", "", ""])
    lines = [f"## lpdask benchmark suite ({report['date']}; {mach['cpu_count']} CPUs, load average "
             f"{mach['loadavg'][0]:.2f} at start, {report['loadavg_end'][0]:.2f} at end)", "",
             f"2-block RRDBNet x4 (random, lively weights); lpdask runs use the planner's defaults "
             f"({plan_text(first['lpdask'])} at {size}^2). Ratios compare runs made side by side in one round, "
             "the median over rounds. Work time excludes imports; process time is the whole child's.", "",
             *table(["#", "what", "median", "per round", "target"], rows), "", *planner_table(report), "",
             *detail_tables(report)]
    return "\n".join(lines)


def planner_table(report: dict) -> list[str]:
    """Every planner-default run: its plan and prediction (``Summary.plan``) against what it measured."""
    m = report["main"]
    runs = [(f"{m['size']}^2 {case}, round {k + 1}", r[case]) for k, r in enumerate(m["rounds"])
            for case in ("lpdask", "workers1", "workers2") if ok(r.get(case))]
    runs += [(f"{row['size']}^2 lpdask", row["runs"][0]) for row in report["scaling"]["rows"]
             if row["from"] == "own run" and ok(row["runs"][0])]
    whole_cpu = median(r["whole"]["cpu_seconds"] for r in m["rounds"] if ok(r.get("whole")))
    rows = []
    for label, r in runs:
        pl = r.get("planner") or {}
        cpu = r["cpu_seconds"] / whole_cpu if label.startswith(f"{m['size']}^2 lpdask") and whole_cpu else None
        peak = r.get("children_peak_rss_bytes") if "workers" in label else r["peak_rss_bytes"]
        rows.append([label, plan_text(r) + ("" if pl else " (no prediction recorded)"),
                     f"{fmt(pl.get('seconds'), '.1f')} / {r['work_seconds']:.1f}",
                     f"{fmt(pl.get('compute_overhead'), '.3f')} / {fmt(cpu, '.3f')}",
                     f"{gib(pl.get('bytes_written'))} / {gib(r.get('written_bytes'))} ({gib(r.get('output_bytes_on_disk'))})",
                     f"{gib(pl.get('peak_memory'))} / {gib(peak)}"])
    lines = ["### Planner: predicted vs measured", "",
             "Measured bytes written are everything the process wrote (activations and the output pyramid); the "
             "prediction counts activations only. Measured compute overhead is CPU seconds over the whole-image "
             "run's (same size only).", "",
             *table(["run", "plan", "seconds pred / meas", "compute overhead pred / CPU ratio",
                     "bytes written pred / meas (output)", "peak memory pred / meas (workers=N: largest worker)"], rows)]
    cli = report.get("planner_cli")
    if cli and cli.get("stdout"):
        lines += ["", f"`{cli['command']}` printed:", "", "```", cli["stdout"].rstrip(), "```"]
    return lines


def detail_tables(report: dict) -> list[str]:
    m = report["main"]
    rows = []
    for k, runs in enumerate(m["rounds"]):
        for case, r in runs.items():
            if not ok(r):
                rows.append([k + 1, case, "failed", *[""] * 7])
                continue
            plan = "" if case == "whole" else f"tile {r.get('chunk_used')}" if case == "tile" else plan_text(r)
            rows.append([k + 1, case, f"{r['work_seconds']:.1f}", f"{r['process_seconds']:.1f}", f"{r['cpu_seconds']:.1f}",
                         gib(r["peak_rss_bytes"]), gib(r.get("children_peak_rss_bytes")) if "workers" in case else "",
                         plan, gib(r.get("written_bytes")) if case != "whole" else "", f"{r['load_before']:.2f}"])
    lines = [f"### Runs at {m['size']}^2, in the order they ran", "",
             *table(["round", "case", "work s", "process s", "CPU s", "peak RSS", "workers' peak RSS", "plan",
                     "written", "load before"], rows), "", "### Scaling (lpdask, planner defaults)", "",
             *table(["size", "work s", "peak RSS", "plan", "chunks", "written", "from"],
                    [[f"{r['size']}^2", fmt(r.get("work_seconds"), ".1f"), gib(r.get("peak_rss_bytes")),
                      plan_text(r["runs"][0]) if ok(r["runs"][0]) else "failed", r.get("chunks", "n/a"),
                      gib(r.get("written_bytes")), r["from"]] for r in report["scaling"]["rows"]])]
    for s in report["seams"]:
        if ok(s):
            lines += ["", f"### Seam report: {s['model']}, {s['size']}^2, 3 x 3 grid of {s['patch']} px", "",
                      *table(["method", "max", "mean", "> 1 level", "max at borders", "seconds"],
                             [[r["method"], *([e["max"], fmt(e["mean"], ".4f"), fmt(e["over_1_level"], ".3%"),
                                               e["max_at_border"]] if (e := r.get("errors")) else ["-"] * 4),
                               fmt(r.get("seconds"), ".1f")] for r in s["rows"]])]
            if s.get("figure") and Path(s["figure"]).exists():
                lines.append(f"\nfigure: {s['figure']}")
    return lines


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes, one round: proves it all runs; ratios mean nothing")
    p.add_argument("--output", help="JSON results (default benchmarks/results/suite.json; --quick: suite_quick.json)")
    p.add_argument("--size", type=int, help="image side of cases 1, 2 and 4 (default 768; --quick 96)")
    p.add_argument("--scaling-sizes", type=int, nargs=3, metavar=("S1", "S2", "S3"),
                   help="case 3's sides (default 384 768 1536; --quick 48 96 192)")
    p.add_argument("--repeat", type=int, help="interleaved rounds of cases 1, 2, 4 (default 2; --quick 1)")
    p.add_argument("--tile-pad", type=int, default=10, help="tile mode's tile_pad (Real-ESRGAN's default 10)")
    p.add_argument("--seam-size", type=int, help="seam report image side (default 384; --quick 64)")
    p.add_argument("--x4plus-size", type=int, default=144, help="seam report side for Real-ESRGAN x4plus")
    p.add_argument("--no-x4plus-seams", dest="x4plus_seams", action="store_false", default=None,
                   help="skip the x4plus seam report (default: run it, except with --quick)")
    p.add_argument("--figures", metavar="DIR", help="keep the seam report's figures (PNG) in DIR")
    p.add_argument("--skip-workers", action="store_true", help="skip case 4 (dask.distributed)")
    p.add_argument("--skip-planner", action="store_true", help="skip `lpdask plan` (runs still record their plan)")
    p.add_argument("--child-timeout", type=float, default=1800, help="seconds before a child is killed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", help="folder for images, weights and outputs (default: a temporary folder)")
    p.add_argument("--report", metavar="JSON", help="print the table of an earlier run's JSON, running nothing")
    args = p.parse_args(argv)
    q = args.quick
    args.size = args.size or (96 if q else 768)
    args.scaling_sizes = args.scaling_sizes or ([48, 96, 192] if q else [384, 768, 1536])
    args.repeat = args.repeat or (1 if q else 2)
    args.seam_size = args.seam_size or (64 if q else 384)
    args.x4plus_seams = not q if args.x4plus_seams is None else args.x4plus_seams
    args.output = args.output or str(RESULTS / ("suite_quick.json" if q else "suite.json"))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        report = json.loads(Path(args.report).read_text())
        report["table"] = tables(report)
        save("suite", report, args.report)
        print(report["table"])
        return 0
    report: dict = {"machine": machine(), "args": vars(args),
                    "model": "RRDBNet x4, 2 blocks, 64 features, growth 32, lively random weights (benchmarks.common)"}
    run = Runner(args.child_timeout)
    with tempfile.TemporaryDirectory(prefix="lpdask-suite-", dir=args.workdir) as folder:
        tmp = Path(folder)
        model = save_network(tmp / "rrdbnet_2block_lively.pth", seed=args.seed)
        src = make_image(tmp / f"time_{args.size}.tif", args.size, args.seed)
        if not args.skip_planner:
            report["planner_cli"] = command([sys.executable, "-m", "lpdask", "plan", str(src), "--model", str(model),
                                             "--top", "4"], 600)
        report["main"] = main_rounds(args, run, tmp, model, src)
        save("suite", report, args.output)
        report["scaling"] = scaling(args, run, tmp, model, report["main"])
        save("suite", report, args.output)
        report["seams"] = seams(args, run, tmp, model)
        report["gpu"] = gpu(args)
    report.update(loadavg_end=list(os.getloadavg()), failures=run.failures)
    report["table"] = tables(report)
    say(f"results: {save('suite', report, args.output)}")
    print(report["table"], flush=True)
    if run.failures:
        say(f"{len(run.failures)} run(s) failed: " + ", ".join(f["label"] for f in run.failures))
    return 1 if run.failures else 0


if __name__ == "__main__":
    sys.exit(main())
