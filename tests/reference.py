"""Independent whole-image inference, as Real-ESRGAN's ``RealESRGANer.enhance`` does it with
``tile=0``, ``pre_pad=0``, fp32. Written here from Real-ESRGAN's description, not from lpdask."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from lpdask.samples import lively, smooth_image, spread_output  # noqa: F401  (the tests' helpers)

MAX_LEVEL_DIFF = 1
MAX_DIFF_FRACTION = 0.001
MAX_DIFF_FRACTION_16BIT = 0.02
"""At 16 bits a level is 1.5e-5 of the range, so float summation order tips rounding far more often
(0.6% of values measured); 1 level is still 6x stricter than the float bound."""
FLOAT_TOLERANCE = 1e-4


@contextmanager
def eager(net: torch.nn.Module) -> Iterator[None]:
    """Run ``net`` with its eager forward (basicsr's, as Real-ESRGAN runs it), not lpdask's fast
    kernels, so the reference does not share them with the engine under test."""
    chosen = [(m, m.kernels) for m in net.modules() if hasattr(m, "kernels")]
    for module, _ in chosen:
        module.kernels = "eager"
    try:
        yield
    finally:
        for module, kernels in chosen:
            module.kernels = kernels


def whole_image_float(net: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """(h, w, c) pixels -> (c, H, W) float32 network output, clamped to [0, 1] (c: the network's
    channels, 3 or 1)."""
    scale = 1.0 if image.dtype.kind == "f" else float(np.iinfo(image.dtype).max)
    x = torch.from_numpy(np.transpose(image.astype(np.float32) / scale, (2, 0, 1)).copy()).unsqueeze(0)
    # x2 / x1 RRDBNets (pixel-unshuffle): reflect-pad right and bottom to a multiple of 2 / 4.
    net_scale = getattr(net, "scale", 4)
    mod = {2: 2, 1: 4}.get(net_scale, 1)
    height, width = x.shape[2:]
    pad_h, pad_w = (-height) % mod, (-width) % mod
    if pad_h or pad_w:
        x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), "reflect")
    with torch.no_grad(), eager(net):
        out = net(x)
    out = out[:, :, : height * net_scale, : width * net_scale]
    return out.data[0].float().cpu().clamp_(0, 1).numpy()


def whole_image(net: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """(h, w, 3) pixels -> (3, H, W) pixels of the same dtype."""
    out = whole_image_float(net, image)
    if image.dtype.kind == "f":
        return out.astype(image.dtype)
    return (out * float(np.iinfo(image.dtype).max)).round().astype(image.dtype)


def assert_exact(result: np.ndarray, reference: np.ndarray) -> None:
    """The issue-2 tolerance: 8-bit within 1 level on at most 0.1% of values (16-bit: 2%); floats
    within 1e-4."""
    assert result.shape == reference.shape, (result.shape, reference.shape)
    assert result.dtype == reference.dtype
    if reference.dtype.kind == "f":
        worst = float(np.abs(result - reference).max())
        assert worst <= FLOAT_TOLERANCE, f"max float difference {worst}"
        return
    diff = np.abs(result.astype(np.int64) - reference.astype(np.int64))
    assert diff.max() <= MAX_LEVEL_DIFF, f"max difference {diff.max()} levels"
    fraction = float((diff > 0).mean())
    limit = MAX_DIFF_FRACTION if reference.dtype.itemsize == 1 else MAX_DIFF_FRACTION_16BIT
    assert fraction <= limit, f"{fraction:.4%} of values differ"


def whole_image_any(net: torch.nn.Module, image: np.ndarray, photometric: str = "auto",
                    alpha: str = "network") -> np.ndarray:
    """(h, w, c) pixels of any channel count -> (c, H, W) pixels, as Real-ESRGAN's ``enhance`` treats
    them: 3 channels RGB; grey copied to RGB and back by 0.299 R + 0.587 G + 0.114 B on the clamped
    float output; alpha as a grey image or resized (cv2 INTER_LINEAR = half-pixel bilinear). A
    1-channel network runs every channel, R, G and B too, as its own 1-channel image."""
    channels = image.shape[2]
    if photometric == "auto":
        photometric = {3: "rgb", 4: "rgba"}.get(channels, "separate")
    scale = 1.0 if image.dtype.kind == "f" else float(np.iinfo(image.dtype).max)
    net_scale = getattr(net, "scale", 4)

    single = getattr(net, "in_channels", 3) == 1

    def grey(plane: np.ndarray) -> np.ndarray:
        if single:
            return whole_image_float(net, plane[..., None])[0]
        out = whole_image_float(net, np.repeat(plane[..., None], 3, axis=2))
        return 0.299 * out[0] + 0.587 * out[1] + 0.114 * out[2]

    def colour(rgb: np.ndarray) -> list[np.ndarray]:
        return [grey(rgb[..., c]) for c in range(3)] if single else list(whole_image_float(net, rgb))

    def resized(plane: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(plane.astype(np.float32) / scale)[None, None]
        if alpha == "nearest":
            return torch.nn.functional.interpolate(x, scale_factor=net_scale, mode="nearest")[0, 0].numpy()
        return torch.nn.functional.interpolate(x, scale_factor=net_scale, mode="bilinear",
                                               align_corners=False)[0, 0].numpy()

    if photometric == "rgb":
        planes = colour(image)
    elif photometric == "rgba":
        planes = colour(image[..., :3])
        planes.append(grey(image[..., 3]) if alpha == "network" else resized(image[..., 3]))
    else:
        planes = [grey(image[..., c]) for c in range(channels)]
    out = np.clip(np.stack(planes), 0, 1)
    if image.dtype.kind == "f":
        return out.astype(image.dtype)
    return (out * scale).round().astype(image.dtype)
