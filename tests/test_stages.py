"""Receptive-field arithmetic: each stage's halo is the true reach of its layers."""

from __future__ import annotations

import math

import pytest
import torch

from lpdask import RRDBConfig, RRDBNet
from lpdask.stages import chain_radius


def positive(net: RRDBNet) -> RRDBNet:
    """Strictly positive weights and no bias, in float64: every path through the network adds to
    the output, so an impulse's footprint is exactly the receptive field (a trained network's
    weights can cancel along some paths and make the footprint look smaller than the reach)."""
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.fill_(1.0 / module.weight[0].numel())
                module.bias.zero_()
    return net.double().eval()


def reach(module: torch.nn.Module, inputs: int, channels: int, scale: int, size: int = 121) -> int:
    """Radius, in input pixels, of the output footprint of a centred impulse (rounded up)."""
    impulse = torch.zeros(1, channels, size, size, dtype=torch.float64)
    impulse[0, :, size // 2, size // 2] = 1.0
    zeros = torch.zeros_like(impulse)
    with torch.no_grad():
        out = module(impulse, *([zeros] * (inputs - 1)))
    rows = torch.nonzero(out[0].abs().sum(0).sum(1) > 0).flatten()
    centre = size // 2 * scale
    far = max(int(centre - rows.min()), int(rows.max() - (centre + scale - 1)))
    return math.ceil(far / scale)


@pytest.mark.parametrize("blocks_per_stage", [1, 2, 3])
def test_stage_halo_equals_measured_reach(blocks_per_stage):
    net = positive(RRDBNet(RRDBConfig(num_feat=4, num_block=3, num_grow_ch=2)))
    for stage in net.stages(blocks_per_stage):
        channels = 3 if stage.name == "head" else 4
        assert reach(stage.module, len(stage.inputs), channels, stage.scale) == stage.halo, stage.name


def test_real_esrgan_radii():
    """The reach `lpdask models` prints: x4plus 349 input px per side, anime_6B 94."""
    x4plus = RRDBNet(RRDBConfig(num_block=23)).stages(1)
    assert sum(s.halo for s in x4plus) == 349
    assert sum(s.halo for s in RRDBNet(RRDBConfig(num_block=6)).stages(3)) == 94


def test_chain_radius_after_upsampling():
    assert chain_radius([("conv", 3)] * 5) == 5
    assert chain_radius([("up", 2), ("conv", 3), ("up", 2), ("conv", 3), ("conv", 3)]) == 1
    assert chain_radius([("up", 2), ("conv", 3), ("up", 2), ("conv", 3), ("conv", 3), ("conv", 3)]) == 2
    assert chain_radius([("conv", 5)]) == 2
