"""Output known without running the network over it: where the input holds no data (the nodata value
goes there whatever the network gives), and where the input is one constant colour as far as the
network reaches (the network's response to that constant, computed once on a small patch).

An output pixel depends only on the input within the network's reach of it. Where all of that is
one colour and inside the image (no border padding within reach), every convolution sees a constant
input, so the pixel is the network's response to an endless image of that colour: a missing tile of
a sparse TIFF, a slide's blank glass or white background, a flat-filled area. That response is one
value per channel, computed once per colour by running each stage on a constant patch just wider than
its halo. Floating-point sums taken in another order can differ in the last bits between positions,
so a float output may differ there by a few units in the last place from computing every pixel; 8-bit
and 16-bit outputs round them away.

The image is looked at in square cells (:data:`CELL` pixels, fewer where a chunk needs): a cell is
known when no pixel of it holds data, or when every cell within the reach of it is the same colour
and lies inside the image; the executors compute only the rest (and what its reach needs), then write
the known cells.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from .chunks import Box
from .geometry import ceil_div, eroded

if TYPE_CHECKING:
    import torch

    from .passpixels import PassPixels
    from .stages import Stage

CELL = 16
"""Image pixels a side of the cells the input is looked at in (a multiple of every unshuffle factor)."""
COMPUTE = -2
NODATA = -1
READ_BLOCK = 2048
"""Pixels a side of the blocks the input is read in to find its cells."""


@dataclass
class Known:
    """What each ``cell`` x ``cell`` square of one run's output (from the image's corner, in image
    pixels) gets: :data:`COMPUTE`, :data:`NODATA`, or the index of a constant colour whose output
    pixels are ``colours[index]``: (channels,) of the output's dtype, or (channels, P, P), the block
    that repeats every P output pixels from the output's corner."""

    cell: int
    fills: np.ndarray
    colours: list[np.ndarray] = field(default_factory=list)
    origin: tuple[int, int] = (0, 0)
    tissue: np.ndarray | None = None
    """Where a tissue mask was asked for (:mod:`lpdask.tissue`): the cells inside it (outside, the
    fill is the background colour, the last of :attr:`colours`)."""
    inputs: list[np.ndarray | None] = field(default_factory=list)
    """The input colour whose response each of :attr:`colours` is (None: the background's, as it is)."""

    def responding(self, pixels: PassPixels, stages: list[Stage], device: torch.device | None,
                   precision: torch.dtype | None) -> Known:
        """The same cells, each colour's response computed again by ``stages`` (those a run computes
        with, whose arithmetic the known pixels must share)."""
        colours = [colour if given is None else response(pixels, stages, given, device, precision)
                   for colour, given in zip(self.colours, self.inputs)]
        assert all(c is not None for c in colours), "the run's stages answer a constant as the planner's did"
        return replace(self, colours=colours)  # type: ignore[arg-type]
    """The cell (row, column) ``fills`` starts at: a :meth:`part` holds only the cells it needs."""

    def part(self, box: Box) -> Known:
        """The cells under image pixels ``box`` only (what a tile sent to a worker needs)."""
        c = self.cell
        r0, c0 = box.y0 // c - self.origin[0], box.x0 // c - self.origin[1]
        fills = self.fills[r0: ceil_div(box.y1, c) - self.origin[0], c0: ceil_div(box.x1, c) - self.origin[1]]
        return replace(self, fills=fills.copy(), origin=(r0 + self.origin[0], c0 + self.origin[1]), tissue=None)

    def compute(self) -> np.ndarray:
        """Which cells must be computed, as (rows, columns) booleans."""
        return self.fills == COMPUTE

    @property
    def computed_share(self) -> float:
        return float(self.compute().mean()) if self.fills.size else 1.0

    def chunks(self, chunk: int) -> np.ndarray:
        """Which ``chunk``-pixel chunks (a multiple of :attr:`cell`) hold a cell to compute."""
        k = chunk // self.cell
        need = self.compute()
        rows, cols = ceil_div(need.shape[0], k), ceil_div(need.shape[1], k)
        padded = np.zeros((rows * k, cols * k), bool)
        padded[: need.shape[0], : need.shape[1]] = need
        return padded.reshape(rows, k, cols, k).any(axis=(1, 3))

    def write(self, pixels: PassPixels, box: Box, scale: int, computed: bool = False) -> None:
        """Write what is known over image pixels ``box`` (all of it known, or with ``computed`` the cells
        to compute left as they are) as output pixels, a run of cells of one fill at a time."""
        if box.y1 <= box.y0 or box.x1 <= box.x0:
            return
        height, width = pixels.sink.level0.shape[-2:]
        c, (o0, o1) = self.cell, self.origin
        fills = self.fills[box.y0 // c - o0: ceil_div(box.y1, c) - o0, box.x0 // c - o1: ceil_div(box.x1, c) - o1]
        r = 0
        while r < len(fills):  # rows of cells alike are written as one band: whole stored chunks at a time
            row, last = fills[r], r
            while last + 1 < len(fills) and np.array_equal(fills[last + 1], row):
                last += 1
            y0, y1 = max(box.y0, (box.y0 // c + r) * c), min(box.y1, (box.y0 // c + last + 1) * c)
            r = last + 1
            edges = np.flatnonzero(np.diff(row)) + 1
            for start, stop in zip(np.r_[0, edges], np.r_[edges, len(row)]):
                x0, x1 = max(box.x0, (box.x0 // c + start) * c), min(box.x1, (box.x0 // c + stop) * c)
                fill = int(row[start])
                if fill == COMPUTE:
                    assert computed, "a cell to compute was written as known"
                    continue
                out = Box(min(height, y0 * scale), min(height, y1 * scale), min(width, x0 * scale),
                          min(width, x1 * scale))
                if out.shape[0] <= 0 or out.shape[1] <= 0:
                    continue
                if fill == NODATA:
                    pixels.blank(out)
                else:
                    pixels.paint(out, self.colours[fill])

    def paint_background(self, pixels: PassPixels, scale: int) -> None:
        """Write the background colour over every cell outside the tissue mask, those a tile or chunk
        computed along with its tissue included (run after the executor)."""
        if self.tissue is None or not self.colours:
            return
        background = len(self.colours) - 1
        height, width = pixels.sink.level0.shape[-2:]
        c = self.cell
        for r, row in enumerate(self.fills == background):
            edges = np.flatnonzero(np.diff(row.astype(np.int8))) + 1
            for start, stop in zip(np.r_[0, edges], np.r_[edges, len(row)]):
                if row[start]:
                    out = Box(min(height, r * c * scale), min(height, (r + 1) * c * scale),
                              min(width, start * c * scale), min(width, stop * c * scale))
                    if out.shape[0] > 0 and out.shape[1] > 0:
                        pixels.paint(out, self.colours[background])

    def write_outside(self, pixels: PassPixels, outer: Box, inner: list[Box], scale: int) -> None:
        """Write what is known over image pixels ``outer`` outside the boxes ``inner`` (bands of rows
        in order, one column range: what a tile computed)."""
        row = outer.y0
        for band in inner:
            self.write(pixels, Box(row, band.y0, outer.x0, outer.x1), scale)
            self.write(pixels, Box(band.y0, band.y1, outer.x0, band.x0), scale)
            self.write(pixels, Box(band.y0, band.y1, band.x1, outer.x1), scale)
            row = band.y1
        self.write(pixels, Box(row, outer.y1, outer.x0, outer.x1), scale)


def known(pixels: PassPixels, stages: list[Stage] | None, reach: int, cell: int, device: torch.device | None = None,
          precision: torch.dtype | None = None, constants: bool = True, nodata: bool = True,
          tissue: str | None = None) -> Known:
    """What of the run ``pixels`` is known without the network whose stages are ``stages`` (reach
    ``reach`` image pixels), in cells of ``cell`` pixels: where no data is (unless ``nodata`` is
    False), where one colour is (unless ``constants`` is False), and outside the ``tissue`` mask
    ("auto" or a file: :mod:`lpdask.tissue`), which takes the background colour."""
    height, width = pixels.source.height, pixels.source.width
    rows, cols = ceil_div(height, cell), ceil_div(width, cell)
    data = np.zeros((rows, cols), bool)
    colour_of = np.full((rows, cols), -1, np.int64)
    seen: dict[bytes, int] = {}
    values: list[np.ndarray] = []
    if tissue and pixels.pass_.kind != "rgb":
        from .errors import LpdaskError

        raise LpdaskError(f"--tissue is for RGB brightfield slides; this image runs as {pixels.pass_.describe()}")
    means = np.zeros((rows, cols, len(pixels.pass_.channels)), np.float32) if tissue else None
    block = max(1, READ_BLOCK // cell) * cell
    for y0 in range(0, height, block):
        for x0 in range(0, width, block):
            box = Box(y0, min(height, y0 + block), x0, min(width, x0 + block))
            image, valid = pixels.pass_pixels(box)
            r0, c0 = y0 // cell, x0 // cell
            h, w = ceil_div(box.shape[0], cell), ceil_div(box.shape[1], cell)
            held = np.ones(box.shape, bool) if valid is None else valid.any(axis=-1)
            data[r0:r0 + h, c0:c0 + w] = _cells(held, cell, np.any) if nodata else True
            if means is not None:
                means[r0:r0 + h, c0:c0 + w] = _means(image, cell)
            if not constants:
                continue
            whole = valid is None or bool(valid.all())
            full_h, full_w = box.shape[0] // cell, box.shape[1] // cell  # cells cut by the image's edge: never
            if not (full_h and full_w):
                continue
            part = image[: full_h * cell, : full_w * cell]
            grid = part.reshape(full_h, cell, full_w, cell, -1)
            first = grid[:, :1, :, :1]
            flat = np.all(grid == first, axis=(1, 3, 4))
            if not whole:
                flat &= _cells(valid[: full_h * cell, : full_w * cell].all(axis=-1), cell, np.all)
            for i, j in zip(*np.nonzero(flat)):
                value = np.ascontiguousarray(first[i, 0, j, 0])
                key = value.tobytes()
                if key not in seen:
                    seen[key] = len(values)
                    values.append(value)
                colour_of[r0 + i, c0 + j] = seen[key]
    fills = np.where(data, COMPUTE, NODATA).astype(np.int32)
    colours: list[np.ndarray] = []
    inputs: list[np.ndarray | None] = []
    if constants and values and stages is not None:
        r = ceil_div(reach, cell)
        for index, value in enumerate(values):
            inside = eroded(colour_of == index, r)
            if inside.any():
                answer = response(pixels, stages, value, device, precision)
                if answer is None:
                    break
                fills[inside & data] = len(colours)
                colours.append(answer)
                inputs.append(value)
    if means is None:
        return Known(cell, fills, colours, inputs=inputs)
    from . import tissue as tissues

    source = pixels.source
    mask = (tissues.found(means, cell) if tissue == "auto"
            else tissues.given(tissue, (rows, cols), cell, height, width))  # type: ignore[arg-type]
    outside = ~mask & (fills != NODATA)
    if outside.any():
        glass = np.median(means[~mask], axis=0)
        fills[outside] = len(colours)
        colours.append(_as(glass, pixels.output_dtype if source is not None else np.dtype(np.uint8)))
        inputs.append(None)
    return Known(cell, fills, colours, tissue=mask, inputs=inputs)


def _means(image: np.ndarray, cell: int) -> np.ndarray:
    """Each cell's mean colour (cells cut by the edge: of the pixels they hold)."""
    h, w = image.shape[:2]
    rows, cols = ceil_div(h, cell), ceil_div(w, cell)
    padded = np.zeros((rows * cell, cols * cell, image.shape[2]), np.float64)
    padded[:h, :w] = image
    counts = np.zeros((rows * cell, cols * cell), np.float64)
    counts[:h, :w] = 1
    sums = padded.reshape(rows, cell, cols, cell, -1).sum(axis=(1, 3))
    return (sums / counts.reshape(rows, cell, cols, cell).sum(axis=(1, 3))[..., None]).astype(np.float32)


def _as(colour: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A colour as pixels of ``dtype`` (rounded for integers)."""
    if np.dtype(dtype).kind == "f":
        return colour.astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(np.rint(colour), info.min, info.max).astype(dtype)


def _cells(mask: np.ndarray, cell: int, reduce: object) -> np.ndarray:
    """``reduce`` (np.any or np.all) of ``mask`` over each cell (cells cut by the edge padded: with
    False for any, True for all)."""
    h, w = ceil_div(mask.shape[0], cell), ceil_div(mask.shape[1], cell)
    padded = np.full((h * cell, w * cell), reduce is np.all, bool)
    padded[: mask.shape[0], : mask.shape[1]] = mask
    return reduce(padded.reshape(h, cell, w, cell), axis=(1, 3))  # type: ignore[operator]


def response(pixels: PassPixels, stages: list[Stage], value: np.ndarray, device: torch.device | None,
             precision: torch.dtype | None) -> np.ndarray | None:
    """The output pixels of the network's stages over an endless image of the pass's colour ``value``:
    (channels, P, P) of the output's dtype, the block that repeats every P output pixels from the
    image's corner (P: output pixels per pixel of the stages' grid; a pixel shuffle makes the blocks'
    pixels differ, nearest upsampling keeps them one colour). Each stage runs on a constant patch a
    little wider than twice its halo; its centre is the next stage's constant. None where a stage
    before the last does not keep a constant input constant (that network's response is not one
    colour per stage)."""
    import torch

    from .device import activation_layout, ieee_fp32
    from .geometry import factors
    from .stages import IMAGE

    device = device or torch.device("cpu")
    precision = precision or torch.float32
    layout = activation_layout(device)
    period = factors(stages)[-1]
    constant: dict[str, torch.Tensor] = {IMAGE: torch.from_numpy(pixels.network_vector(value))}
    block = None
    with torch.inference_mode(), ieee_fp32(device):
        for index, stage in enumerate(stages):
            side = 2 * stage.halo + 8 + 2 * period
            patches = [constant[name].reshape(1, -1, 1, 1).expand(1, -1, side, side).to(
                device, precision, memory_format=layout) for name in stage.inputs]
            out = stage.module(*patches)[0].float().cpu()
            start = out.shape[-1] // 2 // period * period  # on the block grid, away from the patch's edges
            block = out[:, start: start + period, start: start + period]
            flat = block[:, :1, :1]
            if index < len(stages) - 1:
                if not torch.allclose(block, flat.expand_as(block), rtol=1e-5, atol=1e-6):
                    return None
                constant[stage.name] = flat[:, 0, 0]
    assert block is not None
    return pixels.to_pixels(block.numpy().copy())


def reach_pixels(stages: list[Stage], input_factor: int) -> int:
    """The stages' reach in image pixels."""
    from .geometry import reach

    return reach(stages) * input_factor


def cell_for(chunk: int) -> int:
    """The cell side for chunks of ``chunk`` pixels: :data:`CELL`, or a divisor of the chunk."""
    return math.gcd(chunk, CELL)
