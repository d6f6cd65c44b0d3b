"""`lpdask compare`: the seam report's numbers, its figure and its command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from lpdask.compare import compare, method_error
from lpdask.errors import LpdaskError

from .reference import assert_exact, smooth_image, whole_image, whole_image_any

# The figure's layout: panels of 384 px, 10 px apart, 25 px of labels above the top row; the row of
# difference maps starts 30 px below it; then the heading and table, 14 px a line.
SIDE, GAP, TOP, LINE = 384, 10, 25, 14
HEAT_TOP = TOP + SIDE + 30
TABLE_LINES = 6  # heading, column names, three methods, whole image


def stitched(net, image: np.ndarray, step: int, pad: int) -> np.ndarray:
    """Whole-image inference on each ``step`` px block plus ``pad`` px of context (clipped at the
    image border), blocks pasted together: tile mode (pad = tile_pad) or neighbour patches (pad = step)."""
    height, width = image.shape[:2]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # hundreds of tiny windows: more threads only wait for each other
    try:
        blocks = {(y, x): block(net, image, y, x, step, pad) for y in range(0, height, step)
                  for x in range(0, width, step)}
    finally:
        torch.set_num_threads(threads)
    first = blocks[0, 0]
    out = np.zeros((first.shape[0], 4 * height, 4 * width), first.dtype)
    for (y, x), pixels in blocks.items():
        out[:, 4 * y : 4 * y + pixels.shape[1], 4 * x : 4 * x + pixels.shape[2]] = pixels
    return out


def block(net, image: np.ndarray, y: int, x: int, step: int, pad: int) -> np.ndarray:
    """The output of the block at (y, x), computed on the block and ``pad`` px around it only."""
    height, width = image.shape[:2]
    y0, x0 = max(0, y - pad), max(0, x - pad)
    window = image[y0 : min(height, y + step + pad), x0 : min(width, x + step + pad)]
    result = whole_image(net, window) if image.ndim == 3 else whole_image_any(net, window[..., None])
    h, w = min(step, height - y), min(step, width - x)
    return result[:, 4 * (y - y0) : 4 * (y - y0 + h), 4 * (x - x0) : 4 * (x - x0 + w)]


def errors(result: np.ndarray, whole: np.ndarray, step: int) -> tuple[int, float, float, int]:
    """Max, mean, fraction > 1 level, and max within 4 px of an inner border of a ``step`` px grid."""
    diff = np.abs(result.astype(np.int64) - whole.astype(np.int64))
    near = np.zeros(diff.shape[1:], bool)
    for border in range(step, near.shape[0], step):
        near[border - 4 : border + 4, :] = True
    for border in range(step, near.shape[1], step):
        near[:, border - 4 : border + 4] = True
    return int(diff.max()), float(diff.mean()), float((diff > 1).mean()), int(diff[:, near].max())


def check_numbers(report, whole: np.ndarray, steps: dict[str, int]) -> None:
    """Every number of the report, recomputed from its arrays."""
    for method in report.methods:
        worst, mean, off, border = errors(report.images[method.key], whole, steps[method.key] * 4)
        assert (method.max_error, method.max_at_border) == (worst, border), method.key
        assert method.mean_error == pytest.approx(mean) and method.off_by_more_than_1 == pytest.approx(off)
        assert method.seconds > 0


def test_rgb_report_and_figure(small_net, tmp_path: Path) -> None:
    image = smooth_image(40, 44, seed=3)
    tifffile.imwrite(tmp_path / "in.tif", image, photometric="rgb")
    report = compare(tmp_path / "in.tif", model=small_net, chunk=16, size=32, tile_pad=2, patch=2,
                     out=tmp_path / "seams.png")

    assert report.crop == (4, 6, 32, 32)  # centred
    crop = image[4:36, 6:38]
    whole = whole_image(small_net, crop)
    assert np.array_equal(report.images["whole"], whole)
    assert_exact(report.images["lpdask"], whole)
    assert_exact(report.images["tile"], stitched(small_net, crop, 16, 2))
    assert_exact(report.images["patch"], stitched(small_net, crop, 2, 2))
    check_numbers(report, whole, {"tile": 16, "patch": 2, "lpdask": 16})
    methods = {m.key: m for m in report.methods}
    assert methods["lpdask"].max_error <= 1
    assert methods["tile"].max_error > 5 and methods["patch"].max_error > 5  # the net reaches past 2 px
    assert methods["tile"].max_at_border == methods["tile"].max_error  # tile mode's errors are seams
    assert [m["key"] for m in json.loads(report.to_json())["methods"]] == ["tile", "patch", "lpdask"]
    assert "lpdask exact, chunk 16" in str(report)

    figure = Image.open(tmp_path / "seams.png")
    assert figure.size == (4 * (SIDE + GAP) + GAP, HEAT_TOP + SIDE + 12 + LINE * TABLE_LINES + GAP)
    heat = np.asarray(figure.convert("RGB"))[HEAT_TOP : HEAT_TOP + SIDE]
    tile, patch, exact = (heat[:, GAP + k * (SIDE + GAP) : (k + 1) * (SIDE + GAP)] for k in range(3))
    assert tile.max() > 200 and patch.max() > 200
    assert exact.max() <= 3 * 8  # at most 1 level, x8, on a black-red-yellow-white ramp


def test_grey_16_bit(small_net, tmp_path: Path) -> None:
    """A grey image goes through the network as RGB and back by luma; errors in 16-bit levels."""
    image = smooth_image(40, 40, seed=4, dtype=np.uint16)[..., 0]
    tifffile.imwrite(tmp_path / "grey.tif", image)
    report = compare(tmp_path / "grey.tif", model=small_net, chunk=16, size=64, tile_pad=2, patch=4,
                     out=tmp_path / "grey.png")

    assert report.crop == (0, 0, 40, 40) and report.dtype == "uint16"  # at most the image
    whole = report.images["whole"]
    assert whole.shape == (1, 160, 160) and whole.dtype == np.uint16
    assert_exact(whole, whole_image_any(small_net, image[..., None]))
    assert_exact(report.images["lpdask"], whole)
    assert_exact(report.images["patch"], stitched(small_net, image, 4, 4))
    check_numbers(report, whole, {"tile": 16, "patch": 4, "lpdask": 16})
    methods = {m.key: m for m in report.methods}
    assert methods["lpdask"].max_error <= 1
    assert methods["tile"].max_error > 100 and methods["patch"].max_error > 1
    assert Image.open(tmp_path / "grey.png").size[0] == 4 * (SIDE + GAP) + GAP


def test_error_definitions() -> None:
    """Errors by hand: "at a border" means within 4 output px of an inner border of the method's grid."""
    whole = np.full((3, 48, 40), 100, np.uint8)
    result = whole.copy()
    result[0, 19, 24] += 5  # row 19: within 4 px of the border at row 16 (rows 12 to 19)
    result[1, 20, 24] += 9  # row 20, column 24: not within 4 px of any border (16, 32 across; 16, 32 down)
    result[2, 2, 12] -= 7  # column 12: within 4 px of the border at column 16
    result[2, 46, 2] += 1  # near the image border, which is no chunk border
    error = method_error("x", "x", result, whole, 16, 1.0)
    assert (error.max_error, error.max_at_border) == (9, 7)
    assert error.mean_error == pytest.approx(22 / whole.size)
    assert error.off_by_more_than_1 == pytest.approx(3 / whole.size)


@pytest.mark.parametrize("options, message", [
    ({"chunk": 32, "size": 32}, "must be larger than --chunk 32"),
    ({"out": "seams.jpg"}, "must be a .png"),
    ({"tile_pad": -1}, "--tile-pad -1"),
    ({"patch": 0}, "--patch 0"),
    ({"size": 5000}, "--size 5000"),
    ({"origin": (20, 0)}, "does not fit"),
])
def test_bad_options(small_net, tmp_path: Path, options: dict, message: str) -> None:
    tifffile.imwrite(tmp_path / "in.tif", smooth_image(40, 40))
    options = {"chunk": 16, "size": 32, "out": tmp_path / "seams.png", **options}
    with pytest.raises(LpdaskError, match=message):
        compare(tmp_path / "in.tif", model=small_net, **options)
    assert not (tmp_path / "seams.png").exists()


def test_float_input_is_refused(small_net, tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "float.tif", smooth_image(40, 40, dtype=np.float32), photometric="rgb")
    with pytest.raises(LpdaskError, match="float32 images are not supported"):
        compare(tmp_path / "float.tif", model=small_net, chunk=16, size=32, out=tmp_path / "seams.png")


def lpdask(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LPDASK_CACHE_DIR": str(cwd / "cache")}
    return subprocess.run([sys.executable, "-m", "lpdask", "compare", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_command_line(small_checkpoint, tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "in.tif", smooth_image(40, 40), photometric="rgb")
    done = lpdask("in.tif", "--model", small_checkpoint, "--chunk", "16", "--size", "32", "--tile-pad", "2",
                  "--patch", "4", "--out", "seams.png", "--json", "seams.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "seams.png").size[0] == 4 * (SIDE + GAP) + GAP
    numbers = json.loads((tmp_path / "seams.json").read_text())
    assert numbers["crop"] == [4, 4, 32, 32] and numbers["chunk"] == 16 and numbers["patch"] == 4
    methods = {m["key"]: m for m in numbers["methods"]}
    assert methods["lpdask"]["max_error"] <= 1 < methods["tile"]["max_error"]
    table = done.stdout.splitlines()
    assert table[1].split()[:3] == ["method", "max", "error"]
    assert table[2].startswith("tile mode (Real-ESRGAN), tile 16, tile_pad 2 ")
    assert table[4].split()[:5] == ["lpdask", "exact,", "chunk", "16", str(methods["lpdask"]["max_error"])]


@pytest.mark.parametrize("args, message", [
    (["missing.tif"], "input not found"),
    (["in.tif", "--chunk", "64"], "must be larger than --chunk 64"),
    (["in.tif", "--chunk", "8"], "--chunk 8 is out of range"),
    (["in.tif", "--json", "nowhere/seams.json"], "--json"),
])
def test_command_line_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    tifffile.imwrite(tmp_path / "in.tif", smooth_image(40, 40))
    done = lpdask(*args, cwd=tmp_path)  # each is refused before the default model would load
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lpdask: error:") and message in lines[0], done.stderr
    assert not (tmp_path / "seams.png").exists()
