"""The staged Dask graph: one task per stage and chunk, each reading its own halo from the store.

The path of one chunk through a stage is :func:`run_chunk`: read the window (chunk plus halo,
clipped at the image border) of every input, run the stage, crop the halo, write the chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import dask
import numpy as np
import torch
from dask.callbacks import Callback
from torch import Tensor

from .chunks import Box, Grid
from .io.omezarr import OmeZarrSink
from .io.sources import Source
from .jobs import WorkFolder
from .pixels import from_unit, to_unit
from .stages import IMAGE, Stage


@dataclass
class Job:
    """Everything a chunk task needs: where to read, what to run, where to write."""

    source: Source
    stages: Sequence[Stage]
    chunk: int
    work: WorkFolder
    sink: OmeZarrSink
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def factor(self, index: int) -> int:
        """Resolution of stage ``index``'s input relative to the image."""
        factor = 1
        for stage in self.stages[:index]:
            factor *= stage.scale
        return factor

    def grid(self, index: int) -> Grid:
        """The chunk grid of stage ``index``'s input (its output grid is this one scaled)."""
        f = self.factor(index)
        return Grid(self.source.height * f, self.source.width * f, self.chunk * f)

    def read(self, name: str, window: Box) -> Tensor:
        if name == IMAGE:
            return torch.from_numpy(to_unit(self.source.read(window)))[None]
        ys, xs = window.slices()
        return torch.from_numpy(self.work[name][:, ys, xs])[None]


def run_window(stage: Stage, inputs: Sequence[Tensor], inner: Box, device: torch.device) -> Tensor:
    """Run ``stage`` on window tensors and keep ``inner`` (the chunk, in window coordinates)."""
    with torch.inference_mode():
        out = stage.module(*(t.to(device) for t in inputs))
    s = stage.scale
    return out[:, :, inner.y0 * s : inner.y1 * s, inner.x0 * s : inner.x1 * s]


def run_chunk(job: Job, index: int, i: int, j: int) -> None:
    """Compute chunk (i, j) of stage ``index`` and store it."""
    stage = job.stages[index]
    grid = job.grid(index)
    box = grid.box(i, j)
    window = box.grow(stage.halo, grid.height, grid.width)
    out = run_window(stage, [job.read(name, window) for name in stage.inputs], box.within(window), job.device)
    target = box.scaled(stage.scale)
    if index == len(job.stages) - 1:
        job.sink.write(target, from_unit(out[0].cpu().numpy(), job.sink.level0.dtype))
    else:
        ys, xs = target.slices()
        job.work[stage.name][:, ys, xs] = out[0].cpu().numpy()


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


class _Counter(Callback):
    def __init__(self, on_task: Callable[[], None]) -> None:
        super().__init__()
        self.on_task = on_task

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        self.on_task()


def run_job(job: Job, threads: int, progress: Callable[[int, Stage, int], Any] | None = None) -> None:
    """Run every stage in order; the work arrays a stage was last to read are removed after it.

    ``progress(index, stage, chunks)`` returns a callable invoked once per finished chunk.
    """
    deletable = last_use(job.stages)
    for index, stage in enumerate(job.stages):
        grid = job.grid(index)
        if index < len(job.stages) - 1:
            out = Grid(grid.height * stage.scale, grid.width * stage.scale, grid.chunk * stage.scale)
            job.work.create(stage.name, stage.channels, out.height, out.width, out.chunk)
        task = partial(run_chunk, job, index)
        graph = {(stage.name, i, j): (task, i, j) for i, j in grid.indices()}
        tick = progress(index, stage, len(graph)) if progress else (lambda: None)
        with _Counter(tick):
            dask.threaded.get(graph, list(graph), num_workers=threads)
        for name in deletable.get(index, []):
            job.work.remove(name)


