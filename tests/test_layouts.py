"""Every common ESRGAN-family checkpoint layout loads to the same network; anything else is refused.

The reverse mappings (basicsr names -> other layouts) are written here from spandrel's and the
original repositories' conventions, independently of lpdask.models.rrdbnet.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors.torch
import spandrel
import torch
from torch import Tensor, nn

from lpdask import LpdaskError, RRDBConfig, RRDBNet, load_model
from lpdask.models.checkpoint import network_from_state_dict
from lpdask.models.rrdbnet import to_basicsr_rrdbnet

from .reference import lively

State = dict[str, Tensor]
CONFIG = RRDBConfig(num_feat=8, num_block=2, num_grow_ch=4)


def bsrgan_layout(state: State) -> State:
    """BSRGAN / RealSR names (ESRGAN's 2019 RRDBNet_arch.py)."""
    renames = [("body.", "RRDB_trunk."), (".rdb", ".RDB"), ("conv_body.", "trunk_conv."),
               ("conv_up1.", "upconv1."), ("conv_up2.", "upconv2."), ("conv_hr.", "HRconv.")]
    out = {}
    for key, value in state.items():
        for old, new in renames:
            if key.startswith(old) or (old.startswith(".") and old in key):
                key = key.replace(old, new, 1)
        out[key] = value
    return out


def old_esrgan_layout(state: State) -> State:
    """ESRGAN 2018 names: one nn.Sequential, RRDBs at model.1.sub, convs wrapped in conv_block."""
    num_block = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("body."))
    top = {"conv_first": "model.0", "conv_body": f"model.1.sub.{num_block}", "conv_up1": "model.3",
           "conv_up2": "model.6", "conv_hr": "model.8", "conv_last": "model.10"}
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "body":  # body.N.rdbK.convJ.kind -> model.1.sub.N.RDBK.convJ.0.kind
            _, n, rdb, conv, kind = parts
            out[f"model.1.sub.{n}.RDB{rdb[3:]}.{conv}.0.{kind}"] = value
        else:
            out[f"{top[parts[0]]}.{parts[1]}"] = value
    return out


def basicsr_layout(state: State) -> State:
    return dict(state)


LAYOUTS: dict[str, Callable[[State], State]] = {
    "basicsr": basicsr_layout,
    "bsrgan": bsrgan_layout,
    "old_esrgan": old_esrgan_layout,
}

WRAPPERS: dict[str, Callable[[State], object]] = {
    "bare": lambda s: s,
    "params_ema": lambda s: {"params_ema": s, "params": {k: v * 0 for k, v in s.items()}},
    "params": lambda s: {"params": s},
    "state_dict": lambda s: {"state_dict": s, "epoch": 7},
    "model": lambda s: {"model": s, "optimizer": {"lr": 0.1}},
    "netG": lambda s: {"netG": s, "netD": {"conv.weight": torch.zeros(1)}},
    "module_prefix": lambda s: {f"module.{k}": v for k, v in s.items()},
    "netG_prefix": lambda s: {"state_dict": {f"netG.{k}": v for k, v in s.items()}},
}


def write(path: Path, content: object) -> Path:
    if path.suffix == ".safetensors":
        assert isinstance(content, dict)
        safetensors.torch.save_file({k: v.contiguous() for k, v in content.items()}, path)
    else:
        torch.save(content, path)
    return path


@functools.cache
def random_net(config: RRDBConfig = CONFIG, seed: int = 5) -> RRDBNet:
    """A random network whose output spreads over [0, 1]; shared, so tests must not change it."""
    torch.manual_seed(seed)
    return lively(RRDBNet(config), seed=seed).requires_grad_(False)


def assert_same_network(loaded: RRDBNet, original: RRDBNet) -> None:
    assert loaded.config == original.config
    expected = original.state_dict()
    assert set(loaded.state_dict()) == set(expected)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, expected[key]), key
    side = 4 * original.input_factor
    shape = (1, original.config.num_in_ch, side + 2 * original.input_factor, side)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(x), original(x))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("suffix", [".pth", ".pt", ".safetensors"])
def test_layout_loads_exactly(tmp_path, layout, suffix):
    net = random_net()
    path = write(tmp_path / f"m{suffix}", LAYOUTS[layout](net.state_dict()))
    assert_same_network(load_model(path), net)


@pytest.mark.parametrize("wrapper", WRAPPERS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_wrappers_and_prefixes(tmp_path, layout, wrapper):
    net = random_net(seed=6)
    path = write(tmp_path / "m.pth", WRAPPERS[wrapper](LAYOUTS[layout](net.state_dict())))
    assert_same_network(load_model(path), net)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("scale", [4, 2, 1])
def test_pixel_unshuffle_models_in_every_layout(tmp_path, layout, scale):
    net = random_net(RRDBConfig(scale=scale, num_feat=8, num_block=1, num_grow_ch=4), seed=7)
    path = write(tmp_path / "m.pth", {"params_ema": LAYOUTS[layout](net.state_dict())})
    assert_same_network(load_model(path), net)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("scale", [4, 2])
def test_spandrel_reads_the_same_network(tmp_path, layout, suffix, scale):
    """spandrel, an independent loader, builds a network with the same output from the same file.

    spandrel's RRDBNet has growth 32 built in, so this network uses it.
    """
    net = random_net(RRDBConfig(scale=scale, num_feat=8, num_block=2, num_grow_ch=32), seed=8)
    path = write(tmp_path / f"m{suffix}", LAYOUTS[layout](net.state_dict()))
    ours = load_model(path)
    theirs = spandrel.ModelLoader().load_from_file(path)
    assert theirs.architecture.id == "ESRGAN" and theirs.scale == scale
    x = torch.rand(1, 3, 12, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = theirs.model.eval()(x), ours(x)
    assert got.shape == expected.shape == (1, 3, 12 * scale, 8 * scale)
    assert float(expected.std()) > 0.05  # a network whose output depends on the weights
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


# --- refusals ---------------------------------------------------------------------------------


def assert_refused(path: Path, *fragments: str) -> str:
    with pytest.raises(LpdaskError) as caught:
        load_model(path)
    message = str(caught.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


NOISE = bytes(range(7, 250, 3)) * 20
NOTES = b"hello, these are notes\n"


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("random.pth", NOISE, "is not a PyTorch or safetensors checkpoint: it begins with bytes 07 0a 0d"),
        ("notes.pth", NOTES, "is not a PyTorch or safetensors checkpoint: it begins with text 'hello, these are"),
        ("empty.pth", b"", "is empty"),
        ("random.safetensors", NOISE, "is not a safetensors file: it begins with bytes"),
        ("notes.safetensors", NOTES, "is not a safetensors file: it begins with text"),
        ("empty.safetensors", b"", "is empty"),
        ("broken.safetensors", (21).to_bytes(8, "little") + b'{"a": {"dtype": "F32"', "is a damaged safetensors file"),
        ("cut.pth", b"PK\x03\x04" + bytes(60), "is a damaged PyTorch checkpoint (its zip archive: File is not a zip"),
    ],
)
def test_not_a_checkpoint(tmp_path, name, content, fragment):
    path = tmp_path / name
    path.write_bytes(content)
    assert_refused(path, fragment)


class _Touch:
    """Unpickling this creates a file: a stand-in for code a malicious checkpoint would run."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def test_pickled_code_is_not_run(tmp_path):
    marker = tmp_path / "ran"
    net = random_net()
    torch.save({"params_ema": net.state_dict(), "hook": _Touch(marker)}, tmp_path / "m.pth")
    assert not marker.exists()
    assert_refused(tmp_path / "m.pth", "holds pickled objects", "Unsupported global")
    assert not marker.exists()
    torch.load(tmp_path / "m.pth", weights_only=False)  # sanity: unpickling it would run code
    assert marker.exists()


def test_whole_module_is_refused(tmp_path):
    torch.save(random_net(), tmp_path / "m.pth")
    assert_refused(tmp_path / "m.pth", "holds pickled objects", "RRDBNet")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ([torch.zeros(2)], "holds no state dict of tensors: found a list"),
        (torch.zeros(2, 3), "holds no state dict of tensors: found one tensor of shape (2, 3)"),
        ({"epoch": 3, "lr": 0.1}, "holds no state dict of tensors: found 2 keys: epoch, lr"),
        ({"params_ema": {}}, "found an empty dict"),
    ],
)
def test_no_state_dict(tmp_path, content, fragment):
    torch.save(content, tmp_path / "m.pth")
    assert_refused(tmp_path / "m.pth", fragment)


class _TinyUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inc = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
        self.down1 = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.up1 = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.outc = nn.Conv2d(8, 3, 1)


def test_compact_weights_are_not_taken_for_rrdbnet():
    """The RRDBNet loader says no to SRVGGNetCompact weights, so a loader can try the next one."""
    compact = spandrel.architectures.Compact.Compact(num_feat=8, num_conv=2, upscale=4)
    state = compact.state_dict()
    assert to_basicsr_rrdbnet(state) is None
    with pytest.raises(LpdaskError) as caught:
        network_from_state_dict(state, "compact.pth")
    assert str(caught.value) == (
        "compact.pth is not an RRDBNet checkpoint: found 11 keys: body.0.weight, body.0.bias, "
        "body.1.weight, ... (looks like SRVGGNetCompact)"
    )


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_other_network_is_refused(tmp_path, suffix):
    path = write(tmp_path / f"unet{suffix}", dict(_TinyUNet().state_dict()))
    message = assert_refused(path, "is not an RRDBNet checkpoint: found 10 keys: ")
    assert ("inc.0.weight" in message or "down1.bias" in message) and "looks like" not in message


def test_esrgan_plus_is_refused(tmp_path):
    state = old_esrgan_layout(random_net().state_dict())
    state["model.1.sub.0.RDB1.conv1x1.weight"] = torch.zeros(4, 8, 1, 1)
    torch.save(state, tmp_path / "plus.pth")
    assert_refused(tmp_path / "plus.pth", "ESRGAN+")


def test_old_esrgan_x8_is_refused(tmp_path):
    state = old_esrgan_layout(random_net().state_dict())
    for kind in ("weight", "bias"):
        hr, last = state.pop(f"model.8.{kind}"), state.pop(f"model.10.{kind}")
        state[f"model.9.{kind}"] = hr  # a third upsampling conv
        state[f"model.11.{kind}"] = hr
        state[f"model.13.{kind}"] = last
    torch.save(state, tmp_path / "x8.pth")
    assert_refused(tmp_path / "x8.pth", "old ESRGAN checkpoint with tail convs model.3, model.6, model.9, model.11, "
                   "model.13 (x8?): lpdask runs only the x4 RRDBNet tail")


def test_old_esrgan_x2_upsampler_is_refused(tmp_path):
    state = old_esrgan_layout(random_net().state_dict())
    for kind in ("weight", "bias"):  # one upsampling conv: model.3, then HR conv and last conv
        state[f"model.5.{kind}"] = state.pop(f"model.8.{kind}")
        state[f"model.7.{kind}"] = state.pop(f"model.10.{kind}")
        del state[f"model.6.{kind}"]
    torch.save(state, tmp_path / "x2.pth")
    assert_refused(tmp_path / "x2.pth", "tail convs model.3, model.5, model.7 (x2?)")


def test_bsrgan_x2_is_refused(tmp_path):
    state = bsrgan_layout(random_net().state_dict())
    del state["upconv2.weight"], state["upconv2.bias"]
    torch.save(state, tmp_path / "bsrgan_x2.pth")
    assert_refused(tmp_path / "bsrgan_x2.pth", "BSRGAN RRDBNet with upsampling convs conv_up1 (x2)")


def test_extra_key_is_named(tmp_path):
    state = random_net().state_dict()
    state["body.0.rdb1.conv6.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "m.pth")
    assert_refused(tmp_path / "m.pth", "weights do not match RRDBNet (unexpected body.0.rdb1.conv6.weight)")


def test_wrong_shape_is_named(tmp_path):
    state = bsrgan_layout(random_net().state_dict())
    state["HRconv.weight"] = state["HRconv.weight"][:, :4]
    torch.save(state, tmp_path / "m.pth")
    assert_refused(tmp_path / "m.pth", "weights do not match RRDBNet (wrong shape conv_hr.weight)")
