"""Open inputs in a long-lived process: a file replaced on disk is read afresh, open handles stay
few and are closed, and a read that fails on damaged data leaves nothing running behind it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from lpdask import upscale
from lpdask.chunks import Box
from lpdask.io.sources import OPEN_HANDLES, open_source

from .reference import assert_exact, smooth_image, whole_image
from .test_cli import damaged_input

linux_only = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files in /proc/self/fd")


def open_files() -> list[str]:
    """Where each of this process's file descriptors points (Linux)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the descriptor listdir itself used, closed since
            pass
    return found


def output(path: Path) -> np.ndarray:
    return zarr.open_array(str(path / "0"), mode="r")[:]


def test_an_input_replaced_on_disk_is_read_afresh_in_the_same_process(small_net, tmp_path: Path) -> None:
    """Three runs in one process on one path: the first image, another of the same size put in its
    place (os.replace, as a copy tool does), then one of another size written over it in place.
    Each output equals an independent whole-image run of the image on disk at the time (tolerance:
    reference.assert_exact)."""
    path = tmp_path / "a.tif"
    images = [smooth_image(40, 36, seed=1), smooth_image(40, 36, seed=2), smooth_image(28, 44, seed=3)]
    for run, image in enumerate(images):
        if run == 1:
            tifffile.imwrite(tmp_path / "new.tif", image, tile=(16, 16), compression="zlib")
            os.replace(tmp_path / "new.tif", path)
        else:
            tifffile.imwrite(path, image, tile=(16, 16), compression="zlib")
        upscale(path, tmp_path / f"out{run}.zarr", model=small_net, chunk=16)
        assert_exact(output(tmp_path / f"out{run}.zarr"), whole_image(small_net, image))


@linux_only
def test_open_inputs_stay_few_and_a_replaced_ones_handle_is_closed(tmp_path: Path) -> None:
    """Reading many inputs keeps at most OPEN_HANDLES of them open, the least recently read closed
    first; reading a replaced file again closes the handle of the file it replaced."""
    paths = []
    for i in range(OPEN_HANDLES + 4):
        paths.append(tmp_path / f"in{i}.tif")
        tifffile.imwrite(paths[-1], smooth_image(20, 20, seed=i), tile=(16, 16))
    before = len(open_files())
    for path in paths:
        open_source(path).read(Box(0, 20, 0, 20))
    assert len(open_files()) - before <= OPEN_HANDLES
    assert not any(f.endswith(("in0.tif", "in1.tif")) for f in open_files())

    last = paths[-1]
    tifffile.imwrite(tmp_path / "new.tif", smooth_image(20, 20, seed=99), tile=(16, 16))
    os.replace(tmp_path / "new.tif", last)
    assert f"{last} (deleted)" in open_files()  # the replaced file is still open, read by nothing now
    pixels = open_source(last).read(Box(0, 20, 0, 20))
    assert np.array_equal(pixels, smooth_image(20, 20, seed=99))
    assert f"{last} (deleted)" not in open_files()


READ_DAMAGED = """
import sys
from lpdask.chunks import Box
from lpdask.io.sources import open_source
source = open_source(sys.argv[1])
for _ in range(3):
    try:
        source.read(Box(0, source.height, 0, source.width))
    except Exception as exc:
        print(type(exc).__name__)
"""


@pytest.mark.parametrize("kind", ["tiff", "zarr"])
def test_a_read_of_damaged_data_fails_and_leaves_nothing_running(tmp_path: Path, kind: str) -> None:
    """Zarr reads a window's tiles (or chunks) concurrently and, when one fails, does not stop the
    others: they went on failing unheard ("Task exception was never retrieved") or were destroyed
    pending at exit. Each failed read now settles them first: its error, and nothing on stderr."""
    path = damaged_input(tmp_path, kind)
    result = subprocess.run([sys.executable, "-c", READ_DAMAGED, str(path)], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONWARNINGS": "default"})
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.split()) == 3, result.stdout
    assert result.stderr == ""
