"""What the benchmarks share: the network and images they run on, whole-image inference, measured
runs in fresh processes, and the tables' number formats.

A measured run is a fresh process (``python -m benchmarks.common SPEC``, started by :class:`Runner`)
that reports its own peak RSS (``VmHWM``: ``ru_maxrss`` would carry over the parent's at fork),
work seconds (its clock around model load, read, run and write; imports excluded), CPU seconds and
bytes passed to ``write()``; the parent adds the wall time of the whole process.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

T0 = time.perf_counter()
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MARK = "@@RESULT "
X4PLUS_MACS = 17.9e6
"""x4plus's multiply-adds per input pixel (profiled: 16.5 M in the trunk, 1.4 M in the x4 tail)."""


# --------------------------------------------------------------------------- network and images


def network(num_feat: int = 64, num_block: int = 2, num_grow_ch: int = 32, seed: int = 0) -> torch.nn.Module:
    """The benchmarks' RRDBNet x4 (default: 2 RRDBs, 64 features, growth 32), random weights with a
    fixed seed made lively as the tests make theirs. The weights do not change its cost."""
    import torch

    from lpdask import RRDBConfig, RRDBNet
    from lpdask.samples import lively

    torch.manual_seed(seed)
    return lively(RRDBNet(RRDBConfig(num_feat=num_feat, num_block=num_block, num_grow_ch=num_grow_ch)), seed=seed)


def save_network(path: Path, **shape: int) -> Path:
    """:func:`network` saved as a state dict, for children and the CLI to load by path."""
    import torch

    torch.save(network(**shape).state_dict(), path)
    return path


def make_image(path: Path, size: int, seed: int = 0, tile: int = 256) -> Path:
    """A smooth random RGB uint8 image (sum of random sinusoids, a little noise) as a tiled TIFF."""
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
    return path


def astronaut(size: int) -> np.ndarray:
    """scikit-image's astronaut resized to ``size``^2 (bicubic), uint8 RGB: a real photo."""
    from skimage import data, transform

    return (transform.resize(data.astronaut(), (size, size), order=3) * 255).round().astype(np.uint8)


def whole_image(net: torch.nn.Module, image: np.ndarray, device: str = "cpu", dtype: torch.dtype | None = None,
                repeat: int = 1) -> tuple[np.ndarray, float]:
    """``net(x)`` once on the whole (h, w, 3) image, converted back to its dtype as Real-ESRGAN's
    ``enhance`` does, and the seconds of ``net(x)`` (the last of ``repeat`` runs: the first warms up).
    The network is copied where it must move or change precision, so the caller's stays as it is."""
    import torch

    from lpdask.device import ieee_fp32

    dtype = dtype or torch.float32
    first = next(net.parameters())
    if (first.device.type, first.dtype) != (torch.device(device).type, dtype):
        net = copy.deepcopy(net).to(device, dtype)
    top = np.float32(np.iinfo(image.dtype).max)
    x = torch.from_numpy(np.ascontiguousarray((image.astype(np.float32) / top).transpose(2, 0, 1)))[None]
    x = x.to(device, dtype)
    seconds = 0.0
    with torch.inference_mode(), ieee_fp32(torch.device(device)):
        for _ in range(repeat):
            sync(device)
            start = time.perf_counter()
            y = net(x)
            sync(device)
            seconds = time.perf_counter() - start
    out = (y[0].float().clamp(0, 1).cpu().numpy() * top).round().astype(image.dtype)
    return out, seconds


def sync(device: str | torch.device) -> None:
    """Wait for a CUDA device's queued work (for timing); nothing on a CPU."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def levels_off(out: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Largest and mean absolute difference in levels, and the share of values off by more than 1."""
    diff = np.abs(out.astype(np.int64) - reference.astype(np.int64))
    return {"max": int(diff.max()), "mean": float(diff.mean()), "over_1_level": float((diff > 1).mean())}


def cuda_upscale(src: Path, dst: Path, net: torch.nn.Module, **options: Any) -> dict:
    """One ``lpdask.upscale`` on CUDA in this process: seconds, input MP/s, torch's peak reserved
    and allocated GPU memory, and the plan it ran with its predicted peak (``Summary.plan``)."""
    import torch

    import lpdask

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    sync("cuda")
    start = time.perf_counter()
    summary = lpdask.upscale(src, dst, model=net, device="cuda", overwrite=True, **options)
    seconds = time.perf_counter() - start
    plan = summary.plan
    return {"seconds": seconds, "input_mp_per_s": summary.input_megapixels / seconds,
            "reserved": torch.cuda.max_memory_reserved(), "allocated": torch.cuda.max_memory_allocated(),
            "plan": plan.describe() if plan else "", "predicted": (plan.peak_memory or None) if plan else None}

# --------------------------------------------------------------------------- measured runs (children)


def rss_now() -> int:
    """This process's resident set now, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """This process's own peak resident set (``VmHWM``), in bytes."""
    from lpdask.memory import peak_bytes

    return peak_bytes()


def _counters() -> dict[str, float]:
    """CPU seconds, minor page faults, and bytes passed to write() so far (Linux ``/proc/self/io``)."""
    u = resource.getrusage(resource.RUSAGE_SELF)
    counters = {"user_seconds": u.ru_utime, "system_seconds": u.ru_stime, "minor_faults": u.ru_minflt,
                "children_cpu_seconds": sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2])}
    try:
        io = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
        counters.update(written_bytes=int(io["wchar"]), storage_write_bytes=int(io["write_bytes"]))
    except (OSError, KeyError, ValueError):
        pass
    return counters


def measured(work: Callable[[], dict]) -> dict:
    """``work()``'s result with what every child reports: work seconds, seconds since the process
    started (imports included), CPU seconds (user, system; children's: dask.distributed workers),
    minor faults, bytes written, RSS after imports and peak RSS."""
    after_import, before, start = rss_now(), _counters(), time.perf_counter()
    result = work()
    seconds = time.perf_counter() - start
    after = _counters()
    result.update({key: after[key] - before[key] for key in after if key in before},
                  work_seconds=seconds, child_seconds=time.perf_counter() - T0, rss_after_import_bytes=after_import,
                  peak_rss_bytes=peak_rss())
    result["cpu_seconds"] = result["user_seconds"] + result["system_seconds"]
    return result


def child_whole(spec: dict) -> dict:
    """Whole-image inference: load the model, read the TIFF, ``net(x)`` once, convert to 8-bit.
    ``reuse_freed_memory``: glibc set as lpdask sets it for a CPU run; ``save``: the output as .npy
    (after the figures); ``stage_times`` (RRDBs per stage): also time lpdask's stages one after the
    other on the whole image (no chunks, halos or I/O)."""
    import tifffile
    import torch

    from lpdask import load_model
    from lpdask.memory import reuse_freed_memory

    if spec.get("reuse_freed_memory"):
        reuse_freed_memory()
    kept: dict = {}

    def work() -> dict:
        kept["net"] = load_model(spec["model"]).eval()
        kept["out"], net_seconds = whole_image(kept["net"], tifffile.imread(spec["src"]))
        return {"kind": "whole", "net_seconds": net_seconds, "torch_threads": torch.get_num_threads(),
                "output_shape": list(kept["out"].shape)}

    result = measured(work)
    if spec.get("save"):
        np.save(spec["save"], kept["out"])
    if spec.get("stage_times"):
        image = tifffile.imread(spec["src"])
        arrays = {"image": torch.from_numpy(image.astype(np.float32).transpose(2, 0, 1) / 255)[None]}
        result["stages"] = []
        with torch.inference_mode():
            for stage in kept["net"].stages(spec["stage_times"]):
                start = time.perf_counter()
                arrays[stage.name] = stage.module(*(arrays[name] for name in stage.inputs))
                result["stages"].append({"stage": stage.name, "seconds": time.perf_counter() - start})
    return result


def child_lpdask(spec: dict) -> dict:
    """``lpdask.upscale`` of the TIFF into a Zarr with ``spec["options"]`` (none: the planner's
    defaults), with the plan it ran and its prediction (``Summary.plan``). ``reference`` (.npy):
    also its error, by ``lpdask.compare.method_error``; ``stage_log``: each stage's chunks, wall
    seconds and summed task seconds, from dask's profiler (threads of this process only)."""
    import zarr
    from dask.diagnostics import Profiler

    import lpdask

    options = dict(spec.get("options") or {})
    profiler = Profiler() if spec.get("stage_log") else contextlib.nullcontext()
    kept: dict = {}

    def work() -> dict:
        with profiler:
            kept["summary"] = s = lpdask.upscale(spec["src"], spec["dst"], model=spec["model"], overwrite=True,
                                                 progress=False, **options)
        return {"kind": "lpdask", "options": options, "summary_seconds": s.seconds,
                "summary_peak_memory_bytes": s.peak_memory_bytes,
                "children_peak_rss_bytes": max(s.worker_peak_memory_bytes, default=0), "chunks": s.chunks,
                "stages": s.stages, "levels": s.levels, "output_shape": list(s.output_shape)}

    result = measured(work)
    plan = kept["summary"].plan
    result["planner"] = {**dataclasses.asdict(plan), "describe": plan.describe()} if plan and plan.seconds else None
    out = zarr.open_array(str(Path(spec["dst"]) / "0"), mode="r")
    scale = result["output_shape"][-1] // spec["size"]
    result.update(chunk_used=out.chunks[-1] // scale, scale=scale, output_bytes_on_disk=du(spec["dst"]))
    if spec.get("reference"):
        import lpdask.compare as compare

        e = compare.method_error("run", spec.get("label", ""), out[:], np.load(spec["reference"]),
                                 result["chunk_used"] * scale, 0.0)
        result["errors"] = {"max": e.max_error, "mean": e.mean_error, "over_1_level": e.off_by_more_than_1,
                            "max_at_border": e.max_at_border}
    if spec.get("stage_log"):
        result["stage_log"] = stage_log(profiler.results)  # type: ignore[union-attr]
    return result


def stage_log(tasks: Sequence[Any]) -> list[dict]:
    """Per stage (dask key name), from dask profiler records: chunks, wall and summed task seconds."""
    stages: dict[str, list[tuple[float, float]]] = {}
    for task in tasks:
        if isinstance(task.key, tuple):
            stages.setdefault(str(task.key[0]), []).append((task.start_time, task.end_time))
    return [{"stage": name, "chunks": len(spans), "wall_seconds": max(b for _, b in spans) - min(a for a, _ in spans),
             "task_seconds": sum(b - a for a, b in spans)} for name, spans in stages.items()]


def du(path: str | Path) -> int:
    """Bytes of the files under ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


CHILDREN = {"whole": child_whole, "lpdask": child_lpdask}


def child_main(text: str) -> int:
    """Run one child (``spec["kind"]``: a name above, or ``module:function``) and print its result."""
    spec = json.loads(text)
    kind = spec["kind"]
    if ":" in kind:
        module, name = kind.split(":")
        work = getattr(importlib.import_module(module), name)
    else:
        work = CHILDREN[kind]
    print(MARK + json.dumps(work(spec)), flush=True)
    return 0


class Runner:
    """Runs children one at a time (``python -m benchmarks.common SPEC``, from the repository root)
    and keeps every failure; each result gets the command, the whole process's seconds and the load
    average before and after. ``strict``: a failed child raises instead."""

    def __init__(self, timeout: float = 3600, env: dict[str, str] | None = None, strict: bool = False) -> None:
        self.timeout, self.strict = timeout, strict
        self.env = {**os.environ, **(env or {})}
        self.failures: list[dict] = []

    def __call__(self, spec: dict, label: str) -> dict:
        cmd = [sys.executable, "-m", "benchmarks.common", json.dumps(spec)]
        load = os.getloadavg()[0]
        say(f"[{time.strftime('%H:%M:%S')}] {label} (load {load:.2f}) ...")
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout, cwd=ROOT, env=self.env)
            rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as exc:
            rc, stdout, stderr = "timeout", _text(exc.stdout), _text(exc.stderr)
        lines = [line for line in stdout.splitlines() if line.startswith(MARK)]
        if rc == 0 and lines:
            result = json.loads(lines[-1][len(MARK):])
        else:
            tail = (stdout[-2000:] + stderr[-3000:]).strip()
            result = {"kind": spec["kind"], "failed": True, "returncode": rc, "output_tail": tail}
            self.failures.append({"label": label, "command": shlex.join(cmd), "returncode": rc})
            say(f"    FAILED ({rc}): {tail[-800:]}")
            if self.strict:
                raise RuntimeError(f"{label} failed ({rc}): {shlex.join(cmd)}")
        result.update(label=label, command=shlex.join(cmd), process_seconds=time.perf_counter() - start,
                      load_before=load, load_after=os.getloadavg()[0])
        if ok(result) and "work_seconds" in result:
            say(f"    work {result['work_seconds']:.1f} s, process {result['process_seconds']:.1f} s, "
                f"peak RSS {result['peak_rss_bytes'] / 2**20:.0f} MiB")
        if spec.get("dst"):
            shutil.rmtree(spec["dst"], ignore_errors=True)
        return result


def _text(data: bytes | str | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else data or ""


# --------------------------------------------------------------------------- reports


def say(text: str = "") -> None:
    """Progress, on stderr: stdout keeps the tables alone."""
    print(text, file=sys.stderr, flush=True)


def ok(r: dict | None) -> bool:
    return bool(r) and not r.get("failed")  # type: ignore[union-attr]


def ratio(a: dict | None, b: dict | None, key: str) -> float | None:
    """``a[key] / b[key]`` where both runs succeeded."""
    return a[key] / b[key] if ok(a) and ok(b) and b.get(key) else None  # type: ignore[index,union-attr]


def median(values: Any) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "n/a" if v is None else f"{v:{spec}}{suffix}"


def gib(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.2f} GiB"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """A markdown table."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]


def machine() -> dict:
    """What the figures ran on: CPUs, memory, torch, load average, lpdask's commit."""
    import torch

    return {"cpu_count": os.cpu_count(), "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "platform": platform.platform(), "loadavg": list(os.getloadavg()), "lpdask_commit": git_commit()}


def git_commit() -> str | None:
    """The repository's commit, with ``+dirty`` when lpdask/ has uncommitted changes."""
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        return git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain", "--", "lpdask") else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def save(name: str, report: dict, output: str | Path | None = None) -> Path:
    """Write ``report`` (with the command and the date) as JSON: ``output``, or results/NAME.json."""
    path = Path(output) if output else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    report.setdefault("command", shlex.join([sys.executable, *sys.argv]))
    report.setdefault("date", time.strftime("%Y-%m-%d %H:%M"))
    path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    return path


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1]))
