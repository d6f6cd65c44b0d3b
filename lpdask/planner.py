"""The planner: chunk size, stage grouping and where activations live, from measured costs.

Each stage is profiled once on a small window (multiply-adds and working memory per pixel, from
forward hooks on its convolutions); the device's multiply-add rate is measured with one thread and
with all of them, and the work folder's write/read speed with a 32 MiB array. A plan's cost is then
arithmetic: compute grows with each chunk's window (the chunk plus its halo, clipped at the image
border), activation I/O with the bytes each stage writes and reads, and peak memory with the largest
window of any stage times the chunks running at once, plus the model and the process. The planner
picks the fastest plan whose peak memory fits the budget (4 GiB on a CPU, or half the available
memory if less; 80% of the free GPU memory), preferring the least memory among plans predicted
within 10% of the fastest. It picks for a large image and uses that plan on smaller ones too, so
memory does not grow with the image.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache, partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from .device import ieee_fp32, storage_dtype
from .errors import LpdaskError, PlanWarning
from .executors import EXECUTORS, Priced, executor_named
from .models.checkpoint import cache_dir
from .models.network import Network
from .costs import PROCESS_MEMORY, Machine, Pricing, Space, StageCost  # noqa: F401  (PROCESS_MEMORY: the planner's too)
from .executors.staged import estimate  # noqa: F401  (each executor prices its plans; these two are re-exported)
from .executors.stream import BAND_REACHES, STRIPS, TILE_SECONDS, cut_in_height, dry_run  # noqa: F401
from .executors.stream import estimate as estimate_stream
from .chunks import tile_rows_step
from .geometry import reach, unshuffled
from .plan import MAX_CHUNK, MIN_CHUNK, Plan
from .io.locations import Location, existing_folder
from .stages import IMAGE, Stage

if TYPE_CHECKING:
    from .io.sources import Source
    from .known import Known
    from .options import UpscaleOptions

CHUNKS = (64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)
PROBE = 16
"""Side of the window stages are profiled on."""
WORKING_MEMORY = 1.65
"""Measured peak over (inputs + largest convolution's input and output + own output) for a 2-block
RRDBNet x4 at 256 and 384 px (1.64, 1.61): torch keeps the upsampled tensors alive as well."""
MAX_BUDGET = 4 * 2**30
NEAR = 0.10
"""Plans predicted within 10% of the fastest count as equally fast; the one with the least peak
memory among them wins (predicted times were 3-20% off the measured ones)."""
REFERENCE = 4096
"""Side of the image plans are picked for (see ``choose``): past a few chunks a side, which plan is
fastest no longer depends on the image's size."""
def profile(stages: Sequence[Stage], image_channels: int, device: torch.device) -> list[StageCost]:
    """Multiply-adds and working memory per pixel of each stage, from one run on a small window."""
    channels = {IMAGE: image_channels}
    costs = []
    for stage in stages:
        convs: list[tuple[float, float]] = []

        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            weight = module.weight  # type: ignore[union-attr]
            macs = weight.numel() * output.shape[-2] * output.shape[-1]
            convs.append((float(macs), float(inputs[0].numel() + output.numel()) * output.element_size()))

        handles = [m.register_forward_hook(hook) for m in stage.module.modules() if isinstance(m, nn.Conv2d)]
        dtype = next((p.dtype for p in stage.module.parameters()), torch.float32)
        probes = [torch.zeros(1, channels[name], PROBE, PROBE, device=device, dtype=dtype) for name in stage.inputs]
        try:
            with torch.inference_mode():
                stage.module(*probes)
        finally:
            for handle in handles:
                handle.remove()
        pixels = PROBE * PROBE
        stored = storage_dtype(dtype).itemsize
        read = sum(channels[name] * (4 if name == IMAGE else stored) for name in stage.inputs)
        own = stage.channels * stage.scale**2 * stored
        largest = max((m for _, m in convs), default=0.0) / pixels
        costs.append(StageCost(stage.name, stage.halo, stage.scale, sum(m for m, _ in convs) / pixels,
                               WORKING_MEMORY * (read + largest + own), own, read))
        channels[stage.name] = stage.channels
    costs[-1] = replace(costs[-1], written=0.0)
    return costs


def measure_machine(device_type: str, work: str | None = None, memory_budget: int | None = None) -> Machine:
    """The device's and the work folder disk's speeds (:func:`measured_speeds`), with ``memory_budget``
    or, if None, the :func:`default_budget` of this moment (a GPU's free memory changes between calls)."""
    one, cores, efficiency, write, read = measured_speeds(device_type, work)
    device = torch.device(device_type)
    return Machine(one, cores, efficiency, write, read, memory_budget or default_budget(device), device.type)


@lru_cache(maxsize=8)
def measured_speeds(device_type: str, work: str | None = None) -> tuple[float, int, float, float, float]:
    """Multiply-adds per second on one core, cores, parallel efficiency, and the work folder disk's
    write and read bytes per second: measured once per machine and kept in the cache folder
    (``machine.json``; delete it to measure again). Measured on every run, they would swing with
    the machine's load, and the plan with them."""
    device = torch.device(device_type)
    disk = _disk_folder(work)
    key = "/".join(map(str, (device_type, torch.cuda.get_device_name(device) if device.type == "cuda" else "",
                             os.cpu_count(), torch.get_num_threads(), torch.__version__, disk.stat().st_dev)))
    one, cores, efficiency, write, read = remembered(key, 5, lambda: _measure(device, disk))
    return one, int(cores), efficiency, write, read


def remembered(key: str, size: int, measure: Callable[[], Sequence[float]]) -> list[float]:
    """The ``size`` figures kept under ``key`` in the cache folder's ``machine.json``, measured (and
    kept) where they are missing; a read-only cache folder means measuring again next time."""
    path = cache_dir() / "machine.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known.get(key), list) or len(known[key]) != size:
        known[key] = list(measure())
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f"machine.{os.getpid()}.json")
            partial.write_text(json.dumps(known, indent=1))
            os.replace(partial, path)
        except OSError:
            pass
    return list(known[key])


def _measure(device: torch.device, disk: Path) -> tuple[float, int, float, float, float]:
    """Time a 64-channel 3x3 convolution on one thread and on all, and a 32 MiB write and read on
    ``disk``. Takes about a second."""
    conv = nn.Conv2d(64, 64, 3, padding=1).to(device).eval()
    side = 192  # big enough that fresh 9 MiB tensors pay their page faults, as real windows do
    macs = 64 * 64 * 9 * side * side

    def seconds(threads: int) -> float:
        torch.set_num_threads(threads)
        with torch.inference_mode(), ieee_fp32(device):
            x = torch.rand(1, 64, side, side, device=device)
            start = time.perf_counter()
            conv(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - start

    cores = 1 if device.type == "cuda" else os.cpu_count() or 1
    before = torch.get_num_threads()
    try:  # alternated, the best of six each: what the machine does when nothing else runs
        pairs = [(seconds(before), seconds(1) if device.type == "cpu" else 0.0) for _ in range(6)]
    finally:
        torch.set_num_threads(before)
    all_cores = macs / min(a for a, _ in pairs)
    one = macs / min(b for _, b in pairs) if device.type == "cpu" else all_cores
    efficiency = min(1.0, all_cores / (one * cores))
    write, read = _disk_speed(disk)
    return one, cores, efficiency, write, read


def default_budget(device: torch.device) -> int:
    """4 GiB on a CPU, or half the available memory if that is less: a fixed figure, so the same
    image gets the same plan whatever else the machine is doing, and memory stays flat as images
    grow; 80% of the free memory of a GPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.8)
    import psutil

    return min(MAX_BUDGET, int(psutil.virtual_memory().available * 0.5))


def _disk_folder(work: str | None) -> Path:
    """The existing folder whose disk the work folder will be on (the temporary folder for an
    object store)."""
    folder = Path(work) if work and "://" not in work else Path(tempfile.gettempdir())
    return next((p for p in (folder, *folder.parents) if p.is_dir()), Path(tempfile.gettempdir()))


def _disk_speed(existing: Path) -> tuple[float, float]:
    """Bytes per second writing and reading an uncompressed Zarr array (the work folder's kind)."""
    import zarr

    data = np.ones((32, 512, 512), np.float32)
    with tempfile.TemporaryDirectory(dir=existing) as scratch:
        start = time.perf_counter()
        array = zarr.create_array(f"{scratch}/probe.zarr", shape=data.shape, chunks=data.shape, dtype="float32",
                                  compressors=None)
        array[:] = data
        written = time.perf_counter() - start
        start = time.perf_counter()
        np.asarray(array[:])
        read = time.perf_counter() - start
    return data.nbytes / max(written, 1e-4), data.nbytes / max(read, 1e-4)


PLANNED = tuple(e.name for e in EXECUTORS if e.planned)
"""The executors the planner weighs (:data:`lpdask.executors.EXECUTORS`' planned ones)."""
TILES = (*CHUNKS, 6144, 8192)
"""Tile widths streaming plans try."""


@dataclass(frozen=True)
class Fixed:
    """The parts of a plan the user fixed (None: the planner's choice), and the executors it may use."""

    chunk: int | None = None
    blocks_per_stage: int | None = None
    workers: int | None = None
    strip: int | None = None
    tile_rows: int | None = None
    executors: Sequence[str] = PLANNED
    inner: int = 0
    """The work arrays' read granularity (0: whole chunks)."""


def choose(net: Network, height: int, width: int, device: torch.device, fixed: Fixed = Fixed(), *,
           machine: Machine | None = None, memory_budget: int | None = None,
           scratch: int | None = None) -> tuple[Plan, list[Plan]]:
    """The plan to use, and every plan considered for this image (fastest first), among what ``fixed``
    leaves open, on ``machine`` (default: this one as measured, with ``memory_budget``; the stages are
    profiled on ``device``). Staged plans whose activations need more than ``scratch`` bytes (the
    work folder's free space; None: not checked) are left out while any other plan is left.

    The chunk (tile), grouping, strip and chunks at once are picked for an image of ``REFERENCE`` px a
    side (the fastest that fits the budget, or the least memory among those within ``NEAR`` of it),
    then used on this one; an image that fits in one such chunk may instead run the whole network as
    one stage if that is faster and needs no more memory. So a larger image never takes more memory.
    A streaming plan's tiles are then cut in height (:func:`~lpdask.executors.stream.cut_in_height`)
    where that keeps more workers busy or a tile would take longer than ``TILE_SECONDS``."""
    machine = machine or measure_machine(device.type, None, memory_budget)
    d = net.input_factor
    pricing = Pricing(height, width, machine, net.scale, d,
                      sum(p.numel() * p.element_size() for p in net.parameters()),  # type: ignore[attr-defined]
                      net.in_channels * d**2, next((p.element_size() for p in net.parameters()), 4),  # type: ignore[attr-defined]
                      fixed.inner)
    profiled = _profiled(net, device, fixed)
    tile_rows, workers = fixed.tile_rows, fixed.workers
    tiles = [c for c in TILES if not tile_rows or tile_rows % tile_rows_step(c, net.scale, d) == 0] or TILES

    def sizes(side: int, tried: Sequence[int] = CHUNKS) -> list[int]:
        if fixed.chunk:
            return [fixed.chunk]
        options = [c for c in tried if MIN_CHUNK <= c <= MAX_CHUNK and c % d == 0]
        return [c for c in options if c < side or c == min(x for x in options if x >= min(side, options[-1]))]

    def strips(h: int) -> list[int]:
        return [fixed.strip] if fixed.strip else [x for x in STRIPS if x % d == 0 and x < h] or [STRIPS[0]]

    at_once = (workers,) if workers else tuple(range(1, (1 if machine.device_type == "cuda" else machine.cores) + 1))

    def plans_for(h: int, w: int) -> list[Plan]:
        here = replace(pricing, height=h, width=w)
        space = Space(tuple(sizes(max(h, w))), tuple(sizes(w, tiles)), tuple(strips(h)), at_once, workers or 0,
                      tile_rows or 0)
        plans = [plan for name, k, stages, costs in profiled
                 for plan in _priced(name).candidates(k, stages, costs, here, space)]
        return sorted(plans, key=lambda e: (e.seconds, e.peak_memory))

    plans = plans_for(height, width)
    feasible = plans
    if scratch is not None and any(e.scratch_bytes <= scratch for e in plans):
        feasible = [e for e in plans if e.scratch_bytes <= scratch]
    kinds = {(e.executor, e.blocks_per_stage) for e in feasible}
    large = plans if (height, width) == (REFERENCE, REFERENCE) else plans_for(REFERENCE, REFERENCE)
    reference = _pick([e for e in large if (e.executor, e.blocks_per_stage) in kinds], machine.memory_budget)

    def fitted(e: Plan) -> tuple[object, ...]:
        """``e``'s shape cut to this image, which may be smaller than its chunk (tile) or strip."""
        here = sizes(width, tiles) if e.executor == "stream" else sizes(max(height, width))
        rows = strips(height) if e.executor == "stream" else [0]
        return (e.chunk if e.chunk in here else here[-1], e.blocks_per_stage, e.executor,
                e.strip if e.strip in rows else rows[-1], e.workers)

    same = [e for e in feasible if _shape(e)[:4] == fitted(reference)[:4]]
    best = min((e for e in same if e.workers <= reference.workers), key=lambda e: e.seconds, default=same[0])
    if best.executor == "stream":  # taller strips or fewer tiles at once, where they need no more memory
        best = min((e for e in feasible if _shape(e)[:3] == _shape(best)[:3] and e.peak_memory <= reference.peak_memory),
                   key=lambda e: e.seconds, default=best)
    if max(height, width) <= reference.chunk:
        whole = [e for e in feasible if e.executor == "whole" and _shape(e) == fitted(e)
                 and e.seconds < best.seconds and e.peak_memory <= reference.peak_memory]
        best = whole[0] if whole else best
    if best.peak_memory > machine.memory_budget and any(e.peak_memory <= machine.memory_budget for e in feasible):
        best = _pick(feasible, machine.memory_budget)  # the reference's shape needs more here (larger halos)
    if best.executor == "stream" and tile_rows is None:
        _, _, stages, costs = next(p for p in profiled if p[:2] == ("stream", best.blocks_per_stage))
        best = cut_in_height(best, partial(estimate_stream, costs, stages, pricing), pricing, reach(stages) * d,
                             max(best.peak_memory, reference.peak_memory), strips(height), workers)
    if best.peak_memory > machine.memory_budget:
        warnings.warn(f"no plan fits the memory budget of {machine.memory_budget / 2**30:.2f} GiB; using the one "
                      f"needing the least, predicted {best.peak_memory / 2**30:.2f} GiB (chunk {best.chunk})",
                      PlanWarning, stacklevel=2)
    return best, plans


def _profiled(net: Network, device: torch.device,
              fixed: Fixed) -> list[tuple[str, int, list[Stage], list[StageCost]]]:
    """(executor, grouping, stages, their costs) for each stage list the executors weighed are priced
    with (:meth:`~lpdask.executors.Priced.priced_stages`), each grouping profiled once."""
    profiles: dict[int, list[StageCost]] = {}
    image_channels = net.in_channels * net.input_factor**2
    return [(entry.name, k, stages,
             profiles.get(k) or profiles.setdefault(k, profile(stages, image_channels, device)))
            for entry in EXECUTORS if entry.name in fixed.executors
            for k, stages in _priced(entry.name).priced_stages(net, fixed.blocks_per_stage)]


def _priced(name: str) -> Priced:
    return executor_named(name)  # type: ignore[return-value]


def _shape(plan: Plan) -> tuple[object, ...]:
    """What a plan is, apart from the image it was priced for: the size of one chunk (tile) and of
    its strips, the grouping, the executor and the chunks at once."""
    return plan.chunk, plan.blocks_per_stage, plan.executor, plan.strip, plan.workers


def _pick(plans: list[Plan], budget: int) -> Plan:
    """The least memory among the plans within NEAR of the fastest that fits; if none fits, the
    least memory of all."""
    fitting = [e for e in plans if e.peak_memory <= budget]
    if not fitting:
        return min(plans, key=lambda e: (e.peak_memory, e.seconds))
    near = [e for e in fitting if e.seconds <= fitting[0].seconds * (1 + NEAR)]
    return min(near, key=lambda e: (e.peak_memory, e.seconds))


def plan_for(net: Network, source: Source, device: torch.device, options: UpscaleOptions,
             work: Location | None = None, output: Location | None = None,
             stored: dict[str, object] | None = None, known: Known | None = None) -> tuple[Plan, list[Plan]]:
    """The plan ``upscale`` runs (and ``lpdask plan`` prints) with the alternatives weighed (none
    where the plan was given or resumed): as ``options`` fix it, as a resumed job (``stored``)
    started, or the planner's choice for ``net`` as it will run (device, precision) and the threads or
    workers asked for, among the executors ``options.executor`` allows. Staged plans whose activations
    would not fit the free space of ``work``'s disk are left out while another plan is possible."""
    o = options
    executor = o.executor if isinstance(o.executor, str) else o.executor.name
    chunk, blocks, strip, tile_rows = o.chunk, o.blocks_per_stage, o.strip, o.tile_rows
    if o.mode == "tile":
        return Plan(chunk or Plan.chunk, 1, "staged", o.threads), []
    forced = None if executor == "auto" else executor
    if chunk is not None and blocks is not None and (strip is not None or forced != "stream"):
        plan = Plan.given(chunk, blocks, o.threads, strip, tile_rows or 0)
        return (replace(plan, executor=forced) if forced and forced not in PLANNED else plan), []
    if (stored and chunk in (None, stored.get("chunk")) and blocks in (None, stored.get("blocks_per_stage"))
            and strip in (None, stored.get("strip")) and tile_rows in (None, stored.get("tile_rows", 0))
            and forced in (None, Plan.from_json(stored).executor)):
        return Plan.from_json(stored, o.threads), []
    local = o.threads or o.workers or None
    weighed = (("staged", "whole") if forced not in PLANNED else (forced,)) if forced else PLANNED
    fixed = Fixed(chunk, blocks, local if not o.scheduler else None, strip, tile_rows, weighed)
    machine = measure_machine(device.type, work.url if work is not None and work.is_local else None,
                              int(o.max_memory) if o.max_memory else None)
    scratch = scratch_space(work, output, source, net.scale)
    best, plans = choose(net, source.height, source.width, device, fixed, machine=machine, scratch=scratch)
    best = replace(best, workers=o.threads or (0 if o.scheduler or o.workers else best.workers))
    if known is not None:  # output known without the network: each plan computes only its share
        fits = [p for p in plans if scratch is None or p.scratch_bytes <= max(scratch, best.scratch_bytes)]
        best = priced_with_known(best, fits, net, source, known, o, machine.memory_budget)
    if forced and forced not in PLANNED:  # an executor the planner cannot price runs a shape it priced
        runs = o.executor if not isinstance(o.executor, str) else executor_named(forced)
        rows, cols = unshuffled(source.height, source.width, net.input_factor)

        def runnable(plan: Plan) -> bool:
            stages = runs.stages(net, replace(plan, executor=forced), o.mode, o.tile_pad)
            return runs.fits(stages, plan.chunk // net.input_factor, rows, cols)

        best = replace(next((p for p in (best, *plans) if runnable(p)), best), executor=forced, scratch_bytes=0)
    return best, plans


def scratch_space(work: Location | None, output: Location | None, source: Source, scale: int) -> int | None:
    """Bytes free for activations on the work folder's disk, less the output's where it shares that
    disk (None: not known, as on object stores)."""
    import shutil

    if work is None or not work.is_local:
        return None
    place = existing_folder(work.local_path)
    free = shutil.disk_usage(place).free
    if output is not None and output.is_local and existing_folder(output.local_path).stat().st_dev == place.stat().st_dev:
        free -= source.height * source.width * scale**2 * source.channels * source.dtype.itemsize * 4 // 3
    return max(0, free)


ENGINE_GAIN = 0.10
"""A compiled engine runs a job only where it is predicted at least this much faster than eager, building
included: its output differs from eager's by float rounding, and a few percent is within the
measurement's noise."""
GAIN_BOUND = 3.0
"""No engine was measured faster than this over eager on a stage: a job whose compute would gain
less than building costs even at this speed runs eager without measuring."""
SPEED_WINDOW = (64, 192)
"""Rows and columns of the window engines are timed on (plus the stage's halo): a streaming strip."""


@dataclass(frozen=True)
class EngineChoice:
    """The engine a job runs, and what the planner knew when it chose it."""

    name: str
    precision: str
    speedup: float = 1.0
    """The engine's rate over eager's on the network's trunk stage (measured; 1 for eager)."""
    build_seconds: float = 0.0
    """Predicted for building every stage from nothing (what a first run pays; later runs load them)."""
    stages: int = 0
    cached: int = 0
    """Stages whose artifacts the disk cache holds (reported, not priced)."""
    reason: str = ""
    compiled: tuple[Stage, ...] = ()
    """The job's stages as this engine runs them (:func:`~lpdask.engines.compiled.compiled_stages`)."""

    def describe(self) -> str:
        if self.name == "eager":
            return f"engine: eager (PyTorch), {self.precision}{f'; {self.reason}' if self.reason else ''}"
        return (f"engine: {self.name}, {self.precision}, measured {self.speedup:.2f}x eager's rate on this network's "
                f"trunk stage; building its {self.stages} stages predicted {self.build_seconds:.1f} s, "
                f"{self.cached} of them on disk already{f'; {self.reason}' if self.reason else ''}")


def choose_engine(net: Network, stages: Sequence[Stage], device: torch.device, precision: str, requested: str,
                  plan: Plan | None, pixels: int, stored: str | None = None) -> EngineChoice:
    """The engine to run ``stages`` with: ``requested``, the one a resumed job (``stored``) started
    with, or under "auto" the fastest of those that can run ``precision`` on ``device`` here once the
    time to build its stages (:attr:`EngineChoice.build_seconds`) is counted against ``plan``'s compute
    (for a plan given rather than predicted, or None, whole-image inference's on ``pixels`` image
    pixels), if it beats eager by :data:`ENGINE_GAIN`."""
    from .engines import AUTO, REFERENCE, candidates, engine_named

    from .engines.compiled import stage_digests

    image_channels = net.in_channels * net.input_factor**2
    digests = stage_digests(stages, image_channels) if device.type == "cpu" else None  # one hash for every engine
    if plan is None or not plan.seconds:
        compute = whole_image_seconds(net, pixels, device)
        plan = Plan(seconds=compute, compute_seconds=compute)
    priced = partial(_priced_engine, net=net, stages=stages, image_channels=image_channels, device=device,
                     precision=precision, plan=plan, digests=digests)
    if stored and requested in (AUTO, stored):
        why = _refusal(stored, device, precision)
        if why:
            raise LpdaskError(f"this job was started with engine {stored}, and {why}; run with --overwrite to "
                              "start again with another engine")
        return priced(stored, reason="the job started with it")
    if requested != AUTO:
        engine_named(requested, device.type, precision)
        return priced(requested, reason="as asked")
    names = candidates(device.type, precision)
    if not names:
        from .engines import ENGINES

        why = [_refusal(e.name, device, precision) for e in ENGINES if device.type in e.devices and e.installed()]
        raise LpdaskError(f"no engine here computes {precision} on {device.type}: " + "; ".join(filter(None, why)))
    if names == [REFERENCE]:
        return priced(REFERENCE)
    choices = [priced(n) for n in names]

    def total(e: EngineChoice) -> float:
        return plan.compute_seconds / e.speedup + plan.seconds - plan.compute_seconds + e.build_seconds
    eager = next(e for e in choices if e.name == REFERENCE)
    best = min(choices, key=total)
    if total(best) > total(eager) * (1 - ENGINE_GAIN):
        return replace(eager, reason=f"no compiled engine is predicted {ENGINE_GAIN:.0%} faster on this job, building "
                                     "included")
    return best


def _refusal(name: str, device: torch.device, precision: str) -> str | None:
    from .engines import refusal

    return refusal(name, device.type, precision)


def _priced_engine(name: str, *, net: Network, stages: Sequence[Stage], image_channels: int, device: torch.device,
                   precision: str, plan: Plan, digests: Sequence[str] | None, reason: str = "") -> EngineChoice:
    """Engine ``name`` on ``stages``: its measured speed and what building every stage from nothing
    costs (a job too short to gain that much even at :data:`GAIN_BOUND` is not measured: its speed is
    1). Whether the disk cache holds them is reported, not priced: the same job on the same machine
    always gets the same engine, so the same command writes the same bytes."""
    from .engines import REFERENCE
    from .engines.compiled import compiled_stages, is_cached

    if name == REFERENCE:
        return EngineChoice(name, precision, reason=reason, compiled=tuple(stages))
    wrapped = compiled_stages(stages, name, precision, image_channels, digests)
    cached = sum(is_cached(s.module) for s in wrapped)  # type: ignore[arg-type]
    weights = sum(p.numel() for p in net.parameters())  # type: ignore[attr-defined]
    if plan.compute_seconds * (1 - 1 / GAIN_BOUND) < MIN_BUILD_SECONDS * len(wrapped):
        return EngineChoice(name, precision, 1.0, MIN_BUILD_SECONDS * len(wrapped), len(wrapped), cached, reason,
                            tuple(wrapped))
    speedup, per_weight = engine_speed(name, net, device, precision)
    build = max(MIN_BUILD_SECONDS * len(wrapped), per_weight * weights)
    return EngineChoice(name, precision, speedup, build, len(wrapped), cached, reason, tuple(wrapped))


def whole_image_seconds(net: Network, pixels: int, device: torch.device) -> float:
    """Predicted compute seconds of whole-image inference on ``pixels`` image pixels on this machine."""
    from .geometry import factors

    stages = net.stages(1)
    costs = profile(stages, net.in_channels * net.input_factor**2, device)
    macs = sum(c.macs * f * f for c, f in zip(costs, factors(stages))) * pixels / net.input_factor**2
    if macs / FASTEST_MACS * (1 - 1 / GAIN_BOUND) < MIN_BUILD_SECONDS * len(stages):
        return macs / FASTEST_MACS  # too short to pay for any build, however fast this machine: not measured
    return measure_machine(device.type).compute_seconds(macs, 1, 1)


FASTEST_MACS = 2e12
"""More multiply-adds per second than any CPU this runs on does in fp32."""


MIN_BUILD_SECONDS = 0.1
"""Building one stage takes at least this (an ONNX export and a compile of the smallest stage)."""


def trunk_stage(stages: Sequence[Stage]) -> Stage:
    """The stage engines are timed on: the first that reads no image (a trunk block), else the first."""
    return next((s for s in stages if IMAGE not in s.inputs), stages[0])


def engine_speed(name: str, net: Network, device: torch.device, precision: str) -> tuple[float, float]:
    """Engine ``name``'s rate over eager's on ``net``'s trunk stage (one block: :func:`trunk_stage`) on
    a streaming strip's window, and the seconds building a stage takes per weight, from building that
    one from nothing: measured once per machine, engine version, precision, threads and network
    structure, and kept in the cache folder (``machine.json``, as :func:`measured_speeds`)."""
    import hashlib

    from .engines import entry

    stages = net.stages(1)
    stage = trunk_stage(stages)
    engine = entry(name).load()
    shape = hashlib.sha256(f"{type(net).__qualname__}/{stage.module!r}".encode()).hexdigest()[:12]
    key = "/".join(map(str, ("engine", name, engine.version(), precision, os.cpu_count(), torch.get_num_threads(),
                             shape)))

    def measure() -> tuple[float, float]:
        from .engines.compiled import keeping_locale

        with keeping_locale():
            return _time_engine(engine, stage, stages, net.in_channels * net.input_factor**2, precision)

    speedup, per_weight = remembered(key, 2, measure)
    return float(speedup), float(per_weight)


def _time_engine(engine: object, stage: Stage, stages: Sequence[Stage], image_channels: int,
                 precision: str) -> tuple[float, float]:
    """Build ``stage`` with ``engine`` from nothing (timed, per weight), then time it and eager
    alternately, the best of three each."""
    from .engines.compiled import EVENTS, stage_digest

    counted = EVENTS.copy()  # a measurement is not a job's build
    channels = {IMAGE: image_channels, **{s.name: s.channels for s in stages}}
    inputs_channels = [channels[n] for n in stage.inputs]
    weights = max(1, sum(p.numel() for p in stage.module.parameters()))
    digest = stage_digest(stage.module, inputs_channels)
    with tempfile.TemporaryDirectory() as scratch:
        for attempt in ("first", "timed"):  # the first pays for importing and starting the engine
            start = time.perf_counter()
            run = engine.build(stage.module, inputs_channels, precision, torch.get_num_threads(),  # type: ignore[attr-defined]
                               Path(scratch) / attempt, digest)
            built = time.perf_counter() - start
        rows, cols = SPEED_WINDOW
        inputs = [torch.rand(1, c, rows + 2 * stage.halo, cols + 2 * stage.halo) for c in inputs_channels]
        eager, compiled = [], []
        with torch.inference_mode():
            run(*inputs)
            for _ in range(3):
                start = time.perf_counter()
                stage.module(*inputs)
                eager.append(time.perf_counter() - start)
                start = time.perf_counter()
                run(*inputs)
                compiled.append(time.perf_counter() - start)
    EVENTS.clear()
    EVENTS.update(counted)
    return min(eager) / min(compiled), built / weights


KNOWN_PRICED = 4
"""Plans of each executor (the fastest) priced again for the output known without the network."""
MAX_PRICED_CHUNKS = 20_000
"""Staged plans of more chunks than this are not priced for known output (their chunk-by-chunk
bookkeeping costs more than it tells): they are taken as computing everything."""


def computed_share(plan: Plan, stages: Sequence[Stage], known: Known, source: Source, input_factor: int) -> float:
    """The share of ``plan``'s work (its stages ``stages``) still computed where ``known`` (cells over
    ``source``) is written instead: a streamed tile's columns and the rows its data's reach needs,
    or the staged executor's chunks that some later chunk needs."""
    from .executors.staged import needed_chunks
    from .executors.stream import data_tiles, needed_rows, tiles
    from .task import Job

    if known.computed_share == 1.0 or plan.chunk % known.cell:
        return 1.0
    job = Job(source, stages, plan.chunk, None, None, input_factor=input_factor,  # type: ignore[arg-type]
              tile_rows=plan.tile_rows, known=known)
    if plan.executor != "stream":
        if len(job.grid(0)) > MAX_PRICED_CHUNKS:
            return 1.0
        needed = needed_chunks(job)
        grid = job.grid(0)
        area = {key: grid.box(*key).shape[0] * grid.box(*key).shape[1] for key in grid.indices()}
        return sum(area[key] for stage in needed for key in stage) / (len(needed) * sum(area.values()))
    every = {(t.i, t.j): t for t in tiles(job)}
    computed = total = 0
    for key, part in data_tiles(job, every).items():
        tile = every[key]
        total += (tile.y1 - tile.y0) * (tile.x1 - tile.x0)
        if part is not None:
            spans = needed_rows(stages, part.rows)[stages[0].inputs[0]]
            rows = sum(max(0, min(tile.y1, hi) - max(tile.y0, lo)) for lo, hi in spans)
            computed += rows * (part.tile.x1 - part.tile.x0)
    return computed / total if total else 1.0


def priced_with_known(best: Plan, plans: list[Plan], net: Network, source: Source, known: Known,
                      options: UpscaleOptions, budget: int) -> Plan:
    """The plan to run where ``known`` output is written instead of computed: ``best`` or, among the
    fastest plans of each executor and the fastest of each chunk size, one predicted more than ``NEAR``
    faster once each computes only its share; its prediction scaled by its share. ``compute_all`` runs the same plan, and so the same engine,
    over every pixel, so that its output can be compared bit for bit."""
    candidates = [best]
    for name in dict.fromkeys(p.executor for p in plans):
        mine = [p for p in plans if p.executor == name]
        fastest_per_chunk = {p.chunk: p for p in reversed(mine)}  # smaller chunks leave more out
        candidates += [p for p in dict.fromkeys([*mine[:KNOWN_PRICED], *fastest_per_chunk.values()])
                       if p is not best]

    def priced(plan: Plan) -> Plan:
        stages = executor_named(plan.executor).stages(net, plan, options.mode, options.tile_pad)
        share = computed_share(plan, stages, known, source, net.input_factor)
        return replace(plan, seconds=plan.seconds * share, compute_seconds=plan.compute_seconds * share,
                       io_seconds=plan.io_seconds * share)

    chosen = priced(best)
    for plan in candidates[1:]:
        if plan.peak_memory <= max(budget, best.peak_memory) and plan.seconds * 0.1 < chosen.seconds:
            other = priced(plan)
            if other.seconds < chosen.seconds * (1 - NEAR):
                chosen = other
    return chosen


def known_work(known: Known) -> tuple[float, float]:
    """(share of the input's cells that hold no data, share known as one colour)."""
    from .known import NODATA

    return float((known.fills == NODATA).mean()), float((known.fills >= 0).mean())
