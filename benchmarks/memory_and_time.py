"""Peak memory and run time of lpdask against whole-image inference, each run in its own process.

Usage:
    .venv/bin/python benchmarks/memory_and_time.py            # memory (512 vs 1024) + time (768)
    .venv/bin/python benchmarks/memory_and_time.py --quick    # small smoke run (about a minute)
    .venv/bin/python benchmarks/memory_and_time.py --sweep    # also threads x chunk x blocks-per-stage
    .venv/bin/python benchmarks/memory_and_time.py --repeat 2 --skip-memory
    .venv/bin/python benchmarks/memory_and_time.py --skip-memory --skip-time --sweep \
        --sweep-settings 2,256,1 1,256,1 2,384,1 --sweep-rounds 2     # chosen settings, twice
    .venv/bin/python benchmarks/memory_and_time.py --thp   # torch on transparent huge pages (both sides)

What it measures:
1. Memory: lpdask ``upscale`` on two images, the second 4x the area of the first, each in a fresh
   process that reports its own peak RSS (``VmHWM``, the same figure as
   ``Summary.peak_memory_bytes``). Target: larger <= 1.2x smaller.
2. Time: whole-image inference (``net(x)`` once, torch's default threads) and lpdask on the same
   image and weights, interleaved ``--repeat`` times. Each child times its work (model load, read,
   run, write; Python imports excluded); the parent also times the whole process. Target: lpdask /
   whole <= 1.3x.
3. ``--sweep``: lpdask settings (threads, chunk, blocks per stage) on the time image, interleaved
   with whole-image runs; each ratio is taken against the mean of the whole-image runs next to it.
   Every child also reports its CPU seconds (user, system) and minor page faults during the work:
   on a shared machine wall time swings by 2x between identical runs, CPU seconds much less.
4. ``--stage-times``: the lpdask children also log where each stage's time goes (read / compute /
   write per chunk task, wall time per stage, pyramid), and one whole-image child times the same
   stages run one after the other on the whole image.

The model is a random-weight RRDBNet x4 (2 RRDB, 64 features, growth 32, seed fixed), saved once as
a ``.pth`` state dict and passed to every child by path. ``--quick`` (chunk 64 on 192 px) only checks
that everything runs: halos are large next to a 64 px chunk, so its ratios say nothing about targets.
Results: a table on stdout and JSON in ``benchmarks/results/memory_and_time.json`` (``--output``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "memory_and_time.json"
MARK = "@@RESULT "


# --------------------------------------------------------------------------- children


def _maxrss_bytes() -> int:
    """This process's own peak RSS: ``VmHWM`` (``ru_maxrss`` would include the parent's at fork)."""
    from lpdask.memory import peak_bytes

    return peak_bytes()


def _current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return -1


def _usage() -> tuple[float, float, int]:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime, u.ru_stime, u.ru_minflt


def _usage_since(before: tuple[float, float, int]) -> dict:
    """CPU seconds (user, system) and minor page faults spent on the work: less sensitive than wall
    time to other processes on a shared machine."""
    after = _usage()
    return {"user_seconds": after[0] - before[0], "system_seconds": after[1] - before[1],
            "cpu_seconds": after[0] + after[1] - before[0] - before[1], "minor_faults": after[2] - before[2]}


def _emit(result: dict) -> None:
    sys.stdout.write(MARK + json.dumps(result) + "\n")
    sys.stdout.flush()


def whole_image_inference(model: str, src: str):
    """Load the model and the TIFF, run net(x) once and convert to the input dtype as Real-ESRGAN's
    enhance() does (clamp to [0, 1], scale, round half to even, cast). Returns (net, x, out,
    seconds in net(x))."""
    import numpy as np
    import tifffile
    import torch

    from lpdask import load_model

    net = load_model(model).eval()
    image = tifffile.imread(src)  # (h, w, 3)
    top = np.float32(np.iinfo(image.dtype).max)
    x = torch.from_numpy(np.ascontiguousarray((image.astype(np.float32) / top).transpose(2, 0, 1)))[None]
    t_net = time.perf_counter()
    with torch.inference_mode():
        y = net(x)
    net_seconds = time.perf_counter() - t_net
    out = (y[0].clamp(0, 1).numpy() * top).round().astype(image.dtype)
    return net, x, out, net_seconds


def child_whole(args: argparse.Namespace) -> None:
    """Whole-image inference: read the TIFF, run net(x) once, convert to the input dtype."""
    import numpy as np
    import tifffile  # noqa: F401  (imported before the clock starts)
    import torch

    from lpdask import load_model  # noqa: F401

    after_import = _current_rss_bytes()
    usage = _usage()
    start = time.perf_counter()
    net, x, out, net_seconds = whole_image_inference(args.model, args.src)
    work_seconds = time.perf_counter() - start
    cpu = _usage_since(usage)
    result = {
        "kind": "whole", "work_seconds": work_seconds, "net_seconds": net_seconds,
        "peak_rss_bytes": _maxrss_bytes(), "rss_after_import_bytes": after_import, **cpu,
        "torch_threads": torch.get_num_threads(), "output_shape": list(out.shape),
        "checksum": float(np.asarray(out, dtype=np.float64).mean()),
    }
    if args.stage_times:
        del out
        result["stages"] = _whole_stage_times(net, x, args.blocks_per_stage)
    _emit(result)


def _whole_stage_times(net, x, blocks_per_stage: int) -> list[dict]:
    """lpdask's stages run one after the other on the whole image (no chunks, no halos, no I/O)."""
    import torch

    arrays = {"image": x}
    times = []
    with torch.inference_mode():
        for stage in net.stages(blocks_per_stage):
            t = time.perf_counter()
            arrays[stage.name] = stage.module(*(arrays[name] for name in stage.inputs))
            times.append({"stage": stage.name, "seconds": time.perf_counter() - t})
    return times


class _StageLog:
    """Wraps lpdask's per-chunk functions to log where each stage's time goes (this process only)."""

    def __init__(self) -> None:
        import lpdask.task
        from lpdask.io.omezarr import OmeZarrSink

        self.lock = threading.Lock()
        self.tasks: dict[int, list[tuple[float, float]]] = defaultdict(list)
        self.parts: dict[tuple[int, str], float] = defaultdict(float)
        self.local = threading.local()
        self.finish_seconds = 0.0
        graph = lpdask.task
        # These are lpdask internals (task.run_chunk/run_window, Job.read, OmeZarrSink.write/finish);
        # when they change, the log says so instead of breaking the benchmark.
        self.missing = [name for name, obj in (("run_chunk", graph), ("run_window", graph), ("Job", graph),
                                               ("write", OmeZarrSink), ("finish", OmeZarrSink))
                        if not hasattr(obj, name)]
        if self.missing:
            return
        run_chunk, run_window, read = graph.run_chunk, graph.run_window, graph.Job.read
        sink_write, finish = OmeZarrSink.write, OmeZarrSink.finish
        log = self

        def timed_run_chunk(job, index, i, j):
            log.local.index = index
            t0 = time.perf_counter()
            run_chunk(job, index, i, j)
            t1 = time.perf_counter()
            with log.lock:
                log.tasks[index].append((t0, t1))

        def timed(part, fn):
            def wrapper(*a, **k):
                t = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    with log.lock:
                        log.parts[(getattr(log.local, "index", -1), part)] += time.perf_counter() - t
            return wrapper

        def timed_finish(*a, **k):
            t = time.perf_counter()
            try:
                return finish(*a, **k)
            finally:
                log.finish_seconds = time.perf_counter() - t

        graph.run_chunk = timed_run_chunk
        graph.run_window = timed("compute", run_window)
        graph.Job.read = timed("read", read)
        OmeZarrSink.write = timed("write_output", sink_write)
        OmeZarrSink.finish = timed_finish
        import lpdask.executors.lazy as lazy

        if getattr(lazy, "run_window", None) is run_window:
            lazy.run_window = graph.run_window

    def report(self, stage_names: list[str]) -> list[dict]:
        rows = []
        for index, spans in sorted(self.tasks.items()):
            task_sum = sum(b - a for a, b in spans)
            read, compute, out = (self.parts[(index, p)] for p in ("read", "compute", "write_output"))
            rows.append({
                "stage": stage_names[index] if index < len(stage_names) else str(index),
                "chunks": len(spans), "wall_seconds": max(b for _, b in spans) - min(a for a, _ in spans),
                "task_seconds": task_sum, "read_seconds": read, "compute_seconds": compute,
                "write_output_seconds": out,
                # what is left of a task: storing the work array (zarr setitem) and tensor copies
                "store_work_seconds": task_sum - read - compute - out,
            })
        return rows


def child_lpdask(args: argparse.Namespace) -> None:
    """lpdask upscale of the TIFF into a Zarr."""
    import torch

    import lpdask

    log = _StageLog() if args.stage_times else None
    after_import = _current_rss_bytes()
    usage = _usage()
    start = time.perf_counter()
    summary = lpdask.upscale(args.src, args.dst, model=args.model, chunk=args.chunk,
                             blocks_per_stage=args.blocks_per_stage, threads=args.threads,
                             overwrite=True, progress=False)
    work_seconds = time.perf_counter() - start
    cpu = _usage_since(usage)
    result = {
        "kind": "lpdask", "work_seconds": work_seconds, "summary_seconds": summary.seconds,
        "peak_rss_bytes": _maxrss_bytes(), "summary_peak_memory_bytes": summary.peak_memory_bytes, **cpu,
        "rss_after_import_bytes": after_import, "chunks": summary.chunks, "stages": summary.stages,
        "levels": summary.levels, "output_shape": list(summary.output_shape),
        "torch_threads_default": torch.get_num_threads(),
    }
    if log is not None and log.missing:
        result["stage_log_error"] = f"lpdask internals not found: {log.missing}"
    elif log is not None:
        net = lpdask.load_model(args.model)
        names = [s.name for s in net.stages(args.blocks_per_stage)]
        result["stage_log"] = log.report(names)
        result["pyramid_seconds"] = log.finish_seconds
    _emit(result)


# --------------------------------------------------------------------------- parent


def make_model(path: Path, seed: int) -> None:
    import torch

    from lpdask import RRDBConfig, RRDBNet

    torch.manual_seed(seed)
    net = RRDBNet(RRDBConfig(num_feat=64, num_block=2, num_grow_ch=32))
    torch.save(net.state_dict(), path)


def make_image(path: Path, size: int, seed: int, tile: int = 256) -> None:
    """A smooth random RGB uint8 image (sum of random sinusoids, a little noise) as tiled TIFF."""
    import numpy as np
    import tifffile

    rng = np.random.default_rng(seed + size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / 64.0
    image = np.empty((size, size, 3), np.float32)
    for c in range(3):
        acc = np.zeros((size, size), np.float32)
        for _ in range(6):
            fy, fx = rng.uniform(-1.5, 1.5, 2)
            acc += rng.uniform(0.3, 1.0) * np.sin(fy * yy + fx * xx + rng.uniform(0, 2 * np.pi))
        image[..., c] = 0.5 + 0.12 * acc
    image += rng.normal(0, 0.01, image.shape).astype(np.float32)
    pixels = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    tifffile.imwrite(path, pixels, photometric="rgb", tile=(min(tile, size), min(tile, size)))


def run_child(kind: str, src: Path, model: Path, *, dst: Path | None = None, chunk: int = 256,
              blocks_per_stage: int = 1, threads: int = 0, stage_times: bool = False,
              timeout: float | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--src", str(src),
           "--model", str(model), "--chunk", str(chunk), "--blocks-per-stage", str(blocks_per_stage),
           "--threads", str(threads)]
    if dst is not None:
        cmd += ["--dst", str(dst)]
    if stage_times:
        cmd.append("--stage-times")
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    process_seconds = time.perf_counter() - t
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise RuntimeError(f"child {kind} failed with exit status {proc.returncode}: {' '.join(cmd)}")
    result = json.loads(lines[-1][len(MARK):])
    result["process_seconds"] = process_seconds
    if dst is not None:
        _rmtree(dst)
    return result


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def mib(n: float) -> str:
    return f"{n / 2**20:8.0f} MiB"


def say(text: str = "") -> None:
    print(text, flush=True)


def measure_memory(args, tmp: Path, model: Path) -> dict:
    sizes = args.memory_sizes
    runs = []
    for size in sizes:
        src = tmp / f"mem_{size}.tif"
        make_image(src, size, args.seed)
        say(f"[memory] lpdask {size}x{size} (chunk {args.chunk}, threads {args.threads}, "
            f"blocks/stage {args.blocks_per_stage}) ...")
        r = run_child("lpdask", src, model, dst=tmp / f"mem_{size}.zarr", chunk=args.chunk,
                      blocks_per_stage=args.blocks_per_stage, threads=args.threads)
        r["size"] = size
        runs.append(r)
        say(f"         peak RSS {mib(r['peak_rss_bytes'])} (after imports {mib(r['rss_after_import_bytes'])}), "
            f"{r['work_seconds']:.1f} s work, {r['process_seconds']:.1f} s process, {r['chunks']} chunks")
    small, large = runs[0], runs[-1]
    ratio = large["peak_rss_bytes"] / small["peak_rss_bytes"]
    above = [(r["peak_rss_bytes"] - r["rss_after_import_bytes"]) for r in (small, large)]
    return {"runs": runs, "area_ratio": (sizes[-1] / sizes[0]) ** 2, "peak_ratio": ratio,
            "peak_above_imports_ratio": above[1] / above[0] if above[0] > 0 else None,
            "target": 1.2, "pass": ratio <= 1.2}


def measure_time(args, tmp: Path, model: Path, src: Path) -> dict:
    pairs = []
    for k in range(args.repeat):
        say(f"[time] repeat {k + 1}/{args.repeat}: whole-image {args.time_size}x{args.time_size} ...")
        whole = run_child("whole", src, model)
        say(f"         whole  work {whole['work_seconds']:7.1f} s (net {whole['net_seconds']:.1f} s), "
            f"process {whole['process_seconds']:7.1f} s, peak RSS {mib(whole['peak_rss_bytes'])}")
        say(f"[time] repeat {k + 1}/{args.repeat}: lpdask ...")
        lp = run_child("lpdask", src, model, dst=tmp / "time.zarr", chunk=args.chunk,
                       blocks_per_stage=args.blocks_per_stage, threads=args.threads,
                       stage_times=args.stage_times)
        pair = {"whole": whole, "lpdask": lp,
                "work_ratio": lp["work_seconds"] / whole["work_seconds"],
                "process_ratio": lp["process_seconds"] / whole["process_seconds"]}
        pairs.append(pair)
        say(f"         lpdask work {lp['work_seconds']:7.1f} s, process {lp['process_seconds']:7.1f} s, "
            f"peak RSS {mib(lp['peak_rss_bytes'])}  -> ratio work {pair['work_ratio']:.3f}, "
            f"process {pair['process_ratio']:.3f}")
    whole_stages = None
    if args.stage_times:
        # a separate, untimed child: the stage breakdown doubles its run time
        say("[time] whole-image, lpdask's stages one after another (for the stage log) ...")
        whole_stages = run_child("whole", src, model, blocks_per_stage=args.blocks_per_stage,
                                 stage_times=True)["stages"]
    ratios = [p["work_ratio"] for p in pairs]
    return {"size": args.time_size, "chunk": args.chunk, "threads": args.threads,
            "blocks_per_stage": args.blocks_per_stage, "pairs": pairs, "whole_stages": whole_stages,
            "median_work_ratio": statistics.median(ratios),
            "median_process_ratio": statistics.median(p["process_ratio"] for p in pairs),
            "target": 1.3, "pass": statistics.median(ratios) <= 1.3}


def measure_sweep(args, tmp: Path, model: Path, src: Path) -> dict:
    settings = args.sweep_settings or [
        (t, c, b) for t in args.sweep_threads for c in args.sweep_chunks for b in args.sweep_bps]
    sequence: list[tuple[str, tuple | None]] = []
    for round_ in range(args.sweep_rounds):
        # later rounds visit the settings in reverse, so drift over time does not favour one of them
        ordered = settings if round_ % 2 == 0 else settings[::-1]
        for n, setting in enumerate(ordered):
            if n % args.whole_every == 0:
                sequence.append(("whole", None))
            sequence.append(("lpdask", setting))
    sequence.append(("whole", None))
    runs = []
    for n, (kind, setting) in enumerate(sequence):
        if kind == "whole":
            say(f"[sweep {n + 1}/{len(sequence)}] whole-image ...")
            r = run_child("whole", src, model)
        else:
            t, c, b = setting
            say(f"[sweep {n + 1}/{len(sequence)}] lpdask threads {t} chunk {c} blocks/stage {b} ...")
            r = run_child("lpdask", src, model, dst=tmp / "sweep.zarr", chunk=c, blocks_per_stage=b,
                          threads=t, stage_times=args.stage_times)
            r.update(threads=t, chunk=c, blocks_per_stage=b)
        r["order"] = n
        runs.append(r)
        say(f"         work {r['work_seconds']:7.1f} s, process {r['process_seconds']:7.1f} s, "
            f"cpu {r['cpu_seconds']:7.1f} s (sys {r['system_seconds']:.1f}), peak RSS {mib(r['peak_rss_bytes'])}")
    wholes = [r for r in runs if r["kind"] == "whole"]
    all_whole = statistics.mean(r["work_seconds"] for r in wholes)
    all_whole_proc = statistics.mean(r["process_seconds"] for r in wholes)
    all_whole_cpu = statistics.mean(r["cpu_seconds"] for r in wholes)
    rows = []
    for r in runs:
        if r["kind"] != "lpdask":
            continue
        before = max((w for w in wholes if w["order"] < r["order"]), key=lambda w: w["order"])
        after = min((w for w in wholes if w["order"] > r["order"]), key=lambda w: w["order"])
        near = (before["work_seconds"] + after["work_seconds"]) / 2
        near_proc = (before["process_seconds"] + after["process_seconds"]) / 2
        rows.append({"threads": r["threads"], "chunk": r["chunk"], "blocks_per_stage": r["blocks_per_stage"],
                     "work_seconds": r["work_seconds"], "process_seconds": r["process_seconds"],
                     "peak_rss_bytes": r["peak_rss_bytes"],
                     "work_ratio_near": r["work_seconds"] / near,
                     "process_ratio_near": r["process_seconds"] / near_proc,
                     "work_ratio_all": r["work_seconds"] / all_whole,
                     "process_ratio_all": r["process_seconds"] / all_whole_proc,
                     "cpu_seconds": r["cpu_seconds"], "cpu_ratio_all": r["cpu_seconds"] / all_whole_cpu})
    summary = []
    for setting in settings:
        mine = [r for r in rows if (r["threads"], r["chunk"], r["blocks_per_stage"]) == tuple(setting)]
        summary.append({"threads": setting[0], "chunk": setting[1], "blocks_per_stage": setting[2],
                        "runs": len(mine),
                        "median_work_ratio_near": statistics.median(r["work_ratio_near"] for r in mine),
                        "median_cpu_ratio_all": statistics.median(r["cpu_ratio_all"] for r in mine),
                        "median_work_seconds": statistics.median(r["work_seconds"] for r in mine),
                        "max_peak_rss_bytes": max(r["peak_rss_bytes"] for r in mine)})
    return {"size": args.time_size, "runs": runs, "rows": rows, "settings": summary,
            "whole_work_seconds": [w["work_seconds"] for w in wholes],
            "whole_cpu_seconds": [w["cpu_seconds"] for w in wholes]}


def print_tables(report: dict) -> None:
    say()
    say("=" * 78)
    mem = report.get("memory")
    if mem:
        say("Memory (lpdask, each run in its own process; peak RSS = VmHWM):")
        say(f"  {'size':>11} {'peak RSS':>12} {'after imports':>14} {'work s':>8} {'chunks':>7}")
        for r in mem["runs"]:
            say(f"  {r['size']:>5}x{r['size']:<5} {mib(r['peak_rss_bytes']):>12} "
                f"{mib(r['rss_after_import_bytes']):>14} {r['work_seconds']:8.1f} {r['chunks']:7d}")
        above = mem["peak_above_imports_ratio"]
        above_text = f"{above:.3f}" if above is not None else "n/a"
        say(f"  area x{mem['area_ratio']:.0f}: peak ratio {mem['peak_ratio']:.3f} (target <= 1.2: "
            f"{'PASS' if mem['pass'] else 'FAIL'}); ratio of peak minus RSS after imports {above_text}")
    tm = report.get("time")
    if tm:
        say(f"Time ({tm['size']}x{tm['size']}; lpdask chunk {tm['chunk']}, threads {tm['threads']}, "
            f"blocks/stage {tm['blocks_per_stage']}):")
        say(f"  {'#':>2} {'whole work':>10} {'(net)':>7} {'lpdask work':>11} {'ratio':>6} "
            f"{'whole proc':>10} {'lpdask proc':>11} {'ratio':>6} {'whole RSS':>10} {'lpdask RSS':>10}")
        for k, p in enumerate(tm["pairs"]):
            w, l = p["whole"], p["lpdask"]
            say(f"  {k + 1:>2} {w['work_seconds']:10.1f} {w['net_seconds']:7.1f} {l['work_seconds']:11.1f} "
                f"{p['work_ratio']:6.3f} {w['process_seconds']:10.1f} {l['process_seconds']:11.1f} "
                f"{p['process_ratio']:6.3f} {mib(w['peak_rss_bytes']):>10} {mib(l['peak_rss_bytes']):>10}")
        say("  CPU during the work (user + system seconds, minor page faults):")
        for k, p in enumerate(tm["pairs"]):
            w, l = p["whole"], p["lpdask"]
            say(f"  {k + 1:>2} whole {w['user_seconds']:6.1f} + {w['system_seconds']:5.1f} s, "
                f"{w['minor_faults'] / 1e6:5.2f} M faults; lpdask {l['user_seconds']:6.1f} + "
                f"{l['system_seconds']:5.1f} s, {l['minor_faults'] / 1e6:5.2f} M faults")
        say(f"  median ratio: work {tm['median_work_ratio']:.3f}, process {tm['median_process_ratio']:.3f} "
            f"(target <= 1.3: {'PASS' if tm['pass'] else 'FAIL'})")
        first = tm["pairs"][0]
        if "stage_log_error" in first["lpdask"]:
            say("  stage log: " + first["lpdask"]["stage_log_error"])
        if "stage_log" in first["lpdask"]:
            whole_stages = {s["stage"]: s["seconds"] for s in tm.get("whole_stages") or []}
            say("  lpdask stage log (first repeat; task/read/compute/store are summed over threads):")
            say(f"  {'stage':>10} {'chunks':>6} {'wall':>7} {'tasks':>7} {'read':>6} {'compute':>8} "
                f"{'store':>6} {'out':>6} {'whole-img':>9}")
            for s in first["lpdask"]["stage_log"]:
                wi = whole_stages.get(s["stage"])
                say(f"  {s['stage']:>10} {s['chunks']:6d} {s['wall_seconds']:7.2f} {s['task_seconds']:7.2f} "
                    f"{s['read_seconds']:6.2f} {s['compute_seconds']:8.2f} {s['store_work_seconds']:6.2f} "
                    f"{s['write_output_seconds']:6.2f} {wi if wi is None else f'{wi:9.2f}':>9}")
            say(f"  pyramid (sink.finish): {first['lpdask']['pyramid_seconds']:.2f} s")
    sw = report.get("sweep")
    if sw:
        say(f"Sweep ({sw['size']}x{sw['size']}; ratio vs the mean of the whole-image runs either side, "
            f"and vs all {len(sw['whole_work_seconds'])} whole-image runs):")
        say(f"  {'threads':>7} {'chunk':>5} {'b/stage':>7} {'work s':>7} {'ratio':>6} {'ratio(all)':>10} "
            f"{'proc ratio':>10} {'cpu s':>7} {'cpu ratio':>9} {'peak RSS':>10}")
        for r in sorted(sw["rows"], key=lambda r: r["work_ratio_near"]):
            say(f"  {r['threads']:>7} {r['chunk']:>5} {r['blocks_per_stage']:>7} {r['work_seconds']:7.1f} "
                f"{r['work_ratio_near']:6.3f} {r['work_ratio_all']:10.3f} {r['process_ratio_near']:10.3f} "
                f"{r['cpu_seconds']:7.1f} {r['cpu_ratio_all']:9.3f} {mib(r['peak_rss_bytes']):>10}")
        say("  whole-image work seconds: " + ", ".join(f"{s:.1f}" for s in sw["whole_work_seconds"]))
        say("  whole-image cpu seconds:  " + ", ".join(f"{s:.1f}" for s in sw["whole_cpu_seconds"]))
        if any(s["runs"] > 1 for s in sw["settings"]):
            say("  per setting (medians over rounds):")
            for s in sorted(sw["settings"], key=lambda s: s["median_work_ratio_near"]):
                say(f"  {s['threads']:>7} {s['chunk']:>5} {s['blocks_per_stage']:>7} runs {s['runs']}: "
                    f"ratio {s['median_work_ratio_near']:.3f}, cpu ratio {s['median_cpu_ratio_all']:.3f}, "
                    f"{s['median_work_seconds']:.1f} s, peak RSS {mib(s['max_peak_rss_bytes'])}")
    say("=" * 78)


def _setting(text: str) -> tuple[int, int, int]:
    try:
        threads, chunk, bps = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not THREADS,CHUNK,BLOCKS_PER_STAGE") from None
    return threads, chunk, bps


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--sweep-rounds", type=int, default=1,
                   help="run the sweep's settings this many times (alternating order)")
    p.add_argument("--whole-every", type=int, default=2,
                   help="in the sweep, a whole-image run before every N lpdask runs (and one at the end)")
    p.add_argument("--stage-times", action="store_true",
                   help="log per-stage read/compute/store times in the lpdask children")
    p.add_argument("--thp", action="store_true",
                   help="set THP_MEM_ALLOC_ENABLE=1 for every child (torch puts tensors of 2 MiB and "
                        "more on transparent huge pages: far fewer page faults on Linux)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", help="folder for images, weights and outputs (default: a temp folder)")
    p.add_argument("--output", default=str(RESULTS), help="JSON results file")
    # child mode (internal)
    p.add_argument("--child", choices=["whole", "lpdask"], help=argparse.SUPPRESS)
    p.add_argument("--src", help=argparse.SUPPRESS)
    p.add_argument("--dst", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_sizes is None:
        args.memory_sizes = [128, 256] if args.quick else [512, 1024]
    if args.time_size is None:
        args.time_size = 192 if args.quick else 768
    if args.chunk is None:
        args.chunk = 64 if args.quick else 256
    if args.sweep_chunks is None:
        args.sweep_chunks = [64, 96] if args.quick else [256, 384, 512]
    if args.repeat < 1 or args.whole_every < 1 or args.sweep_rounds < 1:
        p.error("--repeat, --whole-every and --sweep-rounds must be at least 1")
    return args


def _git_commit() -> str | None:
    """The repository's commit, with ``+dirty`` when lpdask/ has uncommitted changes."""
    try:
        root = HERE.parent
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "lpdask"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child == "whole":
        child_whole(args)
        return 0
    if args.child == "lpdask":
        child_lpdask(args)
        return 0

    if args.thp:
        os.environ["THP_MEM_ALLOC_ENABLE"] = "1"  # children inherit it; torch reads it at startup
    import torch

    report: dict = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "lpdask_commit": _git_commit(),
        "env": {k: os.environ.get(k) for k in ("THP_MEM_ALLOC_ENABLE", "OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        "model": {"arch": "RRDBNet x4", "num_block": 2, "num_feat": 64, "num_grow_ch": 32,
                  "weights": "random", "seed": args.seed},
        "args": {k: v for k, v in vars(args).items() if k not in ("child", "src", "dst", "model")},
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lpdask-bench-", dir=args.workdir) as tmpname:
        tmp = Path(tmpname)
        model = tmp / "rrdbnet_2block_seed.pth"
        make_model(model, args.seed)
        if not args.skip_memory:
            report["memory"] = measure_memory(args, tmp, model)
            out.write_text(json.dumps(report, indent=1))
        src = tmp / f"time_{args.time_size}.tif"
        if not args.skip_time or args.sweep:
            make_image(src, args.time_size, args.seed)
        if not args.skip_time:
            report["time"] = measure_time(args, tmp, model, src)
            out.write_text(json.dumps(report, indent=1))
        if args.sweep:
            report["sweep"] = measure_sweep(args, tmp, model, src)
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    out.write_text(json.dumps(report, indent=1))
    print_tables(report)
    say(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
