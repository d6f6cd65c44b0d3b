"""What the engine needs of a network: its stages, scale and channel counts."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor, nn

from ..stages import Stage

REQUIRED = ("scale", "input_factor", "in_channels", "out_channels", "stages", "forward_unshuffled", "__call__", "to")
"""What ``isinstance(x, Network)`` checks: every member but ``groupings``, which networks written
before it existed lack (examples/custom_network.py)."""


class _NetworkMeta(type(Protocol)):  # type: ignore[misc]
    def __instancecheck__(cls, instance: object) -> bool:
        return all(hasattr(instance, name) for name in REQUIRED)


@runtime_checkable
class Network(Protocol, metaclass=_NetworkMeta):
    """A fully convolutional super-resolution network that lpdask can run in stages.

    scale: output pixels per image pixel.
    input_factor: pixel-unshuffle factor applied to the image before the first stage (1 if none).
        Stages then work on the image's grid divided by it; the engine pads the image by reflection
        to a multiple of it, as Real-ESRGAN does, and crops the output back.
    stages(blocks_per_stage): the network as stages (see :class:`lpdask.stages.Stage`).
    groupings(): the ``blocks_per_stage`` values the planner should try, each giving a different
        cut into stages. Optional: ``isinstance(net, Network)`` holds without it, and the planner
        then tries its RRDB-shaped default.
    forward_unshuffled(x): the whole network after the unshuffle, for tile mode.
    """

    scale: int
    input_factor: int
    in_channels: int
    out_channels: int

    def stages(self, blocks_per_stage: int = 1) -> list[Stage]: ...

    def groupings(self) -> tuple[int, ...]: ...

    def forward_unshuffled(self, x: Tensor) -> Tensor: ...

    def __call__(self, x: Tensor) -> Tensor: ...

    def to(self, *args: object, **kwargs: object) -> nn.Module: ...
