"""The chunk grid of an image and the halo window each chunk reads."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Box:
    """A rectangle of pixels, [y0, y1) x [x0, x1)."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0

    def grow(self, halo: int, height: int, width: int) -> Box:
        """This box plus ``halo`` on each side, clipped at the image border."""
        return Box(max(0, self.y0 - halo), min(height, self.y1 + halo),
                   max(0, self.x0 - halo), min(width, self.x1 + halo))

    def scaled(self, factor: int) -> Box:
        return Box(self.y0 * factor, self.y1 * factor, self.x0 * factor, self.x1 * factor)

    def within(self, outer: Box) -> Box:
        """This box in the coordinates of ``outer``."""
        return Box(self.y0 - outer.y0, self.y1 - outer.y0, self.x0 - outer.x0, self.x1 - outer.x0)

    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)


@dataclass(frozen=True)
class Grid:
    """Square chunks of side ``chunk`` over a ``height`` x ``width`` image; the last row and column
    of chunks may be smaller."""

    height: int
    width: int
    chunk: int

    @property
    def shape(self) -> tuple[int, int]:
        """Chunks down and across."""
        return -(-self.height // self.chunk), -(-self.width // self.chunk)

    def __len__(self) -> int:
        rows, cols = self.shape
        return rows * cols

    def box(self, i: int, j: int) -> Box:
        c = self.chunk
        return Box(i * c, min(self.height, (i + 1) * c), j * c, min(self.width, (j + 1) * c))

    def indices(self) -> Iterator[tuple[int, int]]:
        rows, cols = self.shape
        for i in range(rows):
            for j in range(cols):
                yield i, j


def reflect(indices: np.ndarray, length: int) -> np.ndarray:
    """Indices past the end mirrored about the last pixel (numpy/torch ``reflect`` padding)."""
    return np.where(indices < length, indices, 2 * (length - 1) - indices)


STORED_CHUNK = 1024
"""Most pixels a side of the output's stored chunks: what viewers and the codecs' threads like,
whatever the compute chunk."""


def stored_chunk(compute: int, most: int = STORED_CHUNK) -> int:
    """Side of the output's stored chunks for compute chunks of ``compute`` output pixels a side:
    its largest divisor up to ``most``, so that no two chunk tasks write one stored chunk."""
    return max(d for d in range(1, min(compute, most) + 1) if compute % d == 0)


def tile_rows_step(chunk: int, scale: int, input_factor: int = 1) -> int:
    """What the height (input pixels) of streaming tiles ``chunk`` wide must be a multiple of: whole
    rows of the output's stored chunks, so that no two tiles write one, and whole unshuffle cells."""
    stored = stored_chunk(chunk * scale)
    return math.lcm(stored // math.gcd(stored, scale), input_factor)
