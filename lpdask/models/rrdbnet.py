"""RRDBNet (ESRGAN, Real-ESRGAN x4plus), with basicsr's parameter names, its stage list, and the
reading of its weights in any of its checkpoint layouts.

Three layouts of the same network are in use (spandrel detects the same three):

- basicsr / Real-ESRGAN: ``conv_first``, ``body.N.rdbK.convJ``, ``conv_body``, ``conv_up1``,
  ``conv_up2``, ``conv_hr``, ``conv_last``; lpdask's own names.
- BSRGAN / RealSR (ESRGAN's 2019 "new arch"): ``conv_first``, ``RRDB_trunk.N.RDBK.convJ``,
  ``trunk_conv``, ``upconv1``, ``upconv2``, ``HRconv``, ``conv_last``.
- ESRGAN 2018 ("old arch"), one ``nn.Sequential``: ``model.0`` (conv_first),
  ``model.1.sub.N.RDBK.convJ.0`` (the RRDBs), ``model.1.sub.<num_block>`` (conv_body),
  ``model.3`` and ``model.6`` (the upsampling convs), ``model.8`` (HR conv), ``model.10`` (last).

Each ``from_*`` function returns basicsr-named weights, or None when the keys are not in its layout;
keys they do not know are passed through unchanged, so strict loading names them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import LpdaskError
from ..kernels import Kernels
from ..stages import IMAGE, Stage, chain_radius
from .registry import Architecture, State


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convs with dense links; the residual is scaled by 0.2."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x

    def forward_in(self, features: Tensor) -> None:
        """The block in place on ``features`` (N, num_feat + 4 * num_grow_ch, H, W), whose first
        num_feat channels hold x and end as the block's output: each conv's activated output is
        written into the channels after its input, so no conv input is concatenated. The same
        arithmetic as :meth:`forward`, in the same order: float32 results are bit-identical."""
        nf, gc = self.conv1.in_channels, self.conv1.out_channels
        for i, conv in enumerate((self.conv1, self.conv2, self.conv3, self.conv4)):
            start = nf + i * gc
            torch.ops.aten.leaky_relu.out(conv(features[:, :start]), 0.2, out=features[:, start : start + gc])
        features[:, :nf].add_(self.conv5(features).mul_(0.2))


class RRDB(nn.Module):
    """Three residual dense blocks inside one more scaled residual."""

    kernels: Kernels = "fast"

    def __init__(self, num_feat: int, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x

    def forward_in(self, features: Tensor) -> None:
        """:meth:`forward` in place on the first num_feat channels of ``features`` (see
        :meth:`ResidualDenseBlock.forward_in`)."""
        nf = self.rdb1.conv1.in_channels
        x = features[:, :nf].clone()
        for rdb in (self.rdb1, self.rdb2, self.rdb3):
            rdb.forward_in(features)
        features[:, :nf].mul_(0.2).add_(x)


class Trunk(nn.Sequential):
    """RRDBs in a row (basicsr's ``body``). With fast kernels they share one feature buffer, into
    which every dense block writes its growth channels: no ``torch.cat`` copies, and a third less
    memory at the peak than the eager forward."""

    def forward(self, x: Tensor) -> Tensor:
        blocks = list(self)
        if not blocks or any(not isinstance(b, RRDB) or b.kernels != "fast" for b in blocks):
            return super().forward(x)
        first = blocks[0].rdb1
        nf, gc = first.conv1.in_channels, first.conv1.out_channels
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1 \
            else torch.contiguous_format
        features = torch.empty((x.shape[0], nf + 4 * gc, *x.shape[2:]), dtype=x.dtype, device=x.device,
                               memory_format=layout)
        features[:, :nf] = x
        for block in blocks:
            block.forward_in(features)
        return features[:, :nf].clone(memory_format=layout)


RDB_RADIUS = chain_radius([("conv", 3)] * 5)
RRDB_RADIUS = 3 * RDB_RADIUS
TAIL_RADIUS = chain_radius(
    [("up", 2), ("conv", 3), ("up", 2), ("conv", 3), ("conv", 3), ("conv", 3)]
)
GROUPINGS = (1, 2, 3, 4, 6, 8, 12)
"""RRDBs per trunk stage worth planning, below the whole trunk."""


@dataclass(frozen=True)
class RRDBConfig:
    """Shape of an RRDBNet, as read from its state dict."""

    architecture: ClassVar[str] = "RRDBNet"
    num_in_ch: int = 3
    num_out_ch: int = 3
    scale: int = 4
    num_feat: int = 64
    num_block: int = 23
    num_grow_ch: int = 32


class RRDBNet(nn.Module):
    """ESRGAN's generator. Parameter names follow basicsr, so its checkpoints load strictly.

    x2 and x1 models first pixel-unshuffle the image by 2 or 4 (``input_factor``) and then run the
    x4 network on that smaller grid, as basicsr's RealESRGAN_x2plus does.
    """

    def __init__(self, config: RRDBConfig = RRDBConfig()) -> None:
        super().__init__()
        if config.scale not in (1, 2, 4):
            raise ValueError(f"RRDBNet scale {config.scale}: only x4, x2 and x1 exist")
        self.config = config
        nf = config.num_feat
        self.conv_first = nn.Conv2d(config.num_in_ch * self.input_factor**2, nf, 3, 1, 1)
        self.body = Trunk(*(RRDB(nf, config.num_grow_ch) for _ in range(config.num_block)))
        self.conv_body = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_hr = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, config.num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    @property
    def scale(self) -> int:
        """Output pixels per image pixel."""
        return self.config.scale

    @property
    def input_factor(self) -> int:
        """The pixel-unshuffle factor applied to the image before conv_first (1 for x4 models)."""
        return 4 // self.config.scale

    @property
    def in_channels(self) -> int:
        return self.config.num_in_ch

    @property
    def out_channels(self) -> int:
        return self.config.num_out_ch

    def forward(self, x: Tensor) -> Tensor:
        """Whole-image inference; x2/x1 models need sides divisible by ``input_factor``."""
        if self.input_factor > 1:
            x = F.pixel_unshuffle(x, self.input_factor)
        return self.forward_unshuffled(x)

    def forward_unshuffled(self, x: Tensor) -> Tensor:
        """The network after the pixel-unshuffle: x4 on the unshuffled grid."""
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        return _upsample(self, feat)

    def groupings(self) -> tuple[int, ...]:
        """``blocks_per_stage`` values worth planning: a few trunk cuts, and the whole trunk as one."""
        blocks = max(1, self.config.num_block)
        return tuple(k for k in GROUPINGS if k < blocks) + (blocks,)

    def stages(self, blocks_per_stage: int = 1) -> list[Stage]:
        """The network as stages: head conv, trunk groups of RRDBs, conv_body + long skip, tail.

        Stages work on the unshuffled grid: the engine unshuffles the image as it reads it.
        """
        if blocks_per_stage < 1:
            raise ValueError(f"blocks_per_stage must be at least 1, got {blocks_per_stage}")
        nf = self.config.num_feat
        stages = [Stage("head", self.conv_first, 1, 1, (IMAGE,), nf)]
        blocks = list(self.body)
        previous = "head"
        for start in range(0, len(blocks), blocks_per_stage):
            group = Trunk(*blocks[start : start + blocks_per_stage])
            name = f"body.{start}" if len(group) == 1 else f"body.{start}-{start + len(group) - 1}"
            last = start + blocks_per_stage >= len(blocks)
            if last:
                module: nn.Module = _TrunkEnd(group, self.conv_body)
                stages.append(Stage(name, module, RRDB_RADIUS * len(group) + 1, 1, (previous, "head"), nf))
            else:
                stages.append(Stage(name, group, RRDB_RADIUS * len(group), 1, (previous,), nf))
            previous = name
        if not blocks:
            stages.append(Stage("body", _TrunkEnd(nn.Identity(), self.conv_body), 1, 1, ("head", "head"), nf))
            previous = "body"
        stages.append(Stage("tail", _Tail(self), TAIL_RADIUS, 4, (previous,), self.config.num_out_ch))
        return stages


class _TrunkEnd(nn.Module):
    """The last RRDBs, conv_body and the long skip from conv_first's output."""

    def __init__(self, blocks: nn.Module, conv_body: nn.Conv2d) -> None:
        super().__init__()
        self.blocks = blocks
        self.conv_body = conv_body

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return skip + self.conv_body(self.blocks(x))


class _Tail(nn.Module):
    """Nearest x2, conv_up1, nearest x2, conv_up2, conv_hr, conv_last: RRDBNet.upsample's layers."""

    def __init__(self, net: RRDBNet) -> None:
        super().__init__()
        self.conv_up1, self.conv_up2 = net.conv_up1, net.conv_up2
        self.conv_hr, self.conv_last = net.conv_hr, net.conv_last
        self.lrelu = net.lrelu

    def forward(self, feat: Tensor) -> Tensor:
        return _upsample(self, feat)


def _upsample(m: RRDBNet | _Tail, feat: Tensor) -> Tensor:
    feat = m.lrelu(m.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
    feat = m.lrelu(m.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
    return m.conv_last(m.lrelu(m.conv_hr(feat)))


def config_from_state_dict(state: Mapping[str, Tensor]) -> RRDBConfig:
    """Read feature count, block count, growth and scale from basicsr-named RRDBNet weights."""
    first = state["conv_first.weight"]
    num_feat, in_ch = int(first.shape[0]), int(first.shape[1])
    blocks = {int(key.split(".")[1]) for key in state if key.startswith("body.") and ".rdb" in key}
    num_grow_ch = int(state["body.0.rdb1.conv1.weight"].shape[0]) if blocks else 32
    out_ch = int(state["conv_last.weight"].shape[0])
    scale, image_ch = _scale_and_channels(in_ch, out_ch)
    return RRDBConfig(image_ch, out_ch, scale, num_feat, len(blocks), num_grow_ch)


def _scale_and_channels(in_ch: int, out_ch: int) -> tuple[int, int]:
    """Scale and image channels from conv_first's inputs. Pixel-unshuffle models (x2, x1) feed it 4
    or 16 times the image channels, so 4 inputs are grey x2 or RGBA x4: the image channels are taken
    to be the output channels (as in every Real-ESRGAN model), else RGB."""
    for image_ch in (out_ch, 3):
        for factor, scale in ((1, 4), (2, 2), (4, 1)):
            if in_ch == image_ch * factor**2:
                return scale, image_ch
    return 4, in_ch


def is_rrdbnet(state: Mapping[str, Tensor]) -> bool:
    """Whether the weights are RRDBNet's, in any layout lpdask reads (even a variant it cannot run)."""
    try:
        return to_basicsr_rrdbnet(state) is not None
    except LpdaskError:
        return True  # loading says why it cannot run


_BSRGAN_NAMES = {
    "conv_first": "conv_first",
    "trunk_conv": "conv_body",
    "upconv1": "conv_up1",
    "upconv2": "conv_up2",
    "HRconv": "conv_hr",
    "conv_last": "conv_last",
}
_BSRGAN_RRDB = re.compile(r"RRDB_trunk\.(\d+)\.RDB([123])\.conv([1-5])\.(weight|bias)")
_OLD_RRDB = re.compile(r"model\.1\.sub\.(\d+)\.RDB([123])\.conv([1-5])\.0\.(weight|bias)")
_OLD_LAYER = re.compile(r"model\.(\d+)\.(weight|bias)")
_OLD_TRUNK_END = re.compile(r"model\.1\.sub\.(\d+)\.(weight|bias)")
_OLD_X4_TAIL = {3: "conv_up1", 6: "conv_up2", 8: "conv_hr", 10: "conv_last"}
_UPSAMPLE_CONV = re.compile(r"conv_up(\d+)\.")


def to_basicsr_rrdbnet(state: State) -> dict[str, Tensor] | None:
    """basicsr-named RRDBNet weights from any known layout, or None if ``state`` is not RRDBNet.

    Raises LpdaskError (without the file name) for RRDBNet variants lpdask cannot run.
    """
    layouts: tuple[tuple[str, Callable[[State], dict[str, Tensor] | None]], ...] = (
        ("basicsr", from_basicsr),
        ("BSRGAN", from_bsrgan),
        ("old ESRGAN", from_old_esrgan),
    )
    for name, convert in layouts:
        converted = convert(state)
        if converted is not None:
            _require_x4_upsampler(converted, name)
            return converted
    return None


def from_basicsr(state: State) -> dict[str, Tensor] | None:
    """The weights unchanged if they use basicsr's names (Real-ESRGAN, lpdask), else None."""
    if not _has_all(state, "conv_first.weight", "conv_body.weight", "conv_last.weight"):
        return None
    return dict(state)


def from_bsrgan(state: State) -> dict[str, Tensor] | None:
    """Rename BSRGAN / RealSR weights (``RRDB_trunk``, ``trunk_conv``, ``HRconv``...), else None."""
    if not _has_all(state, "conv_first.weight", "trunk_conv.weight", "conv_last.weight"):
        return None
    converted: dict[str, Tensor] = {}
    for key, value in state.items():
        block = _BSRGAN_RRDB.fullmatch(key)
        layer, _, kind = key.partition(".")
        if block:
            n, k, j, kind = block.groups()
            key = f"body.{n}.rdb{k}.conv{j}.{kind}"
        elif layer in _BSRGAN_NAMES and kind in ("weight", "bias"):
            key = f"{_BSRGAN_NAMES[layer]}.{kind}"
        converted[key] = value
    return converted


def from_old_esrgan(state: State) -> dict[str, Tensor] | None:
    """Rename ESRGAN 2018 ``model.N`` weights, else None; refuses ESRGAN+ and non-x4 upsamplers."""
    if "model.0.weight" not in state or not any(k.startswith("model.1.sub.0.RDB1.") for k in state):
        return None
    if any(".conv1x1." in key for key in state):
        raise LpdaskError("ESRGAN+ checkpoint (RDBs with conv1x1): lpdask runs only plain RRDBNet")
    num_block = len({int(m.group(1)) for m in map(_OLD_RRDB.fullmatch, state) if m})
    tail = sorted({int(m.group(1)) for m in map(_OLD_LAYER.fullmatch, state) if m} - {0})
    if tail != sorted(_OLD_X4_TAIL):
        scale = 2 ** max(0, (max(tail, default=4) - 4) // 3)
        found = ", ".join(f"model.{i}" for i in tail) or "none"
        raise LpdaskError(
            f"old ESRGAN checkpoint with tail convs {found} (x{scale}?): lpdask runs only the x4"
            " RRDBNet tail (model.3, model.6, model.8, model.10)"
        )
    converted: dict[str, Tensor] = {}
    for key, value in state.items():
        block, layer, trunk_end = (p.fullmatch(key) for p in (_OLD_RRDB, _OLD_LAYER, _OLD_TRUNK_END))
        if block:
            n, k, j, kind = block.groups()
            key = f"body.{n}.rdb{k}.conv{j}.{kind}"
        elif layer:
            index, kind = int(layer.group(1)), layer.group(2)
            key = f"{'conv_first' if index == 0 else _OLD_X4_TAIL[index]}.{kind}"
        elif trunk_end and int(trunk_end.group(1)) == num_block:
            key = f"conv_body.{trunk_end.group(2)}"
        converted[key] = value
    return converted


def _has_all(state: State, *keys: str) -> bool:
    return all(key in state for key in keys)


def _require_x4_upsampler(state: State, layout: str) -> None:
    """Refuse x2/x8 upsampling tails: RRDBNet's x2/x1 models pixel-unshuffle, then run x4."""
    ups = sorted({int(m.group(1)) for m in map(_UPSAMPLE_CONV.match, state) if m})
    if ups and ups != [1, 2]:
        found = ", ".join(f"conv_up{i}" for i in ups)
        raise LpdaskError(
            f"{layout} RRDBNet with upsampling convs {found} (x{2 ** len(ups)}): lpdask runs only"
            " the x4 tail conv_up1, conv_up2 (x2/x1 models pixel-unshuffle their input instead)"
        )


ARCHITECTURE = Architecture("RRDBNet", detect=is_rrdbnet, config=config_from_state_dict, build=RRDBNet,
                            convert=to_basicsr_rrdbnet)
