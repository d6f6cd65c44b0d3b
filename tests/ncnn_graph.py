"""A small ncnn graph interpreter, written apart from lpdask.models.ncnn, to check the conversion.

It reads a ``.param``/``.bin`` pair and runs the graph by blob names with torch.nn.functional.
Only the layer types and parameters the Real-ESRGAN files use are known; anything else raises.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

MAGIC = 7767517
TAG_FP16, TAG_FP32 = 0x01306B47, 0
# Parameter keys each layer type may carry; ids below -23300 are arrays "count,v0,v1,...".
KNOWN_PARAMS = {
    "Input": set(),
    "Convolution": {"0", "1", "3", "4", "5", "6", "9", "-23310"},
    "Split": set(),
    "Concat": {"0"},
    "Eltwise": {"0", "-23301"},
    "BinaryOp": {"0"},
    "Interp": {"0", "1", "2"},
    "PReLU": {"0"},
    "PixelShuffle": {"0"},  # mode (key 1) absent: PyTorch's channel order
}


@dataclass
class Op:
    kind: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: dict[str, list[float]]
    data: dict[str, Tensor] = field(default_factory=dict)

    def get(self, key: str, default: float) -> float:
        return self.params[key][0] if key in self.params else default


def parse_param(path: Path) -> list[Op]:
    lines = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    if int(lines[0][0]) != MAGIC:
        raise ValueError(f"{path}: bad magic {lines[0][0]}")
    n_layers = int(lines[1][0])
    ops = []
    for kind, name, n_in, n_out, *rest in lines[2:]:
        n_in, n_out = int(n_in), int(n_out)
        params = {}
        for item in rest[n_in + n_out :]:
            key, value = item.split("=")
            values = [float(v) for v in value.split(",")]
            if int(key) <= -23300:  # array: first value is the element count
                if int(values[0]) != len(values) - 1:
                    raise ValueError(f"{name}: array {key} count {values[0]} vs {len(values) - 1}")
                values = values[1:]
            params[key] = values
        if kind not in KNOWN_PARAMS or not params.keys() <= KNOWN_PARAMS[kind]:
            raise ValueError(f"{name}: unsupported layer {kind} {sorted(params)}")
        ops.append(Op(kind, name, rest[:n_in], rest[n_in : n_in + n_out], params))
    if len(ops) != n_layers:
        raise ValueError(f"{path}: header says {n_layers} layers, found {len(ops)}")
    return ops


def load(param: Path, binary: Path) -> list[Op]:
    """Parse the graph and read the ``.bin`` front to back, in layer order."""
    ops, blob, pos = parse_param(param), Path(binary).read_bytes(), 0

    def take(dtype: str, count: int) -> Tensor:
        nonlocal pos
        size = np.dtype(dtype).itemsize * count
        values = np.frombuffer(blob[pos : pos + size], dtype=dtype).astype(np.float32)
        pos += (size + 3) // 4 * 4  # ncnn pads every read to 4 bytes
        return torch.from_numpy(values)

    for op in ops:
        if op.kind == "Convolution":
            (tag,) = struct.unpack_from("<I", blob, pos)
            pos += 4
            if tag not in (TAG_FP16, TAG_FP32):
                raise ValueError(f"{op.name}: unknown weight tag {tag:#x}")
            op.data["weight"] = take("<f2" if tag == TAG_FP16 else "<f4", int(op.get("6", 0)))
            if op.get("5", 0) == 1:
                op.data["bias"] = take("<f4", int(op.get("0", 0)))
        elif op.kind == "PReLU":  # raw float32 slopes, no tag
            op.data["slope"] = take("<f4", int(op.get("0", 1)))
    if pos != len(blob):
        raise ValueError(f"{binary}: read {pos} of {len(blob)} bytes")
    return ops


def run(ops: list[Op], x: Tensor) -> Tensor:
    """Execute the graph on an NCHW tensor; returns the blob nobody consumes (the output)."""
    blobs: dict[str, Tensor] = {}
    for op in ops:
        # In ncnn every blob is read once (Split makes the copies), so inputs are popped.
        ins = [blobs.pop(name) for name in op.bottoms]
        if op.kind == "Input":
            outs = [x]
        elif op.kind == "Convolution":
            k, n_out = int(op.get("1", 1)), int(op.get("0", 0))
            weight = op.data["weight"].reshape(n_out, -1, k, k)
            y = F.conv2d(ins[0], weight, op.data.get("bias"), int(op.get("3", 1)), int(op.get("4", 0)))
            act = int(op.get("9", 0))
            if act == 1:
                y = F.relu(y)
            elif act == 2:
                y = F.leaky_relu(y, op.params["-23310"][0])
            elif act != 0:
                raise ValueError(f"{op.name}: activation {act}")
            outs = [y]
        elif op.kind == "Split":
            outs = ins * len(op.tops)
        elif op.kind == "Concat" and op.get("0", 0) == 0:
            outs = [torch.cat(ins, dim=1)]
        elif op.kind == "Eltwise" and op.get("0", 1) == 1:
            coeffs = op.params.get("-23301", [1.0] * len(ins))
            outs = [sum(c * t for c, t in zip(coeffs, ins, strict=True))]
        elif op.kind == "BinaryOp" and op.get("0", 0) == 0:
            outs = [ins[0] + ins[1]]
        elif op.kind == "PReLU":
            outs = [torch.where(ins[0] >= 0, ins[0], ins[0] * op.data["slope"].reshape(-1, 1, 1))]
        elif op.kind == "PixelShuffle":
            outs = [F.pixel_shuffle(ins[0], int(op.get("0", 1)))]
        elif op.kind == "Interp" and op.get("0", 0) == 1:
            outs = [F.interpolate(ins[0], scale_factor=(op.get("1", 1), op.get("2", 1)), mode="nearest")]
        else:
            raise ValueError(f"{op.name}: unsupported {op.kind} {op.params}")
        blobs.update(zip(op.tops, outs, strict=True))
    if len(blobs) != 1:
        raise ValueError(f"graph left {len(blobs)} unconsumed blobs: {sorted(blobs)[:5]}")
    return blobs.popitem()[1]
