"""The chunk task: the path of one chunk through one stage.

:func:`run_chunk` reads the window (the chunk plus the stage's halo, clipped at the image border) of
every input the stage reads, runs the stage, crops the halo away and writes the chunk, then marks it
done. :class:`Job` is everything such a task needs (its pixels in and out:
:class:`~lpdask.passpixels.PassPixels`); :func:`run_window` is the stage on a window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .channels import Pass
from .chunks import Box, Grid
from .geometry import factors, stage_grid
from .device import activation_layout, ieee_fp32, storage_dtype
from .errors import writing
from .io.omezarr import OmeZarrSink
from .io.sources import Source
from .memory import reuse_freed_memory, trim
from .nodata import Nodata
from .passpixels import PassPixels
from .pixels import ValueRange
from .stages import IMAGE, Stage

if TYPE_CHECKING:
    from .jobs import WorkFolder
    from .known import Known


@dataclass
class Job:
    """Everything a chunk task needs: where to read, what to run, where to write."""

    source: Source
    stages: Sequence[Stage]
    chunk: int
    work: WorkFolder
    sink: OmeZarrSink
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    input_factor: int = 1
    """Pixel-unshuffle factor: stages work on the image grid divided by it (``chunk`` too)."""
    precision: torch.dtype = torch.float32
    """What the stages compute in; activations are stored as :func:`~lpdask.device.storage_dtype`."""
    plane: dict[str, int] = field(default_factory=dict)
    """Which t / z plane of the source this job runs on."""
    pass_: Pass = Pass("rgb", (0, 1, 2))
    """Which channels, and how they go through the network."""
    value_range: ValueRange | None = None
    run: int = 0
    """Which run (plane and channel pass) of the whole job this is; names its chunk markers."""
    torch_threads: int = 0
    """torch's intra-op threads in the process running a chunk (0: leave as it is)."""
    strip: int = 0
    """Rows (image pixels) of the strips the streaming executor computes at a time."""
    nodata: Nodata | None = None
    """The input's missing pixels: filled before the network, marked in the output."""
    tile_rows: int = 0
    """Rows (image pixels) of the streaming executor's tiles (0: the image's height)."""
    known: Known | None = None
    """What of this run's output is known without the network (:mod:`lpdask.known`): the executors
    compute only the rest and write it; None: compute everything."""

    def find_known(self, cell: int, everything: bool = False, tissue: str | None = None) -> Known:
        """What of this run is known without the network, in cells of ``cell`` image pixels (reads the
        run's plane once; runs each stage on a small patch per constant colour found): with
        ``everything`` (compute every pixel) only what lies outside the ``tissue`` mask."""
        from .known import known, reach_pixels

        return known(self.pixels, list(self.stages), reach_pixels(list(self.stages), self.input_factor), cell,
                     self.device, self.precision, constants=not everything, nodata=not everything, tissue=tissue)

    def factor(self, index: int) -> int:
        """Resolution of stage ``index``'s input relative to the image."""
        return factors(self.stages[:index])[-1]

    def grid(self, index: int) -> Grid:
        """The chunk grid of stage ``index``'s input (its output grid is this one scaled)."""
        return stage_grid(self.source.height, self.source.width, self.chunk, self.input_factor, self.factor(index))

    def read(self, name: str, window: Box) -> Tensor:
        if name == IMAGE:
            return self.pixels.read(window)
        ys, xs = window.slices()
        return torch.from_numpy(self.work[name][:, ys, xs])[None]

    @cached_property
    def pixels(self) -> PassPixels:
        """This run's pixels: read from the source as the network's input, written to the sink."""
        return PassPixels(self.source, self.sink, self.plane, self.pass_, self.value_range, self.nodata,
                          self.input_factor)

def run_window(stage: Stage, inputs: Sequence[Tensor], inner: Box, device: torch.device,
               precision: torch.dtype = torch.float32, kept: torch.dtype = torch.float32) -> Tensor:
    """Run ``stage`` on window tensors and keep ``inner`` (the chunk, in window coordinates), as
    ``kept``."""
    layout = activation_layout(device)
    with torch.inference_mode(), ieee_fp32(device):
        out = stage.module(*(t.to(device, precision, memory_format=layout) for t in inputs))
    s = stage.scale
    return out[:, :, inner.y0 * s : inner.y1 * s, inner.x0 * s : inner.x1 * s].to(kept)


def settle(job: Job) -> None:
    """Ready the process a task of ``job`` runs in (this one, or a cluster worker): torch's threads,
    and on a CPU the allocator's reuse of freed memory (:func:`~lpdask.memory.reuse_freed_memory`)."""
    if job.torch_threads and torch.get_num_threads() != job.torch_threads:
        torch.set_num_threads(job.torch_threads)
    if job.device.type == "cpu":
        reuse_freed_memory()


def run_chunk(job: Job, index: int, i: int, j: int) -> None:
    """Compute chunk (i, j) of stage ``index``, store it, then mark it done."""
    settle(job)
    stage = job.stages[index]
    grid = job.grid(index)
    box = grid.box(i, j)
    window = box.grow(stage.halo, grid.height, grid.width)
    inputs = [job.read(name, window) for name in stage.inputs]
    last = index == len(job.stages) - 1
    out = run_window(stage, inputs, box.within(window), job.device, job.precision,
                     torch.float32 if last else storage_dtype(job.precision))
    target = box.scaled(stage.scale)
    if last:
        height, width = job.sink.level0.shape[-2:]  # smaller than the grid where it was padded
        kept = Box(target.y0, min(target.y1, height), target.x0, min(target.x1, width))
        values = out[0, :, : kept.shape[0], : kept.shape[1]]
        pixels = job.pixels.on_device(values)
        with writing(job.sink.path):
            if pixels is None:
                job.pixels.write_result(kept, values.cpu().numpy())
            else:
                job.pixels.write(kept, pixels)
    else:
        ys, xs = target.slices()
        with writing(job.work.path):
            job.work[stage.name][:, ys, xs] = out[0].cpu().numpy()
    with writing(job.work.path):
        job.work.mark_chunk(job.run, stage.name, i, j)
    del inputs, out
    trim()


def run_chunk_of(job: Job, index: int, stages: Sequence[Stage], i: int, j: int) -> None:
    """:func:`run_chunk` for a job sent without its stages (a cluster scatters them once)."""
    run_chunk(replace(job, stages=stages), index, i, j)
