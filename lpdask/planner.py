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
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .device import ieee_fp32, storage_dtype
from .errors import PlanWarning
from .models.checkpoint import cache_dir
from .models.network import Network
from .executors.staged import whole_stages
from .chunks import tile_rows_step
from .geometry import bands, ceil_div, factors, reach, unshuffled
from .plan import GPU_CHUNKS, MAX_CHUNK, MIN_CHUNK, Plan
from .stages import IMAGE, Stage

CHUNKS = (64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)
DEFAULT_GROUPINGS = (1,)
"""``blocks_per_stage`` values tried for a network that does not say its own (``groupings()``)."""
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
PROCESS_MEMORY = 800 * 2**20
"""What a CPU run holds besides its windows and the model: 0.54 GiB resident once torch, Zarr, Dask
and tifffile are imported, and 0.15-0.23 GiB the allocator keeps between chunks even when trimmed
(measured: 2-block RRDBNet x4 at 768^2 and 1536^2, chunks of 192 and 256, one and two at once)."""
GPU_ALLOWANCE = 300 * 2**20
"""GPU memory beyond the windows and the model. Measured on an H200 (x4plus, 1024^2 and 2048^2):
torch's peak reserved memory was 0.68-0.99x the prediction with expandable segments (which the CLI
asks for) or one chunk at a time, but up to 2.2x with the default allocator and chunks of varying
size; the peak allocated memory was 0.58-0.91x."""
TASK_SECONDS = 0.02
"""Fixed cost of one chunk task (scheduling, opening arrays, torch dispatch), measured roughly on
the smallest chunks."""


@dataclass(frozen=True)
class StageCost:
    """A stage's costs per pixel of its input grid."""

    name: str
    halo: int
    scale: int
    macs: float
    """Multiply-adds per input pixel."""
    memory: float
    """Working bytes per window pixel while it runs (inputs, the largest convolution's input and
    output, its own output)."""
    written: float
    """Bytes it stores per input pixel (float32 activations, float16 in fp16 runs); 0 for the last stage."""
    read: float
    """Bytes it reads per window pixel."""


@dataclass(frozen=True)
class Machine:
    """Measured speeds of the device and the work folder's disk."""

    macs_per_core: float
    cores: int
    parallel_efficiency: float
    """Throughput of all cores on one chunk, over cores x one core's (torch's intra-op scaling)."""
    write_bytes_per_s: float
    read_bytes_per_s: float
    memory_budget: int
    device_type: str = "cpu"


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
    path = cache_dir() / "machine.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known.get(key), list) or len(known[key]) != 5:
        known[key] = list(_measure(device, disk))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f"machine.{os.getpid()}.json")
            partial.write_text(json.dumps(known, indent=1))
            os.replace(partial, path)
        except OSError:
            pass  # a read-only cache folder: measure again next time
    one, cores, efficiency, write, read = known[key]
    return one, int(cores), efficiency, write, read


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


def estimate(costs: Sequence[StageCost], height: int, width: int, chunk: int, machine: Machine, *,
             blocks_per_stage: int, storage: str, input_factor: int = 1, model_bytes: int = 0,
             workers: int | None = None, inner: int = 0) -> Plan:
    """Predict the cost of running ``costs`` (the stages of one grouping) on a ``height`` x ``width``
    image in chunks of ``chunk``. ``inner`` is the work arrays' read granularity (0: whole chunks)."""
    d = input_factor
    rows, cols = unshuffled(height, width, d)
    grid = chunk // d
    n_rows, n_cols = ceil_div(rows, grid), ceil_div(cols, grid)
    n = n_rows * n_cols
    gpu = machine.device_type == "cuda"
    workers = workers or min(GPU_CHUNKS if gpu else machine.cores, n)
    macs = whole = written = read = asked = 0.0
    largest_window = 0.0
    for stage, factor in zip(costs, factors(costs)):
        h, w, c = rows * factor, cols * factor, grid * factor
        row_extent = _extent_sum(h, c, stage.halo)
        col_extent = _extent_sum(w, c, stage.halo)
        macs += stage.macs * row_extent * col_extent
        whole += stage.macs * h * w
        written += stage.written * h * w
        if stage is not costs[0]:
            asked += stage.read * row_extent * col_extent
            granule = inner * factor if inner else c
            read += stage.read * _extent_sum(h, c, stage.halo, granule) * _extent_sum(w, c, stage.halo, granule)
        largest_window = max(largest_window, stage.memory * min(h, c + 2 * stage.halo) * min(w, c + 2 * stage.halo))
    threads = max(1, machine.cores // workers)
    speed = machine.macs_per_core * workers * threads * (machine.parallel_efficiency if threads > 1 else 1.0)
    imbalance = math.ceil(n / workers) * workers / n
    if gpu:  # chunks in flight share one GPU: they overlap I/O, not compute
        speed, imbalance = machine.macs_per_core, 1.0
    compute = macs / speed * imbalance + TASK_SECONDS * n * len(costs) / workers
    io = written / machine.write_bytes_per_s + read / machine.read_bytes_per_s
    peak = int(workers * largest_window + model_bytes * (2 if storage == "memory" else 1)
               + (GPU_ALLOWANCE if gpu else PROCESS_MEMORY))
    stored = sorted(stage.written * rows * f * cols * f for stage, f in zip(costs, factors(costs)))
    return Plan(chunk, blocks_per_stage, storage, workers, stages=len(costs), chunks=n, seconds=compute + io,  # type: ignore[arg-type]
                compute_seconds=compute, io_seconds=io, compute_overhead=macs / whole if whole else 1.0,
                bytes_written=int(written), peak_memory=peak, read_amplification=read / asked if asked else 1.0,
                scratch_bytes=int(sum(stored[-3:])))


STRIPS = (16, 32, 64, 128, 256, 512)
"""Strip heights (input pixels) streaming plans try."""
STEP_SECONDS = 0.002
"""Fixed cost of one stage strip when streaming (torch dispatch, slicing, concatenating rows)."""
HELD_RETAINED = 1.4
"""A streamed tile's resident memory over the bytes its buffers and largest window hold at once: a
buffer that grows is allocated while the old one is still held, and the old one's block stays in
the heap, too small for the next growth, until the tile ends (glibc's heap is trimmed between tiles
only). Measured (16-feature 1-block RRDBNet x4, 2 tiles at once, peak RSS over the prediction
without it): 768 px tiles in 256-row strips on 2048^2, 1.31x; 192 px tiles in 512-row strips on
1024^2 / 2048^2 / 4096^2, 0.93-1.04x / 0.99-1.01x / 1.15x (the fixed process memory weighs more
there): 1.4 keeps both within 15%."""
DRY_ROWS = 2048
"""Streaming schedules are simulated on at most this many rows (on the stages' grid) and
extrapolated: past the network's reach, every further strip costs the same."""


@dataclass(frozen=True)
class _Rows:
    """A dry run of a tile's row schedule: each stage's window rows in all, and the rows of every
    array's buffer at each step."""

    names: list[str]
    held: np.ndarray
    """(steps, arrays) rows each array's buffer has room for (the streaming executor's ``_Held``,
    grown to :func:`~lpdask.executors.stream.room_for` the rows it must hold)."""
    window_rows: np.ndarray
    """Per stage: the rows of all its windows, over the dry run's rows."""
    largest_window: np.ndarray
    """Per stage: its tallest window."""
    steps: int
    rows: int


@lru_cache(maxsize=64)
def _dry_run(stages: tuple[Stage, ...], rows: int, strip: int) -> _Rows:
    from .executors.stream import Drop, Read, heights, room_for, schedule

    names = list(heights(stages, rows))
    index = {name: k for k, name in enumerate(names)}
    done, first = np.zeros(len(names), np.int64), np.zeros(len(names), np.int64)
    room = np.zeros(len(names), np.int64)
    held, window_rows, tallest, steps = [], np.zeros(len(stages)), np.zeros(len(stages)), 0
    for step in schedule(stages, rows, strip):
        if isinstance(step, Read):
            done[index[IMAGE]] = step.stop
        elif isinstance(step, Drop):
            first[index[step.name]] = step.row
        else:
            stage = stages[step.index]
            size = step.window_stop - step.window_start
            window_rows[step.index] += size
            tallest[step.index] = max(tallest[step.index], size)
            if step.index < len(stages) - 1:  # the last stage's rows go to the output
                done[index[stage.name]] = step.stop * stage.scale
            steps += 1
        now = done - first
        room = np.where(now > room, [room_for(int(r)) for r in now], np.where(now > 0, room, 0))
        held.append(room)
    return _Rows(names, np.array(held), window_rows, tallest, steps, rows)


def estimate_stream(costs: Sequence[StageCost], stages: Sequence[Stage], height: int, width: int, tile: int,
                    strip: int, machine: Machine, *, blocks_per_stage: int, image_channels: int,
                    input_factor: int = 1, model_bytes: int = 0, workers: int | None = None,
                    itemsize: int = 4, tile_rows: int = 0) -> Plan:
    """Predict the cost of streaming ``stages`` (profiled as ``costs``) over a ``height`` x ``width``
    image in tiles ``tile`` wide and ``tile_rows`` high (0: the image's height) and strips ``strip``
    high (input pixels)."""
    from .executors.stream import reach_span

    d = input_factor
    rows, cols = unshuffled(height, width, d)
    width_d, strip_d = tile // d, max(1, strip // d)
    tiles = bands(cols, width_d)
    row_bands = bands(rows, tile_rows // d or rows)
    dry = _dry_run(tuple(stages), min(rows, DRY_ROWS), strip_d)
    stretch = rows / dry.rows
    computed = np.zeros(len(stages))  # each stage's input rows computed over all row bands
    for (y0, y1), weight in _sampled(row_bands):
        outputs = reach_span(stages, rows, y0, y1).outputs
        computed += [weight * (b - a) / stage.scale for stage, (a, b) in zip(stages, outputs)]
    repeat = computed / np.array([rows * f for f in factors(stages)[:-1]])  # > 1 by the cuts' repeated reach
    tasks = len(tiles) * len(row_bands)
    gpu = machine.device_type == "cuda"
    workers = workers or (1 if gpu else min(machine.cores, tasks))
    channels = {IMAGE: image_channels, **{stage.name: stage.channels for stage in stages}}
    macs = whole = 0.0
    peak_tile = 0.0
    for (x0, x1), weight in _sampled(tiles):
        columns = reach_span(stages, cols, x0, x1)
        widths = np.array([(columns.arrays[n][1] - columns.arrays[n][0]) * channels[n] for n in dry.names])
        working = max(cost.memory * tall * (w1 - w0)
                      for cost, tall, (w0, w1) in zip(costs, dry.largest_window, columns.windows))
        peak_tile = max(peak_tile, float((dry.held @ widths).max()) * itemsize + working)
        for cost, window_rows, again, (w0, w1) in zip(costs, dry.window_rows, repeat, columns.windows):
            macs += weight * cost.macs * window_rows * stretch * again * (w1 - w0)
    for cost, f in zip(costs, factors(costs)):
        whole += cost.macs * rows * f * cols * f
    threads = max(1, machine.cores // workers)
    speed = machine.macs_per_core * workers * threads * (machine.parallel_efficiency if threads > 1 else 1.0)
    imbalance = math.ceil(tasks / workers) * workers / tasks
    if gpu:
        speed, imbalance = machine.macs_per_core, 1.0
    compute = macs / speed * imbalance + STEP_SECONDS * dry.steps * stretch * float(repeat.mean()) * tasks / workers
    retained = 1.0 if gpu else HELD_RETAINED  # torch's caching allocator reuses blocks of any size
    peak = int(workers * peak_tile * retained + model_bytes + (GPU_ALLOWANCE if gpu else PROCESS_MEMORY))
    return Plan(tile, blocks_per_stage, "stream", workers, strip, tile_rows, stages=len(costs), chunks=tasks,
                seconds=compute, compute_seconds=compute, compute_overhead=macs / whole if whole else 1.0,
                peak_memory=peak)


def _sampled(spans: list[tuple[int, int]]) -> list[tuple[tuple[int, int], int]]:
    """The first, second and last of ``spans`` (all of them, if three or fewer), each with how many
    it stands for: the inner ones are alike."""
    if len(spans) <= 3:
        return [(span, 1) for span in spans]
    return [(spans[0], 1), (spans[1], len(spans) - 2), (spans[-1], 1)]


def _extent_sum(length: int, chunk: int, halo: int, granule: int = 1) -> float:
    """Sum over the chunks along one axis of their window's extent (chunk plus halo, clipped at the
    border), rounded out to whole ``granule``s where reads fetch whole store chunks."""
    starts = np.arange(0, length, chunk)
    lo, hi = np.maximum(0, starts - halo), np.minimum(length, starts + chunk + halo)
    if granule > 1:
        lo, hi = lo // granule * granule, np.minimum(length, (hi + granule - 1) // granule * granule)
    return float((hi - lo).sum())


STORAGES = ("zarr", "memory", "stream")
STREAM_GROUPINGS = 2
"""How many of a network's finest groupings streaming plans try."""
TILES = (*CHUNKS, 6144, 8192)
"""Tile widths streaming plans try."""
TILE_SECONDS = 900.0
"""Streaming tiles predicted to take longer than this are cut in height, so that a kill, a lost
worker or Ctrl-C loses less work..."""
BAND_REACHES = 16
"""...into bands no shorter than this many times the network's reach (each cut repeats about one
reach of rows of compute, half on either side: about 1/16 more)."""


def choose(net: Network, height: int, width: int, device: torch.device, *, chunk: int | None = None,
           blocks_per_stage: int | None = None, workers: int | None = None, work: str | None = None,
           memory_budget: int | None = None, inner: int = 0, storages: Sequence[str] = STORAGES,
           strip: int | None = None, scratch: int | None = None,
           tile_rows: int | None = None) -> tuple[Plan, list[Plan]]:
    """The plan to use, and every plan considered for this image (fastest first). ``chunk`` /
    ``blocks_per_stage`` / ``strip`` / ``tile_rows`` fix that part of the plan, ``storages`` the executors weighed
    (:data:`lpdask.plan.EXECUTOR_STORAGE`). Staged plans whose activations need more than ``scratch``
    bytes (the work folder's free space; None: not checked) are left out while any other plan is left.

    The chunk (tile), grouping, strip and chunks at once are picked for an image of ``REFERENCE`` px a
    side (the fastest that fits the budget, or the least memory among those within ``NEAR`` of it),
    then used on this one; an image that fits in one such chunk may instead run the whole network as
    one stage if that is faster and needs no more memory. So a larger image never takes more memory.
    A streaming plan's tiles are then cut in height (:func:`_cut_in_height`) where that keeps more
    workers busy or a tile would take longer than ``TILE_SECONDS``."""
    machine = measure_machine(device.type, work, memory_budget)
    model_bytes = sum(p.numel() * p.element_size() for p in net.parameters())  # type: ignore[attr-defined]
    image_channels = net.in_channels * net.input_factor**2
    itemsize = next((p.element_size() for p in net.parameters()), 4)  # type: ignore[attr-defined]
    d = net.input_factor
    groupings: list[tuple[int, str, list[Stage]]] = []
    tried = getattr(net, "groupings", lambda: DEFAULT_GROUPINGS)()
    for storage in ("zarr", "stream"):
        if storage not in storages:
            continue
        seen = set()
        # streaming pays each stage's halo again per strip: only the finest cuts are worth pricing
        cuts = tried if storage == "zarr" else tried[:STREAM_GROUPINGS]
        for k in ([] if blocks_per_stage == 0 else [blocks_per_stage] if blocks_per_stage else cuts):
            stages = net.stages(k)
            if len(stages) not in seen:
                seen.add(len(stages))
                groupings.append((k, storage, stages))
    if "memory" in storages and not blocks_per_stage:
        groupings.append((0, "memory", whole_stages(net)))
    profiles: dict[int, list[StageCost]] = {}
    profiled = [(k, storage, stages, profiles.get(k) or profiles.setdefault(k, profile(stages, image_channels, device)))
                for k, storage, stages in groupings]

    tiles = [c for c in TILES if not tile_rows or tile_rows % tile_rows_step(c, net.scale, d) == 0] or TILES

    def sizes(side: int, tried: Sequence[int] = CHUNKS) -> list[int]:
        if chunk:
            return [chunk]
        options = [c for c in tried if MIN_CHUNK <= c <= MAX_CHUNK and c % d == 0]
        return [c for c in options if c < side or c == min(x for x in options if x >= min(side, options[-1]))]

    def strips(h: int) -> list[int]:
        return [strip] if strip else [x for x in STRIPS if x % d == 0 and x < h] or [STRIPS[0]]

    def plans_for(h: int, w: int) -> list[Plan]:
        plans = []
        for k, storage, stages, costs in profiled:
            if storage == "stream":
                at_once = [workers] if workers else range(1, (1 if machine.device_type == "cuda" else machine.cores) + 1)
                plans += [estimate_stream(costs, stages, h, w, c, x, machine, blocks_per_stage=k,
                                          image_channels=image_channels, input_factor=d, model_bytes=model_bytes,
                                          workers=n, itemsize=itemsize, tile_rows=tile_rows or 0)
                          for c in sizes(w, tiles) for x in strips(h) for n in at_once]
            else:
                plans += [estimate(costs, h, w, c, machine, blocks_per_stage=k, storage=storage, input_factor=d,
                                   model_bytes=model_bytes, workers=workers, inner=inner)
                          for c in sizes(max(h, w))]
        return sorted(plans, key=lambda e: (e.seconds, e.peak_memory))

    plans = plans_for(height, width)
    feasible = plans
    if scratch is not None and any(e.scratch_bytes <= scratch for e in plans):
        feasible = [e for e in plans if e.scratch_bytes <= scratch]
    kinds = {(e.storage, e.blocks_per_stage) for e in feasible}
    large = plans if (height, width) == (REFERENCE, REFERENCE) else plans_for(REFERENCE, REFERENCE)
    reference = _pick([e for e in large if (e.storage, e.blocks_per_stage) in kinds], machine.memory_budget)

    def fitted(e: Plan) -> tuple[object, ...]:
        """``e``'s shape cut to this image, which may be smaller than its chunk (tile) or strip."""
        here = sizes(width, tiles) if e.storage == "stream" else sizes(max(height, width))
        rows = strips(height) if e.storage == "stream" else [0]
        return (e.chunk if e.chunk in here else here[-1], e.blocks_per_stage, e.storage,
                e.strip if e.strip in rows else rows[-1], e.workers)

    same = [e for e in feasible if _shape(e)[:4] == fitted(reference)[:4]]
    best = min((e for e in same if e.workers <= reference.workers), key=lambda e: e.seconds, default=same[0])
    if best.storage == "stream":  # taller strips or fewer tiles at once, where they need no more memory
        best = min((e for e in feasible if _shape(e)[:3] == _shape(best)[:3] and e.peak_memory <= reference.peak_memory),
                   key=lambda e: e.seconds, default=best)
    if max(height, width) <= reference.chunk:
        whole = [e for e in feasible if e.storage == "memory" and _shape(e) == fitted(e)
                 and e.seconds < best.seconds and e.peak_memory <= reference.peak_memory]
        best = whole[0] if whole else best
    if best.peak_memory > machine.memory_budget and any(e.peak_memory <= machine.memory_budget for e in feasible):
        best = _pick(feasible, machine.memory_budget)  # the reference's shape needs more here (larger halos)
    if best.storage == "stream" and tile_rows is None:
        k, _, stages, costs = next(p for p in profiled if p[:2] == (best.blocks_per_stage, "stream"))
        best = _cut_in_height(best, partial(estimate_stream, costs, stages, height, width, best.chunk,
                                            machine=machine, blocks_per_stage=k, image_channels=image_channels,
                                            input_factor=d, model_bytes=model_bytes, itemsize=itemsize),
                              height, tile_rows_step(best.chunk, net.scale, d), reach(stages) * d, machine,
                              max(best.peak_memory, reference.peak_memory), strips(height), fixed_workers=workers)
    if best.peak_memory > machine.memory_budget:
        warnings.warn(f"no plan fits the memory budget of {machine.memory_budget / 2**30:.2f} GiB; using the one "
                      f"needing the least, predicted {best.peak_memory / 2**30:.2f} GiB (chunk {best.chunk})",
                      PlanWarning, stacklevel=2)
    return best, plans


def _cut_in_height(plan: Plan, price: Callable[..., Plan], height: int, step: int, reach_px: int, machine: Machine,
                   memory: int, strips: Sequence[int], fixed_workers: int | None) -> Plan:
    """``plan`` (streaming, full-height tiles) with its tiles cut in height where that helps: into
    as many bands as keep more of a CPU's cores (or the ``fixed_workers`` asked for) on tiles of
    their own, when that is predicted faster within ``memory`` (the plan picked for a large image
    needs no less: a smaller image never takes more; one tile on several threads runs at torch's
    lower parallel efficiency); then into bands of at most about ``TILE_SECONDS``
    each, no shorter than ``BAND_REACHES`` reaches, when a tile would take longer.
    ``price(strip=, workers=, tile_rows=)`` estimates a variant (with any of ``strips`` for more
    bands at once); band heights are multiples of ``step``."""

    best = plan
    if machine.device_type != "cuda":
        for n in [fixed_workers] if fixed_workers else range(plan.chunks + 1, machine.cores + 1):
            rows = ceil_div(ceil_div(height, ceil_div(n, plan.chunks)), step) * step  # that many bands or fewer
            if rows < height:
                for strip in strips:
                    e = price(strip=strip, workers=n, tile_rows=rows)
                    if e.seconds < best.seconds and e.peak_memory <= memory:
                        best = e
    at_once = 1 if machine.device_type == "cuda" else best.workers
    per_tile = best.seconds * at_once / best.chunks
    current = best.tile_rows or height
    if per_tile > TILE_SECONDS:
        shortest = ceil_div(BAND_REACHES * reach_px, step) * step
        rows = max(int(current * TILE_SECONDS / per_tile) // step * step, shortest)
        if rows < current:
            best = price(strip=best.strip, workers=best.workers, tile_rows=rows)
    return best


def _shape(plan: Plan) -> tuple[object, ...]:
    """What a plan is, apart from the image it was priced for: the size of one chunk (tile) and of
    its strips, the grouping, the executor and the chunks at once."""
    return plan.chunk, plan.blocks_per_stage, plan.storage, plan.strip, plan.workers


def _pick(plans: list[Plan], budget: int) -> Plan:
    """The least memory among the plans within NEAR of the fastest that fits; if none fits, the
    least memory of all."""
    fitting = [e for e in plans if e.peak_memory <= budget]
    if not fitting:
        return min(plans, key=lambda e: (e.peak_memory, e.seconds))
    near = [e for e in fitting if e.seconds <= fitting[0].seconds * (1 + NEAR)]
    return min(near, key=lambda e: (e.peak_memory, e.seconds))
