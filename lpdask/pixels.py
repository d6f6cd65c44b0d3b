"""Pixel values in and out of the network, as Real-ESRGAN's whole-image inference treats them."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import LpdaskError

if TYPE_CHECKING:
    from .channels import Pass
    import torch

NATURAL_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))
"""Pixel types with a natural [0, 1]: 0 to the integer maximum, floats as they are."""
RANGED_DTYPES = tuple(np.dtype(t) for t in (np.int8, np.int16, np.int32, np.uint32, np.float64))
"""Pixel types that need a value range (``--value-range``): signed integers have no natural black,
and 32-bit integers and float64 no natural white."""
SUPPORTED_DTYPES = NATURAL_DTYPES + RANGED_DTYPES
"""64-bit integers are left out: float64, in which their values are mapped, cannot hold them all
(nor round-trip the extremes of their range), and the network computes in float32 anyway."""

ValueRange = tuple[float, float]
"""(low, high): the values the network sees as 0 and 1. None: [0, 1] for floats, [0, max] for unsigned
8- and 16-bit integers; other types need one. Integer values outside it are clipped (a display
window, e.g. 16-bit reflectances in 0..10000); float values outside it are refused."""


def check_dtype(dtype: np.dtype) -> np.dtype:
    """Accept the :data:`SUPPORTED_DTYPES`; refuse anything else."""
    dtype = np.dtype(dtype)
    if dtype not in SUPPORTED_DTYPES:
        names = ", ".join(str(d) for d in SUPPORTED_DTYPES)
        raise LpdaskError(f"pixel type {dtype} is not supported (use {names})")
    return dtype


def needs_value_range(dtype: np.dtype) -> bool:
    """Whether ``dtype`` has no natural [0, 1], so that a value range must say what maps to it."""
    return np.dtype(dtype) in RANGED_DTYPES


def working_float(dtype: np.dtype) -> type[np.floating]:
    """The float type pixels of ``dtype`` are mapped to and from [0, 1] in: float64 for 32-bit
    integers and float64 (float32 cannot hold their values), float32 otherwise."""
    dtype = np.dtype(dtype)
    return np.float64 if dtype.itemsize >= 4 and dtype != np.float32 else np.float32


def integer_bounds(dtype: np.dtype, value_range: ValueRange | None = None) -> tuple[int, int]:
    """The lowest and highest output pixel of integer ``dtype``: its range, within ``value_range``'s."""
    info = np.iinfo(dtype)
    if not value_range:
        return int(info.min), int(info.max)
    return max(int(info.min), math.ceil(value_range[0])), min(int(info.max), math.floor(value_range[1]))


def max_value(dtype: np.dtype) -> float:
    """What 1.0 means for this dtype: 255 for uint8, 65535 for uint16, 1 for floats."""
    return float(np.iinfo(dtype).max) if np.dtype(dtype).kind == "u" else 1.0


def to_unit(pixels: np.ndarray, value_range: ValueRange | None = None, where: str = "") -> np.ndarray:
    """(h, w, c) pixels to (c, h, w) float32 in [0, 1]: divide by the dtype's maximum, or map
    ``value_range`` to [0, 1] (in :func:`working_float`). Float values outside the range are refused
    (``where`` names the place in the message); integer ones are clipped."""
    work = working_float(pixels.dtype)
    values = pixels.astype(work)
    if pixels.dtype.kind == "f":
        low, high = value_range or (0.0, 1.0)
        if values.size and not (values.min() >= low and values.max() <= high):  # NaN fails too
            nan = np.isnan(values)
            if nan.all():
                found = "NaN"
            else:
                low_found, high_found = np.nanmin(values), np.nanmax(values)
                found = f"{low_found:g}" if low_found == high_found else f"{low_found:g} to {high_found:g}"
                found += " and NaN" if nan.any() else ""
            hint = "" if value_range else "; pass --value-range LOW,HIGH to map another range to [0, 1]"
            raise LpdaskError(f"{pixels.dtype} values {found} {where}outside [{low:g}, {high:g}]{hint}")
    if value_range:
        low, high = value_range
        values = (values - work(low)) / work(high - low)
        if pixels.dtype.kind != "f":
            np.clip(values, 0, 1, out=values)
    elif pixels.dtype.kind != "f":
        values /= np.float32(max_value(pixels.dtype))
    return np.ascontiguousarray(values.transpose(2, 0, 1), dtype=np.float32)


class NotFinite(LpdaskError):
    """The network gave NaN or infinite values: nothing written from them would mean anything."""


NOT_FINITE = ("the network's output holds NaN or infinite values: the model's weights are damaged or too large for "
              "its arithmetic (with --precision fp16 or bf16, try fp32)")


def from_unit(values: np.ndarray, dtype: np.dtype, value_range: ValueRange | None = None, *,
              scratch: bool = False) -> np.ndarray:
    """(c, h, w) network output to pixels: clamp to [0, 1], scale (to ``value_range`` if given, in
    :func:`working_float`), round half to even and clip to :func:`integer_bounds` (integers), cast.
    ``scratch``: ``values`` may be overwritten (saves allocating, and faulting in, a copy of a large
    float array)."""
    if not np.isfinite(values.sum(dtype=np.float64)):  # one pass, no mask the size of the output
        raise NotFinite(NOT_FINITE)
    values = np.clip(values, 0, 1, out=values if scratch and values.flags.writeable else None)
    dtype = np.dtype(dtype)
    work = working_float(dtype)
    values = values.astype(work, copy=False)
    if value_range:
        low, high = value_range
        values *= work(high - low)
        values += work(low)
    elif dtype.kind != "f":
        values *= np.float32(max_value(dtype))
    if dtype.kind == "f":
        return values.astype(dtype, copy=False)
    np.rint(values, out=values)
    np.clip(values, *integer_bounds(dtype, value_range), out=values)
    return values.astype(dtype)


def from_unit_tensor(values: torch.Tensor, dtype: np.dtype, value_range: ValueRange | None = None) -> torch.Tensor:
    """:func:`from_unit` on a float32 tensor where it lies (a GPU: a quarter of the bytes to copy
    back for 8-bit output), with the same float32 operations in the same order, so the same pixels;
    8- and 16-bit values come as int32 (torch's uint16 is not fully supported). Not for dtypes
    mapped in float64 (:func:`working_float`)."""
    import torch

    if not bool(torch.isfinite(values.sum(dtype=torch.float64))):
        raise NotFinite(NOT_FINITE)
    values = values.clamp(0, 1)
    dtype = np.dtype(dtype)
    if value_range:
        low, high = value_range
        values = values * np.float32(high - low)
        values = values + np.float32(low)
    elif dtype.kind != "f":
        values = values * np.float32(max_value(dtype))
    if dtype.kind == "f":
        return values
    low, high = integer_bounds(dtype, value_range)
    return values.round().clamp(low, high).to(torch.uint8 if dtype == np.uint8 else torch.int32)


def reflect_to_cells(pixels: Any, d: int, axes: tuple[int, int] = (0, 1)) -> Any:
    """``pixels`` (NumPy or Dask) reflect-padded past their last row and column to whole ``d`` x ``d``
    cells along ``axes`` (rows, columns), as Real-ESRGAN pads the input of a pixel-unshuffle model."""
    from .chunks import reflect

    for axis in axes:
        length = pixels.shape[axis]
        if length % d:  # only the few mirrored rows (columns) are gathered; np.concatenate dispatches to Dask
            index: list[Any] = [slice(None)] * pixels.ndim
            index[axis] = reflect(np.arange(length, -(-length // d) * d), length)
            pixels = np.concatenate([pixels, pixels[tuple(index)]], axis=axis)
    return pixels


def network_input(pixels: np.ndarray, pass_: Pass, value_range: ValueRange | None = None, d: int = 1,
                  where: str = "") -> np.ndarray:
    """A pass's (h, w, c) pixels, whole ``d`` x ``d`` cells, as its network sees them: mapped to [0, 1]
    (:func:`to_unit`), as the pass sends its channels (:meth:`~lpdask.channels.Pass.to_network`),
    pixel-unshuffled by ``d``: (c * d * d, h / d, w / d) float32."""
    values = pass_.to_network(to_unit(pixels, value_range, where))
    if d > 1:
        c, h, w = values.shape
        values = values.reshape(c, h // d, d, w // d, d).transpose(0, 2, 4, 1, 3).reshape(c * d * d, h // d, w // d)
    return np.ascontiguousarray(values)
