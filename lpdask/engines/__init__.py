"""Engines: what runs a stage's arithmetic.

An executor calls each stage's ``module`` on its windows and knows nothing else; an engine decides
what that call runs. The PyTorch eager engine runs the module itself (the reference); a compiling
engine replaces it with a :class:`~lpdask.engines.compiled.Compiled` module that runs a compiled form
of it, built in each process on first use (never pickled, so cluster workers build their own) and kept
on disk under the cache folder so a second run of a job builds nothing. The engines are one explicit
list, :data:`ENGINES`: the command line's ``--engine`` choices and ``auto``'s candidates come from
it. A new engine is one module here defining ``ENGINE`` (an :class:`Engine`) and one line in that
list. This module imports no torch, so the command line can list the engines before torch loads.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..errors import LpdaskError

if TYPE_CHECKING:
    from torch import Tensor, nn

class Engine(Protocol):
    """Turns a stage's module into a callable for one device, precision and thread count."""

    name: str

    def version(self) -> str:
        """The engine's own version: its artifacts are kept apart per version."""
        ...

    def refuses(self, device: str, precision: str) -> str | None:
        """Why it cannot run ``precision`` on ``device`` here (one line), or None."""
        ...

    def build(self, module: nn.Module, channels: Sequence[int], precision: str, threads: int,
              folder: Path, digest: str) -> Callable[..., Tensor]:
        """``module`` (inputs of ``channels`` channels, any height and width) compiled for the CPU or GPU
        in ``precision`` on ``threads`` threads; artifacts go in ``folder`` named by ``digest``
        (the stage's weights and structure), and are reused from there when present and sound."""
        ...


@dataclass(frozen=True)
class Entry:
    """An engine known by name: its module (under this package) defines ``ENGINE``."""

    name: str
    module: str
    help: str
    devices: tuple[str, ...]
    requires: str = ""
    """The package it imports (empty: torch alone)."""
    extra: str = ""
    """The pip extra that installs it (empty: installed with lpdask)."""

    def installed(self) -> bool:
        return not self.requires or importlib.util.find_spec(self.requires) is not None

    def load(self) -> Engine:
        return import_module(f"{__name__}.{self.module}").ENGINE  # type: ignore[no-any-return]


ENGINES: tuple[Entry, ...] = (
    Entry("eager", "eager", "PyTorch eager, the reference", ("cpu", "cuda")),
    Entry("openvino", "openvino", "OpenVINO: fp32 forced, bf16 on CPUs with AVX512-BF16 or AMX", ("cpu",),
          "openvino"),
    Entry("onnxruntime", "onnxruntime", "ONNX Runtime, fp32", ("cpu",), "onnxruntime", "onnxruntime"),
)
AUTO = "auto"
NAMES: tuple[str, ...] = (AUTO, *(e.name for e in ENGINES))
"""The ``--engine`` choices."""
REFERENCE = "eager"


def entry(name: str) -> Entry:
    found = next((e for e in ENGINES if e.name == name), None)
    if found is None:
        raise LpdaskError(f"unknown engine {name!r} (use {', '.join(NAMES)})")
    return found


def refusal(name: str, device: str, precision: str) -> str | None:
    """Why engine ``name`` cannot run ``precision`` on ``device`` here (not installed, another
    device, a precision this machine lacks), or None."""
    found = entry(name)
    if device not in found.devices:
        return f"engine {name} runs on {' and '.join(found.devices)}, not {device}"
    if not found.installed():
        how = f"pip install 'lpdask[{found.extra}]'" if found.extra else "reinstall lpdask"
        return f"engine {name} is not installed here ({how})"
    return found.load().refuses(device, precision)


def engine_named(name: str, device: str = "cpu", precision: str = "fp32") -> Engine:
    """Engine ``name``, ready for ``precision`` on ``device``; one line saying why not otherwise."""
    why = refusal(name, device, precision)
    if why:
        raise LpdaskError(why)
    return entry(name).load()


def candidates(device: str, precision: str) -> list[str]:
    """The engines that can run ``precision`` on ``device`` here, in :data:`ENGINES`' order."""
    return [e.name for e in ENGINES if refusal(e.name, device, precision) is None]


__all__ = ["AUTO", "ENGINES", "NAMES", "REFERENCE", "Engine", "Entry", "candidates", "engine_named", "entry",
           "refusal"]
