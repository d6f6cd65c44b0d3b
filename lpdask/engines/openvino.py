"""The OpenVINO engine (CPU): each stage exported once to ONNX with dynamic height and width
(:func:`~lpdask.engines.compiled.onnx_file`; OpenVINO reads ONNX itself, and the export takes a
tenth of the time of OpenVINO's own converter), and compiled for this CPU with OpenVINO's cache of
compiled models (``blobs/<precision>/``, keyed by the model's content, the threads and the CPU).

OpenVINO computes in bf16 by itself on CPUs that have it; lpdask always names the precision
(``INFERENCE_PRECISION_HINT``), so fp32 stays fp32.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .compiled import TIMES, keeping_locale, onnx_file

PRECISIONS = {"fp32": "f32", "bf16": "bf16"}


@lru_cache(maxsize=1)
def core() -> Any:
    import openvino as ov

    return ov.Core()


def has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), as OpenVINO reports it."""
    return "BF16" in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVINO:
    name = "openvino"

    def version(self) -> str:
        from importlib.metadata import version

        return version("openvino")

    def refuses(self, device: str, precision: str) -> str | None:
        if device != "cpu":
            return "the openvino engine runs on the CPU"
        if precision not in PRECISIONS:
            return f"the openvino engine computes fp32, or bf16 on CPUs that have it; not {precision}"
        if precision == "bf16" and not has_bf16():
            return "--precision bf16 needs a CPU with AVX512-BF16 or AMX; this one has neither (use fp32)"
        return None

    def build(self, module: nn.Module, channels: Sequence[int], precision: str, threads: int,
              folder: Path, digest: str) -> Callable[..., Tensor]:
        path = onnx_file(module, channels, folder, digest)
        config = {"INFERENCE_PRECISION_HINT": PRECISIONS[precision], "INFERENCE_NUM_THREADS": threads,
                  "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False,
                  "CACHE_DIR": str(folder / "blobs" / precision)}
        # Pinning would put the threads of every compiled model on the same first cores: tasks running side
        # by side (each with its own compiled model) would share one core (measured: 2 x 1-thread tasks took
        # 1.95x one's time pinned, 1.15x unpinned). From the model read, not from its path: OpenVINO then keys its cache by the model's content, so a
        # compiled model is never taken for a file that changed under the same name.
        with _compiling, keeping_locale():
            runner = _Runner(core().read_model(str(path)), config)
        runner.compiled()  # compiled (or loaded) now, in the building thread
        return runner


class _Runner:
    """One stage for OpenVINO, compiled once per calling thread: a compiled model runs one request at a
    time (one stream of ``threads`` threads), so tasks running side by side each get their own, as
    each gets its own torch threads. A thread that moves on to another stage releases the last one's
    working memory (OpenVINO keeps it between calls, which over every stage of a network adds up to
    gigabytes)."""

    def __init__(self, model: Any, config: dict[str, Any]) -> None:
        self.model, self.config = model, config
        self.local = threading.local()

    def compiled(self) -> Any:
        found = getattr(self.local, "compiled", None)
        if found is None:
            start = time.perf_counter()
            with _compiling, keeping_locale():
                found = self.local.compiled = core().compile_model(self.model, "CPU", self.config)
                self.local.request = found.create_infer_request()
            TIMES("loaded" if found.get_property("LOADED_FROM_CACHE") else "compiled", start)
        return found

    def __call__(self, *inputs: Tensor) -> Tensor:
        self.compiled()
        last = getattr(_LAST, "runner", None)
        if last is not None and last is not self:
            last.local.compiled.release_memory()
        _LAST.runner = self
        arrays = [np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy()) for x in inputs]
        result = self.local.request.infer(arrays, share_inputs=True, share_outputs=False)
        return torch.from_numpy(next(iter(result.values())))


_LAST = threading.local()
_compiling = threading.Lock()
"""One read or compile at a time in the process (see :func:`~lpdask.engines.compiled.keeping_locale`)."""
"""The runner each thread called last."""


ENGINE = OpenVINO()
