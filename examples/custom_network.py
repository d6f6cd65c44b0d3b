"""Bring your own architecture: describe a fully convolutional network as stages and lpdask runs it
chunk by chunk, exactly, like Real-ESRGAN.

A network needs ``scale``, ``input_factor`` (pixel-unshuffle factor, 1 if none), ``in_channels``,
``out_channels``, ``forward_unshuffled`` (the whole network, for tile mode and references) and
``stages()``: a list of :class:`lpdask.stages.Stage`, each with the module to run, its halo (the
receptive-field radius of its layers, from :func:`lpdask.stages.chain_radius`), its scale, the arrays
it reads (``IMAGE`` or earlier stages) and its output channels; and ``groupings()``, the
``blocks_per_stage`` values worth planning, which a subclass of :class:`lpdask.models.Network`
inherits (one block per stage) unless it says its own.

Run: ``.venv/bin/python examples/custom_network.py`` (writes custom-output/ and checks the result
against whole-image inference).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import tifffile
import torch
import zarr
from skimage import data
from torch import Tensor, nn

import lpdask
from lpdask.models import Network
from lpdask.stages import IMAGE, Stage, chain_radius


class TinySR(nn.Module, Network):
    """An ESPCN-style x2 network: 5x5 and 3x3 feature convs, then a conv to 3*2*2 channels and a
    pixel shuffle."""

    scale = 2
    input_factor = 1
    in_channels = 3
    out_channels = 3

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 32, 5, padding=2), nn.Tanh(),
                                      nn.Conv2d(32, 32, 3, padding=1), nn.Tanh())
        self.upsample = nn.Sequential(nn.Conv2d(32, 3 * 4, 3, padding=1), nn.PixelShuffle(2))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_unshuffled(x)

    def forward_unshuffled(self, x: Tensor) -> Tensor:
        return self.upsample(self.features(x))

    def stages(self, blocks_per_stage: int = 1) -> list[Stage]:
        return [
            Stage("features", self.features, chain_radius([("conv", 5), ("conv", 3)]), 1, (IMAGE,), 32),
            Stage("upsample", self.upsample, chain_radius([("conv", 3)]), 2, ("features",), 3),
        ]


def main(out: Path = Path("custom-output")) -> float:
    torch.manual_seed(0)
    net = TinySR().eval()
    out.mkdir(exist_ok=True)
    image = np.ascontiguousarray(data.astronaut()[::4, ::4])  # 128 x 128
    tifffile.imwrite(out / "in.tif", image, tile=(32, 32))
    shutil.rmtree(out / "out.zarr", ignore_errors=True)
    print(lpdask.upscale(out / "in.tif", out / "out.zarr", model=net, chunk=32))

    result = zarr.open_array(str(out / "out.zarr" / "0"))[:].astype(int)
    with torch.no_grad():
        whole = net(torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)[None])
    reference = (whole[0].clamp(0, 1).numpy() * 255).round().astype(int)
    worst = float(np.abs(result - reference).max())
    print(f"chunked vs whole image: max difference {worst:.0f} levels")
    return worst


if __name__ == "__main__":
    raise SystemExit(0 if main() <= 1 else 1)
