"""Stage geometry: the grid each stage runs on, the network's reach, activation sizes, halo windows
and the chunk sizes of the lazy graph. The engine, the lazy API, the planner and the disk check all
ask here.

Stages work on the image's grid divided by the network's pixel-unshuffle factor ``d`` (1 for most
networks); stage ``k``'s input is that grid times the scales of the stages before it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from .chunks import Box, Grid
from .errors import LpdaskError
from .stages import Stage


class Scaled(Protocol):
    @property
    def scale(self) -> int: ...


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def factors(stages: Sequence[Scaled]) -> list[int]:
    """The resolution of each stage's input relative to the unshuffled image, then the output's:
    ``[1, s0, s0 * s1, ...]``, one more entry than stages."""
    out = [1]
    for stage in stages:
        out.append(out[-1] * stage.scale)
    return out


def unshuffled(height: int, width: int, d: int) -> tuple[int, int]:
    """The image's size on the stages' grid: divided by ``d``, rounded up (the image is
    reflect-padded to a multiple of ``d``)."""
    return ceil_div(height, d), ceil_div(width, d)


def stage_grid(height: int, width: int, chunk: int, d: int, factor: int) -> Grid:
    """The chunk grid of a stage whose input is ``factor`` times the unshuffled image; ``chunk`` is
    in image pixels."""
    rows, cols = unshuffled(height, width, d)
    return Grid(rows * factor, cols * factor, chunk // d * factor)


def bands(length: int, width: int) -> list[tuple[int, int]]:
    """Streaming tiles along one axis: [a, b) ranges ``width`` long (the last may be shorter) over ``length``."""
    return [(a, min(length, a + width)) for a in range(0, length, width)]


def reach(stages: Sequence[Stage]) -> int:
    """The receptive-field radius of a chain of stages, in pixels of the first stage's input."""
    radius = sum(stage.halo / factor for stage, factor in zip(stages, factors(stages)))
    return math.ceil(radius - 1e-9)


def activation_bytes(stages: Sequence[Stage], height: int, width: int, d: int, itemsize: int) -> list[int]:
    """Bytes of each stored activation (every stage's output but the last's)."""
    rows, cols = unshuffled(height, width, d)
    return [stage.channels * rows * f * cols * f * itemsize
            for stage, f in zip(stages[:-1], factors(stages)[1:])]


def chunk_sizes(length: int, chunk: int, halo: int) -> tuple[int, ...]:
    """Dask chunk sizes along one axis; a last chunk narrower than the halo joins the one before it."""
    sizes = [chunk] * (length // chunk) + ([length % chunk] if length % chunk else [])
    if len(sizes) > 1 and sizes[-1] < halo:
        sizes[-2:] = [sizes[-2] + sizes[-1]]
    if len(sizes) > 1 and min(sizes) < halo:
        raise LpdaskError(f"chunk {chunk} is smaller than the widest stage halo {halo}; "
                          "use a larger chunk or fewer blocks per stage")
    return tuple(sizes)


@dataclass(frozen=True)
class Span:
    """One tile's extent along one axis (its columns, or its rows): each array's range, and each
    stage's widest input window and the output range it keeps (all in the array's own pixels)."""

    arrays: dict[str, tuple[int, int]]
    windows: tuple[tuple[int, int], ...]
    outputs: tuple[tuple[int, int], ...]


def reach_span(stages: Sequence[Stage], size: int, x0: int, x1: int) -> Span:
    """What a tile of image pixels [x0, x1) along one axis (on the stages' grid, ``size`` long)
    needs of every array along it, from the last stage back to the first."""
    f = factors(stages)
    need: dict[str, tuple[int, int]] = {stages[-1].name: (x0 * f[-1], x1 * f[-1])}
    windows: list[tuple[int, int]] = [(0, 0)] * len(stages)
    outputs: list[tuple[int, int]] = [(0, 0)] * len(stages)
    for k in reversed(range(len(stages))):
        stage, s = stages[k], stages[k].scale
        c0, c1 = need[stage.name]
        first, stop = c0 // s, ceil_div(c1, s)
        outputs[k] = need[stage.name] = (first * s, stop * s)
        windows[k] = (max(0, first - stage.halo), min(size * f[k], stop + stage.halo))
        for name in stage.inputs:
            lo, hi = need.get(name, windows[k])
            need[name] = (min(lo, windows[k][0]), max(hi, windows[k][1]))
    return Span(need, tuple(windows), tuple(outputs))


def extent_sum(length: int, chunk: int, halo: int, granule: int = 1) -> float:
    """Sum over the chunks along one axis of their window's extent (chunk plus halo, clipped at the
    border), rounded out to whole ``granule``s where reads fetch whole store chunks."""
    starts = np.arange(0, length, chunk)
    lo, hi = np.maximum(0, starts - halo), np.minimum(length, starts + chunk + halo)
    if granule > 1:
        lo, hi = lo // granule * granule, np.minimum(length, (hi + granule - 1) // granule * granule)
    return float((hi - lo).sum())


def overlapped_block(shape: tuple[int, int], halo: int, index: tuple[int, int], blocks: tuple[int, int]) -> Box:
    """Block ``index`` of a ``blocks`` grid within its ``shape`` window as ``dask.array.overlap`` grows it
    (``halo`` on every side but the image border's)."""
    (i, j), (h, w) = index, shape
    top, left = (halo if i > 0 else 0), (halo if j > 0 else 0)
    bottom, right = (halo if i < blocks[0] - 1 else 0), (halo if j < blocks[1] - 1 else 0)
    return Box(top, h - bottom, left, w - right)


def dilated(mask: np.ndarray, r: int) -> np.ndarray:
    """A map of cells grown by ``r`` cells each way (a square), within its own bounds."""
    return _square_counts(mask, r) > 0 if r > 0 else mask.copy()


def eroded(mask: np.ndarray, r: int) -> np.ndarray:
    """The cells whose every cell within ``r`` (a square) is in ``mask``, outside the map counting as not."""
    return _square_counts(mask, r) == (2 * r + 1) ** 2


def _square_counts(mask: np.ndarray, r: int) -> np.ndarray:
    """How many cells of ``mask`` are set in the (2r + 1)^2 square around each (none outside the map)."""
    side = 2 * r + 1
    padded = np.zeros((mask.shape[0] + side, mask.shape[1] + side), np.int64)
    padded[r + 1: r + 1 + mask.shape[0], r + 1: r + 1 + mask.shape[1]] = mask
    sums = padded.cumsum(0).cumsum(1)
    return sums[side:, side:] - sums[:-side, side:] - sums[side:, :-side] + sums[:-side, :-side]
