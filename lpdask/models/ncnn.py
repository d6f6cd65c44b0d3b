"""Read ncnn ``.param``/``.bin`` files: layer list and the weights of each layer, in file order."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FP16_TAG = 0x01306B47
FP32_TAG = 0


@dataclass
class Layer:
    """One line of a ``.param`` file, with the weights the ``.bin`` holds for it."""

    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[str, str]
    weights: dict[str, np.ndarray] = field(default_factory=dict)


def read_param(path: Path) -> list[Layer]:
    """Parse an ncnn ``.param`` text file."""
    lines = path.read_text().split("\n")
    if not lines or lines[0].strip() != "7767517":
        raise ValueError(f"{path}: not an ncnn .param file (no 7767517 magic)")
    layer_count = int(lines[1].split()[0])
    layers = []
    for line in lines[2:]:
        parts = line.split()
        if not parts:
            continue
        kind, name, n_in, n_out = parts[0], parts[1], int(parts[2]), int(parts[3])
        blobs = parts[4 : 4 + n_in + n_out]
        params = dict(p.split("=", 1) for p in parts[4 + n_in + n_out :])
        layers.append(Layer(kind, name, blobs[:n_in], blobs[n_in:], params))
    if len(layers) != layer_count:
        raise ValueError(f"{path}: {len(layers)} layers, the header says {layer_count}")
    return layers


def read_model(param: Path, bin_path: Path) -> list[Layer]:
    """Parse ``.param`` and attach the weights from ``.bin`` to the layers that have any."""
    layers = read_param(param)
    data = memoryview(bin_path.read_bytes())
    offset = 0

    def floats(count: int) -> np.ndarray:
        nonlocal offset
        values = np.frombuffer(data, np.float32, count, offset).copy()
        offset += 4 * count
        return values

    for layer in layers:
        if layer.type == "Convolution":
            count = int(layer.params["6"])
            (tag,) = np.frombuffer(data, np.uint32, 1, offset)
            offset += 4
            if tag == FP16_TAG:
                layer.weights["weight"] = np.frombuffer(data, np.float16, count, offset).astype(np.float32)
                offset += (2 * count + 3) // 4 * 4
            elif tag == FP32_TAG:
                layer.weights["weight"] = floats(count)
            else:
                raise ValueError(f"{bin_path}: layer {layer.name} has unsupported weight tag {tag:#x}")
            if layer.params.get("5", "0") == "1":
                layer.weights["bias"] = floats(int(layer.params["0"]))
        elif layer.type == "PReLU":
            layer.weights["slope"] = floats(int(layer.params.get("0", "1")))
    if offset != len(data):
        raise ValueError(f"{bin_path}: read {offset} of {len(data)} bytes; .param and .bin disagree")
    return layers
