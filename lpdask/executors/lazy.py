"""The lazy executor: a channel pass as one Dask graph that passes activations through Dask's memory
(halos by ``dask.array.overlap`` with ``boundary="none"``, so halos stop at the image border)
instead of a work folder. :func:`lpdask.upscale_array` returns that graph; :class:`Lazy` runs it
into a job's output (``upscale(..., executor="lazy")``).
"""

from __future__ import annotations

from functools import partial

import dask.array as da
import numpy as np
import torch

from ..channels import Pass
from ..chunks import Box
from ..io.sources import Source
from ..models.network import Network
from ..plan import Plan
from ..schedulers import Scheduler
from ..errors import LpdaskError
from ..geometry import chunk_sizes, factors, overlapped_block, unshuffled
from ..pixels import ValueRange, from_unit, network_input, reflect_to_cells
from ..stages import IMAGE, Stage
from ..task import Job, run_window
from . import Progress
from .staged import stages_for, whole_stages


def lazy_pass(pixels: da.Array, run: Pass, stages: list[Stage], d: int, chunk: int, device: torch.device,
              compute: torch.dtype, value_range: ValueRange | None) -> da.Array:
    """One channel pass as a lazy graph: (c, y, x) pixels -> (3 or 1, y*s, x*s) float32 output."""
    pixels = pixels[list(run.channels)]
    run = Pass(run.kind, tuple(range(len(run.channels))))
    height, width = pixels.shape[1:]
    widest = max(stage.halo for stage in stages)
    grid = unshuffled(height, width, d)
    pixels = reflect_to_cells(pixels, d, axes=(1, 2))
    rows = chunk_sizes(grid[0], chunk // d, widest)
    cols = chunk_sizes(grid[1], chunk // d, widest)
    pixels = pixels.rechunk((-1, tuple(n * d for n in rows), tuple(n * d for n in cols)))
    arrays = {IMAGE: pixels.map_blocks(_normalise, run, value_range, d, dtype=np.float32,
                                       chunks=(run.width * d * d, rows, cols))}
    for stage, factor in zip(stages, factors(stages)):
        inputs = [arrays[name] for name in stage.inputs]
        depth = {0: 0, 1: stage.halo if len(rows) > 1 else 0, 2: stage.halo if len(cols) > 1 else 0}
        grown = [da.overlap.overlap(a, depth=depth, boundary="none") for a in inputs]
        s = stage.scale
        arrays[stage.name] = da.map_blocks(
            partial(_run_block, stage, device, compute, (len(rows), len(cols))), *grown,
            dtype=np.float32, chunks=(stage.channels, tuple(n * factor * s for n in rows),
                                      tuple(n * factor * s for n in cols)))
    scale = factors(stages)[-1]
    return arrays[stages[-1].name][:, : height * scale // d, : width * scale // d]


def _normalise(block: np.ndarray, run: Pass, value_range: ValueRange | None, factor: int) -> np.ndarray:
    return network_input(block.transpose(1, 2, 0), run, value_range, factor)


def denormalise(block: np.ndarray, run: Pass, out_dtype: np.dtype, value_range: ValueRange | None) -> np.ndarray:
    return from_unit(run.from_network(block), out_dtype, value_range)


def _run_block(stage: Stage, device: torch.device, precision: torch.dtype, blocks: tuple[int, int],
               *grown: np.ndarray,
               block_id: tuple[int, int, int]) -> np.ndarray:
    _, i, j = block_id
    inner = overlapped_block(grown[0].shape[1:], stage.halo, (i, j), blocks)
    out = run_window(stage, [torch.from_numpy(np.ascontiguousarray(g))[None] for g in grown], inner, device,
                     precision)
    return out[0].cpu().numpy()


class Lazy:
    """Each run as one dask graph, from the input's windows to the output's chunks. Nothing is
    stored between stages, so memory holds every stage's activations of the chunks in flight and
    their neighbours, and a run that stops computes its pass again when resumed."""

    name = "lazy"
    unit = "chunk"

    def stages(self, net: Network, plan: Plan, mode: str, tile_pad: int) -> list[Stage]:
        """The whole network as one stage for ``blocks_per_stage`` 0, else the staged network."""
        return whole_stages(net) if plan.blocks_per_stage == 0 else stages_for(net, mode, plan.blocks_per_stage, tile_pad)  # type: ignore[arg-type]

    def scratch_bytes(self, stages: list[Stage], height: int, width: int, input_factor: int, itemsize: int) -> int:
        return 0

    def fits(self, stages: list[Stage], chunk: int, rows: int, cols: int) -> bool:
        """Dask's overlap takes each stage's halo from the neighbouring chunks only: no halo may be
        wider than a chunk (an image of one chunk a side has no neighbours to take from)."""
        widest = max(stage.halo for stage in stages)
        try:
            chunk_sizes(rows, chunk, widest), chunk_sizes(cols, chunk, widest)
        except LpdaskError:
            return False
        return True

    def tasks(self, job: Job) -> int:
        return len(job.grid(0))

    def levels_written(self, job: Job) -> int:
        return 1

    def run(self, job: Job, scheduler: Scheduler, progress: Progress | None = None) -> int:
        first, last = min(job.pass_.channels), max(job.pass_.channels)
        plane = _Plane(job.source, job.plane, first, last)
        pixels = da.from_array(plane, chunks=(-1, job.chunk, job.chunk), name=False, asarray=False, fancy=False)
        run = Pass(job.pass_.kind, tuple(c - first for c in job.pass_.channels))
        values = lazy_pass(pixels, run, list(job.stages), job.input_factor, job.chunk, job.device, job.precision,
                           job.value_range)
        written = values.map_blocks(_write, job, dtype=bool, chunks=tuple((1,) * len(c) for c in values.chunks))
        last = len(job.stages) - 1  # the bars count output chunks, as the last stage writes them
        tick = progress(last, job.stages[last], written.npartitions) if progress else None
        scheduler.compute(written, tick)
        return int(written.npartitions)


class _Plane:
    """One plane's channels ``first`` to ``last`` of a source as a (c, y, x) array that reads windows."""

    def __init__(self, source: Source, plane: dict[str, int], first: int, last: int) -> None:
        self.source, self.plane, self.channels = source, plane, slice(first, last + 1)
        self.shape = (last - first + 1, source.height, source.width)
        self.dtype = source.dtype
        self.ndim = 3

    def __getitem__(self, key: tuple[slice, slice, slice]) -> np.ndarray:
        cs, ys, xs = key
        box = Box(ys.start or 0, ys.stop if ys.stop is not None else self.shape[1],
                  xs.start or 0, xs.stop if xs.stop is not None else self.shape[2])
        pixels = self.source.read(box, self.plane, self.channels).transpose(2, 0, 1)
        return np.ascontiguousarray(pixels[cs])


def _write(block: np.ndarray, job: Job, block_info: dict | None = None) -> np.ndarray:
    """Write one output block of the pass into the job's sink; a token stands for it in the graph."""
    assert block_info is not None
    (_, _), (y0, y1), (x0, x1) = block_info[0]["array-location"]
    job.pixels.write_result(Box(y0, y1, x0, x1), np.ascontiguousarray(block, dtype=np.float32))  # copies if needed
    return np.ones((1, 1, 1), bool)


EXECUTOR = Lazy()
