"""Real-ESRGAN's tile mode, as a baseline: the whole network on each tile plus ``tile_pad`` pixels.

The same engine runs it: one stage whose halo is ``tile_pad`` instead of the network's true
receptive field, which is exactly what makes tiles disagree at their borders (seams).
"""

from __future__ import annotations

from .models.rrdbnet import RRDBNet
from .plan import DEFAULT_TILE_PAD
from .stages import IMAGE, Stage


def tile_stages(net: RRDBNet, tile_pad: int = DEFAULT_TILE_PAD) -> list[Stage]:
    return [Stage("tiles", net, tile_pad, net.scale, (IMAGE,), net.config.num_out_ch)]
