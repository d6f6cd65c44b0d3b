"""SRVGGNetCompact: staged and chunked it equals the whole-image run, basicsr's and spandrel's
implementations of the same weights, and its stage halos are the true reach of the stages."""

from __future__ import annotations

import dataclasses

import dask.array as da
import numpy as np
import pytest
import tifffile
import torch
import zarr
from torch import nn
from torch.nn import functional as F

from lpdask import LpdaskError, load_model, upscale, upscale_array
from lpdask.models import Network
from lpdask.models.srvgg import SRVGGConfig, SRVGGNetCompact
from lpdask.stages import IMAGE

from .basicsr_srvgg import basicsr_srvgg
from .reference import assert_exact, smooth_image, whole_image, whole_image_float


def lively_srvgg(config: SRVGGConfig, seed: int = 0, reach: float = 2.0) -> SRVGGNetCompact:
    """A random SRVGGNetCompact worth testing. He-initialised convs keep the signal alive; each body
    conv also moves feature c one pixel diagonally (towards corner c % 4) with weight ``reach``, so
    pixels at the far edge of the receptive field change the output by several levels (measured: a
    halo one pixel short at one stage of 18 convs is off by 4 levels on 3% of values; without the
    shift, by 1 level on 0.03%). PReLU slopes differ per channel, and the last conv is scaled so the
    residual added to the upsampled image has spread 0.2 and mean 0 (outputs spread over [0, 1])."""
    torch.manual_seed(seed)
    net = SRVGGNetCompact(config)
    convs = [m for m in net.body if isinstance(m, nn.Conv2d)]
    corners = [(0, 0), (0, 2), (2, 0), (2, 2)]
    with torch.no_grad():
        for module in net.body:
            if isinstance(module, nn.PReLU):
                module.weight.uniform_(0.05, 0.5)
        for conv in convs[:-1]:
            nn.init.kaiming_normal_(conv.weight, a=0.25)
            conv.bias.uniform_(-0.1, 0.1)
        for conv in convs[1:-1]:
            for c in range(config.num_feat):
                conv.weight[(c, c, *corners[c % 4])] += reach
        probe = torch.from_numpy(smooth_image(48, 48, seed).astype(np.float32) / 255).permute(2, 0, 1)[None]
        residual = net(probe) - F.interpolate(probe, scale_factor=config.upscale, mode="nearest")
        gain = 0.2 / float(residual.std())
        convs[-1].weight.mul_(gain)
        convs[-1].bias.mul_(gain).sub_(gain * float(residual.mean()))
    return net.eval()


SMALL = SRVGGConfig(num_feat=12, num_conv=16, upscale=4)
"""18 convs like realesr-animevideov3: two stages (halos 9, 9) at one block per stage, one at two."""


@pytest.fixture(scope="module")
def compact() -> SRVGGNetCompact:
    return lively_srvgg(SMALL, seed=2)


def level0(path) -> np.ndarray:
    return zarr.open_array(str(path / "0"), mode="r")[:]


def test_lively_output_spreads_over_the_range(compact):
    out = whole_image_float(compact, smooth_image(40, 40, seed=9))
    assert out.std() > 0.15
    assert ((out == 0) | (out == 1)).mean() < 0.2  # mostly not clamped


def test_stage_list():
    net = SRVGGNetCompact(SMALL)
    one = net.stages(1)
    assert [(s.name, s.halo, s.scale, s.inputs, s.channels) for s in one] == [
        ("convs.0-8", 9, 1, (IMAGE,), 12),
        ("convs.9-17", 9, 4, ("convs.0-8", IMAGE), 3),
    ]
    (whole,) = net.stages(2)
    assert (whole.halo, whole.scale, whole.inputs) == (18, 4, (IMAGE, IMAGE))
    deep = SRVGGNetCompact(SRVGGConfig(num_feat=4, num_conv=32))  # 34 convs
    assert [s.halo for s in deep.stages(1)] == [12, 11, 11]
    assert [s.halo for s in deep.stages(2)] == [17, 17]
    with pytest.raises(ValueError, match="at least 1"):
        net.stages(0)


@pytest.mark.parametrize(
    ("height", "width", "chunk", "blocks"),
    [(37, 53, 16, 1), (61, 45, 40, 1), (45, 83, 16, 2), (83, 41, 40, 2)],
)
def test_tiff_matches_whole_image(compact, tmp_path, height, width, chunk, blocks):
    image = smooth_image(height, width, seed=height)
    tifffile.imwrite(tmp_path / "in.tif", image, tile=(16, 16))
    upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=compact, chunk=chunk, blocks_per_stage=blocks)
    assert_exact(level0(tmp_path / "out.zarr"), whole_image(compact, image))


# x2 at an even size: reference.py reflect-pads odd x2 images to even sides, as RealESRGANer does for
# any x2 model, but only pixel-unshuffle RRDBNets need it; lpdask pads no SRVGGNetCompact.
@pytest.mark.parametrize(("scale", "height", "width"), [(2, 36, 30), (3, 35, 29)])
def test_other_scales_match_whole_image(tmp_path, scale, height, width):
    net = lively_srvgg(dataclasses.replace(SMALL, upscale=scale), seed=scale)
    image = smooth_image(height, width, seed=scale)
    tifffile.imwrite(tmp_path / "in.tif", image)
    upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=net, chunk=16)
    result = level0(tmp_path / "out.zarr")
    assert result.shape == (3, height * scale, width * scale)
    assert_exact(result, whole_image(net, image))


def test_lazy_api_matches_whole_image(compact):
    image = smooth_image(51, 44, seed=4)
    result = upscale_array(da.from_array(image, chunks=(20, 20, 3)), compact, chunk=24).compute()
    assert_exact(np.moveaxis(result, -1, 0), whole_image(compact, image))


class ShortHalo(nn.Module, Network):
    """The same network, its stages told a halo one pixel short of their reach."""

    def __init__(self, net: SRVGGNetCompact) -> None:
        super().__init__()
        self.net = net
        self.scale, self.input_factor = net.scale, net.input_factor
        self.in_channels, self.out_channels = net.in_channels, net.out_channels

    def forward(self, x):
        return self.net(x)

    def forward_unshuffled(self, x):
        return self.net(x)

    def stages(self, blocks_per_stage: int = 1):
        return [dataclasses.replace(s, halo=s.halo - 1) for s in self.net.stages(blocks_per_stage)]


@pytest.mark.parametrize("blocks", [1, 2])
def test_a_halo_one_pixel_short_is_caught(compact, tmp_path, blocks):
    """The comparison above can fail: one pixel less of halo makes the chunk borders wrong."""
    image = smooth_image(37, 53, seed=37)
    tifffile.imwrite(tmp_path / "in.tif", image)
    upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=ShortHalo(compact), chunk=16, blocks_per_stage=blocks)
    with pytest.raises(AssertionError):
        assert_exact(level0(tmp_path / "out.zarr"), whole_image(compact, image))


def random_input(seed: int = 5) -> torch.Tensor:
    return torch.from_numpy(smooth_image(29, 34, seed).astype(np.float32) / 255).permute(2, 0, 1)[None].contiguous()


def test_same_output_as_basicsr(compact):
    reference = basicsr_srvgg(compact.state_dict())
    x = random_input()
    with torch.no_grad():
        ours, theirs = compact(x), reference(x.clone())
    assert ours.shape == theirs.shape == (1, 3, 116, 136)
    assert (ours - theirs).abs().max().item() <= 1e-6
    image = smooth_image(33, 27, seed=6)
    assert_exact(whole_image(compact, image), whole_image(reference, image))


def test_same_output_as_spandrel(compact):
    import spandrel

    descriptor = spandrel.ModelLoader().load_from_state_dict(compact.state_dict())
    assert descriptor.architecture.id == "Compact"
    assert (descriptor.scale, descriptor.input_channels, descriptor.output_channels) == (4, 3, 3)
    x = random_input(seed=8)
    with torch.no_grad():
        ours, theirs = compact(x), descriptor.model.eval()(x.clone())
    assert (ours - theirs).abs().max().item() <= 1e-6


@pytest.mark.parametrize("layout", ["params_ema", "bare"])
def test_checkpoint_loads_strictly(compact, tmp_path, layout):
    state = compact.state_dict()
    torch.save({layout: state} if layout != "bare" else state, tmp_path / "m.pth")
    loaded = load_model(tmp_path / "m.pth")
    assert isinstance(loaded, SRVGGNetCompact)
    assert loaded.config == SMALL
    assert loaded.state_dict().keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_bad_checkpoints_are_refused(compact, tmp_path):
    state = compact.state_dict()
    wrong_scale = {**state, "body.34.weight": state["body.34.weight"][:47], "body.34.bias": state["body.34.bias"][:47]}
    torch.save(wrong_scale, tmp_path / "scale.pth")
    with pytest.raises(LpdaskError, match="weights do not match SRVGGNetCompact.*47 channels"):
        load_model(tmp_path / "scale.pth")
    missing = {k: v for k, v in state.items() if k != "body.20.bias"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(LpdaskError, match="weights do not match SRVGGNetCompact.*body.20.bias"):
        load_model(tmp_path / "missing.pth")
    narrow = {**state, "body.5.weight": state["body.5.weight"][:6]}  # a PReLU with 6 slopes for 12 features
    torch.save(narrow, tmp_path / "narrow.pth")
    with pytest.raises(LpdaskError, match="weights do not match SRVGGNetCompact.*body.5.weight"):
        load_model(tmp_path / "narrow.pth")


def positive(net: SRVGGNetCompact) -> SRVGGNetCompact:
    """Strictly positive conv weights, no bias, in float64: an impulse reaches every pixel it can,
    and the PReLUs pass positive values unchanged, so its footprint is the receptive field."""
    with torch.no_grad():
        for module in net.body:
            if isinstance(module, nn.Conv2d):
                module.weight.fill_(1.0 / module.weight[0].numel())
                module.bias.zero_()
    return net.double().eval()


def reach(module: nn.Module, channels: list[int], which: int, scale: int, size: int = 101) -> int:
    """Radius, in input pixels, of the output footprint of a centred impulse in input ``which``."""
    inputs = [torch.zeros(1, c, size, size, dtype=torch.float64) for c in channels]
    inputs[which][0, :, size // 2, size // 2] = 1.0
    with torch.no_grad():
        out = module(*inputs)
    footprint = out[0].abs().sum(0)
    rows = torch.nonzero(footprint.sum(1) > 0).flatten()
    cols = torch.nonzero(footprint.sum(0) > 0).flatten()
    centre = size // 2 * scale
    far = max(int(centre - rows.min()), int(rows.max() - (centre + scale - 1)),
              int(centre - cols.min()), int(cols.max() - (centre + scale - 1)))
    return -(-far // scale)


@pytest.mark.parametrize("blocks_per_stage", [1, 2, 3])
def test_stage_halo_equals_measured_reach(blocks_per_stage):
    net = positive(SRVGGNetCompact(SRVGGConfig(num_feat=4, num_conv=30)))  # 32 convs
    stages = net.stages(blocks_per_stage)
    assert sum(s.halo for s in stages) == 32
    for index, stage in enumerate(stages):
        channels = [3 if name == IMAGE else 4 for name in stage.inputs]
        assert reach(stage.module, channels, 0, stage.scale) == stage.halo, stage.name
        if index == len(stages) - 1:  # the image added after the shuffle reaches only its own pixel
            assert reach(stage.module, channels, 1, stage.scale) == 0


def test_whole_network_reach():
    net = positive(SRVGGNetCompact(SRVGGConfig(num_feat=4, num_conv=16)))
    assert reach(net, [3], 0, 4) == 18
