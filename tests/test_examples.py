"""The examples run and say what they promise."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_custom_network_example_is_exact(tmp_path):
    assert load("custom_network").main(tmp_path) <= 1


@pytest.mark.slow  # the real x4plus weights, three times
def test_demo_figure(tmp_path):
    """`make demo` itself, on a 32 x 32 crop in chunks of 16 (the default is 256 in chunks of 64) with
    the grouping given (the planner's profiling of x4plus alone took 20 s here): it writes
    seams.png with the default's layout and prints lpdask within 1 level of whole-image inference and
    tile mode further off."""
    from PIL import Image

    command = [sys.executable, str(EXAMPLES / "demo.py"), "--size", "32", "--chunk", "16", "--blocks-per-stage", "1",
               "--out", str(tmp_path / "demo")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    printed = re.findall(r"^\s*(lpdask|tile) vs whole image: max (\d+) levels", done.stdout, re.MULTILINE)
    errors = {name: int(level) for name, level in printed}
    assert errors.keys() == {"lpdask", "tile"}, done.stdout
    assert errors["lpdask"] <= 1 < errors["tile"], errors
    with Image.open(tmp_path / "demo" / "seams.png") as figure:
        assert figure.format == "PNG"
        # three 384 px panels (the 128 output px around the chunk corner, x3) over their difference maps
        assert figure.size == (1192, 845)


def test_seam_figure_shows_a_seam():
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
