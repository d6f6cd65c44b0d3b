"""The PyTorch eager engine: each stage's module runs as it is (the reference every other engine is
checked against)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn


class Eager:
    name = "eager"

    def version(self) -> str:
        return torch.__version__

    def refuses(self, device: str, precision: str) -> str | None:
        if precision != "fp32" and device == "cpu":
            return f"--precision {precision} with the eager engine needs a CUDA device; on a CPU use fp32"
        return None

    def build(self, module: nn.Module, channels: Sequence[int], precision: str, threads: int,
              folder: Path, digest: str) -> Callable[..., Tensor]:
        return module


ENGINE = Eager()
