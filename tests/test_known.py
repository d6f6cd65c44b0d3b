"""Constant areas computed once: where the input is one colour as far as the network reaches, the
output is the network's response to that colour, written instead of computed. The output is
bit-identical (8-bit) to computing every pixel (``compute_all``), whose exactness against whole-image
inference the other tests hold; the response itself is checked against independent whole-image
inference on a constant image (tolerance: ``reference.assert_exact``)."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import tifffile
import torch
import zarr

from lpdask import RRDBConfig, RRDBNet, upscale
from lpdask.channels import Pass
from lpdask.io.sources import open_source
from lpdask.known import COMPUTE, NODATA, known, response
from lpdask.task import Job

from .reference import assert_exact, lively, smooth_image, whole_image, whole_image_any

WHITE = (240, 235, 230)


def background(height: int = 256, width: int = 384) -> np.ndarray:
    """A slide-like image: texture in the middle of a flat background (about 95% of it)."""
    image = np.empty((height, width, 3), np.uint8)
    image[:] = WHITE
    image[104:152, 160:224] = smooth_image(48, 64, seed=3)
    return image


def level0(path) -> np.ndarray:
    return zarr.open_array(str(path / "0"), mode="r")[:]


@pytest.mark.parametrize(("executor", "options"), [
    ("stream", {"chunk": 64}),
    ("stream", {"chunk": 48, "tile_rows": 96, "strip": 16}),
    ("staged", {"chunk": 32, "blocks_per_stage": 1}),
    ("whole", {"chunk": 64}),
])
def test_a_constant_background_is_written_not_computed(tmp_path, small_net, executor, options) -> None:
    tifffile.imwrite(tmp_path / "in.tif", background(), photometric="rgb", tile=(32, 32))
    upscale(tmp_path / "in.tif", tmp_path / "all.zarr", model=small_net, executor=executor, compute_all=True, **options)
    upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, executor=executor, **options)
    assert np.array_equal(level0(tmp_path / "all.zarr"), level0(tmp_path / "out.zarr"))


def test_what_is_known_of_a_background(tmp_path, small_net) -> None:
    """A cell is known only where every pixel within the reach (34 px) of it is the background and
    inside the image; the background's response is whole-image inference's on a constant image."""
    image = background()
    tifffile.imwrite(tmp_path / "in.tif", image, photometric="rgb")
    job = Job(open_source(tmp_path / "in.tif"), small_net.stages(1), 64, None, None,  # type: ignore[arg-type]
              pass_=Pass("rgb", (0, 1, 2)))
    found = job.find_known(16)
    assert found.fills.shape == (16, 24) and not (found.fills == NODATA).any() and len(found.colours) == 1
    flat = np.all(image == WHITE, axis=-1)
    for i, j in zip(*np.nonzero(found.fills == 0)):
        y0, y1, x0, x1 = i * 16 - 34, (i + 1) * 16 + 34, j * 16 - 34, (j + 1) * 16 + 34
        assert y0 >= 0 and x0 >= 0 and y1 <= 256 and x1 <= 384 and flat[y0:y1, x0:x1].all(), (i, j)
    assert 0.15 < (found.fills == 0).mean() < 0.5  # cells, so 48 px of margin where 34 would do
    reference = whole_image(small_net, np.broadcast_to(np.uint8(WHITE), (100, 100, 3)).copy())[:, 200:204, 200:204]
    assert found.colours[0].shape == (3, 4, 4)  # the block that repeats every 4 output pixels
    assert_exact(found.colours[0], reference)
    assert not (found.colours[0] == np.array(WHITE)[:, None, None]).all()  # the network changes the colour


def test_the_response_of_a_pixel_unshuffle_and_a_grey_pass(tmp_path) -> None:
    torch.manual_seed(3)
    net = lively(RRDBNet(RRDBConfig(scale=2, num_feat=16, num_block=1, num_grow_ch=8)), seed=3)
    grey = np.full((60, 60), 90, np.uint8)
    tifffile.imwrite(tmp_path / "grey.tif", grey)
    job = Job(open_source(tmp_path / "grey.tif"), net.stages(1), 64, None, None,  # type: ignore[arg-type]
              pass_=Pass("grey", (0,)), input_factor=2)
    value = response(job.pixels, net.stages(1), np.array([90], np.uint8), None, None)
    reference = whole_image_any(net, grey[..., None])[:, 28:32, 28:32]
    assert value is not None and value.shape == (1, 4, 4)
    assert_exact(value, reference)


def test_missing_tiles_of_a_sparse_geotiff_are_one_colour(tmp_path, small_net) -> None:
    """GDAL writes no tile where nothing was written (SPARSE_OK): they read as 0, one colour."""
    side = 256
    with rasterio.open(tmp_path / "in.tif", "w", driver="GTiff", width=side, height=side, count=3, dtype="uint8",
                       tiled=True, blockxsize=32, blockysize=32, sparse_ok=True) as dst:
        dst.write(np.moveaxis(smooth_image(64, 64, seed=6), -1, 0), window=rasterio.windows.Window(32, 160, 64, 64))
    with tifffile.TiffFile(tmp_path / "in.tif") as tif:
        assert sum(1 for n in tif.pages[0].databytecounts if n == 0) >= 40  # the missing tiles
    upscale(tmp_path / "in.tif", tmp_path / "all.zarr", model=small_net, chunk=64, compute_all=True)
    upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, chunk=64)
    assert np.array_equal(level0(tmp_path / "all.zarr"), level0(tmp_path / "out.zarr"))
    job = Job(open_source(tmp_path / "in.tif"), small_net.stages(1), 64, None, None,  # type: ignore[arg-type]
              pass_=Pass("rgb", (0, 1, 2)))
    found = job.find_known(16)
    assert found.computed_share < 0.8 and len(found.colours) == 1  # black, away from the data and the border


def test_a_float_image_is_within_the_float_tolerance(tmp_path, small_net) -> None:
    image = background().astype(np.float32) / 255
    tifffile.imwrite(tmp_path / "in.tif", image, photometric="rgb")
    upscale(tmp_path / "in.tif", tmp_path / "all.zarr", model=small_net, chunk=64, compute_all=True)
    upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, chunk=64)
    assert_exact(level0(tmp_path / "out.zarr"), level0(tmp_path / "all.zarr"))


def test_nothing_is_known_in_tile_mode_or_by_the_lazy_executor(tmp_path, small_net) -> None:
    """Tile mode pads each tile at its edges, so a constant area's output is not the endless image's."""
    tifffile.imwrite(tmp_path / "in.tif", background(), photometric="rgb")
    image = background()
    upscale(tmp_path / "in.tif", tmp_path / "tile.zarr", model=small_net, chunk=64, mode="tile", tile_pad=4)
    upscale(tmp_path / "in.tif", tmp_path / "all.zarr", model=small_net, chunk=64, mode="tile", tile_pad=4,
            compute_all=True)
    assert np.array_equal(level0(tmp_path / "tile.zarr"), level0(tmp_path / "all.zarr"))
    assert not np.array_equal(level0(tmp_path / "tile.zarr"), whole_image(small_net, image))  # it can differ


def test_known_without_constants_marks_only_nodata(tmp_path, small_net) -> None:
    tifffile.imwrite(tmp_path / "in.tif", background(), photometric="rgb")
    job = Job(open_source(tmp_path / "in.tif"), small_net.stages(1), 64, None, None,  # type: ignore[arg-type]
              pass_=Pass("rgb", (0, 1, 2)))
    assert (known(job.pixels, None, 34, 16, constants=False).fills == COMPUTE).all()


def test_a_pixel_unshuffle_model_over_a_background(tmp_path) -> None:
    torch.manual_seed(3)
    net = lively(RRDBNet(RRDBConfig(scale=2, num_feat=16, num_block=1, num_grow_ch=8)), seed=3)
    tifffile.imwrite(tmp_path / "in.tif", background(), photometric="rgb")
    for executor in ("stream", "staged"):
        upscale(tmp_path / "in.tif", tmp_path / "all.zarr", model=net, chunk=64, executor=executor, compute_all=True,
                overwrite=True)
        upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=net, chunk=64, executor=executor, overwrite=True)
        assert np.array_equal(level0(tmp_path / "all.zarr"), level0(tmp_path / "out.zarr"))


def test_a_pixel_shuffle_answers_a_colour_with_a_repeating_block(tmp_path) -> None:
    """SRVGGNetCompact ends in a pixel shuffle: its response to one colour is a 4 x 4 block whose pixels
    differ (benchmarks/only_what_matters.py found one colour 1 level off on 20% of a 2048^2 background's
    values). The block, repeated from the output's corner, is the output bit for bit."""
    from lpdask.models.srvgg import SRVGGConfig

    from .test_srvgg import lively_srvgg

    net = lively_srvgg(SRVGGConfig(num_feat=12, num_conv=8, upscale=4), seed=2)
    image = background()
    tifffile.imwrite(tmp_path / "in.tif", image, photometric="rgb")
    job = Job(open_source(tmp_path / "in.tif"), net.stages(1), 64, None, None,  # type: ignore[arg-type]
              pass_=Pass("rgb", (0, 1, 2)))
    value = response(job.pixels, net.stages(1), np.array(WHITE, np.uint8), None, None)
    assert value is not None and value.shape == (3, 4, 4)
    assert len({tuple(value[:, i, j]) for i in range(4) for j in range(4)}) > 1  # the test can fail
    for executor in ("stream", "staged", "whole"):
        upscale(tmp_path / "in.tif", tmp_path / f"all-{executor}.zarr", model=net, chunk=64, executor=executor,
                compute_all=True)
        upscale(tmp_path / "in.tif", tmp_path / f"out-{executor}.zarr", model=net, chunk=64, executor=executor)
        assert np.array_equal(level0(tmp_path / f"all-{executor}.zarr"), level0(tmp_path / f"out-{executor}.zarr"))
