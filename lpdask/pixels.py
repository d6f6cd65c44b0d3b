"""Pixel values in and out of the network, as Real-ESRGAN's whole-image inference treats them."""

from __future__ import annotations

from typing import TYPE_CHECKING


import numpy as np

from .errors import LpdaskError

if TYPE_CHECKING:
    import torch

SUPPORTED_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))

ValueRange = tuple[float, float]
"""(low, high): the values the network sees as 0 and 1. None: [0, 1] for floats, [0, max] for integers.
Integer values outside it are clipped (a display window, e.g. 16-bit reflectances in 0..10000);
float values outside it are refused."""


def check_dtype(dtype: np.dtype) -> np.dtype:
    """Accept uint8, uint16 and float32 (values in [0, 1]); refuse anything else."""
    dtype = np.dtype(dtype)
    if dtype not in SUPPORTED_DTYPES:
        names = ", ".join(str(d) for d in SUPPORTED_DTYPES)
        raise LpdaskError(f"pixel type {dtype} is not supported (use {names})")
    return dtype


def max_value(dtype: np.dtype) -> float:
    """What 1.0 means for this dtype: 255 for uint8, 65535 for uint16, 1 for floats."""
    return float(np.iinfo(dtype).max) if np.dtype(dtype).kind == "u" else 1.0


def to_unit(pixels: np.ndarray, value_range: ValueRange | None = None, where: str = "") -> np.ndarray:
    """(h, w, c) pixels to (c, h, w) float32 in [0, 1]: divide by the dtype's maximum, or map
    ``value_range`` to [0, 1]. Float values outside the range are refused (``where`` names the place
    in the message); integer ones are clipped."""
    values = pixels.astype(np.float32)
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
            raise LpdaskError(f"float32 values {found} {where}outside [{low:g}, {high:g}]{hint}")
    if value_range:
        low, high = value_range
        values = (values - np.float32(low)) / np.float32(high - low)
        if pixels.dtype.kind != "f":
            np.clip(values, 0, 1, out=values)
    elif pixels.dtype.kind != "f":
        values /= np.float32(max_value(pixels.dtype))
    return np.ascontiguousarray(values.transpose(2, 0, 1))


def from_unit(values: np.ndarray, dtype: np.dtype, value_range: ValueRange | None = None, *,
              scratch: bool = False) -> np.ndarray:
    """(c, h, w) network output to pixels: clamp to [0, 1], scale (to ``value_range`` if given), round
    half to even (integers), cast. ``scratch``: ``values`` may be overwritten (saves allocating, and
    faulting in, a copy of a large float array)."""
    values = np.clip(values, 0, 1, out=values if scratch and values.flags.writeable else None)
    dtype = np.dtype(dtype)
    if value_range:
        low, high = value_range
        values *= np.float32(high - low)
        values += np.float32(low)
    elif dtype.kind != "f":
        values *= np.float32(max_value(dtype))
    if dtype.kind == "f":
        return values.astype(dtype, copy=False)
    info = np.iinfo(dtype)
    np.rint(values, out=values)
    np.clip(values, info.min, info.max, out=values)
    return values.astype(dtype)


def from_unit_tensor(values: torch.Tensor, dtype: np.dtype, value_range: ValueRange | None = None) -> torch.Tensor:
    """:func:`from_unit` on a float32 tensor where it lies (a GPU: a quarter of the bytes to copy
    back for 8-bit output), with the same float32 operations in the same order, so the same pixels;
    16-bit values come as int32 (torch's uint16 is not fully supported)."""
    import torch

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
    info = np.iinfo(dtype)
    return values.round().clamp(info.min, info.max).to(torch.uint8 if dtype == np.uint8 else torch.int32)
