"""Real-ESRGAN's tile mode, as a baseline: the whole network on each tile plus ``tile_pad`` pixels.

The same engine runs it: one stage whose halo is ``tile_pad`` instead of the network's true
receptive field, which is exactly what makes tiles disagree at their borders (seams).
"""

from __future__ import annotations

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
