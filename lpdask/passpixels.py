"""A run's pixels: one channel pass of one plane, read from the source as the network sees it
(missing pixels filled, mapped to [0, 1], reflect-padded and pixel-unshuffled for x2 / x1 models)
and the network's output written back to the sink as pixels (missing pixels marked). Everything
that computes (the chunk task, the streaming and lazy executors) reads and writes through it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .channels import Pass
from .chunks import Box, reflect
from .io.omezarr import OmeZarrSink
from .io.sources import Source
from .nodata import FILL_RADIUS, Nodata, fill, input_box, mark, read_mask, upscaled_mask, valid_of
from .pixels import ValueRange, from_unit, from_unit_tensor, network_input, working_float


READ_BLOCK = 2048
"""Pixels a side of the blocks :meth:`PassPixels.blank` and :meth:`PassPixels.paint` write at a time."""


@dataclass(frozen=True)
class PassPixels:
    """Pass ``pass_`` of ``plane`` of ``source``, into and out of a network that pixel-unshuffles by
    ``input_factor``, its output going to ``sink``."""

    source: Source
    sink: OmeZarrSink
    plane: dict[str, int]
    pass_: Pass
    value_range: ValueRange | None = None
    nodata: Nodata | None = None
    input_factor: int = 1

    @property
    def output_dtype(self) -> np.dtype:
        """The output's pixel type: the sink's (the input's, where there is no sink yet: a plan)."""
        return self.sink.level0.dtype if self.sink is not None else self.source.dtype

    def read(self, window: Box) -> Tensor:
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
        return self.source.read(box, self.plane, slice(first, last + 1))

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

    def pass_pixels(self, box: Box) -> tuple[np.ndarray, np.ndarray | None]:
        """The pass's channels of ``box`` as read (h, w, c), and which of them hold data (None: all)."""
        if self.nodata is None:
            return self._read(box)[..., self._own], None
        pixels, valid = self._read_valid(box)
        return pixels[..., self._own], None if valid is None else valid[..., self._own]

    @property
    def _own(self) -> list[int]:
        """The pass's channels among those read (its first to its last)."""
        first = min(self.pass_.channels)
        return [c - first for c in self.pass_.channels]

    def network_vector(self, colour: np.ndarray) -> np.ndarray:
        """The network's input (c * d * d,) where the image is the pass's ``colour`` everywhere."""
        d = self.input_factor
        pixels = np.broadcast_to(colour.astype(self.source.dtype), (d, d, len(colour))).copy()
        return self._unit(pixels, Box(0, d, 0, d))[:, 0, 0].copy()

    def paint(self, box: Box, colour: np.ndarray) -> None:
        """Output pixels of one ``colour`` over output ``box``: (channels,) of the output's dtype, or
        (channels, P, P), a block repeated every P pixels from the output's corner; marked where the
        input lacks data as :meth:`write` marks them, a block of rows at a time."""
        block = colour if colour.ndim == 3 else colour[:, None, None]
        period = block.shape[1]
        rows = max(1, READ_BLOCK * READ_BLOCK // max(1, box.shape[1]))
        columns = np.arange(box.x0, box.x1) % period
        for y0 in range(box.y0, box.y1, rows):
            part = Box(y0, min(box.y1, y0 + rows), box.x0, box.x1)
            lines = np.arange(part.y0, part.y1) % period
            self.write(part, block[:, lines[:, None], columns[None, :]])

    def blank(self, box: Box) -> None:
        """The nodata value over output ``box`` of the pass's channels (output no input pixel under it
        holds data for), written a block of rows at a time."""
        assert self.nodata is not None
        dtype = self.output_dtype
        rows = max(1, READ_BLOCK * READ_BLOCK // max(1, box.shape[1]))
        for y0 in range(box.y0, box.y1, rows):
            part = Box(y0, min(box.y1, y0 + rows), box.x0, box.x1)
            pixels = np.full((len(self.pass_.channels), *part.shape), self.nodata.output, dtype)
            self.sink.write(part, pixels, self.plane, self.pass_.channels)

    def _unit(self, pixels: np.ndarray, box: Box) -> np.ndarray:
        plane = "".join(f" {a}={i}" for a, i in self.plane.items())
        where = f"in rows {box.y0}:{box.y1} columns {box.x0}:{box.x1}{plane} "
        first = min(self.pass_.channels)
        local = Pass(self.pass_.kind, tuple(c - first for c in self.pass_.channels))
        return network_input(pixels, local, self.value_range, self.input_factor, where)

    def write_result(self, box: Box, values: np.ndarray) -> None:
        """Network output (3 or 1, h, w) of ``box`` to the pass's channels of the sink; ``values`` is
        used as scratch."""
        self.write(box, self.to_pixels(values))

    def on_device(self, values: Tensor) -> np.ndarray | None:
        """Network output (3 or 1, h, w) on a GPU as the pass's output pixels, converted there (a
        quarter of the bytes to copy back for 8-bit output); None where it is converted on the host (a
        CPU tensor; grey through an RGB network, whose luma stays with NumPy's float rounding; pixels
        mapped in float64)."""
        dtype = self.output_dtype
        if not values.is_cuda or not self.pass_.as_is or working_float(dtype) != np.float32:
            return None
        return from_unit_tensor(values.float(), dtype, self.value_range).cpu().numpy().astype(dtype, copy=False)

    def to_pixels(self, values: np.ndarray) -> np.ndarray:
        """Network output (3 or 1, h, w) as the pass's output pixels; ``values`` is used as scratch."""
        return from_unit(self.pass_.from_network(values), self.output_dtype, self.value_range, scratch=True)

    def write(self, box: Box, pixels: np.ndarray, level: int = 0) -> None:
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
