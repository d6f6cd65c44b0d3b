"""The staged executor: the network as a chain of stages, each run chunk by chunk over the whole
image, activations passed between stages through the work folder.

The whole network as one stage (its halo the full reach, nothing stored between stages) and
Real-ESRGAN's tile mode (the whole network on each tile plus ``tile_pad`` pixels of context, the
baseline whose too-small halo makes the seams lpdask removes) are this executor with other stage
lists: :func:`stages_for`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import Literal

import numpy as np
from torch import Tensor, nn

from ..chunks import Box, Grid
from ..device import storage_dtype
from ..errors import LpdaskError, writing
from ..costs import TASK_SECONDS, Pricing, Space, StageCost
from ..geometry import activation_bytes, ceil_div, dilated, extent_sum, factors, reach, unshuffled
from ..options import check_tile_pad
from ..models.network import Network
from ..options import DEFAULT_TILE_PAD
from ..plan import GPU_CHUNKS, Plan
from ..schedulers import Scheduler
from ..stages import IMAGE, Stage, validate
from ..task import Job, run_chunk_of
from . import Progress

Mode = Literal["exact", "tile"]


def stages_for(net: Network, mode: Mode, blocks_per_stage: int, tile_pad: int) -> list[Stage]:
    """The exact staged network, or Real-ESRGAN's tile mode for comparison."""
    if mode == "exact":
        stages = net.stages(blocks_per_stage)
    elif mode == "tile":
        stages = tile_stages(net, check_tile_pad(tile_pad))
    else:
        raise LpdaskError(f"unknown mode {mode!r} (use exact or tile)")
    validate(stages)
    return stages


class _WholeNetwork(nn.Module):
    def __init__(self, net: Network) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net.forward_unshuffled(x)


def tile_stages(net: Network, tile_pad: int = DEFAULT_TILE_PAD) -> list[Stage]:
    """One stage: the whole network with ``tile_pad`` of context (on the unshuffled grid)."""
    scale = net.scale * net.input_factor
    return [Stage("tiles", _WholeNetwork(net), tile_pad, scale, (IMAGE,), net.out_channels)]


def whole_stages(net: Network) -> list[Stage]:
    """The whole network as one exact stage: its halo is the network's full reach, so nothing is
    stored between stages (the planner's "memory" storage)."""
    full = reach(net.stages(1))
    stage = tile_stages(net, full)[0]
    return [Stage("whole", stage.module, full, stage.scale, stage.inputs, stage.channels)]


def last_use(stages: Sequence[Stage]) -> dict[int, list[str]]:
    """For each stage index, the arrays no later stage reads (safe to delete after it)."""
    last: dict[str, int] = {}
    for index, stage in enumerate(stages):
        for name in stage.inputs:
            last[name] = index
    done: dict[int, list[str]] = {}
    for name, index in last.items():
        if name != IMAGE:
            done.setdefault(index, []).append(name)
    return done


class Staged:
    """Every stage in order over the whole image, the activations in the work folder."""

    name = "staged"
    unit = "chunk"

    def stages(self, net: Network, plan: Plan, mode: str, tile_pad: int) -> list[Stage]:
        return stages_for(net, mode, plan.blocks_per_stage, tile_pad)  # type: ignore[arg-type]

    def scratch_bytes(self, stages: list[Stage], height: int, width: int, input_factor: int, itemsize: int) -> int:
        """The three largest activations: no more are ever kept at once."""
        return sum(sorted(activation_bytes(stages, height, width, input_factor, itemsize))[-3:])

    def fits(self, stages: list[Stage], chunk: int, rows: int, cols: int) -> bool:
        return True  # a window is clipped at the image border, whatever its halo

    def priced_stages(self, net: Network, blocks_per_stage: int | None) -> list[tuple[int, list[Stage]]]:
        return groupings(net, net.groupings(), blocks_per_stage)

    def candidates(self, blocks_per_stage: int, stages: list[Stage], costs: Sequence[StageCost], pricing: Pricing,
                   space: Space) -> list[Plan]:
        return [estimate(costs, pricing, Plan(c, blocks_per_stage, self.name, space.workers)) for c in space.chunks]

    def tasks(self, job: Job) -> int:
        return len(job.grid(0))

    def levels_written(self, job: Job) -> int:
        return 1

    def run(self, job: Job, scheduler: Scheduler, progress: Progress | None = None) -> int:
        return run_job(job, scheduler, progress)


def groupings(net: Network, cuts: Sequence[int], blocks_per_stage: int | None) -> list[tuple[int, list[Stage]]]:
    """(grouping, stages) for each of ``cuts`` (or the ``blocks_per_stage`` fixed; none for 0, the
    whole network's) that gives a stage list of its own length."""
    chosen = [] if blocks_per_stage == 0 else [blocks_per_stage] if blocks_per_stage else list(cuts)
    seen: set[int] = set()
    found = []
    for k in chosen:
        stages = net.stages(k)
        if len(stages) not in seen:
            seen.add(len(stages))
            found.append((k, stages))
    return found


def run_job(job: Job, scheduler: Scheduler, progress: Progress | None = None) -> int:
    """Run every stage in order, skipping chunks (and whole stages) already done; the work arrays
    a stage was last to read are removed after it. Returns the number of chunks computed.

    ``progress(index, stage, chunks)`` returns a callable invoked once per finished chunk.
    """
    deletable = last_use(job.stages)
    needed = needed_chunks(job) if job.known is not None else None
    computed = 0
    for index, stage in enumerate(job.stages):
        grid = job.grid(index)
        tick = progress(index, stage, len(grid)) if progress else (lambda: None)
        if job.work.stage_done(job.run, stage.name):
            done = set(grid.indices())
        else:
            if index < len(job.stages) - 1:
                out = Grid(grid.height * stage.scale, grid.width * stage.scale, grid.chunk * stage.scale)
                with writing(job.work.path):
                    job.work.create(stage.name, stage.channels, out.height, out.width, out.chunk,
                                    str(storage_dtype(job.precision)).removeprefix("torch."))
            done = job.work.chunks_done(job.run, stage.name)
        for _ in done:
            tick()
        todo = [(i, j) for i, j in grid.indices() if (i, j) not in done]
        if needed is not None:
            _skip(job, index, [key for key in todo if key not in needed[index]], tick)
            todo = [key for key in todo if key in needed[index]]
        if todo:
            light = replace(job, stages=())  # a cluster gets the stages once, not with every task
            scheduler.run(f"{stage.name}-r{job.run}", partial(run_chunk_of, replace(light, known=None), index),
                          job.stages, todo,
                          lambda chunk: tick(), job.torch_threads)
            computed += len(todo)
        if needed is not None and index == len(job.stages) - 1 and not job.work.stage_done(job.run, stage.name):
            _paint_known(job, sorted(needed[index]))  # every computed chunk, before the stage is marked: resumable
        with writing(job.work.path):
            job.work.mark_stage(job.run, stage.name)
            for name in deletable.get(index, []):
                job.work.remove(name)
    return computed



def needed_chunks(job: Job) -> list[set[tuple[int, int]]]:
    """The chunks each stage must compute: those holding a cell (:mod:`lpdask.known`) whose output at
    that stage some cell to compute needs, followed back from the last stage through each stage's
    halo in cells (chunk (i, j) covers the same part of the image at every stage). A chunk computes all
    its cells; those no later cell needs may read uncomputed neighbours and come out wrong, which
    nothing reads: the last stage's are written over with what is known (:func:`_paint_known`)."""
    assert job.known is not None
    known = job.known
    cell, d = known.cell, job.input_factor
    per_chunk = job.chunk // cell
    f = factors(job.stages)
    need: dict[str, np.ndarray] = {job.stages[-1].name: known.compute()}
    producer = {stage.name: k for k, stage in enumerate(job.stages)}
    needed: list[set[tuple[int, int]]] = [set() for _ in job.stages]
    for index in range(len(job.stages) - 1, -1, -1):
        stage = job.stages[index]
        cells = need.pop(stage.name)
        rows, cols = ceil_div(cells.shape[0], per_chunk), ceil_div(cells.shape[1], per_chunk)
        padded = np.zeros((rows * per_chunk, cols * per_chunk), bool)
        padded[: cells.shape[0], : cells.shape[1]] = cells
        chunks = padded.reshape(rows, per_chunk, cols, per_chunk).any(axis=(1, 3))
        needed[index] = {(int(i), int(j)) for i, j in zip(*np.nonzero(chunks))}
        grown = dilated(cells, ceil_div(math.ceil(stage.halo * d / f[index]), cell))
        for name in stage.inputs:
            if name != IMAGE:
                need[name] = need[name] | grown if name in need else grown
        assert all(producer[name] < index for name in need)
    return needed


def _paint_known(job: Job, chunks: Sequence[tuple[int, int]]) -> None:
    """Write what is known over the cells of the last stage's computed ``chunks`` that are not to be
    computed (they may have read neighbours no cell needed, left uncomputed)."""
    assert job.known is not None
    grid, d = job.grid(0), job.input_factor
    height, width = job.source.height, job.source.width
    scale = job.sink.level0.shape[-1] // width
    with writing(job.sink.path):
        for i, j in chunks:
            box = grid.box(i, j).scaled(d)
            job.known.write(job.pixels, Box(box.y0, min(box.y1, height), box.x0, min(box.x1, width)), scale,
                            computed=True)


def _skip(job: Job, index: int, chunks: Sequence[tuple[int, int]], tick: Callable[[], None]) -> None:
    """Leave ``chunks`` of stage ``index`` uncomputed (no later chunk reads them); the last stage's
    output there is known without the network, and written."""
    if index == len(job.stages) - 1 and chunks:
        assert job.known is not None
        grid = job.grid(0)
        height, width, d = job.source.height, job.source.width, job.input_factor
        scale = job.sink.level0.shape[-1] // width
        with writing(job.sink.path):
            for i, j in chunks:
                box = grid.box(i, j).scaled(d)
                job.known.write(job.pixels, Box(box.y0, min(box.y1, height), box.x0, min(box.x1, width)), scale)
        with writing(job.work.path):
            for i, j in chunks:
                job.work.mark_chunk(job.run, job.stages[index].name, i, j)
    for _ in chunks:
        tick()


def estimate(costs: Sequence[StageCost], pricing: Pricing, plan: Plan) -> Plan:
    """``plan`` (its chunk, grouping, executor and workers, 0: one per core or two per GPU) with the
    predicted cost of running ``costs`` (the stages of its grouping) over the image chunk by chunk,
    the activations between stages through the work folder (none for the whole network as one stage)."""
    machine, d, chunk = pricing.machine, pricing.input_factor, plan.chunk
    rows, cols = unshuffled(pricing.height, pricing.width, d)
    grid = chunk // d
    n_rows, n_cols = ceil_div(rows, grid), ceil_div(cols, grid)
    n = n_rows * n_cols
    gpu = machine.device_type == "cuda"
    workers = plan.workers or min(GPU_CHUNKS if gpu else machine.cores, n)
    macs = whole = written = read = asked = 0.0
    largest_window = 0.0
    for stage, factor in zip(costs, factors(costs)):
        h, w, c = rows * factor, cols * factor, grid * factor
        row_extent = extent_sum(h, c, stage.halo)
        col_extent = extent_sum(w, c, stage.halo)
        macs += stage.macs * row_extent * col_extent
        whole += stage.macs * h * w
        written += stage.written * h * w
        if stage is not costs[0]:
            asked += stage.read * row_extent * col_extent
            granule = pricing.inner * factor if pricing.inner else c
            read += stage.read * extent_sum(h, c, stage.halo, granule) * extent_sum(w, c, stage.halo, granule)
        largest_window = max(largest_window, stage.memory * min(h, c + 2 * stage.halo) * min(w, c + 2 * stage.halo))
    compute = machine.compute_seconds(macs, n, workers) + TASK_SECONDS * n * len(costs) / workers
    io = written / machine.write_bytes_per_s + read / machine.read_bytes_per_s
    peak = int(workers * largest_window + pricing.model_bytes * (2 if plan.executor == "whole" else 1)
               + machine.process_memory())
    stored = sorted(stage.written * rows * f * cols * f for stage, f in zip(costs, factors(costs)))
    return replace(plan, workers=workers, stages=len(costs), chunks=n, seconds=compute + io, compute_seconds=compute,
                   io_seconds=io, compute_overhead=macs / whole if whole else 1.0, bytes_written=int(written),
                   peak_memory=peak, read_amplification=read / asked if asked else 1.0,
                   scratch_bytes=int(sum(stored[-3:])))


EXECUTOR = Staged()
