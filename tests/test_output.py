"""The output: valid OME-Zarr 0.5 with a pyramid, tile mode's seams, and what a failed run leaves."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr_models.v05 import Image

from lpdask import upscale
from lpdask.chunks import stored_chunk
from lpdask.io.omezarr import is_complete

from .reference import assert_exact, smooth_image, whole_image


def test_ome_zarr_is_valid_with_pyramid(small_net, tmp_path):
    image = smooth_image(90, 70, seed=4)
    tifffile.imwrite(tmp_path / "in.tif", image, tile=(32, 32))
    summary = upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, chunk=32)
    group = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    ome = Image.from_zarr(group)  # raises unless the metadata is valid NGFF 0.5
    multiscale = ome.attributes.ome.multiscales[0]
    assert [a.name for a in multiscale.axes] == ["c", "y", "x"]
    assert [d.path for d in multiscale.datasets] == ["0", "1"]
    assert summary.levels == 2 and is_complete(tmp_path / "out.zarr")
    level0, level1 = group["0"], group["1"]
    assert level0.shape == (3, 360, 280) and level1.shape == (3, 180, 140)
    assert level0.metadata.dimension_names == ("c", "y", "x")
    assert level1.metadata.dimension_names == ("c", "y", "x")
    scales = [d.coordinateTransformations[0].scale for d in multiscale.datasets]
    assert scales == [[1.0, 0.25, 0.25], [1.0, 0.5, 0.5]]
    full = level0[:].astype(np.float32)
    expected = (full[:, 0::2, 0::2] + full[:, 1::2, 0::2] + full[:, 0::2, 1::2] + full[:, 1::2, 1::2]) / 4
    assert np.array_equal(level1[:], expected.round().astype(np.uint8))


@pytest.mark.parametrize(("compute", "stored"), [(1200, 600), (1024, 1024), (4096, 1024), (768, 768), (130, 130)])
def test_stored_chunks_divide_the_compute_chunks(compute, stored):
    assert stored_chunk(compute) == stored


def test_big_compute_chunks_are_stored_in_viewer_sized_chunks(small_net, tmp_path):
    """Chunks of 300 px write 1200 px of output each, stored as 600 px chunks (at most 1024, and
    dividing 1200 so no two tasks share one); against the whole image."""
    image = smooth_image(310, 330, seed=5)
    tifffile.imwrite(tmp_path / "in.tif", image)
    upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, chunk=300, threads=2)
    level0 = zarr.open_array(str(tmp_path / "out.zarr" / "0"))
    assert level0.chunks == (3, 600, 600)
    assert_exact(level0[:], whole_image(small_net, image))


@pytest.mark.slow  # the real x4plus weights, twice
def test_tile_mode_shows_seams_that_exact_mode_removes(default_net, tmp_path):
    """Real-ESRGAN x4plus on a real photo crop, 32 px tiles with Real-ESRGAN's tile_pad of 10:
    tile mode is far from whole-image output along the tile borders; lpdask is within 1 level."""
    from skimage import data

    image = np.ascontiguousarray(data.astronaut()[150:214, 200:264])
    tifffile.imwrite(tmp_path / "in.tif", image)
    reference = whole_image(default_net, image).astype(np.int64)
    upscale(tmp_path / "in.tif", tmp_path / "tile.zarr", model=default_net, chunk=32, mode="tile")
    upscale(tmp_path / "in.tif", tmp_path / "exact.zarr", model=default_net, chunk=32, blocks_per_stage=23)
    tile = np.abs(zarr.open_array(str(tmp_path / "tile.zarr" / "0"))[:].astype(np.int64) - reference).max(0)
    exact = np.abs(zarr.open_array(str(tmp_path / "exact.zarr" / "0"))[:].astype(np.int64) - reference).max(0)
    seam = np.zeros(tile.shape, bool)
    seam[124:132, :] = seam[:, 124:132] = True  # 4 output px either side of the tile border at 128
    assert tile[seam].max() >= 8, f"tile mode seam only {tile[seam].max()} levels"
    assert tile[seam].mean() > 1.3 * tile[~seam].mean()  # worst along the borders
    assert exact.max() <= 1


def test_failed_run_leaves_nothing_that_looks_complete_and_resumes(small_net, tmp_path, monkeypatch):
    """A run that dies leaves an unfinished output (no `ome` metadata, not complete) and its work
    folder; the same call again recomputes only the missing chunks and gives the same pixels."""
    import lpdask.task

    tifffile.imwrite(tmp_path / "in.tif", smooth_image(40, 40))
    upscale(tmp_path / "in.tif", tmp_path / "reference.zarr", model=small_net, chunk=16, blocks_per_stage=1)
    calls = {"n": 0}
    real = lpdask.task.run_window

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 20:
            raise OSError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(lpdask.task, "run_window", flaky)
    with pytest.raises(OSError, match="disk on fire"):
        upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, chunk=16, blocks_per_stage=1)
    assert not is_complete(tmp_path / "out.zarr")
    assert "ome" not in zarr.open_group(str(tmp_path / "out.zarr"), mode="r").attrs
    assert (tmp_path / "out.zarr.work").is_dir()
    monkeypatch.setattr(lpdask.task, "run_window", real)
    summary = upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, chunk=16)  # keeps its plan
    total = summary.stages * summary.chunks
    assert summary.resumed and summary.computed_chunks == total - 19  # the 19 finished before the failure
    assert is_complete(tmp_path / "out.zarr") and not (tmp_path / "out.zarr.work").exists()
    assert np.array_equal(zarr.open_array(str(tmp_path / "out.zarr" / "0"))[:],
                          zarr.open_array(str(tmp_path / "reference.zarr" / "0"))[:])
    again = upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, chunk=16, blocks_per_stage=1)
    assert again.already_complete and again.computed_chunks == 0
