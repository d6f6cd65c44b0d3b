"""What the engine needs of a network: its stages, scale and channel counts."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor, nn

from ..stages import Stage


@runtime_checkable
class Network(Protocol):
    """A fully convolutional super-resolution network that lpdask can run in stages.

    scale: output pixels per image pixel.
    input_factor: pixel-unshuffle factor applied to the image before the first stage (1 if none).
        Stages then work on the image's grid divided by it; the engine pads the image by reflection
        to a multiple of it, as Real-ESRGAN does, and crops the output back.
    stages(blocks_per_stage): the network as stages (see :class:`lpdask.stages.Stage`).
    groupings() (optional, not part of the protocol's check): the ``blocks_per_stage`` values the
        planner should try, each a different cut into stages; without it the planner tries one
        block per stage and the whole network as one stage.
    forward_unshuffled(x): the whole network after the unshuffle, for tile mode.
    """

    scale: int
    input_factor: int
    in_channels: int
    out_channels: int

    def stages(self, blocks_per_stage: int = 1) -> list[Stage]: ...

    def forward_unshuffled(self, x: Tensor) -> Tensor: ...

    def __call__(self, x: Tensor) -> Tensor: ...

    def to(self, *args: object, **kwargs: object) -> nn.Module: ...
