"""The streaming executor: each tile (a column band of the image, full height unless the plan cuts it
in height) runs the whole stage list row strip by row strip, every activation kept in memory only for
as long as the strips after it need it. Nothing is stored between stages, and every activation row is
computed once per tile.

Columns: a tile's output columns need each stage's input over a range grown by that stage's halo,
clipped at the image border (:func:`reach_span`, computed from the last stage back to the first);
that horizontal halo is the only work repeated between tiles side by side. A tile cut in height
starts its rows the same way: each stage begins its reach above the tile's first output row, and
those rows are computed again by the tile above.

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
from functools import lru_cache, partial

import numpy as np
import torch
from torch import Tensor

from ..chunks import Box, tile_rows_step
from ..costs import Pricing, Space, StageCost
from ..device import activation_layout, ieee_fp32
from ..errors import writing
from ..geometry import Span, bands, ceil_div, factors, reach_span, unshuffled
from ..io.omezarr import half
from ..known import Known
from ..memory import trim
from ..models.network import Network
from ..plan import Plan
from ..schedulers import Scheduler
from ..stages import IMAGE, Stage
from ..task import Job, settle
from . import Progress
from .staged import groupings, stages_for

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


def schedule(stages: Sequence[Stage], rows: int, strip: int, span: Span | None = None) -> Iterator[Step]:
    """The order in which one tile reads image rows, runs stage strips and drops rows, for an image
    of ``rows`` rows (on the stages' grid) and strips of ``strip`` of those rows; ``span`` is the
    tile's rows (:func:`reach_span`; default: all of them). Columns do not enter into it: every array
    of a tile has one column range throughout."""
    height = heights(stages, rows)
    span = span or reach_span(stages, rows, 0, rows)
    lo = {name: span.arrays[name][0] for name in height}
    hi = {name: span.arrays[name][1] for name in height}
    ends = [stop // stage.scale for stage, (_, stop) in zip(stages, span.outputs)]
    strips = stage_strips(stages, strip)
    producer = {stage.name: k for k, stage in enumerate(stages)}
    readers: dict[str, list[int]] = defaultdict(list)
    for k, stage in enumerate(stages):
        for name in dict.fromkeys(stage.inputs):
            readers[name].append(k)
    done = dict(lo)  # each array computed (or read) up to this row
    kept = dict(lo)  # first row still held
    start = [first // stage.scale for stage, (first, _) in zip(stages, span.outputs)]  # each stage's next input row

    def needed(name: str) -> int:
        """The first row of ``name`` any reader still needs."""
        return min(hi[name] if start[k] >= ends[k] else max(lo[name], start[k] - stages[k].halo)
                   for k in readers[name])

    def name_in(k: int) -> str:
        return stages[k].inputs[0]

    def ensure(name: str, upto: int) -> Iterator[Step]:
        upto = min(upto, hi[name])
        while done[name] < upto:
            if name == IMAGE:
                stop = min(hi[IMAGE], max(upto, done[IMAGE] + strip))
                yield Read(done[IMAGE], stop)
                done[IMAGE] = stop
            else:
                yield from advance(producer[name], upto)

    def advance(k: int, upto: int) -> Iterator[Step]:
        stage = stages[k]
        size = height[name_in(k)]
        first = start[k]
        stop = min(ends[k], max(ceil_div(upto, stage.scale), first + strips[k]))
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
    while start[last] < ends[last]:
        yield from advance(last, 0)


def stage_strips(stages: Sequence[Stage], strip: int) -> list[int]:
    """Rows each stage computes at a time, on its input's grid: ``strip`` image rows, except that a
    stage that upsamples by s takes 1/s of them (its window's memory grows with s squared), as long
    as that leaves it at least 8 halos' worth (in-window recompute at most a quarter)."""
    return [max(ceil_div(strip * f, stage.scale), min(strip * f, 8 * stage.halo))
            for stage, f in zip(stages, factors(stages))]


@dataclass(frozen=True)
class Tile:
    """Tile (i, j): rows [y0, y1) and columns [x0, x1) of the image on the stages' grid."""

    i: int
    j: int
    y0: int
    y1: int
    x0: int
    x1: int


def _bands(job: Job) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The tiles' row and column ranges on the stages' grid: ``job.tile_rows`` image pixels high (0:
    the image's height) and ``job.chunk`` wide."""
    d = job.input_factor
    rows, cols = unshuffled(job.source.height, job.source.width, d)
    return bands(rows, job.tile_rows // d or rows), bands(cols, job.chunk // d)


def tiles(job: Job) -> list[Tile]:
    """The tiles, row by row."""
    rows, cols = _bands(job)
    return [Tile(i, j, *r, *c) for i, r in enumerate(rows) for j, c in enumerate(cols)]


def tile_at(job: Job, i: int, j: int) -> Tile:
    rows, cols = _bands(job)
    return Tile(i, j, *rows[i], *cols[j])


def strips(job: Job, tile: Tile) -> int:
    """Output strips ``tile`` writes (what its progress counts): the last stage's steps."""
    rows, _ = unshuffled(job.source.height, job.source.width, job.input_factor)
    first, stop = reach_span(job.stages, rows, tile.y0, tile.y1).outputs[-1]
    scale = job.stages[-1].scale
    return ceil_div(stop // scale - first // scale, stage_strips(job.stages, job.strip // job.input_factor)[-1])


class Stream:
    """Tiles of full image height (or cut in height), each streamed row strip by row strip through
    every stage."""

    name = "stream"
    unit = "tile"

    def stages(self, net: Network, plan: Plan, mode: str, tile_pad: int) -> list[Stage]:
        return stages_for(net, "exact", plan.blocks_per_stage, tile_pad)

    def scratch_bytes(self, stages: list[Stage], height: int, width: int, input_factor: int, itemsize: int) -> int:
        return 0

    def fits(self, stages: list[Stage], chunk: int, rows: int, cols: int) -> bool:
        return True

    def priced_stages(self, net: Network, blocks_per_stage: int | None) -> list[tuple[int, list[Stage]]]:
        """The finest groupings only: streaming pays each stage's halo again per strip."""
        return groupings(net, net.groupings()[:STREAM_GROUPINGS], blocks_per_stage)

    def candidates(self, blocks_per_stage: int, stages: list[Stage], costs: Sequence[StageCost], pricing: Pricing,
                   space: Space) -> list[Plan]:
        return [estimate(costs, stages, pricing, Plan(c, blocks_per_stage, self.name, n, x, space.tile_rows))
                for c in space.tiles for x in space.strips for n in space.at_once]

    def tasks(self, job: Job) -> int:
        return len(tiles(job))

    def levels_written(self, job: Job) -> int:
        return pyramid_levels(job)

    def run(self, job: Job, scheduler: Scheduler, progress: Progress | None = None) -> int:
        every: dict[tuple[int, int], Tile | Part | None] = {(t.i, t.j): t for t in tiles(job)}
        if job.known is not None:
            every = data_tiles(job, every)  # type: ignore[arg-type]
        per_tile = {key: 0 if tile is None else strips(job, tile.tile if isinstance(tile, Part) else tile)
                    for key, tile in every.items()}
        tick = progress(None, job.stages[-1], sum(per_tile.values())) if progress else (lambda: None)
        done = job.work.chunks_done(job.run, MARKER) & every.keys()
        for _ in range(sum(per_tile[key] for key in done)):
            tick()
        todo = [key for key in every if key not in done]
        if not todo:
            return 0
        with writing(job.sink.path):
            for level in range(1, pyramid_levels(job)):  # here, not by tiles racing to create them
                job.sink.level(level)
        light = replace(job, stages=(), known=None)  # each tile gets its own part of what is known
        shrunk = {key: (every[key], job.known.part(_image_box(job, tile_at(job, *key))))
                  for key in todo} if job.known is not None else None
        shared = [*job.stages, shrunk]  # a cluster gets both once per run, not with every tile
        if scheduler.in_process:  # the tile's thread can tick per strip, and stop between strips
            stop = threading.Event()
            scheduler.run(f"{MARKER}-r{job.run}", partial(_run_tile, light, tick, stop), shared, todo,
                          lambda chunk: None, job.torch_threads, on_stop=stop.set)
        else:
            scheduler.run(f"{MARKER}-r{job.run}", partial(_run_tile, light, None, None), shared, todo,
                          lambda chunk: [tick() for _ in range(per_tile[chunk])], job.torch_threads)
        return sum(1 for key in todo if every[key] is not None)


class Stopped(Exception):
    """A tile stopped between strips because its run is stopping (an error elsewhere, Ctrl-C)."""


def _run_tile(job: Job, tick: Callable[[], None] | None, stop: threading.Event | None,
              shared: Sequence[Stage | dict[tuple[int, int], tuple[Part | None, Known]] | None], i: int, j: int) -> None:
    """:func:`run_tile` of a task: ``shared`` is the stages, then each tile's part and what is known
    around it (None where nothing is known)."""
    settle(job)
    stages: Sequence[Stage] = shared[:-1]  # type: ignore[assignment]
    shrunk: dict[tuple[int, int], tuple[Part | None, Known]] | None = shared[-1]  # type: ignore[assignment]
    if shrunk is None:
        run_tile(replace(job, stages=stages), i, j, tick, stop)
    else:
        part, known = shrunk[i, j]
        run_tile(replace(job, stages=stages, known=known), i, j, tick, stop, part)


def _image_box(job: Job, tile: Tile) -> Box:
    """A tile's image pixels (clipped at the image's border)."""
    d, height, width = job.input_factor, job.source.height, job.source.width
    return Box(min(height, tile.y0 * d), min(height, tile.y1 * d), min(width, tile.x0 * d), min(width, tile.x1 * d))


@dataclass(frozen=True)
class Part:
    """What of a tile is computed where some of its output is known without the network: its columns
    cut down to those of the cells to compute, and the row ranges (on the stages' grid) that hold such
    cells, outside which only the stage strips their reach needs are run."""

    tile: Tile
    rows: tuple[tuple[int, int], ...]


def data_tiles(job: Job, every: dict[tuple[int, int], Tile]) -> dict[tuple[int, int], Part | None]:
    """Each tile's :class:`Part` from the cells in it that must be computed (:mod:`lpdask.known`;
    None: none must); its output outside them is known, and :func:`run_tile` writes it uncomputed."""
    assert job.known is not None
    d, cell = job.input_factor, job.known.cell
    cells = job.known.compute()
    rows, cols = unshuffled(job.source.height, job.source.width, d)
    found: dict[tuple[int, int], Part | None] = {}
    for key, tile in every.items():
        top, left = tile.y0 * d // cell, tile.x0 * d // cell
        part = cells[top: ceil_div(tile.y1 * d, cell), left: ceil_div(tile.x1 * d, cell)]
        if not part.any():
            found[key] = None
            continue
        held_cols = np.flatnonzero(part.any(axis=0))
        x0, x1 = (left + held_cols[0]) * cell // d, (left + held_cols[-1] + 1) * cell // d
        held = np.r_[False, part.any(axis=1), False].astype(np.int8)
        starts, stops = np.flatnonzero(np.diff(held) == 1), np.flatnonzero(np.diff(held) == -1)
        spans = tuple((max(tile.y0, (top + a) * cell // d), min(tile.y1, rows, (top + b) * cell // d))
                      for a, b in zip(starts, stops))
        found[key] = Part(Tile(tile.i, tile.j, tile.y0, tile.y1, max(tile.x0, x0), min(tile.x1, cols, x1)), spans)
    return found


def needed_rows(stages: Sequence[Stage], rows: Sequence[tuple[int, int]]) -> dict[str, list[tuple[int, int]]]:
    """The row ranges of each stage's output (in its own grid) that the last stage's output over image
    row ranges ``rows`` (on the stages' grid) depends on."""
    f = factors(stages)
    last = stages[-1]
    need = {last.name: _merged([(a * f[-1], b * f[-1]) for a, b in rows])}  # f[-1]: the output's factor
    for stage in reversed(stages):
        spans = [(lo // stage.scale - stage.halo, ceil_div(hi, stage.scale) + stage.halo)
                 for lo, hi in need.get(stage.name, [])]
        for name in stage.inputs:
            need[name] = _merged([*need.get(name, []), *spans])
    return need


def _merged(spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Ranges that overlap or touch, joined; in order."""
    joined: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if joined and lo <= joined[-1][1]:
            joined[-1] = (joined[-1][0], max(joined[-1][1], hi))
        elif hi > lo:
            joined.append((lo, hi))
    return joined


def run_tile(job: Job, i: int, j: int, tick: Callable[[], None] | None = None,
             stop: threading.Event | None = None, part: Part | None = None) -> None:
    """Compute tile (i, j) into the sink and mark it done; ``stop`` set stops it between strips
    (raising :class:`Stopped`), its output unfinished and unmarked. Where some of the output is known
    without the network (``job.known``), only ``part`` of the tile is computed (:func:`data_tiles`;
    None: nothing), and the known output around it is written."""
    whole = tile_at(job, i, j)
    if job.known is None:
        _compute_tile(job, whole, tick, stop)
    else:
        inner: list[Box] = []
        if part is not None:
            _compute_tile(job, part.tile, tick, stop, part.rows)
            inner = [_image_box(job, Tile(i, j, a, b, part.tile.x0, part.tile.x1)) for a, b in part.rows]
        scale = job.sink.level0.shape[-1] // job.source.width
        with writing(job.sink.path):  # over the rows outside the part's, which it wrote as zeros
            job.known.write_outside(job.pixels, _image_box(job, whole), inner, scale)
    with writing(job.work.path):
        job.work.mark_chunk(job.run, MARKER, i, j)


def _compute_tile(job: Job, tile: Tile, tick: Callable[[], None] | None, stop: threading.Event | None,
                  data: Sequence[tuple[int, int]] | None = None) -> None:
    """Compute ``tile`` (any rectangle of the stages' grid) into the sink; with ``data`` (the rows
    that hold data), a stage strip no output row of those needs is not run: zeros stand in for it (and
    the last stage's rows are all nodata). The strips run are the same as without, so the output is
    the same to the bit."""
    stages = job.stages
    i, j = tile.i, tile.j
    rows, cols = unshuffled(job.source.height, job.source.width, job.input_factor)
    columns = reach_span(stages, cols, tile.x0, tile.x1)
    span = reach_span(stages, rows, tile.y0, tile.y1)
    device, dtype = job.device, job.precision
    layout = activation_layout(device)
    held = {name: _Held(lo) for name, (lo, _) in span.arrays.items()}
    needed = needed_rows(stages, data) if data is not None else None
    out_height, out_width = job.sink.level0.shape[-2:]
    (r0, r1), (o0, o1) = span.outputs[-1], columns.outputs[-1]
    writer = _Writer(job, Box(r0, min(r1, out_height), o0, min(o1, out_width)), tick)
    try:
        with torch.inference_mode(), ieee_fp32(device):
            for step in schedule(stages, rows, job.strip // job.input_factor, span):
                if isinstance(step, Read):
                    c0, c1 = columns.arrays[IMAGE]
                    image = job.pixels.read(Box(step.start, step.stop, c0, c1))
                    held[IMAGE].append(image.to(device, dtype, memory_format=layout))
                elif isinstance(step, Drop):
                    held[step.name].drop(step.row)
                else:
                    if stop is not None and stop.is_set():
                        raise Stopped(f"tile {i}.{j} stopped")
                    stage = stages[step.index]
                    s = stage.scale
                    c0, c1 = columns.outputs[step.index]
                    spans = needed[stage.name] if needed is not None else [(0, step.stop * s)]
                    if not any(step.start * s < hi and step.stop * s > lo for lo, hi in spans):  # nothing within reach
                        out = torch.zeros((1, stage.channels, (step.stop - step.start) * s, c1 - c0), dtype=dtype,
                                          device=device).contiguous(memory_format=layout)
                    else:
                        w0, w1 = columns.windows[step.index]
                        inputs = [held[name].rows(step.window_start, step.window_stop)[
                                      :, :, :, w0 - columns.arrays[name][0]:w1 - columns.arrays[name][0]]
                                  for name in stage.inputs]
                        out = stage.module(*inputs)
                        del inputs
                        out = out[:, :, (step.start - step.window_start) * s:(step.stop - step.window_start) * s,
                                  c0 - w0 * s:c1 - w0 * s]
                    if step.index == len(stages) - 1:
                        writer.put(step.start * s, out)
                    else:
                        held[stage.name].append(out)
                    del out
        writer.close()
    except BaseException:
        writer.abandon()
        raise
    del held
    trim()  # between tiles: within one, each strip's tensors reuse the last one's memory


def room_for(rows: int) -> int:
    """Rows a held array's buffer is given when ``rows`` no longer fit it: a quarter to spare."""
    return rows + rows // 4


class _Held:
    """Rows [first, first + held) of one array of a tile, in a buffer that each strip's new rows are
    written into: dropped rows leave room at its start, which a full buffer reuses by moving the rows
    it holds up; a larger buffer (a quarter to spare) replaces it only when the rows held and the new
    ones do not fit. So a strip copies only its own rows, where concatenating would copy the whole
    array and briefly hold it twice, and the buffers keep their sizes strip after strip."""

    def __init__(self, first: int) -> None:
        self.first = first
        self.buffer: Tensor | None = None
        self.start = self.stop = 0  # the buffer's rows holding array rows [first, first + stop - start)

    def rows(self, start: int, stop: int) -> Tensor:
        """Array rows [start, stop) (a view)."""
        assert self.buffer is not None and self.first <= start and stop - self.first <= self.stop - self.start
        return self.buffer[:, :, self.start + start - self.first:self.start + stop - self.first]

    def append(self, rows: Tensor) -> None:
        """Hold ``rows`` below the rows held."""
        n, held = rows.shape[2], self.stop - self.start
        if self.buffer is None or held + n > self.buffer.shape[2]:
            buffer = torch.empty((*rows.shape[:2], room_for(held + n), rows.shape[3]), dtype=rows.dtype,
                                 device=rows.device, memory_format=activation_layout(rows.device))
            if held:
                buffer[:, :, :held] = self.buffer[:, :, self.start:self.stop]
            self.buffer, self.start, self.stop = buffer, 0, held
        elif self.stop + n > self.buffer.shape[2]:
            gap = self.start  # > 0 here; pieces no taller than the gap never overlap their source
            for k in range(0, held, gap):
                m = min(gap, held - k)
                self.buffer[:, :, k:k + m] = self.buffer[:, :, gap + k:gap + k + m]
            self.start, self.stop = 0, held
        self.buffer[:, :, self.stop:self.stop + n] = rows
        self.stop += n

    def drop(self, row: int) -> None:
        """No stage needs rows above ``row`` any more (none at all: the buffer is freed)."""
        self.start = min(self.stop, self.start + row - self.first)
        self.first = row
        if self.start == self.stop:
            self.buffer, self.start, self.stop = None, 0, 0


@dataclass
class _Rows:
    """One pyramid level's rows of a tile, gathered until whole rows of stored chunks can be written."""

    index: int
    columns: Box
    """The tile's rows and columns at this level."""
    rows: int
    """Rows of one stored chunk at this level."""
    start: int = 0
    """First row not yet written."""
    pending: list[np.ndarray] = field(default_factory=list)


class _Writer:
    """Hands a tile's output strips to a thread that converts them to the output's pixels and
    writes whole rows of stored chunks, so the tile's next strip computes meanwhile; the pyramid
    levels that no two tiles share (:func:`pyramid_levels`) are written from those rows as they go."""

    def __init__(self, job: Job, box: Box, tick: Callable[[], None] | None) -> None:
        self.job, self.height, self.width, self.tick = job, box.y1, box.x1 - box.x0, tick
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="lpdask-writer")
        self.queued: list[Future[None]] = []
        shapes = job.sink.level_shapes()
        self.levels = []
        for index in range(pyramid_levels(job)):
            self.levels.append(_Rows(index, box, job.sink.level_chunks(index)[-2], box.y0))
            rows, cols = shapes[min(index + 1, len(shapes) - 1)][-2:]
            box = Box(box.y0 // 2, min(rows, ceil_div(box.y1, 2)), box.x0 // 2, min(cols, ceil_div(box.x1, 2)))

    def put(self, row: int, values: Tensor) -> None:
        """Output rows from ``row`` (network output, (1, c, h, w))."""
        keep = min(values.shape[2], self.height - row)
        strip = values[0, :, :keep, : self.width]
        converted = self.job.pixels.on_device(strip)
        if converted is None:
            strip = strip.float().cpu().numpy()
        while len(self.queued) >= PENDING_STRIPS:
            self.queued.pop(0).result()
        self.queued.append(self.pool.submit(self._write, strip if converted is None else converted,
                                            converted is None))

    def _write(self, values: np.ndarray, network_output: bool) -> None:
        self._add(self.levels[0], self.job.pixels.to_pixels(values) if network_output else values)
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
            self.job.pixels.write(Box(level.start, flush, level.columns.x0, level.columns.x1), done, level.index)
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
    if job.known is not None:  # tiles cut down to what they compute write rows no level above can halve whole
        return 1
    shapes = sink.level_shapes()
    rows, cols = _bands(job)
    f, d = factors(job.stages)[-1], job.input_factor
    sides = []  # (a tile's output pixels, axis) along each axis cut into several tiles
    if len(cols) > 1:
        sides.append((job.chunk // d * f, -1))
    if len(rows) > 1:
        sides.append((job.tile_rows // d * f, -2))
    count = 1
    for index in range(1, len(shapes)):
        if sink.level_chunks(index - 1)[-2] % 2 and shapes[index - 1][-2] > sink.level_chunks(index - 1)[-2]:
            break
        if any(side % 2**index or side // 2**index % sink.level_chunks(index)[axis] for side, axis in sides):
            break
        count += 1
    return count


__all__ = ["Drop", "Part", "Read", "Run", "Span", "Stream", "Tile", "heights", "pyramid_levels", "reach_span", "run_tile",
           "schedule", "stage_strips", "strips", "tile_at", "tiles"]



# The cost model: what the planner weighs streaming plans by.

STREAM_GROUPINGS = 2
"""How many of a network's finest groupings streaming plans try."""
TILE_SECONDS = 900.0
"""Streaming tiles predicted to take longer than this are cut in height, so that a kill, a lost
worker or Ctrl-C loses less work..."""
BAND_REACHES = 16
"""...into bands no shorter than this many times the network's reach (each cut repeats about one
reach of rows of compute, half on either side: about 1/16 more)."""
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
class DryRun:
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
def dry_run(stages: tuple[Stage, ...], rows: int, strip: int) -> DryRun:
    """The schedule of a tile ``rows`` high (on the stages' grid) in strips of ``strip``, simulated."""
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
    return DryRun(names, np.array(held), window_rows, tallest, steps, rows)


def estimate(costs: Sequence[StageCost], stages: Sequence[Stage], pricing: Pricing, plan: Plan) -> Plan:
    """``plan`` (its tile width ``chunk``, ``tile_rows`` (0: the image's height), ``strip``, grouping
    and workers, 0: one per core or one per GPU) with the predicted cost of streaming ``stages``
    (profiled as ``costs``) over the image."""
    machine, d = pricing.machine, pricing.input_factor
    rows, cols = unshuffled(pricing.height, pricing.width, d)
    width_d, strip_d = plan.chunk // d, max(1, plan.strip // d)
    tiles = bands(cols, width_d)
    row_bands = bands(rows, plan.tile_rows // d or rows)
    dry = dry_run(tuple(stages), min(rows, DRY_ROWS), strip_d)
    stretch = rows / dry.rows
    computed = np.zeros(len(stages))  # each stage's input rows computed over all row bands
    for (y0, y1), weight in sampled(row_bands):
        outputs = reach_span(stages, rows, y0, y1).outputs
        computed += [weight * (b - a) / stage.scale for stage, (a, b) in zip(stages, outputs)]
    repeat = computed / np.array([rows * f for f in factors(stages)[:-1]])  # > 1 by the cuts' repeated reach
    tasks = len(tiles) * len(row_bands)
    gpu = machine.device_type == "cuda"
    workers = plan.workers or (1 if gpu else min(machine.cores, tasks))
    channels = {IMAGE: pricing.image_channels, **{stage.name: stage.channels for stage in stages}}
    macs = whole = 0.0
    peak_tile = 0.0
    for (x0, x1), weight in sampled(tiles):
        columns = reach_span(stages, cols, x0, x1)
        widths = np.array([(columns.arrays[n][1] - columns.arrays[n][0]) * channels[n] for n in dry.names])
        working = max(cost.memory * tall * (w1 - w0)
                      for cost, tall, (w0, w1) in zip(costs, dry.largest_window, columns.windows))
        peak_tile = max(peak_tile, float((dry.held @ widths).max()) * pricing.itemsize + working)
        for cost, window_rows, again, (w0, w1) in zip(costs, dry.window_rows, repeat, columns.windows):
            macs += weight * cost.macs * window_rows * stretch * again * (w1 - w0)
    for cost, f in zip(costs, factors(costs)):
        whole += cost.macs * rows * f * cols * f
    compute = (machine.compute_seconds(macs, tasks, workers)
               + STEP_SECONDS * dry.steps * stretch * float(repeat.mean()) * tasks / workers)
    retained = 1.0 if gpu else HELD_RETAINED  # torch's caching allocator reuses blocks of any size
    peak = int(workers * peak_tile * retained + pricing.model_bytes + machine.process_memory())
    return replace(plan, workers=workers, stages=len(costs), chunks=tasks, seconds=compute, compute_seconds=compute,
                   compute_overhead=macs / whole if whole else 1.0, peak_memory=peak)


def sampled(spans: list[tuple[int, int]]) -> list[tuple[tuple[int, int], int]]:
    """The first, second and last of ``spans`` (all of them, if three or fewer), each with how many
    it stands for: the inner ones are alike."""
    if len(spans) <= 3:
        return [(span, 1) for span in spans]
    return [(spans[0], 1), (spans[1], len(spans) - 2), (spans[-1], 1)]


def cut_in_height(plan: Plan, price: Callable[[Plan], Plan], pricing: Pricing, reach_px: int, memory: int,
                  strips: Sequence[int], fixed_workers: int | None) -> Plan:
    """``plan`` (streaming, full-height tiles) with its tiles cut in height where that helps: into
    as many bands as keep more of a CPU's cores (or the ``fixed_workers`` asked for) on tiles of
    their own, when that is predicted faster within ``memory`` (the plan picked for a large image
    needs no less: a smaller image never takes more; one tile on several threads runs at torch's
    lower parallel efficiency); then into bands of at most about ``TILE_SECONDS``
    each, no shorter than ``BAND_REACHES`` reaches (``reach_px`` image pixels each), when a tile
    would take longer. ``price`` estimates a variant (with any of ``strips`` for more bands at
    once); band heights are multiples of the output's stored chunks."""
    machine, height = pricing.machine, pricing.height
    step = tile_rows_step(plan.chunk, pricing.scale, pricing.input_factor)
    best = plan
    if machine.device_type != "cuda":
        for n in [fixed_workers] if fixed_workers else range(plan.chunks + 1, machine.cores + 1):
            rows = ceil_div(ceil_div(height, ceil_div(n, plan.chunks)), step) * step  # that many bands or fewer
            if rows < height:
                for strip in strips:
                    e = price(replace(plan, strip=strip, workers=n, tile_rows=rows))
                    if e.seconds < best.seconds and e.peak_memory <= memory:
                        best = e
    at_once = 1 if machine.device_type == "cuda" else best.workers
    per_tile = best.seconds * at_once / best.chunks
    current = best.tile_rows or height
    if per_tile > TILE_SECONDS:
        shortest = ceil_div(BAND_REACHES * reach_px, step) * step
        rows = max(int(current * TILE_SECONDS / per_tile) // step * step, shortest)
        if rows < current:
            best = price(replace(best, tile_rows=rows))
    return best


EXECUTOR = Stream()
