"""The streaming executor: each tile (a column band of the image, full height) runs the whole stage
list row strip by row strip, every activation kept in memory only for as long as the strips after it
need it. Nothing is stored between stages, and every activation row is computed once per tile.

Columns: a tile's output columns need each stage's input over a range grown by that stage's halo,
clipped at the image border (:func:`band_columns`, computed from the last stage back to the first);
that horizontal halo is the only work repeated between tiles.

Rows: the last stage pulls. To compute its next strip, a stage needs its inputs' rows up to the
strip's end plus its halo, so it asks their producers for them, and so on up to the image
(:func:`schedule`). Once every stage that reads an array has moved past a row (less its halo), the
row is dropped. A skip input (RRDBNet's long skip) is simply an array with two readers far apart,
and keeps its rows until the later one has used them. Each strip of a stage is computed on a window
of the strip plus the halo above and below, which the stage's own layers recompute (the in-window
cost); the window is clipped at the image's top and bottom, so every convolution sees the zero
padding whole-image inference sees there, and the halo rows the stage pads with zeros are cropped away.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np
import torch
from torch import Tensor

from ..chunks import Box
from ..device import ieee_fp32
from ..errors import writing
from ..geometry import ceil_div, column_bands, factors, unshuffled
from ..io.omezarr import half
from ..memory import trim
from ..schedulers import Scheduler
from ..stages import IMAGE, Stage
from ..task import Job
from . import Progress

MARKER = "stream"
"""The work folder's name for the tiles' done markers (no activation is ever stored)."""
PENDING_STRIPS = 2
"""Output strips a tile may have queued for its writer thread before it waits."""


@dataclass(frozen=True)
class Read:
    """Read image rows [start, stop) (on the stages' grid)."""

    start: int
    stop: int


@dataclass(frozen=True)
class Run:
    """Run stage ``index`` on its input rows [window_start, window_stop) and keep the output of
    input rows [start, stop)."""

    index: int
    start: int
    stop: int
    window_start: int
    window_stop: int


@dataclass(frozen=True)
class Drop:
    """No stage needs rows of ``name`` above ``row`` any more."""

    name: str
    row: int


Step = Read | Run | Drop


def heights(stages: Sequence[Stage], rows: int) -> dict[str, int]:
    """Rows of every array (the image on the stages' grid, each stage's output)."""
    out = {IMAGE: rows}
    for stage, factor in zip(stages, factors(stages)[1:]):
        out[stage.name] = rows * factor
    return out


def schedule(stages: Sequence[Stage], rows: int, strip: int) -> Iterator[Step]:
    """The order in which one tile reads image rows, runs stage strips and drops rows, for an image
    of ``rows`` rows (on the stages' grid) and strips of ``strip`` of those rows. Columns do not
    enter into it: every array of a tile has one column range throughout."""
    height = heights(stages, rows)
    strips = stage_strips(stages, strip)
    producer = {stage.name: k for k, stage in enumerate(stages)}
    readers: dict[str, list[int]] = defaultdict(list)
    for k, stage in enumerate(stages):
        for name in dict.fromkeys(stage.inputs):
            readers[name].append(k)
    done = dict.fromkeys(height, 0)  # rows of each array computed (or read) so far
    kept = dict.fromkeys(height, 0)  # first row still held
    start = [0] * len(stages)  # next input row of each stage

    def needed(name: str) -> int:
        """The first row of ``name`` any reader still needs."""
        return min(height[name] if start[k] >= height[name_in(k)] else max(0, start[k] - stages[k].halo)
                   for k in readers[name])

    def name_in(k: int) -> str:
        return stages[k].inputs[0]

    def ensure(name: str, upto: int) -> Iterator[Step]:
        upto = min(upto, height[name])
        while done[name] < upto:
            if name == IMAGE:
                stop = min(height[IMAGE], max(upto, done[IMAGE] + strip))
                yield Read(done[IMAGE], stop)
                done[IMAGE] = stop
            else:
                yield from advance(producer[name], upto)

    def advance(k: int, upto: int) -> Iterator[Step]:
        stage = stages[k]
        size = height[name_in(k)]
        first = start[k]
        stop = min(size, max(ceil_div(upto, stage.scale), first + strips[k]))
        window = max(0, first - stage.halo), min(size, stop + stage.halo)
        for name in dict.fromkeys(stage.inputs):
            yield from ensure(name, window[1])
        yield Run(k, first, stop, *window)
        start[k] = stop
        done[stage.name] = stop * stage.scale
        for name in dict.fromkeys(stage.inputs):
            row = needed(name)
            if row > kept[name]:
                kept[name] = row
                yield Drop(name, row)

    last = len(stages) - 1
    while start[last] < height[name_in(last)]:
        yield from advance(last, 0)


def stage_strips(stages: Sequence[Stage], strip: int) -> list[int]:
    """Rows each stage computes at a time, on its input's grid: ``strip`` image rows, except that a
    stage that upsamples by s takes 1/s of them (its window's memory grows with s squared), as long
    as that leaves it at least 8 halos' worth (in-window recompute at most a quarter)."""
    return [max(ceil_div(strip * f, stage.scale), min(strip * f, 8 * stage.halo))
            for stage, f in zip(stages, factors(stages))]


@dataclass(frozen=True)
class Columns:
    """One tile's columns: each array's column range, and each stage's input window and the output
    columns it keeps (all in the array's own pixels)."""

    arrays: dict[str, tuple[int, int]]
    windows: tuple[tuple[int, int], ...]
    outputs: tuple[tuple[int, int], ...]


def band_columns(stages: Sequence[Stage], cols: int, x0: int, x1: int) -> Columns:
    """The columns a tile of image columns [x0, x1) (on the stages' grid, ``cols`` wide) needs of
    every array, from the last stage back to the first."""
    f = factors(stages)
    need: dict[str, tuple[int, int]] = {stages[-1].name: (x0 * f[-1], x1 * f[-1])}
    windows: list[tuple[int, int]] = [(0, 0)] * len(stages)
    outputs: list[tuple[int, int]] = [(0, 0)] * len(stages)
    for k in reversed(range(len(stages))):
        stage, s = stages[k], stages[k].scale
        c0, c1 = need[stage.name]
        first, stop = c0 // s, ceil_div(c1, s)
        outputs[k] = need[stage.name] = (first * s, stop * s)
        windows[k] = (max(0, first - stage.halo), min(cols * f[k], stop + stage.halo))
        for name in stage.inputs:
            lo, hi = need.get(name, windows[k])
            need[name] = (min(lo, windows[k][0]), max(hi, windows[k][1]))
    return Columns(need, tuple(windows), tuple(outputs))


def bands(job: Job) -> list[tuple[int, int]]:
    """The tiles' column ranges on the stages' grid: ``job.chunk`` image pixels wide."""
    _, cols = unshuffled(job.source.height, job.source.width, job.input_factor)
    return column_bands(cols, job.chunk // job.input_factor)


def strips(job: Job) -> int:
    """Output strips one tile writes (what its progress counts)."""
    rows, _ = unshuffled(job.source.height, job.source.width, job.input_factor)
    return ceil_div(rows, job.strip // job.input_factor)


class Stream:
    """Tiles of full image height, each streamed row strip by row strip through every stage."""

    name = "stream"

    def tasks(self, job: Job) -> int:
        return len(bands(job))

    def levels_written(self, job: Job) -> int:
        return pyramid_levels(job)

    def run(self, job: Job, scheduler: Scheduler, progress: Progress | None = None) -> int:
        tiles = bands(job)
        per_tile = strips(job)
        tick = progress(None, job.stages[-1], len(tiles) * per_tile) if progress else (lambda: None)
        done = {j for _, j in job.work.chunks_done(job.run, MARKER)}
        for _ in range(len(done) * per_tile):
            tick()
        todo = [(0, j) for j in range(len(tiles)) if j not in done]
        if not todo:
            return 0
        with writing(job.sink.path):
            for level in range(1, pyramid_levels(job)):  # here, not by tiles racing to create them
                job.sink.level(level)
        light = replace(job, stages=())
        if scheduler.in_process:  # the tile's thread can tick per strip, and stop between strips
            stop = threading.Event()
            scheduler.run(f"{MARKER}-r{job.run}", partial(_run_tile, light, tick, stop), job.stages, todo,
                          lambda: None, job.torch_threads, on_stop=stop.set)
        else:
            scheduler.run(f"{MARKER}-r{job.run}", partial(_run_tile, light, None, None), job.stages, todo,
                          lambda: [tick() for _ in range(per_tile)], job.torch_threads)
        return len(todo)


class Stopped(Exception):
    """A tile stopped between strips because its run is stopping (an error elsewhere, Ctrl-C)."""


def _run_tile(job: Job, tick: Callable[[], None] | None, stop: threading.Event | None, stages: Sequence[Stage],
              i: int, j: int) -> None:
    if job.torch_threads and torch.get_num_threads() != job.torch_threads:
        torch.set_num_threads(job.torch_threads)
    run_tile(replace(job, stages=stages), j, tick, stop)


def run_tile(job: Job, j: int, tick: Callable[[], None] | None = None, stop: threading.Event | None = None) -> None:
    """Compute tile ``j`` into the sink and mark it done; ``stop`` set stops it between strips
    (raising :class:`Stopped`), its output unfinished and unmarked."""
    stages = job.stages
    rows, cols = unshuffled(job.source.height, job.source.width, job.input_factor)
    x0, x1 = bands(job)[j]
    columns = band_columns(stages, cols, x0, x1)
    device, dtype = job.device, job.precision
    layout = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    held: dict[str, Tensor] = {}
    first_row: dict[str, int] = defaultdict(int)
    out_height, out_width = job.sink.level0.shape[-2:]
    o0, o1 = columns.outputs[-1]
    writer = _Writer(job, Box(0, 0, o0, min(o1, out_width)), out_height, tick)
    try:
        with torch.inference_mode(), ieee_fp32(device):
            for step in schedule(stages, rows, job.strip // job.input_factor):
                if isinstance(step, Read):
                    c0, c1 = columns.arrays[IMAGE]
                    image = job.read_image(Box(step.start, step.stop, c0, c1))
                    _append(held, IMAGE, image.to(device, dtype, memory_format=layout))
                elif isinstance(step, Drop):
                    held[step.name] = _kept(held[step.name][:, :, step.row - first_row[step.name]:])
                    first_row[step.name] = step.row
                else:
                    if stop is not None and stop.is_set():
                        raise Stopped(f"tile {j} stopped")
                    stage = stages[step.index]
                    w0, w1 = columns.windows[step.index]
                    inputs = [held[name][:, :, step.window_start - first_row[name]:step.window_stop - first_row[name],
                                         w0 - columns.arrays[name][0]:w1 - columns.arrays[name][0]]
                              for name in stage.inputs]
                    out = stage.module(*inputs)
                    s = stage.scale
                    c0, c1 = columns.outputs[step.index]
                    out = out[:, :, (step.start - step.window_start) * s:(step.stop - step.window_start) * s,
                              c0 - w0 * s:c1 - w0 * s]
                    if step.index == len(stages) - 1:
                        writer.put(step.start * s, out)
                    else:
                        _append(held, stage.name, out)
                    del inputs, out
                    if device.type != "cuda":
                        trim()
        writer.close()
    except BaseException:
        writer.abandon()
        raise
    del held
    with writing(job.work.path):
        job.work.mark_chunk(job.run, MARKER, 0, j)


def _append(held: dict[str, Tensor], name: str, rows: Tensor) -> None:
    previous = held.get(name)
    held[name] = rows.contiguous(memory_format=_layout(rows)) if previous is None else torch.cat((previous, rows), 2)


def _kept(rows: Tensor) -> Tensor:
    """The rows still needed after a drop: a view while they are most of the array's memory, else a
    copy, so that the rows dropped are freed now, not at the next append (a view keeps them)."""
    kept = rows.numel() * rows.element_size()
    return rows.clone(memory_format=_layout(rows)) if rows.untyped_storage().nbytes() > 2 * kept else rows


def _layout(t: Tensor) -> torch.memory_format:
    return torch.channels_last if t.is_cuda else torch.contiguous_format


@dataclass
class _Rows:
    """One pyramid level's rows of a tile, gathered until whole rows of stored chunks can be written."""

    index: int
    columns: Box
    """The tile's columns at this level (rows: the level's height)."""
    rows: int
    """Rows of one stored chunk at this level."""
    start: int = 0
    """First row not yet written."""
    pending: list[np.ndarray] = field(default_factory=list)


class _Writer:
    """Hands a tile's output strips to a thread that converts them to the output's pixels and
    writes whole rows of stored chunks, so the tile's next strip computes meanwhile; the pyramid
    levels that no two tiles share (:func:`pyramid_levels`) are written from those rows as they go."""

    def __init__(self, job: Job, columns: Box, height: int, tick: Callable[[], None] | None) -> None:
        self.job, self.height, self.tick = job, height, tick
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="lpdask-writer")
        self.queued: list[Future[None]] = []
        shapes = job.sink.level_shapes()
        self.levels = []
        box = Box(0, height, columns.x0, columns.x1)
        for index in range(pyramid_levels(job)):
            self.levels.append(_Rows(index, box, job.sink.level_chunks(index)[-2]))
            rows, cols = shapes[min(index + 1, len(shapes) - 1)][-2:]
            box = Box(0, rows, box.x0 // 2, min(cols, ceil_div(box.x1, 2)))
        self.width = columns.x1 - columns.x0

    def put(self, row: int, values: Tensor) -> None:
        """Output rows from ``row`` (network output, (1, c, h, w))."""
        keep = min(values.shape[2], self.height - row)
        strip = values[0, :, :keep, : self.width]
        converted = self.job.pixels_on_device(strip)
        if converted is None:
            strip = strip.float().cpu().numpy()
        while len(self.queued) >= PENDING_STRIPS:
            self.queued.pop(0).result()
        self.queued.append(self.pool.submit(self._write, strip if converted is None else converted,
                                            converted is None))

    def _write(self, values: np.ndarray, network_output: bool) -> None:
        self._add(self.levels[0], self.job.to_pixels(values) if network_output else values)
        if self.tick is not None:
            self.tick()

    def _add(self, level: _Rows, pixels: np.ndarray) -> None:
        level.pending.append(pixels)
        stop = level.start + sum(p.shape[1] for p in level.pending)
        flush = stop if stop >= level.columns.y1 else stop // level.rows * level.rows
        if flush <= level.start:
            return
        block = np.concatenate(level.pending, axis=1) if len(level.pending) > 1 else level.pending[0]
        done = block[:, : flush - level.start]
        with writing(self.job.sink.path):
            self.job.write_pixels(Box(level.start, flush, level.columns.x0, level.columns.x1), done, level.index)
        level.pending = [block[:, flush - level.start:]] if stop > flush else []
        level.start = flush
        if level.index + 1 < len(self.levels):
            self._add(self.levels[level.index + 1], half(done, self.job.sink.nodata))

    def close(self) -> None:
        for future in self.queued:
            future.result()
        self.pool.shutdown()

    def abandon(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def pyramid_levels(job: Job) -> int:
    """How many levels (level 0 and the first pyramid levels) tiles write as their rows complete:
    as long as each level's 2x2 means fall inside one tile and no two tiles share a stored chunk of
    it, and the rows written at a time from the level above are even. The rest are built after."""
    sink = job.sink
    shapes = sink.level_shapes()
    width = job.chunk // job.input_factor * factors(job.stages)[-1]  # a tile's output columns
    several = len(bands(job)) > 1
    count = 1
    for index in range(1, len(shapes)):
        if sink.level_chunks(index - 1)[-2] % 2 and shapes[index - 1][-2] > sink.level_chunks(index - 1)[-2]:
            break
        if several and (width % 2**index or width // 2**index % sink.level_chunks(index)[-1]):
            break
        count += 1
    return count


__all__ = ["Columns", "Drop", "Read", "Run", "Stream", "band_columns", "bands", "heights", "pyramid_levels", "run_tile",
           "schedule", "stage_strips", "strips"]
