"""The chunk task: the path of one chunk through one stage.

:func:`run_chunk` reads the window (the chunk plus the stage's halo, clipped at the image border) of
every input the stage reads, runs the stage, crops the halo away and writes the chunk, then marks it
done. :class:`Job` is everything such a task needs; :func:`run_window` is the stage on a window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from .channels import Pass
from .chunks import Box, Grid, reflect
from .geometry import factors, stage_grid
from .device import activation_layout, ieee_fp32, storage_dtype
from .errors import LpdaskError, writing
from .io.omezarr import OmeZarrSink
from .io.sources import Source
from .memory import reuse_freed_memory, trim
from .nodata import FILL_RADIUS, Nodata, fill, input_box, mark, read_mask, upscaled_mask, valid_of
from .pixels import ValueRange, from_unit, from_unit_tensor, network_input, working_float
from .stages import IMAGE, Stage

if TYPE_CHECKING:
    from .jobs import WorkFolder


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

    def factor(self, index: int) -> int:
        """Resolution of stage ``index``'s input relative to the image."""
        return factors(self.stages[:index])[-1]

    def grid(self, index: int) -> Grid:
        """The chunk grid of stage ``index``'s input (its output grid is this one scaled)."""
        return stage_grid(self.source.height, self.source.width, self.chunk, self.input_factor, self.factor(index))

    def read(self, name: str, window: Box) -> Tensor:
        if name == IMAGE:
            return self.read_image(window)
        ys, xs = window.slices()
        return torch.from_numpy(self.work[name][:, ys, xs])[None]

    def read_image(self, window: Box) -> Tensor:
        """The image under ``window`` of the unshuffled grid, reflect-padded past the border to
        a multiple of ``input_factor`` and pixel-unshuffled, as (1, c * d * d, h, w)."""
        d = self.input_factor
        if d == 1:
            return torch.from_numpy(self._unit(self._pixels(window), window))[None]
        rows = reflect(np.arange(window.y0 * d, window.y1 * d), self.source.height)
        cols = reflect(np.arange(window.x0 * d, window.x1 * d), self.source.width)
        box = Box(int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1)
        pixels = self._pixels(box)[np.ix_(rows - box.y0, cols - box.x0)]
        return torch.from_numpy(self._unit(pixels, box))[None]

    def _pixels(self, box: Box) -> np.ndarray:
        """The pass's channels only (a 20-channel image is read once per channel, not 20 times),
        with missing pixels filled (read :data:`~lpdask.nodata.FILL_RADIUS` wider for that)."""
        if self.nodata is None:
            return self._read(box)
        grown = box.grow(FILL_RADIUS, self.source.height, self.source.width)
        pixels, valid = self._read_valid(grown)
        inner = box.within(grown)
        if valid is None or valid.all():
            return pixels[inner.slices()]
        filled = fill(pixels, valid)[inner.slices()]
        if pixels.dtype.kind in "ui":
            info = np.iinfo(pixels.dtype)
            return np.clip(np.rint(filled), info.min, info.max).astype(pixels.dtype)
        return filled.astype(pixels.dtype)

    def _read(self, box: Box, last: int | None = None) -> np.ndarray:
        """The pass's channels of ``box`` (from its first to ``last``, default its last)."""
        first, last = min(self.pass_.channels), max(self.pass_.channels) if last is None else last
        try:
            return self.source.read(box, self.plane, slice(first, last + 1))
        except Exception as exc:  # tifffile, imagecodecs and zarr raise many types for damaged files
            plane = "".join(f" {a}={i}" for a, i in self.plane.items())
            raise LpdaskError(f"{self.source.path}: cannot read rows {box.y0}:{box.y1} columns {box.x0}:{box.x1}"
                              f"{plane} ({type(exc).__name__}: {exc})") from None

    def _read_valid(self, box: Box) -> tuple[np.ndarray, np.ndarray | None]:
        """The pass's pixels of ``box`` and which of them hold data (None: all); an alpha that marks
        the colour under it is read with the colour, in one read."""
        nodata = self.nodata
        assert nodata is not None
        first, last = min(self.pass_.channels), max(self.pass_.channels)
        alpha = nodata.alpha if nodata.alpha is not None and nodata.alpha > last else None
        pixels = self._read(box, alpha)
        mask = None if nodata.mask_page is None else read_mask(self.source, nodata.mask_page, box)
        if alpha is not None:  # the colour under a transparent pixel is missing
            seen = pixels[..., alpha - first] != 0
            mask = seen if mask is None else mask & seen
            pixels = pixels[..., : last + 1 - first]
        return pixels, valid_of(pixels, nodata.value, mask)

    def _unit(self, pixels: np.ndarray, box: Box) -> np.ndarray:
        plane = "".join(f" {a}={i}" for a, i in self.plane.items())
        where = f"in rows {box.y0}:{box.y1} columns {box.x0}:{box.x1}{plane} "
        first = min(self.pass_.channels)
        local = Pass(self.pass_.kind, tuple(c - first for c in self.pass_.channels))
        return network_input(pixels, local, self.value_range, self.input_factor, where)

    def write_result(self, box: Box, values: np.ndarray) -> None:
        """Network output (3 or 1, h, w) of ``box`` to the pass's channels of the sink; ``values`` is
        used as scratch."""
        self.write_pixels(box, self.to_pixels(values))

    def pixels_on_device(self, values: Tensor) -> np.ndarray | None:
        """Network output (3 or 1, h, w) on a GPU as the pass's output pixels, converted there (a
        quarter of the bytes to copy back for 8-bit output); None where it is converted on the host (a
        CPU tensor; grey through an RGB network, whose luma stays with NumPy's float rounding; pixels
        mapped in float64)."""
        dtype = self.sink.level0.dtype
        if not values.is_cuda or not self.pass_.as_is or working_float(dtype) != np.float32:
            return None
        return from_unit_tensor(values.float(), dtype, self.value_range).cpu().numpy().astype(dtype, copy=False)

    def to_pixels(self, values: np.ndarray) -> np.ndarray:
        """Network output (3 or 1, h, w) as the pass's output pixels; ``values`` is used as scratch."""
        return from_unit(self.pass_.from_network(values), self.sink.level0.dtype, self.value_range, scratch=True)

    def write_pixels(self, box: Box, pixels: np.ndarray, level: int = 0) -> None:
        """The pass's output pixels (channels, h, w) at ``box`` of the sink's level ``level``; at
        level 0 those the input lacked take the nodata value (``pixels`` is changed in place)."""
        if level == 0 and self.nodata is not None and self.nodata.marks:
            scale = self.sink.level0.shape[-1] // self.source.width
            under = input_box(box, scale)
            _, valid = self._read_valid(under)
            if valid is not None:
                first = min(self.pass_.channels)
                valid = valid[..., [c - first for c in self.pass_.channels]]
                mark(pixels, upscaled_mask(valid, box, scale, under), self.nodata.output)
        self.sink.write(box, pixels, self.plane, self.pass_.channels, level)


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
        pixels = job.pixels_on_device(values)
        with writing(job.sink.path):
            if pixels is None:
                job.write_result(kept, values.cpu().numpy())
            else:
                job.write_pixels(kept, pixels)
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
