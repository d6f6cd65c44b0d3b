"""Real-ESRGAN's tile mode, as a baseline: the whole network on each tile plus ``tile_pad`` pixels.

The same engine runs it: one stage whose halo is ``tile_pad`` instead of the network's true
receptive field, which is exactly what makes tiles disagree at their borders (seams).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from .models.network import Network
from .plan import DEFAULT_TILE_PAD
from .stages import IMAGE, Stage


class _WholeNetwork(nn.Module):
    def __init__(self, net: Network) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net.forward_unshuffled(x)


def tile_stages(net: Network, tile_pad: int = DEFAULT_TILE_PAD) -> list[Stage]:
    """One stage: the whole network with ``tile_pad`` of context (on the unshuffled grid)."""
    scale = net.scale * net.input_factor
    return [Stage("tiles", _WholeNetwork(net), tile_pad, scale, (IMAGE,), net.out_channels)]


def reach(stages: list[Stage]) -> int:
    """The receptive-field radius of a chain of stages, in pixels of the first stage's input."""
    radius, factor = 0.0, 1
    for stage in stages:
        radius += stage.halo / factor
        factor *= stage.scale
    return math.ceil(radius - 1e-9)


def whole_stages(net: Network) -> list[Stage]:
    """The whole network as one exact stage: its halo is the network's full reach, so nothing is
    stored between stages (the planner's "memory" storage)."""
    full = reach(net.stages(1))
    stage = tile_stages(net, full)[0]
    return [Stage("whole", stage.module, full, stage.scale, stage.inputs, stage.channels)]
