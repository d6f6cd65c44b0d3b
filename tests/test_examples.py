"""The examples run and say what they promise."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_custom_network_example_is_exact(tmp_path):
    assert load("custom_network").main(tmp_path) <= 1


def test_demo_figure(tmp_path):
    """The demo's picture: three panels and two difference maps, from arrays we control."""
    import numpy as np

    demo = load("demo")
    whole = np.full((3, 512, 512), 100, np.uint8)
    tile = whole.copy()
    tile[:, 250:262, :] += 40  # a seam
    figure = demo.seam_figure([("tile mode", tile), ("lpdask", whole.copy())], whole, border=256)
    pixels = np.asarray(figure)
    assert figure.size[0] > figure.size[1] > 300
    heat = pixels[450:800]  # the row of difference maps
    left, middle = heat[:, 10:380].max(), heat[:, 420:780].max()
    assert left > 200 and middle == 0  # the tile seam shows, lpdask's difference map is black
