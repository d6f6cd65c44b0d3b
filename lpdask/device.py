"""Which torch device runs the stages."""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

import torch

from .errors import LpdaskError
from .kernels import Kernels, kernels_of, use_kernels
from .memory import prefer_expandable_segments  # noqa: F401  (its home is torch-free, for the CLI)
from .options import check_device

if TYPE_CHECKING:
    from .models.network import Network


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is refused (what is told without
    torch is :func:`lpdask.options.check_device`'s)."""
    check_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = torch.device(device)
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise LpdaskError(f"device {device!r} requested but no CUDA GPU is available")
    return chosen


Module = TypeVar("Module", bound=torch.nn.Module)


def network_on(net: Module, device: torch.device, dtype: torch.dtype, *, owned: bool = False,
               kernels: Kernels = "fast") -> Module:
    """``net`` on ``device`` in ``dtype``, channels-last on CUDA (tensor cores want NHWC), running
    ``kernels``. Unless ``owned``, it is copied first when that moves, converts or re-lays its
    weights or switches its kernels: a caller's network is never changed in place (fp16 would round
    its weights for good)."""
    if kernels_of(net) not in (None, kernels):
        if not owned:
            net = copy.deepcopy(net)
            owned = True
        use_kernels(net, kernels)
    weights = next(net.parameters(), None)
    same_device = weights is None or (weights.device.type == device.type
                                      and device.index in (None, weights.device.index))
    layout = torch.channels_last if device.type == "cuda" else None
    relaid = layout is not None and any(p.dim() == 4 and not p.is_contiguous(memory_format=layout)
                                        for p in net.parameters())
    if not owned and weights is not None and (weights.dtype != dtype or not same_device or relaid):
        net = copy.deepcopy(net)
    net = net.to(device, dtype)
    return net.to(memory_format=layout) if layout is not None else net  # type: ignore[call-arg]


def activation_layout(device: torch.device) -> torch.memory_format:
    """How activations are laid out on ``device``: channels-last on CUDA (tensor cores want NHWC)."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def storage_dtype(precision: torch.dtype) -> torch.dtype:
    """What stage outputs are stored as between stages: float16 when computing in fp16 (its
    activations round-trip exactly and the activation I/O halves), else float32 (NumPy has no
    bfloat16)."""
    return torch.float16 if precision == torch.float16 else torch.float32


PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The dtype a job's weights and activations are in: ``precision`` on CUDA; on a CPU float32,
    where bf16 is the engine's to compute inside (:mod:`lpdask.engines`: OpenVINO, on CPUs that have
    it) and fp16 is refused."""
    if precision not in PRECISIONS:
        raise LpdaskError(f"unknown precision {precision!r} (use {', '.join(PRECISIONS)})")
    check_device(device.type, precision)
    return PRECISIONS[precision] if device.type == "cuda" else torch.float32


_fp32_lock = threading.Lock()
_fp32_users = 0
_fp32_saved: object = None


def _conv_fp32() -> tuple[object, str, object]:
    """Where cuDNN's fp32 convolution setting lives in this torch, and the value that means IEEE."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):  # torch >= 2.9
        return conv, "fp32_precision", "ieee"
    return torch.backends.cudnn, "allow_tf32", False


@contextmanager
def ieee_fp32(device: torch.device) -> Iterator[None]:
    """fp32 convolutions on CUDA in IEEE float32 rather than TF32 (torch's default for cuDNN, 10-bit
    mantissa), so fp32 output matches a CPU's; the setting is put back when the last user leaves."""
    global _fp32_users, _fp32_saved
    if device.type != "cuda":
        yield
        return
    owner, name, ieee = _conv_fp32()
    with _fp32_lock:
        if _fp32_users == 0:
            _fp32_saved = getattr(owner, name)
            setattr(owner, name, ieee)
        _fp32_users += 1
    try:
        yield
    finally:
        with _fp32_lock:
            _fp32_users -= 1
            if _fp32_users == 0:
                setattr(owner, name, _fp32_saved)


def load_network(model: object, device: torch.device, dtype: torch.dtype, kernels: Kernels = "fast") -> Network:
    """The network a job runs: ``model`` (a checkpoint path, a model name, None for the default, or a
    loaded network, copied where converting would change it) on ``device`` in ``dtype`` running
    ``kernels``."""
    from .models import load_model
    from .models.network import Network as Loaded

    if isinstance(model, Loaded):
        return network_on(model, device, dtype, kernels=kernels)
    return network_on(load_model(model), device, dtype, owned=True, kernels=kernels)  # type: ignore[arg-type]
