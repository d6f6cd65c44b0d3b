"""Stages: pieces of a network that run chunk by chunk, and their receptive-field arithmetic.

A stage reads every input over the same window (the output chunk grown by ``halo`` on each side,
clipped at the image border), runs ``module`` on the window with the layers' own zero padding, and
the engine crops the halo away. Inside the image the padding only ever touches halo pixels, so the
cropped result equals whole-image inference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn
from torch.nn import functional as F

from .errors import LpdaskError

IMAGE = "image"
"""Name of the network input (the normalised image) among a stage's inputs."""


@dataclass(frozen=True)
class Stage:
    """One step of a network, run as one task per chunk.

    name: the stage's output array (later stages list it in their ``inputs``).
    module: called with one (1, C, h, w) tensor per input, returns (1, channels, h*scale, w*scale).
    halo: receptive-field radius of ``module`` in input pixels.
    scale: output pixels per input pixel.
    inputs: names of the arrays it reads: ``IMAGE`` or earlier stages' names.
    channels: output channels.
    alignment: window sides must be multiples of this (window-attention networks such as SwinIR);
        lpdask runs only stages with 1, since its windows are clipped at the image border.
    """

    name: str
    module: nn.Module
    halo: int
    scale: int
    inputs: tuple[str, ...]
    channels: int
    alignment: int = 1


def conv_radius(kernel_size: int, dilation: int = 1) -> int:
    """Radius of one 'same'-padded convolution."""
    return dilation * (kernel_size - 1) // 2


def chain_radius(layers: Sequence[tuple[str, int]]) -> int:
    """Receptive-field radius, in input pixels, of a chain of layers.

    ``layers`` holds ``("conv", kernel_size)`` and ``("up", factor)`` items in order; a conv after an
    upsampling by s reaches ``radius / s`` input pixels. The result is rounded up.
    """
    radius = 0.0
    scale = 1
    for kind, value in layers:
        if kind == "conv":
            radius += conv_radius(value) / scale
        elif kind == "up":
            scale *= value
        else:
            raise ValueError(f"unknown layer kind {kind!r}")
    return math.ceil(radius - 1e-9)


def validate(stages: Sequence[Stage]) -> None:
    """Check that each stage reads only the image or earlier stages, and takes windows of any size."""
    seen = {IMAGE}
    for stage in stages:
        missing = [name for name in stage.inputs if name not in seen]
        if missing:
            raise ValueError(f"stage {stage.name!r} reads {missing} before they are computed")
        if stage.halo < 0 or stage.scale < 1:
            raise ValueError(f"stage {stage.name!r} has halo {stage.halo} and scale {stage.scale}")
        if stage.alignment < 1:
            raise ValueError(f"stage {stage.name!r} has alignment {stage.alignment}")
        if stage.alignment > 1:
            raise LpdaskError(f"stage {stage.name!r} needs windows in multiples of {stage.alignment} px, but lpdask's "
                              "windows are clipped at the image border and so have any size")
        seen.add(stage.name)


class _Resize(nn.Module):
    def __init__(self, mode: str, scale: int) -> None:
        super().__init__()
        self.mode, self.scale = mode, scale

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "nearest":
            return F.interpolate(x, scale_factor=self.scale, mode="nearest")
        return F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)


def resize_stages(mode: str, scale: int, channels: int = 1) -> list[Stage]:
    """Resizing without the network (``--alpha nearest|bilinear``), as one stage. Bilinear with
    half-pixel centres (OpenCV's INTER_LINEAR) reads one pixel around; nearest none."""
    return [Stage(f"resize-{mode}", _Resize(mode, scale), 1 if mode == "bilinear" else 0, scale, (IMAGE,), channels)]
