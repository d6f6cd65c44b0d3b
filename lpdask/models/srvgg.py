"""SRVGGNetCompact (Real-ESRGAN's "Compact": realesr-animevideov3, realesr-general-x4v3), with
basicsr's parameter names, and its stage list.

The network is one chain of 3x3 convolutions, each but the last followed by an activation; the
last one makes ``3 * s * s`` channels that a pixel shuffle turns into the x``s`` residual, which is
added to the nearest-upsampled image. Its receptive-field radius is therefore the number of
convolutions (18 LR px for animevideov3: 16 body convs plus the first and the last).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn
from torch.nn import functional as F

from ..stages import IMAGE, Stage, chain_radius
from .registry import Architecture, Lookalike

CONVS_PER_BLOCK = 15
"""Convolutions per "block" when cutting the chain into stages: 15 chained 3x3 convs reach 15 px,
as one RRDB does, so ``blocks_per_stage`` buys the same halo per stage for either architecture."""

ACTIVATIONS = ("prelu", "relu", "leakyrelu")


@dataclass(frozen=True)
class SRVGGConfig:
    """Shape of an SRVGGNetCompact (basicsr's argument names).

    num_conv: convolutions between the first and the last (16 in realesr-animevideov3).
    act_type: ``prelu`` (per-channel learned slopes), ``relu`` or ``leakyrelu`` (slope 0.1).
    """

    architecture: ClassVar[str] = "SRVGGNetCompact"
    num_in_ch: int = 3
    num_out_ch: int = 3
    num_feat: int = 64
    num_conv: int = 16
    upscale: int = 4
    act_type: str = "prelu"


class SRVGGNetCompact(nn.Module):
    """Real-ESRGAN's compact VGG-style network. ``body`` holds conv, activation, conv, activation,
    ..., conv, as in basicsr, so basicsr's and Real-ESRGAN's checkpoints load strictly."""

    def __init__(self, config: SRVGGConfig = SRVGGConfig()) -> None:
        super().__init__()
        if config.act_type not in ACTIVATIONS:
            raise ValueError(f"act_type {config.act_type!r}: use one of {', '.join(ACTIVATIONS)}")
        if config.num_out_ch != config.num_in_ch:
            raise ValueError(f"SRVGGNetCompact adds the upsampled image to its output: {config.num_in_ch} "
                             f"input channels cannot make {config.num_out_ch} output channels")
        if config.upscale < 1 or config.num_conv < 0:
            raise ValueError(f"upscale {config.upscale} and num_conv {config.num_conv} must be positive")
        self.config = config
        nf = config.num_feat
        layers: list[nn.Module] = [nn.Conv2d(config.num_in_ch, nf, 3, 1, 1), _activation(config)]
        for _ in range(config.num_conv):
            layers += [nn.Conv2d(nf, nf, 3, 1, 1), _activation(config)]
        layers.append(nn.Conv2d(nf, config.num_out_ch * config.upscale**2, 3, 1, 1))
        self.body = nn.ModuleList(layers)

    @property
    def scale(self) -> int:
        """Output pixels per image pixel."""
        return self.config.upscale

    @property
    def input_factor(self) -> int:
        """No pixel-unshuffle: the network works on the image grid."""
        return 1

    @property
    def in_channels(self) -> int:
        return self.config.num_in_ch

    @property
    def out_channels(self) -> int:
        return self.config.num_out_ch

    @property
    def num_convs(self) -> int:
        """All convolutions in the chain: the first, ``num_conv``, and the last."""
        return self.config.num_conv + 2

    def forward(self, x: Tensor) -> Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        return _add_upsampled(out, x, self.scale)

    def forward_unshuffled(self, x: Tensor) -> Tensor:
        """Same as ``forward``: there is no pixel-unshuffle."""
        return self.forward(x)

    def groupings(self) -> tuple[int, ...]:
        """The least ``blocks_per_stage`` for each number of stages the chain can be cut into."""
        found: dict[int, int] = {}
        for blocks in range(1, math.ceil(self.num_convs / CONVS_PER_BLOCK) + 1):
            found.setdefault(_stage_count(self.num_convs, blocks), blocks)
        return tuple(found.values())

    def stages(self, blocks_per_stage: int = 1) -> list[Stage]:
        """The conv chain cut into stages of at most ``blocks_per_stage * CONVS_PER_BLOCK`` convs.

        The cuts are balanced (18 convs with one block per stage: 9 + 9, halos 9 and 9; two or more
        blocks: one stage, halo 18). Each stage's halo is its number of convs. The last stage also
        pixel-shuffles and adds the nearest-upsampled image, so it reads the image as its second
        input: ``inputs=(previous, IMAGE)``, or ``(IMAGE, IMAGE)`` when it is the only stage.
        """
        if blocks_per_stage < 1:
            raise ValueError(f"blocks_per_stage must be at least 1, got {blocks_per_stage}")
        total = self.num_convs
        count = _stage_count(total, blocks_per_stage)
        sizes = [total // count + (1 if i < total % count else 0) for i in range(count)]
        body = list(self.body)
        stages: list[Stage] = []
        previous, start = IMAGE, 0
        for size in sizes:
            end = start + size  # convs start .. end-1; conv i is body[2 * i], its activation body[2 * i + 1]
            name = f"convs.{start}-{end - 1}"
            halo = chain_radius([("conv", 3)] * size)
            if end < total:
                module: nn.Module = nn.Sequential(*body[2 * start : 2 * end])
                stages.append(Stage(name, module, halo, 1, (previous,), self.config.num_feat))
            else:
                module = _Tail(body[2 * start :], self.scale)
                stages.append(Stage(name, module, halo, self.scale, (previous, IMAGE), self.config.num_out_ch))
            previous, start = name, end
        return stages


def _stage_count(convs: int, blocks_per_stage: int) -> int:
    return math.ceil(convs / (blocks_per_stage * CONVS_PER_BLOCK))


class _Tail(nn.Module):
    """The rest of the chain, the pixel shuffle, and the nearest-upsampled image added."""

    def __init__(self, layers: list[nn.Module], scale: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(*layers)
        self.scale = scale

    def forward(self, feat: Tensor, image: Tensor) -> Tensor:
        return _add_upsampled(self.layers(feat), image, self.scale)


def _add_upsampled(shuffled: Tensor, image: Tensor, scale: int) -> Tensor:
    """Pixel-shuffle the last conv's output and add the nearest-upsampled image (the residual)."""
    out = F.pixel_shuffle(shuffled, scale)
    return out + F.interpolate(image, scale_factor=scale, mode="nearest")


def _activation(config: SRVGGConfig) -> nn.Module:
    if config.act_type == "prelu":
        return nn.PReLU(num_parameters=config.num_feat)
    if config.act_type == "relu":
        return nn.ReLU(inplace=True)
    return nn.LeakyReLU(negative_slope=0.1, inplace=True)


def is_compact(state: Mapping[str, Tensor]) -> bool:
    """Whether ``state`` has SRVGGNetCompact's layout: ``body.0`` a conv, ``body.1`` a PReLU."""
    first, act = state.get("body.0.weight"), state.get("body.1.weight")
    return first is not None and act is not None and first.ndim == 4 and act.ndim == 1


def config_from_state_dict(state: Mapping[str, Tensor]) -> SRVGGConfig:
    """Read channels, features, conv count and scale from basicsr-named SRVGGNetCompact weights.

    Only PReLU checkpoints can be read: relu and leakyrelu have no weights to tell them apart.
    """
    if not is_compact(state):
        raise ValueError("no body.0 convolution followed by a body.1 PReLU")
    first = state["body.0.weight"]
    num_feat, in_ch = int(first.shape[0]), int(first.shape[1])
    indices = sorted({int(key.split(".")[1]) for key in state if key.startswith("body.")})
    last = indices[-1]
    if last % 2 or last < 2 or indices != list(range(last + 1)):
        raise ValueError(f"body layers {indices[:3]}...{indices[-3:]} are not conv, PReLU, ..., conv")
    shuffled = int(state[f"body.{last}.weight"].shape[0])
    scale = math.isqrt(shuffled // in_ch) if shuffled % in_ch == 0 else 0
    if scale < 1 or scale * scale * in_ch != shuffled:
        raise ValueError(f"the last conv makes {shuffled} channels, not {in_ch} x scale^2")
    return SRVGGConfig(in_ch, in_ch, num_feat, last // 2 - 1, scale, "prelu")


def looks_compact(state: Mapping[str, Tensor]) -> bool:
    """Whether the keys are only ``body.N`` weights and biases, as SRVGGNetCompact's (also with ReLU
    activations, which have no weights and so cannot be read)."""
    return "body.0.weight" in state and all(re.fullmatch(r"body\.\d+\.(weight|bias)", key) for key in state)


ARCHITECTURE = Architecture("SRVGGNetCompact", detect=is_compact, config=config_from_state_dict, build=SRVGGNetCompact)
LOOKALIKE = Lookalike("SRVGGNetCompact", looks_compact)
