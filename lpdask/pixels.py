"""Pixel values in and out of the network, as Real-ESRGAN's whole-image inference treats them."""

from __future__ import annotations

import numpy as np

from .errors import LpdaskError

SUPPORTED_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))


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


def to_unit(pixels: np.ndarray) -> np.ndarray:
    """(h, w, c) pixels to (c, h, w) float32 in [0, 1]: divide by the dtype's maximum."""
    values = pixels.astype(np.float32) / np.float32(max_value(pixels.dtype))
    return np.ascontiguousarray(values.transpose(2, 0, 1))


def from_unit(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """(c, h, w) network output to pixels: clamp to [0, 1], scale, round half to even, cast."""
    values = np.clip(values, 0, 1)
    if np.dtype(dtype).kind == "f":
        return values.astype(dtype, copy=False)
    return (values * np.float32(max_value(dtype))).round().astype(dtype)
