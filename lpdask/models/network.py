"""What the engine needs of a network: its stages, cut points, scale and channel counts."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor, nn

from ..stages import Stage

DEFAULT_GROUPINGS = (1,)
"""``blocks_per_stage`` values a network plans with unless it says its own: one block per stage (the
planner adds the whole network as one stage in any case)."""


@runtime_checkable
class Network(Protocol):
    """A fully convolutional super-resolution network that lpdask can run in stages.

    scale: output pixels per image pixel.
    input_factor: pixel-unshuffle factor applied to the image before the first stage (1 if none).
        Stages then work on the image's grid divided by it; the engine pads the image by reflection
        to a multiple of it, as Real-ESRGAN does, and crops the output back.
    stages(blocks_per_stage): the network as stages (see :class:`lpdask.stages.Stage`).
    groupings(): the ``blocks_per_stage`` values the planner tries, each a different cut into
        stages. A class that subclasses Network and does not override it gets
        :data:`DEFAULT_GROUPINGS`; one that only has the other members must define it.
    forward_unshuffled(x): the whole network after the unshuffle, for tile mode.
    """

    scale: int
    input_factor: int
    in_channels: int
    out_channels: int

    def stages(self, blocks_per_stage: int = 1) -> list[Stage]: ...

    def groupings(self) -> tuple[int, ...]:
        """The network's cut points worth planning; by default one block per stage."""
        return DEFAULT_GROUPINGS

    def forward_unshuffled(self, x: Tensor) -> Tensor: ...

    def __call__(self, x: Tensor) -> Tensor: ...

    def to(self, *args: object, **kwargs: object) -> nn.Module: ...


def missing_members(obj: object) -> list[str]:
    """The :class:`Network` members ``obj`` lacks (empty if it is one)."""
    wanted = [*Network.__annotations__, *(name for name in vars(Network) if not name.startswith("_")), "__call__"]
    return [name for name in wanted if not hasattr(obj, name)]
