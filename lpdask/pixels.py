"""Pixel values in and out of the network, as Real-ESRGAN's whole-image inference treats them."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

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


def to_network(pixels: np.ndarray) -> Tensor:
    """(h, w, c) pixels to a (1, c, h, w) float32 tensor in [0, 1]."""
    values = pixels.astype(np.float32) / np.float32(max_value(pixels.dtype))
    return torch.from_numpy(np.ascontiguousarray(values.transpose(2, 0, 1)))[None]


def from_network(output: Tensor, dtype: np.dtype) -> np.ndarray:
    """A (1, c, h, w) network output to (c, h, w) pixels: clamp to [0, 1], scale, round half to even."""
    values = output[0].float().cpu().clamp(0, 1).numpy()
    if np.dtype(dtype).kind == "f":
        return values.astype(dtype, copy=False)
    return (values * np.float32(max_value(dtype))).round().astype(dtype)
