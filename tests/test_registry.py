"""The architecture registry: a family added to a copy of it loads from its checkpoint and runs
exactly on both engines while the default registry does not know it, the registry does not depend on
what was imported when, networks say their own stage groupings, grey pixel-unshuffle RRDBNets load at
their true scale, and stages that need aligned windows are refused."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import dask.array as da
import numpy as np
import pytest
import tifffile
import torch
import zarr
from torch import Tensor, nn
from torch.nn import functional as F

import lpdask
from lpdask import LpdaskError, RRDBConfig, RRDBNet, SRVGGConfig, SRVGGNetCompact
from lpdask.models import DEFAULT_GROUPINGS, REGISTRY, Architecture, Network, Registry
from lpdask.stages import IMAGE, Stage, chain_radius, validate

from .reference import assert_exact, smooth_image, spread_output, whole_image


@dataclass(frozen=True)
class PlainConfig:
    architecture: ClassVar[str] = "PlainConvTest"
    num_feat: int = 16
    scale: int = 2


class PlainConv(nn.Module):
    """conv3x3, LeakyReLU, conv3x3 to 3 * scale^2 channels, pixel shuffle: two stages of halo 1 at
    one block per stage, one stage of halo 2 at two."""

    input_factor = 1
    in_channels = 3
    out_channels = 3

    def __init__(self, config: PlainConfig = PlainConfig()) -> None:
        super().__init__()
        self.config = config
        self.conv1 = nn.Conv2d(3, config.num_feat, 3, 1, 1)
        self.act = nn.LeakyReLU(0.2)
        self.conv2 = nn.Conv2d(config.num_feat, 3 * config.scale**2, 3, 1, 1)

    @property
    def scale(self) -> int:
        return self.config.scale

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_unshuffled(x)

    def forward_unshuffled(self, x: Tensor) -> Tensor:
        return F.pixel_shuffle(self.conv2(self.act(self.conv1(x))), self.scale)

    def groupings(self) -> tuple[int, ...]:
        return (1, 2)

    def stages(self, blocks_per_stage: int = 1) -> list[Stage]:
        head = nn.Sequential(self.conv1, self.act)
        tail = nn.Sequential(self.conv2, nn.PixelShuffle(self.scale))
        if blocks_per_stage >= 2:
            halo = chain_radius([("conv", 3), ("conv", 3)])
            return [Stage("convs", nn.Sequential(head, tail), halo, self.scale, (IMAGE,), 3)]
        return [Stage("conv1", head, chain_radius([("conv", 3)]), 1, (IMAGE,), self.config.num_feat),
                Stage("conv2", tail, chain_radius([("conv", 3)]), self.scale, ("conv1",), 3)]


class NoHalo(PlainConv):
    """The same network, its stages told they reach no neighbour at all."""

    def stages(self, blocks_per_stage: int = 1) -> list[Stage]:
        return [dataclasses.replace(stage, halo=0) for stage in super().stages(blocks_per_stage)]


def is_plain(state: Mapping[str, Tensor]) -> bool:
    return set(state) == {"conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"}


def plain_config(state: Mapping[str, Tensor]) -> PlainConfig:
    scale = math.isqrt(state["conv2.weight"].shape[0] // 3)
    return PlainConfig(int(state["conv1.weight"].shape[0]), scale)


PLAIN = Architecture(PlainConfig.architecture, detect=is_plain, config=plain_config, build=PlainConv)


@pytest.fixture
def plain_registry() -> Registry:
    """lpdask's registry with PlainConv's family added, in a copy: nothing global changes."""
    return REGISTRY.with_(PLAIN)


def lively_plain(seed: int = 0, reach: float = 1.5) -> PlainConv:
    """A random PlainConv whose every output leans on its neighbours: each conv also copies channel
    c from the corner pixel c % 4 of its 3x3 window with weight ``reach``, so a halo short by a pixel
    changes chunk borders by many levels; conv2 is scaled so outputs spread over [0, 1]."""
    torch.manual_seed(seed)
    net = PlainConv()
    corners = [(0, 0), (0, 2), (2, 0), (2, 2)]
    with torch.no_grad():
        for conv in (net.conv1, net.conv2):
            nn.init.kaiming_normal_(conv.weight, a=0.2)
            for c in range(conv.out_channels):
                conv.weight[(c, c % conv.in_channels, *corners[c % 4])] += reach
        spread_output(net, net.conv2, seed)
    return net.eval()


@pytest.fixture(scope="module")
def plain() -> PlainConv:
    return lively_plain(seed=3)


def level0(path) -> np.ndarray:
    return zarr.open_array(str(path / "0"), mode="r")[:]


# Even sides: reference.whole_image reflect-pads any x2 network's input to even sides, as
# RealESRGANer does (for RRDBNet's pixel unshuffle); PlainConv has none, so odd sides would differ.
HEIGHT, WIDTH = 40, 54


def test_registered_architecture_runs_exactly_staged(plain_registry, plain, tmp_path):
    torch.save({"params_ema": plain.state_dict()}, tmp_path / "plain.pth")
    loaded = lpdask.load_model(tmp_path / "plain.pth", registry=plain_registry)
    assert isinstance(loaded, PlainConv) and loaded.config == PlainConfig()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in plain.state_dict().items())
    image = smooth_image(HEIGHT, WIDTH, seed=11)
    tifffile.imwrite(tmp_path / "in.tif", image)
    lpdask.upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=loaded, chunk=16, blocks_per_stage=1)
    reference = whole_image(plain, image)  # independent: the whole image through the network at once
    assert reference.shape == (3, 2 * HEIGHT, 2 * WIDTH)
    assert_exact(level0(tmp_path / "out.zarr"), reference)  # uint8: within 1 level on <= 0.1% of values


def test_registered_architecture_runs_exactly_lazily(plain_registry, plain, tmp_path):
    torch.save(plain.state_dict(), tmp_path / "plain.pth")
    net = lpdask.load_model(tmp_path / "plain.pth", registry=plain_registry)
    image = smooth_image(HEIGHT, WIDTH, seed=12)
    result = lpdask.upscale_array(da.from_array(image, chunks=(20, 20, 3)), model=net, chunk=16).compute()
    assert_exact(np.moveaxis(result, -1, 0), whole_image(plain, image))  # uint8: within 1 level on <= 0.1%


def test_a_wrong_halo_is_caught(plain, tmp_path):
    """The comparisons above can fail: without its halo the same network is wrong at chunk borders."""
    wrong = NoHalo()
    wrong.load_state_dict(plain.state_dict())
    wrong.eval()
    image = smooth_image(HEIGHT, WIDTH, seed=11)
    tifffile.imwrite(tmp_path / "in.tif", image)
    lpdask.upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=wrong, chunk=16, blocks_per_stage=1)
    reference = whole_image(plain, image)
    with pytest.raises(AssertionError):
        assert_exact(level0(tmp_path / "out.zarr"), reference)
    lazy = lpdask.upscale_array(da.from_array(image, chunks=(20, 20, 3)), model=wrong, chunk=16).compute()
    with pytest.raises(AssertionError):
        assert_exact(np.moveaxis(lazy, -1, 0), reference)


def test_registry_order_and_refusals(plain_registry, tmp_path):
    assert [arch.name for arch in plain_registry] == ["RRDBNet", "SRVGGNetCompact", "PlainConvTest"]
    with pytest.raises(ValueError, match="already registered"):
        plain_registry.with_(dataclasses.replace(PLAIN))
    torch.save({"layer.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(LpdaskError) as caught:
        lpdask.load_model(tmp_path / "other.pth", registry=plain_registry)
    assert str(caught.value) == (f"{tmp_path / 'other.pth'} is not an RRDBNet checkpoint: found 1 keys: layer.weight; "
                                 "not SRVGGNetCompact or PlainConvTest either")
    state = PlainConv().state_dict()
    state["conv2.weight"] = state["conv2.weight"][:, :8]
    torch.save(state, tmp_path / "narrow.pth")
    with pytest.raises(LpdaskError, match=r"weights do not match PlainConvTest \(wrong shape conv2.weight\)$"):
        lpdask.load_model(tmp_path / "narrow.pth", registry=plain_registry)


def test_unregistered_architecture_is_not_loaded(tmp_path):
    assert PLAIN.name not in [arch.name for arch in REGISTRY]
    torch.save(PlainConv().state_dict(), tmp_path / "plain.pth")
    with pytest.raises(LpdaskError, match="is not an RRDBNet checkpoint"):
        lpdask.load_model(tmp_path / "plain.pth")


def test_an_extended_copy_knows_the_family_the_default_registry_does_not(plain, tmp_path):
    torch.save(plain.state_dict(), tmp_path / "plain.pth")
    extended = REGISTRY.with_(PLAIN)
    loaded = lpdask.load_model(tmp_path / "plain.pth", registry=extended)
    assert isinstance(loaded, PlainConv) and torch.equal(loaded.conv2.weight, plain.conv2.weight)
    with pytest.raises(LpdaskError, match=r"is not an RRDBNet checkpoint: .*; not SRVGGNetCompact either$"):
        lpdask.load_model(tmp_path / "plain.pth")  # after the copy was made and used
    assert REGISTRY.names == ("RRDBNet", "SRVGGNetCompact")
    assert extended.names == ("RRDBNet", "SRVGGNetCompact", "PlainConvTest")
    assert extended.lookalikes == REGISTRY.lookalikes


# Each order imports the family modules before or after the registry and the package's names, then
# imports both family modules again (as a reload would): none of it may add, drop or reorder a family.
IMPORT_ORDERS = [
    ("lpdask.models.srvgg", "lpdask.models.rrdbnet", "lpdask.models.families", "lpdask.models"),
    ("lpdask.models.registry", "lpdask.models", "lpdask.models.rrdbnet", "lpdask.models.srvgg"),
]


@pytest.mark.parametrize("order", IMPORT_ORDERS)
def test_the_registry_does_not_depend_on_imports(order, tmp_path):
    compact = SRVGGNetCompact(SRVGGConfig(num_feat=4, num_conv=2))
    torch.save(compact.state_dict(), tmp_path / "compact.pth")
    code = (
        "import importlib, sys\n"
        "modules = [importlib.import_module(name) for name in sys.argv[1:]]\n"
        "for module in modules:\n"
        "    if module.__name__.endswith(('rrdbnet', 'srvgg')):\n"
        "        importlib.reload(module)\n"
        "from lpdask.models import REGISTRY, load_model\n"
        "print(','.join(REGISTRY.names), type(load_model('compact.pth')).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, *order], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["RRDBNet,SRVGGNetCompact", "SRVGGNetCompact"]


def test_networks_say_their_groupings(plain):
    assert RRDBNet(RRDBConfig(num_feat=4, num_block=23, num_grow_ch=4)).groupings() == (1, 2, 3, 4, 6, 8, 12, 23)
    assert RRDBNet(RRDBConfig(num_feat=4, num_block=5, num_grow_ch=4)).groupings() == (1, 2, 3, 4, 5)
    assert RRDBNet(RRDBConfig(num_feat=4, num_block=0, num_grow_ch=4)).groupings() == (1,)
    assert SRVGGNetCompact(SRVGGConfig(num_feat=4, num_conv=16)).groupings() == (1, 2)  # 18 convs: 2 stages, 1
    deep = SRVGGNetCompact(SRVGGConfig(num_feat=4, num_conv=100))  # 102 convs
    assert deep.groupings() == (1, 2, 3, 4, 7)
    assert [len(deep.stages(k)) for k in deep.groupings()] == [7, 4, 3, 2, 1]
    from lpdask.planner import Fixed, choose

    _, plans = choose(plain, 64, 64, torch.device("cpu"), Fixed(chunk=64))
    assert {(e.blocks_per_stage, e.executor) for e in plans} == {(1, "staged"), (2, "staged"), (0, "whole"),
                                                                (1, "stream"), (2, "stream")}


class Old(nn.Module):
    """A network that does not say its groupings."""

    scale, input_factor, in_channels, out_channels = 2, 1, 3, 3

    def forward_unshuffled(self, x: Tensor) -> Tensor:
        return x

    def stages(self, blocks_per_stage: int = 1) -> list[Stage]:
        return []


def test_a_network_that_does_not_override_groupings_gets_the_default(plain):
    """Subclassing Network gives its default groupings; without them an object is refused, on one line."""

    class Subclassed(Old, Network):
        pass

    assert isinstance(Subclassed(), Network) and isinstance(plain, Network)
    assert Subclassed().groupings() == DEFAULT_GROUPINGS == (1,)
    assert not isinstance(PlainConfig(), Network)
    assert not isinstance(Old(), Network)
    with pytest.raises(LpdaskError, match=r"^model: an object of type Old is not a model name, a path or a "
                                          r"network \(it lacks groupings; subclass lpdask.models.Network for "
                                          r"defaults\)$"):
        lpdask.load_model(Old())  # what upscale and upscale_array do with what is not a Network


@pytest.mark.parametrize(("scale", "inputs"), [(2, 4), (1, 16), (4, 1)])
def test_grey_pixel_unshuffle_rrdbnet_loads_at_its_scale(tmp_path, scale, inputs):
    """4 conv_first inputs are grey x2 or RGBA x4, 16 grey x1 or RGBA x2: conv_last's outputs tell."""
    torch.manual_seed(scale)
    net = RRDBNet(RRDBConfig(num_in_ch=1, num_out_ch=1, scale=scale, num_feat=8, num_block=1, num_grow_ch=4)).eval()
    assert net.conv_first.in_channels == inputs
    torch.save({"params_ema": net.state_dict()}, tmp_path / "grey.pth")
    loaded = lpdask.load_model(tmp_path / "grey.pth")
    assert (loaded.scale, loaded.input_factor, loaded.in_channels, loaded.out_channels) == (scale, 4 // scale, 1, 1)
    x = torch.rand(1, 1, 12, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))


def test_rgba_rrdbnet_keeps_its_scale(tmp_path):
    net = RRDBNet(RRDBConfig(num_in_ch=4, num_out_ch=4, scale=2, num_feat=8, num_block=1, num_grow_ch=4))
    torch.save(net.state_dict(), tmp_path / "rgba.pth")
    loaded = lpdask.load_model(tmp_path / "rgba.pth")
    assert (loaded.scale, loaded.in_channels) == (2, 4)


def test_stages_needing_aligned_windows_are_refused():
    conv = nn.Conv2d(3, 3, 3, padding=1)
    validate([Stage("conv", conv, 1, 1, (IMAGE,), 3)])
    validate([Stage("conv", conv, 1, 1, (IMAGE,), 3, 1)])
    with pytest.raises(LpdaskError, match=r"^stage 'attention' needs windows in multiples of 8 px") as caught:
        validate([Stage("conv", conv, 1, 1, (IMAGE,), 3), Stage("attention", conv, 1, 1, ("conv",), 3, alignment=8)])
    assert "\n" not in str(caught.value)
