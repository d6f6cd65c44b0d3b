"""Output the input holds no data under is never computed: tiles are cut down to the cells that hold
data, chunks that neither hold data nor feed a chunk that does are left out, and their output takes
the nodata value. The output is bit-identical to computing every pixel (``compute_all``), which the
nodata tests hold against independent whole-image inference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from rasterio.transform import from_origin

from lpdask import upscale
from lpdask.executors.stream import Stream, data_tiles, tiles

from .reference import smooth_image

SIDE = 160


def footprint(side: int = SIDE) -> tuple[np.ndarray, np.ndarray]:
    """A satellite scene's footprint: a rotated square of data in a nodata frame (about 80%)."""
    y, x = np.mgrid[0:side, 0:side] - side / 2
    valid = (np.abs(x + y) < side * 0.22) & (np.abs(x - y) < side * 0.22)
    image = np.maximum(smooth_image(side, side, seed=8), 1)
    image[~valid] = 0
    return image, valid


def write(path: Path, image: np.ndarray, nodata: float | None = 0, mask: np.ndarray | None = None) -> None:
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(path, "w", driver="GTiff", width=image.shape[1], height=image.shape[0], count=3,
                           dtype=image.dtype, crs="EPSG:32633", transform=from_origin(400000, 5000000, 10, 10),
                           nodata=nodata, tiled=True, blockxsize=32, blockysize=32) as dst:
            dst.write(np.moveaxis(image, -1, 0))
            if mask is not None:
                dst.write_mask(mask.astype(np.uint8) * 255)


def levels(path: Path) -> list[np.ndarray]:
    group = zarr.open_group(str(path), mode="r")
    return [group[name][:] for name in sorted(group.array_keys())]


@pytest.mark.parametrize(("executor", "options"), [
    ("stream", {"chunk": 48, "tile_rows": 96, "strip": 16}),
    ("stream", {"chunk": 64}),
    ("staged", {"chunk": 32, "blocks_per_stage": 1}),
    ("whole", {"chunk": 32}),
])
def test_masked_output_is_not_computed_and_the_output_is_the_same(tmp_path, small_net, executor, options) -> None:
    image, valid = footprint()
    write(tmp_path / "in.tif", image)
    every = upscale(tmp_path / "in.tif", tmp_path / "all.zarr", model=small_net, executor=executor, compute_all=True,
                    **options)
    skipped = upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, executor=executor, **options)
    for computed, left_out in zip(levels(tmp_path / "all.zarr"), levels(tmp_path / "out.zarr"), strict=True):
        assert np.array_equal(computed, left_out)  # bit-identical, pyramid levels too
    assert skipped.computed_chunks < every.computed_chunks
    assert np.all(levels(tmp_path / "out.zarr")[0][:, ~np.repeat(np.repeat(valid, 4, 0), 4, 1)] == 0)


def test_an_internal_mask_is_left_out_too(tmp_path, small_net) -> None:
    image, valid = footprint()
    image[~valid] = 200  # under GDAL's mask: any value
    write(tmp_path / "in.tif", image, nodata=None, mask=valid)
    upscale(tmp_path / "in.tif", tmp_path / "all.zarr", model=small_net, chunk=64, executor="stream", compute_all=True)
    summary = upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, chunk=64, executor="stream")
    assert np.array_equal(levels(tmp_path / "all.zarr")[0], levels(tmp_path / "out.zarr")[0])
    assert summary.computed_chunks < 3


def test_tiles_are_cut_to_the_cells_that_hold_data(tmp_path, small_net) -> None:
    """Which part of each tile is computed: none where no cell holds data, the cells' bounds elsewhere."""
    from lpdask.task import Job
    from lpdask.channels import Pass
    from lpdask.io.sources import open_source
    from lpdask.nodata import nodata_of

    image, valid = footprint()
    write(tmp_path / "in.tif", image)
    source = open_source(tmp_path / "in.tif")
    job = Job(source, small_net.stages(1), 48, None, None, nodata=nodata_of(source),  # type: ignore[arg-type]
              pass_=Pass("rgb", (0, 1, 2)), tile_rows=96)
    job.known = job.find_known(16)
    every = {(t.i, t.j): t for t in tiles(job)}
    cut = data_tiles(job, every)
    for key, tile in every.items():
        held = valid[tile.y0:tile.y1, tile.x0:tile.x1]
        if not held.any():
            assert cut[key] is None
            continue
        part = cut[key]
        r, c = np.nonzero(held)
        assert (part.tile.y0, part.tile.y1) == (tile.y0, tile.y1)  # every row's strips run as without
        spans = part.rows
        assert all(any(a <= tile.y0 + y < b for a, b in spans) for y in r)  # every data pixel's row computed
        assert part.tile.x0 <= tile.x0 + c.min() and part.tile.x1 > tile.x0 + c.max()
        assert spans[0][0] > tile.y0 + r.min() - 16 and part.tile.x1 < tile.x0 + c.max() + 1 + 16  # within a cell
    assert any(cut[key] is None for key in every)
    assert any(cut[key] is not None and cut[key].tile != every[key] for key in every)
    assert Stream().levels_written(job) == 1  # cut tiles leave the pyramid to be built after


def test_without_nodata_the_frame_is_a_colour_and_the_output_the_same(tmp_path, small_net) -> None:
    """No nodata value: the black frame is data, one colour (:mod:`lpdask.known` writes its response
    where the network's reach stays in it), and nothing takes a nodata value."""
    image, _ = footprint()
    write(tmp_path / "in.tif", image, nodata=None)
    upscale(tmp_path / "in.tif", tmp_path / "all.zarr", model=small_net, chunk=64, executor="stream", compute_all=True)
    upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, chunk=64, executor="stream")
    assert np.array_equal(levels(tmp_path / "all.zarr")[0], levels(tmp_path / "out.zarr")[0])
    assert levels(tmp_path / "out.zarr")[0].min() > 0  # the network's response to black is not 0 here


@pytest.mark.slow  # a local cluster of two worker processes
def test_known_output_is_left_out_on_a_cluster_too(tmp_path, small_checkpoint) -> None:
    """The tiles' parts and what is known around them reach the workers once per run."""
    image, _ = footprint()
    write(tmp_path / "in.tif", image)
    upscale(tmp_path / "in.tif", tmp_path / "all.zarr", model=small_checkpoint, chunk=48, executor="stream",
            compute_all=True)
    summary = upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_checkpoint, chunk=48,
                      executor="stream", workers=2)
    assert np.array_equal(levels(tmp_path / "all.zarr")[0], levels(tmp_path / "out.zarr")[0])
    assert summary.computed_chunks < 4


def test_staged_chunks_follow_the_reach_in_cells_not_in_whole_chunks(tmp_path, small_net) -> None:
    """One cell to compute in the middle of a 1024^2 image: each stage computes the chunks its cell's
    reach touches (in 16-pixel cells), not a ring of whole chunks more per stage."""
    import tifffile

    from lpdask.executors.staged import needed_chunks
    from lpdask.geometry import reach
    from lpdask.io.sources import open_source
    from lpdask.known import COMPUTE, NODATA, Known
    from lpdask.task import Job

    tifffile.imwrite(tmp_path / "in.tif", np.zeros((1024, 1024, 3), np.uint8), photometric="rgb", tile=(256, 256))
    fills = np.full((64, 64), NODATA, np.int32)
    fills[32, 32] = COMPUTE  # image pixels 512:528
    stages = small_net.stages(1)
    job = Job(open_source(tmp_path / "in.tif"), stages, 64, None, None, known=Known(16, fills))  # type: ignore[arg-type]
    needed = needed_chunks(job)
    assert needed[-1] == {(8, 8)} and (8, 8) in needed[0]
    for index in range(len(stages)):
        later = reach(stages[index + 1:]) if index + 1 < len(stages) else 0
        slack = 16 * (len(stages) - index)  # each stage's halo rounded up to whole cells
        lo, hi = (512 - later - slack) // 64, (528 + later + slack - 1) // 64
        assert needed[index] <= {(i, j) for i in range(lo, hi + 1) for j in range(lo, hi + 1)}, index
    assert len(needed[0]) < (2 * len(stages) + 1) ** 2  # what whole chunks per stage would take
