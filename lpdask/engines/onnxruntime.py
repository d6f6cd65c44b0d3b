"""The ONNX Runtime engine (CPU, fp32): each stage exported once to ONNX with dynamic height and
width, kept on disk as ``<digest>.onnx``, and run in one session per process."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .compiled import TIMES, onnx_file


class OnnxRuntime:
    name = "onnxruntime"

    def version(self) -> str:
        from importlib.metadata import version

        return version("onnxruntime")

    def refuses(self, device: str, precision: str) -> str | None:
        if device != "cpu":
            return "the onnxruntime engine runs on the CPU"
        if precision != "fp32":
            return f"the onnxruntime engine computes fp32, not {precision}"
        return None

    def build(self, module: nn.Module, channels: Sequence[int], precision: str, threads: int,
              folder: Path, digest: str) -> Callable[..., Tensor]:
        import onnxruntime as ort

        path = onnx_file(module, channels, folder, digest)
        start = time.perf_counter()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        TIMES("loaded", start)
        names = [i.name for i in session.get_inputs()]

        def run(*inputs: Tensor) -> Tensor:
            feed = {n: np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy()) for n, x in zip(names, inputs)}
            return torch.from_numpy(session.run(None, feed)[0])
        return run


ENGINE = OnnxRuntime()
