"""The benchmark suite: one command, a markdown table on stdout and every raw number in a JSON file.

Usage:
    .venv/bin/python benchmarks/suite.py                 # full run (about 15-30 minutes on 2 cores)
    .venv/bin/python benchmarks/suite.py --quick         # tiny sizes, about 2 minutes: checks it all runs
    .venv/bin/python benchmarks/suite.py --output benchmarks/results/suite.json --repeat 3

Every measured run is its own process (``--child``), which reports its own work time (model load,
read, run, write; imports excluded), whole-process time, CPU seconds and peak RSS (``VmHWM``);
the parent adds the wall time of the whole process. What it measures (see benchmarks/README.md):

1. lpdask with the planner's defaults (``upscale(src, dst, model=PATH)``, no chunk or blocks)
   against whole-image inference (``net(x)`` once, torch's default threads) on one image
   (768 x 768): time and peak-memory ratios, per interleaved round and the median. Target: time
   <= 1.15x.
2. Real-ESRGAN's tile mode (lpdask ``mode="tile"``, the planner's chunk as tile, tile_pad 10) in
   the same rounds: time ratio and error against the whole-image output. A seam report on smaller
   images (a 3 x 3 grid of patches) compares lpdask exact, tile mode and a RealESRGAN-LP-style
   neighbour-patch run (error only), from ``lpdask.compare``.
3. Scaling: lpdask (planner defaults) at three sizes spanning 16x the area. Target: peak memory at
   16x the area <= 1.2x the peak at 1x.
4. ``workers=1`` and ``workers=2`` (a local dask.distributed cluster) against the default threaded
   scheduler, in the same rounds as 1.
5. On CUDA only: Real-ESRGAN x4plus throughput (MP/s) in fp32 and fp16, from benchmarks/gpu.py.

The network is a 2-block RRDBNet x4 (64 features, growth 32), random weights with a fixed seed made
"lively" as the tests do (tests/reference.py): plain random weights give a nearly constant output,
on which every stitching method looks exact. Its cost is that of any 2-block RRDBNet.

Rounds are interleaved (round 2 runs the same cases in reverse order) so each ratio compares runs
made side by side; on a shared machine read the medians and the spread, not one number.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

T0 = time.perf_counter()
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(HERE), str(ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import memory_and_time as mt  # noqa: E402  (the existing benchmark's helpers)

RESULTS = HERE / "results"
MARK = mt.MARK
PLANNER_HOOK = "PLANNER-HOOK"
"""Marks where the planner's predictions are read (``lpdask.planner.choose``), for when its API changes."""
COMPARE_HOOK = "COMPARE-HOOK"
"""Marks where ``lpdask.compare`` is used for the error columns, for when its API changes."""


# =========================================================================== children


def _io_counters() -> dict[str, int]:
    """Bytes this process passed to write() (wchar) and sent to storage (write_bytes), Linux only."""
    try:
        with open("/proc/self/io") as f:
            values = dict(line.split(": ") for line in f.read().splitlines())
        return {"wchar": int(values["wchar"]), "write_bytes": int(values["write_bytes"])}
    except (OSError, KeyError, ValueError):
        return {}


def _children_usage() -> dict:
    """Total CPU of this process's finished children (dask.distributed workers); their peak memory
    comes from the run's summary (``ru_maxrss`` of children counts this process's own at fork)."""
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"children_cpu_seconds": u.ru_utime + u.ru_stime}


def _finish(result: dict, usage: tuple, io_before: dict, start: float) -> dict:
    """Add what every child reports: its times, CPU, peak RSS and bytes written."""
    result["work_seconds"] = time.perf_counter() - start
    result["child_seconds"] = time.perf_counter() - T0  # since this script started (imports included)
    result["peak_rss_bytes"] = mt._maxrss_bytes()
    result.update(mt._usage_since(usage))
    result.update(_children_usage())
    io_after = _io_counters()
    if io_before and io_after:
        result["written_bytes"] = io_after["wchar"] - io_before["wchar"]
        result["storage_write_bytes"] = io_after["write_bytes"] - io_before["write_bytes"]
    return result


def errors(out, reference, step: int | None = None, label: str = "") -> dict:
    """Error of ``out`` against ``reference`` (both (c, H, W) pixels of one dtype) in levels, by
    ``lpdask.compare.method_error`` (COMPARE-HOOK). ``step`` is the method's grid in output pixels
    (for the error at its borders)."""
    import lpdask.compare as compare

    if out.shape != reference.shape:
        return {"error": f"shape {out.shape} against reference {reference.shape}"}
    e = compare.method_error("run", label, out, reference, step or max(out.shape), 0.0)
    return {"max": e.max_error, "mean": e.mean_error, "over_1_level": e.off_by_more_than_1,
            "max_at_border": e.max_at_border, "border_reach": compare.SEAM_REACH,
            "source": "lpdask.compare.method_error"}


def _read_zarr(path: str):
    import zarr

    return zarr.open_array(str(Path(path) / "0"), mode="r")


def child_whole(spec: dict) -> dict:
    """Whole-image inference as in memory_and_time.py; optionally saves its output as the reference."""
    import numpy as np
    import tifffile  # noqa: F401  (imported before the clock starts, as in memory_and_time.py)
    import torch

    from lpdask import load_model  # noqa: F401
    from lpdask.memory import reuse_freed_memory

    if spec.get("reuse_freed_memory"):  # glibc then serves its tensors as it serves an lpdask run's
        reuse_freed_memory()
    after_import = mt._current_rss_bytes()
    usage, io_before, start = mt._usage(), _io_counters(), time.perf_counter()
    _, _, out, net_seconds = mt.whole_image_inference(spec["model"], spec["src"])
    result = _finish({"kind": "whole", "net_seconds": net_seconds, "rss_after_import_bytes": after_import,
                      "torch_threads": torch.get_num_threads(), "output_shape": list(out.shape)},
                     usage, io_before, start)
    if spec.get("save"):
        np.save(spec["save"], out)  # after the figures: not part of the work
    return result


def child_lpdask(spec: dict) -> dict:
    """lpdask.upscale with ``spec["options"]`` (none: the planner's defaults) into a Zarr. The
    planner's choice and prediction for this very run are captured by wrapping
    ``lpdask.planner.choose`` (PLANNER-HOOK), which ``upscale`` calls when no chunk / blocks are given."""
    import numpy as np

    import lpdask

    options = dict(spec.get("options") or {})
    predictions = _capture_planner()
    after_import = mt._current_rss_bytes()
    usage, io_before, start = mt._usage(), _io_counters(), time.perf_counter()
    summary = lpdask.upscale(spec["src"], spec["dst"], model=spec["model"], overwrite=True, progress=False,
                             **options)
    result = _finish({"kind": "lpdask", "options": options, "summary_seconds": summary.seconds,
                      "summary_peak_memory_bytes": summary.peak_memory_bytes,
                      "children_peak_rss_bytes": max(summary.worker_peak_memory_bytes, default=0),
                      "rss_after_import_bytes": after_import, "chunks": summary.chunks, "stages": summary.stages,
                      "levels": summary.levels, "output_shape": list(summary.output_shape)},
                     usage, io_before, start)
    result["planner"] = predictions[-1] if predictions else None
    out = _read_zarr(spec["dst"])
    scale = summary.output_shape[-1] // spec["size"]
    result["chunk_used"] = out.chunks[-1] // scale  # the sink's chunk is the plan's chunk times the scale
    result["scale"] = scale
    result["output_bytes_on_disk"] = _du(spec["dst"])
    if spec.get("reference"):
        reference = np.load(spec["reference"])
        result["errors"] = errors(out[:], reference, step=result["chunk_used"] * scale, label=spec.get("label", ""))
    return result


def _capture_planner() -> list[dict]:
    """Wrap ``lpdask.planner.choose`` so every plan it picks in this process is recorded (its
    Estimate's fields and the seconds the planning took)."""
    import lpdask.planner as planner

    captured: list[dict] = []
    choose = planner.choose

    def recording(*args: Any, **kwargs: Any):
        t = time.perf_counter()
        best, plans = choose(*args, **kwargs)
        captured.append({**dataclasses.asdict(best), "describe": best.describe(),
                         "plan_seconds": time.perf_counter() - t, "alternatives": len(plans)})
        return best, plans

    planner.choose = recording
    return captured


def _du(path: str) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(folder, name))
            except OSError:
                pass
    return total


def child_seams(spec: dict) -> dict:
    """The seam report: tile mode, a RealESRGAN-LP-style neighbour-patch run and lpdask exact against
    whole-image inference on one image cut into a 3 x 3 grid of ``patch`` px patches, by
    ``lpdask.compare.compare`` (COMPARE-HOOK). Errors only: the times are for information (one
    process, not interleaved)."""
    import lpdask.compare as compare

    patch, pad = spec["patch"], spec["tile_pad"]
    report = compare.compare(spec["src"], model=spec["model"], chunk=patch, size=spec["size"], tile_pad=pad,
                             patch=patch, out=spec["figure"])
    rows = [{"method": m.label, "key": m.key, "seconds": m.seconds,
             "errors": {"max": m.max_error, "mean": m.mean_error, "over_1_level": m.off_by_more_than_1,
                        "max_at_border": m.max_at_border, "border_reach": compare.SEAM_REACH,
                        "source": "lpdask.compare.compare"}} for m in report.methods]
    rows.insert(0, {"method": "whole image (reference)", "seconds": report.whole_seconds})
    return {"kind": "seams", "model": spec["model_label"], "size": spec["size"], "patch": patch, "tile_pad": pad,
            "rows": rows, "figure": report.figure, "source": "lpdask.compare.compare"}


CHILDREN = {"whole": child_whole, "lpdask": child_lpdask, "seams": child_seams}


def child_main(text: str) -> int:
    spec = json.loads(text)
    result = CHILDREN[spec["kind"]](spec)
    mt._emit(result)
    return 0


# =========================================================================== parent


def say(text: str = "") -> None:
    print(text, file=sys.stderr, flush=True)  # progress on stderr; the table alone goes to stdout


class Runner:
    """Starts children, one at a time, and keeps every command and result."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.failures: list[dict] = []

    def __call__(self, spec: dict, label: str) -> dict:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
        load_before = os.getloadavg()[0]
        say(f"[{time.strftime('%H:%M:%S')}] {label} (load {load_before:.2f}) ...")
        t = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout)
            rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as exc:
            rc, stdout, stderr = "timeout", _text(exc.stdout), _text(exc.stderr)
        process_seconds = time.perf_counter() - t
        lines = [line for line in stdout.splitlines() if line.startswith(MARK)]
        if rc != 0 or not lines:
            tail = (stdout[-2000:] + stderr[-3000:]).strip()
            result = {"kind": spec["kind"], "failed": True, "returncode": rc, "output_tail": tail}
            self.failures.append({"label": label, "command": shlex.join(cmd), "returncode": rc})
            say(f"    FAILED ({rc}): {tail[-800:]}")
        else:
            result = json.loads(lines[-1][len(MARK):])
        result.update(label=label, command=shlex.join(cmd), process_seconds=process_seconds,
                      load_before=load_before, load_after=os.getloadavg()[0])
        if not result.get("failed") and "work_seconds" in result:
            say(f"    work {result['work_seconds']:.1f} s, process {process_seconds:.1f} s, "
                f"peak RSS {result['peak_rss_bytes'] / 2**20:.0f} MiB")
        if spec.get("dst"):
            mt._rmtree(Path(spec["dst"]))
        return result


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def make_model(path: Path, seed: int) -> None:
    """The 2-block RRDBNet of memory_and_time.py, made lively as the tests make theirs."""
    import torch

    from lpdask import RRDBConfig, RRDBNet
    from tests.reference import lively

    torch.manual_seed(seed)
    net = RRDBNet(RRDBConfig(num_feat=64, num_block=2, num_grow_ch=32))
    torch.save(lively(net, seed=seed).state_dict(), path)


def ok(r: dict | None) -> bool:
    return bool(r) and not r.get("failed")


def ratio(a: dict | None, b: dict | None, key: str) -> float | None:
    if not (ok(a) and ok(b)) or not b.get(key):
        return None
    return a[key] / b[key]


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def pick_tile(chunk: int | None, size: int, quick: bool) -> int:
    """Tile mode's tile: the planner's chunk where that cuts the image, else 256 (quick: 64), else
    half the image."""
    for tile in (chunk, 64 if quick else 256):
        if tile and tile < size:
            return tile
    return max(4, size // 2 // 4 * 4)


def main_rounds(args, run: Runner, tmp: Path, model: Path, src: Path, size: int) -> dict:
    """Cases 1, 2 (time) and 4: whole, lpdask default, tile mode, workers=1, workers=2, interleaved."""
    reference = tmp / f"whole_{size}.npy"
    order = ["whole", "lpdask", "tile", "workers1", "workers2"]
    if args.skip_workers:
        order = order[:3]
    rounds = []
    tile = None
    for k in range(args.repeat):
        runs: dict[str, dict] = {}
        for case in (order if k % 2 == 0 else order[::-1]):
            label = f"round {k + 1}/{args.repeat}: {case} {size}x{size}"
            dst = str(tmp / f"{case}.zarr")
            if case == "whole":
                spec = {"kind": "whole", "src": str(src), "model": str(model)}
                if not reference.exists():
                    spec["save"] = str(reference)
            elif case == "lpdask":
                spec = {"kind": "lpdask", "src": str(src), "dst": dst, "model": str(model), "size": size,
                        "options": {}}
            elif case == "tile":
                if tile is None:
                    first = runs.get("lpdask")
                    tile = pick_tile(first.get("chunk_used") if ok(first) else None, size, args.quick)
                spec = {"kind": "lpdask", "src": str(src), "dst": dst, "model": str(model), "size": size,
                        "options": {"mode": "tile", "chunk": tile, "tile_pad": args.tile_pad}, "seam_tile": tile}
            else:
                spec = {"kind": "lpdask", "src": str(src), "dst": dst, "model": str(model), "size": size,
                        "options": {"workers": int(case[-1])}}
            if case != "whole" and reference.exists():
                spec["reference"] = str(reference)
            spec["label"] = case
            runs[case] = run(spec, label)
        rounds.append(runs)
    pairs = []
    for k, runs in enumerate(rounds):
        w, lp = runs.get("whole"), runs.get("lpdask")
        pairs.append({
            "round": k + 1,
            "lpdask_over_whole_work": ratio(lp, w, "work_seconds"),
            "lpdask_over_whole_process": ratio(lp, w, "process_seconds"),
            "lpdask_over_whole_cpu": ratio(lp, w, "cpu_seconds"),
            "lpdask_over_whole_peak_rss": ratio(lp, w, "peak_rss_bytes"),
            "tile_over_whole_work": ratio(runs.get("tile"), w, "work_seconds"),
            "tile_over_lpdask_work": ratio(runs.get("tile"), lp, "work_seconds"),
            "workers1_over_threads_work": ratio(runs.get("workers1"), lp, "work_seconds"),
            "workers2_over_threads_work": ratio(runs.get("workers2"), lp, "work_seconds"),
            "workers2_over_workers1_work": ratio(runs.get("workers2"), runs.get("workers1"), "work_seconds"),
        })
    medians = {key: median(p[key] for p in pairs) for key in pairs[0] if key != "round"}
    return {"size": size, "order": order, "tile": tile, "tile_pad": args.tile_pad, "rounds": rounds,
            "pairs": pairs, "medians": medians, "time_target": 1.15,
            "time_pass": medians["lpdask_over_whole_work"] is not None and medians["lpdask_over_whole_work"] <= 1.15}


def scaling(args, run: Runner, tmp: Path, model: Path, main: dict) -> dict:
    rows = []
    for size in args.scaling_sizes:
        if size == main["size"]:
            lps = [r["lpdask"] for r in main["rounds"] if ok(r.get("lpdask"))]
            if lps:
                rows.append({"size": size, "from": "main rounds", "work_seconds": median(r["work_seconds"] for r in lps),
                             "peak_rss_bytes": max(r["peak_rss_bytes"] for r in lps),
                             "chunk_used": lps[0].get("chunk_used"), "chunks": lps[0].get("chunks"),
                             "written_bytes": lps[0].get("written_bytes"), "runs": lps})
                continue
        src = tmp / f"scale_{size}.tif"
        if not src.exists():
            mt.make_image(src, size, args.seed)
        r = run({"kind": "lpdask", "src": str(src), "dst": str(tmp / "scale.zarr"), "model": str(model),
                 "size": size, "options": {}}, f"scaling: lpdask {size}x{size}")
        row = {"size": size, "from": "own run", "runs": [r]}
        if ok(r):
            row.update(work_seconds=r["work_seconds"], peak_rss_bytes=r["peak_rss_bytes"],
                       chunk_used=r.get("chunk_used"), chunks=r.get("chunks"), written_bytes=r.get("written_bytes"))
        rows.append(row)
    first, last = rows[0], rows[-1]
    area = (last["size"] / first["size"]) ** 2
    peak = (last["peak_rss_bytes"] / first["peak_rss_bytes"]
            if first.get("peak_rss_bytes") and last.get("peak_rss_bytes") else None)
    time_ratio = (last["work_seconds"] / first["work_seconds"]
                  if first.get("work_seconds") and last.get("work_seconds") else None)
    mid = rows[-2]
    last_two = (last["peak_rss_bytes"] / mid["peak_rss_bytes"]
                if mid.get("peak_rss_bytes") and last.get("peak_rss_bytes") else None)
    return {"rows": rows, "area_ratio": area, "peak_ratio": peak, "peak_ratio_last_two": last_two,
            "time_ratio": time_ratio, "target": 1.2, "pass": peak is not None and peak <= 1.2}


def planner_cli(args, src: Path, model: Path) -> dict:
    """``lpdask plan`` on the main image, recorded as printed (PLANNER-HOOK)."""
    cmd = [sys.executable, "-m", "lpdask", "plan", str(src), "--model", str(model), "--top", "4"]
    say(f"[{time.strftime('%H:%M:%S')}] planner: {shlex.join(cmd)} ...")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
        return {"command": shlex.join(cmd), "returncode": proc.returncode, "stdout": proc.stdout[-6000:],
                "stderr": proc.stderr[-2000:]}
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"command": shlex.join(cmd), "error": repr(exc)}


def seams(args, run: Runner, tmp: Path, model: Path) -> list[dict]:
    results = []
    cases = [("2-block RRDBNet (suite's)", str(model), args.seam_size)]
    if args.x4plus_seams:
        cases.append(("RealESRGAN_x4plus", None, args.x4plus_size))
    for label, model_arg, size in cases:
        src = tmp / f"seams_{size}.tif"
        if not src.exists():
            mt.make_image(src, size, args.seed)
        patch = max(16, size // 3 // 4 * 4)
        folder = Path(args.figures) if args.figures else tmp
        folder.mkdir(parents=True, exist_ok=True)
        figure = folder / f"seams_{'x4plus' if model_arg is None else '2block'}_{size}.png"
        r = run({"kind": "seams", "src": str(src), "model": model_arg, "model_label": label, "patch": patch,
                 "size": size, "tile_pad": args.tile_pad, "workdir": str(tmp), "figure": str(figure)},
                f"seams: {label} {size}x{size}, patch {patch}")
        results.append(r)
    return results


def gpu(args) -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "torch.cuda.is_available() is False on this machine: no GPU figures"}
    size, chunk = (256, 128) if args.quick else (1024, 512)
    cmd = [sys.executable, str(HERE / "gpu.py"), "--size", str(size), "--chunk", str(chunk),
           "--reference-size", str(min(512, size))]
    say(f"[{time.strftime('%H:%M:%S')}] gpu: {shlex.join(cmd)} ...")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.child_timeout, cwd=ROOT)
    result: dict = {"command": shlex.join(cmd), "returncode": proc.returncode, "stdout": proc.stdout[-4000:]}
    if proc.returncode != 0:
        result["stderr"] = proc.stderr[-4000:]
        return result
    data = json.loads((RESULTS / "gpu.json").read_text())
    result.update(device=data.get("device"), rows=data.get("rows"))
    return result


# --------------------------------------------------------------------------- the table


def fmt(v: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "n/a" if v is None else f"{v:{spec}}{suffix}"


def gib(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.2f} GiB"


def err_text(e: dict | None) -> str:
    if not e:
        return "n/a"
    if "error" in e:
        return str(e["error"])
    border = f", max at borders {e['max_at_border']}" if e.get("max_at_border") is not None else ""
    return f"max {e['max']}, mean {e['mean']:.4f}, >1 level {e['over_1_level']:.3%}{border}"


def plan_text(r: dict | None) -> str:
    pl = (r or {}).get("planner")
    if not pl:
        return f"chunk {r.get('chunk_used')}" if r and r.get("chunk_used") else "n/a"
    grouping = "whole net" if pl.get("storage") == "memory" else f"{pl.get('blocks_per_stage')} RRDB/stage"
    return f"chunk {pl.get('chunk')}, {grouping}, {pl.get('workers')} at once"


def tables(report: dict) -> str:
    lines: list[str] = []
    add = lines.append
    m = report["main"]
    med = m["medians"]
    size = m["size"]

    def per(key: str) -> str:
        return ", ".join(fmt(p[key]) for p in m["pairs"])

    rounds = m["rounds"]
    first_tile = next((r["tile"] for r in rounds if ok(r.get("tile"))), None)
    first_lp = next((r["lpdask"] for r in rounds if ok(r.get("lpdask"))), None)
    sc = report["scaling"]
    mach = report["machine"]
    lines += [f"## lpdask benchmark suite ({report['started']}; {mach['cpu_count']} CPUs, load average "
              f"{mach['loadavg_start'][0]:.2f} at start, {mach['loadavg_end'][0]:.2f} at end)", "",
              f"2-block RRDBNet x4 (random, lively weights). lpdask runs use the planner's defaults "
              f"({plan_text(first_lp)} at {size}^2). Ratios compare runs made side by side in one round; "
              "the median is over rounds. Work time excludes imports; process time is the parent's wall time "
              "for the whole child.", "",
              "| # | what | median | per round | target |", "|---|---|---|---|---|"]
    add(f"| 1 | time, lpdask / whole-image, {size}^2 (work) | {fmt(med['lpdask_over_whole_work'])}x | "
        f"{per('lpdask_over_whole_work')} | <= 1.15x: {'PASS' if m['time_pass'] else 'FAIL'} |")
    add(f"| 1 | time, lpdask / whole-image (whole process) | {fmt(med['lpdask_over_whole_process'])}x | "
        f"{per('lpdask_over_whole_process')} | |")
    add(f"| 1 | CPU seconds, lpdask / whole-image | {fmt(med['lpdask_over_whole_cpu'])}x | "
        f"{per('lpdask_over_whole_cpu')} | |")
    add(f"| 1 | peak memory, lpdask / whole-image | {fmt(med['lpdask_over_whole_peak_rss'])}x | "
        f"{per('lpdask_over_whole_peak_rss')} | |")
    planner_chunk = first_lp.get("chunk_used") if first_lp else None
    why = "" if planner_chunk == m["tile"] else f"; the planner's chunk {planner_chunk} does not cut the image"
    add(f"| 2 | time, tile mode (tile {m['tile']}, tile_pad {m['tile_pad']}{why}) / whole-image | "
        f"{fmt(med['tile_over_whole_work'])}x | {per('tile_over_whole_work')} | |")
    add(f"| 2 | time, tile mode / lpdask | {fmt(med['tile_over_lpdask_work'])}x | {per('tile_over_lpdask_work')} | |")
    add(f"| 2 | error vs whole-image, tile mode, {size}^2 | "
        f"{err_text(first_tile.get('errors') if first_tile else None)} | | |")
    add(f"| 2 | error vs whole-image, lpdask, {size}^2 | "
        f"{err_text(first_lp.get('errors') if first_lp else None)} | | max 1 (exact) |")
    for s in report.get("seams", []):
        if not ok(s):
            add(f"| 2 | seam report: {s.get('label', '')} | failed | | |")
            continue
        for row in s["rows"]:
            if "errors" in row:
                add(f"| 2 | error, {s['model']}, {s['size']}^2, {row['method']} | {err_text(row['errors'])} | | |")
    sizes = [r["size"] for r in sc["rows"]]
    add(f"| 3 | peak memory, {sizes[-1]}^2 / {sizes[0]}^2 ({sc['area_ratio']:.0f}x area) | "
        f"{fmt(sc['peak_ratio'])}x | {' / '.join(gib(r.get('peak_rss_bytes')) for r in sc['rows'])} | "
        f"<= 1.2x: {'PASS' if sc['pass'] else 'FAIL'} |")
    add(f"| 3 | peak memory, {sizes[-1]}^2 / {sizes[-2]}^2 ({(sizes[-1] / sizes[-2]) ** 2:.0f}x area) | "
        f"{fmt(sc.get('peak_ratio_last_two'))}x | | |")
    add(f"| 3 | time, {sizes[-1]}^2 / {sizes[0]}^2 ({sc['area_ratio']:.0f}x area) | {fmt(sc['time_ratio'])}x | "
        f"{' / '.join(fmt(r.get('work_seconds'), '.1f', ' s') for r in sc['rows'])} | |")
    if med.get("workers1_over_threads_work") is not None or med.get("workers2_over_threads_work") is not None:
        add(f"| 4 | time, workers=1 / threads (default scheduler) | {fmt(med['workers1_over_threads_work'])}x | "
            f"{per('workers1_over_threads_work')} | |")
        add(f"| 4 | time, workers=2 / threads (default scheduler) | {fmt(med['workers2_over_threads_work'])}x | "
            f"{per('workers2_over_threads_work')} | |")
        add(f"| 4 | time, workers=2 / workers=1 | {fmt(med['workers2_over_workers1_work'])}x | "
            f"{per('workers2_over_workers1_work')} | |")
    g = report["gpu"]
    if "skipped" in g:
        add(f"| 5 | GPU, x4plus MP/s fp32 / fp16 | skipped | {g['skipped']} | |")
    elif g.get("rows"):
        by = {r["precision"]: r for r in g["rows"] if r.get("chunk") != "planner"}
        fp32, fp16 = by.get("fp32"), by.get("fp16")
        speedup = fp16["input_mp_per_s"] / fp32["input_mp_per_s"] if fp32 and fp16 else None
        add(f"| 5 | GPU ({g.get('device')}), x4plus MP/s fp32 / fp16 | "
            f"{fmt(fp32 and fp32['input_mp_per_s'], '.3f')} / {fmt(fp16 and fp16['input_mp_per_s'], '.3f')} | "
            f"fp16 / fp32 {fmt(speedup)}x | |")
    else:
        add(f"| 5 | GPU | failed (exit {g.get('returncode')}) | | |")
    lines += [""] + planner_table(report) + [""] + detail_tables(report)
    return "\n".join(lines)


def planner_runs(report: dict) -> list[tuple[str, dict]]:
    """Every planner-default lpdask run, labelled."""
    out = []
    m = report["main"]
    for k, runs in enumerate(m["rounds"]):
        for case in ("lpdask", "workers1", "workers2"):
            if ok(runs.get(case)):
                name = {"lpdask": "threads", "workers1": "workers=1", "workers2": "workers=2"}[case]
                out.append((f"{m['size']}^2 {name}, round {k + 1}", runs[case]))
    for row in report["scaling"]["rows"]:
        if row["from"] == "own run" and ok(row["runs"][0]):
            out.append((f"{row['size']}^2 threads", row["runs"][0]))
    return out


def _run_peak(r: dict, label: str) -> int:
    """A run's peak RSS where the chunks ran: the largest worker's for ``workers=N`` runs."""
    return r.get("children_peak_rss_bytes", 0) if "workers=" in label else r["peak_rss_bytes"]


def planner_table(report: dict) -> list[str]:
    runs = planner_runs(report)
    if not any(r.get("planner") for _, r in runs):
        return ["### Planner: predicted vs measured", "",
                "PLANNER-HOOK: no run recorded a prediction (`lpdask.planner.choose` was not called)."]
    m = report["main"]
    whole_cpu = median(r["whole"]["cpu_seconds"] for r in m["rounds"] if ok(r.get("whole")))
    out = ["### Planner: predicted vs measured (every planner-default run)", "",
           "Measured bytes written are everything the process wrote (activations and the output pyramid); "
           "the prediction counts activations only. Measured compute overhead is CPU seconds over the "
           "whole-image run's (same size only), which also holds I/O and threading differences.", "",
           "| run | plan | seconds pred / meas | compute overhead pred / CPU ratio | bytes written pred / meas "
           "(output) | peak memory pred / meas (workers=N: largest worker) |", "|---|---|---|---|---|---|"]
    for label, r in runs:
        pl = r.get("planner")
        if not pl:
            out.append(f"| {label} | {plan_text(r)} (no prediction recorded) | | | | |")
            continue
        cpu_ratio = r["cpu_seconds"] / whole_cpu if label.startswith(f"{m['size']}^2 threads") and whole_cpu else None
        out.append(
            f"| {label} | {plan_text(r)} | {fmt(pl.get('seconds'), '.1f')} / {r['work_seconds']:.1f} | "
            f"{fmt(pl.get('compute_overhead'), '.3f')} / {fmt(cpu_ratio, '.3f')} | "
            f"{gib(pl.get('bytes_written'))} / {gib(r.get('written_bytes'))} ({gib(r.get('output_bytes_on_disk'))}) | "
            f"{gib(pl.get('peak_memory'))} / {gib(_run_peak(r, label))} |")
    cli = report.get("planner_cli")
    if cli and cli.get("stdout"):
        out += ["", f"`{cli['command']}` printed:", "", "```", cli["stdout"].rstrip(), "```"]
    return out


def detail_tables(report: dict) -> list[str]:
    m = report["main"]
    out = [f"### Runs at {m['size']}^2, in the order they ran", "",
           "| round | case | work s | process s | CPU s | peak RSS | workers' peak RSS | plan | written | load before |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for k, runs in enumerate(m["rounds"]):
        for case, r in runs.items():
            if not ok(r):
                out.append(f"| {k + 1} | {case} | failed | | | | | | | |")
                continue
            kids = gib(r.get("children_peak_rss_bytes")) if case.startswith("workers") else ""
            plan = "" if case == "whole" else f"tile {r.get('chunk_used')}" if case == "tile" else plan_text(r)
            out.append(f"| {k + 1} | {case} | {r['work_seconds']:.1f} | {r['process_seconds']:.1f} | "
                       f"{r['cpu_seconds']:.1f} | {gib(r['peak_rss_bytes'])} | {kids} | {plan} | "
                       f"{gib(r.get('written_bytes')) if case != 'whole' else ''} | {r['load_before']:.2f} |")
    out += ["", "### Scaling (lpdask, planner defaults)", "",
            "| size | work s | peak RSS | plan | chunks | written | from |", "|---|---|---|---|---|---|---|"]
    for r in report["scaling"]["rows"]:
        first = (r.get("runs") or [None])[0]
        out.append(f"| {r['size']}^2 | {fmt(r.get('work_seconds'), '.1f')} | {gib(r.get('peak_rss_bytes'))} | "
                   f"{plan_text(first) if ok(first) else 'failed'} | {r.get('chunks', 'n/a')} | "
                   f"{gib(r.get('written_bytes'))} | {r['from']} |")
    for s in report.get("seams", []):
        if ok(s):
            out += ["", f"### Seam report: {s['model']}, {s['size']}^2, 3 x 3 grid of {s['patch']} px "
                        f"({s.get('source')})", "", "| method | max | mean | > 1 level | max at borders | seconds |",
                    "|---|---|---|---|---|---|"]
            for row in s["rows"]:
                e = row.get("errors")
                cells = ([str(e["max"]), fmt(e["mean"], ".4f"), fmt(e["over_1_level"], ".3%"),
                          str(e.get("max_at_border", "n/a"))] if e else ["-"] * 4)
                out.append(f"| {row['method']} | {' | '.join(cells)} | {fmt(row.get('seconds'), '.1f')} |")
            if s.get("figure") and Path(s["figure"]).exists():
                out.append(f"\nfigure: {s['figure']}")
    return out


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes, one round: checks that it all runs (~2 min); its ratios mean nothing")
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
    p.add_argument("--skip-planner", action="store_true", help="skip `lpdask plan` (the runs still record "
                   "the planner's prediction)")
    p.add_argument("--child-timeout", type=float, default=1800, help="seconds before a child is killed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", help="folder for images, weights and outputs (default: a temporary folder)")
    p.add_argument("--report", metavar="JSON", help="print the table of an earlier run's JSON (and refresh "
                   "its table field) without running anything")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    q = args.quick
    args.size = args.size or (96 if q else 768)
    args.scaling_sizes = args.scaling_sizes or ([48, 96, 192] if q else [384, 768, 1536])
    args.repeat = args.repeat or (1 if q else 2)
    args.seam_size = args.seam_size or (64 if q else 384)
    if args.x4plus_seams is None:
        args.x4plus_seams = not q
    args.output = args.output or str(RESULTS / ("suite_quick.json" if q else "suite.json"))
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args.child)
    if args.report:
        path = Path(args.report)
        report = json.loads(path.read_text())
        report["table"] = tables(report)
        path.write_text(json.dumps(report, indent=1))
        print(report["table"])
        return 0
    import torch

    report: dict = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["suite.py", *argv]),
        "machine": {"cpu_count": os.cpu_count(), "loadavg_start": list(os.getloadavg()),
                    "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "cuda": torch.cuda.is_available(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "lpdask_commit": mt._git_commit(),
        "model": {"arch": "RRDBNet x4", "num_block": 2, "num_feat": 64, "num_grow_ch": 32,
                  "weights": "random, made lively (tests/reference.py)", "seed": args.seed},
        "args": {k: v for k, v in vars(args).items() if k != "child"},
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    run = Runner(args.child_timeout)
    with tempfile.TemporaryDirectory(prefix="lpdask-suite-", dir=args.workdir) as tmpname:
        tmp = Path(tmpname)
        model = tmp / "rrdbnet_2block_lively.pth"
        make_model(model, args.seed)
        src = tmp / f"time_{args.size}.tif"
        mt.make_image(src, args.size, args.seed)
        if not args.skip_planner:
            report["planner_cli"] = planner_cli(args, src, model)
        report["main"] = main_rounds(args, run, tmp, model, src, args.size)
        out.write_text(json.dumps(report, indent=1))
        report["scaling"] = scaling(args, run, tmp, model, report["main"])
        out.write_text(json.dumps(report, indent=1))
        report["seams"] = seams(args, run, tmp, model)
        report["gpu"] = gpu(args)
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    report["machine"]["loadavg_end"] = list(os.getloadavg())
    report["failures"] = run.failures
    report["table"] = tables(report)
    out.write_text(json.dumps(report, indent=1))
    print(report["table"], flush=True)
    say(f"results: {out}")
    if run.failures:
        say(f"{len(run.failures)} run(s) failed: " + ", ".join(f["label"] for f in run.failures))
    return 1 if run.failures else 0


if __name__ == "__main__":
    sys.exit(main())
