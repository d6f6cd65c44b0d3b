"""Exactness: lpdask's chunked output equals an independent whole-image run (tolerances in
reference.py: 8-bit within 1 level on at most 0.1% of pixels, float within 1e-4)."""

from __future__ import annotations

import dataclasses

import dask.array as da
import numpy as np
import pytest
import tifffile
import torch
import zarr

from lpdask import upscale, upscale_array
from lpdask.executors.staged import stages_for
from lpdask.chunks import Box
from lpdask.executors.staged import run_job
from lpdask.task import Job
from lpdask.io.omezarr import OmeZarrSink
from lpdask.io.sources import open_source
from lpdask.jobs import WorkFolder
from lpdask.schedulers import Threads

from .reference import assert_exact, smooth_image, whole_image, whole_image_any, whole_image_float


def level0(path) -> np.ndarray:
    return zarr.open_array(str(path / "0"), mode="r")[:]


@pytest.mark.parametrize(
    ("height", "width", "chunk", "blocks"),
    [(70, 90, 16, 1), (100, 75, 32, 2), (130, 97, 64, 1), (300, 260, 256, 1), (37, 41, 256, 2)],
)
def test_tiff_matches_whole_image(small_net, tmp_path, height, width, chunk, blocks):
    image = smooth_image(height, width, seed=height)
    tifffile.imwrite(tmp_path / "in.tif", image, tile=(16, 16))
    upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, chunk=chunk, blocks_per_stage=blocks)
    assert_exact(level0(tmp_path / "out.zarr"), whole_image(small_net, image))


@pytest.mark.parametrize("layout", ["striped", "planar"])
def test_striped_and_planar_tiff(small_net, tmp_path, layout):
    image = smooth_image(45, 61, seed=7)
    if layout == "striped":
        tifffile.imwrite(tmp_path / "in.tif", image, rowsperstrip=5)
    else:
        tifffile.imwrite(tmp_path / "in.tif", np.moveaxis(image, -1, 0), photometric="rgb", planarconfig="separate")
    upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, chunk=20)
    assert_exact(level0(tmp_path / "out.zarr"), whole_image(small_net, image))


@pytest.mark.parametrize(("zarr_format", "channels_first"), [(3, False), (3, True), (2, False), (2, True)])
def test_zarr_matches_whole_image(small_net, tmp_path, zarr_format, channels_first):
    image = smooth_image(50, 66, seed=3)
    stored = np.moveaxis(image, -1, 0) if channels_first else image
    array = zarr.create_array(tmp_path / "in.zarr", shape=stored.shape, chunks=(3, 17, 23) if channels_first
                              else (17, 23, 3), dtype=stored.dtype, zarr_format=zarr_format)
    array[:] = stored
    upscale(tmp_path / "in.zarr", tmp_path / "out.zarr", model=small_net, chunk=24)
    assert_exact(level0(tmp_path / "out.zarr"), whole_image(small_net, image))


def test_float_output_within_tolerance(small_net, tmp_path):
    image = smooth_image(40, 52, seed=5, dtype=np.float32)
    zarr.create_array(tmp_path / "in.zarr", data=image, chunks=(16, 16, 3))
    upscale(tmp_path / "in.zarr", tmp_path / "out.zarr", model=small_net, chunk=16)
    result = level0(tmp_path / "out.zarr")
    assert result.dtype == np.float32
    assert_exact(result, whole_image_float(small_net, image))


def test_lazy_api_matches_whole_image(small_net):
    image = smooth_image(75, 66, seed=11)
    result = upscale_array(da.from_array(image, chunks=(40, 40, 3)), small_net, chunk=32).compute()
    assert result.shape == (300, 264, 3)
    assert_exact(np.moveaxis(result, -1, 0), whole_image(small_net, image))


def test_lazy_api_float(small_net):
    image = smooth_image(48, 50, seed=12, dtype=np.float32)
    result = upscale_array(da.from_array(image), small_net, chunk=16, blocks_per_stage=1).compute()
    assert_exact(np.moveaxis(result, -1, 0), whole_image_float(small_net, image))


def test_basicsr_whole_image_agrees(small_net, tmp_path):
    """Cross-check against basicsr's own RRDBNet loaded with the same weights."""
    from .basicsr_import import basicsr_rrdbnet

    theirs = basicsr_rrdbnet(small_net.state_dict())
    image = smooth_image(58, 47, seed=13)
    tifffile.imwrite(tmp_path / "in.tif", image, tile=(16, 16))
    upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, chunk=16)
    assert_exact(level0(tmp_path / "out.zarr"), whole_image(theirs, image))


@pytest.mark.parametrize(("scale", "height", "width", "chunk"), [(2, 45, 37, 16), (1, 30, 43, 20), (2, 64, 64, 32)])
def test_pixel_unshuffle_models_match_real_esrgan(tmp_path, scale, height, width, chunk):
    """x2 / x1 RRDBNets on odd sizes: Real-ESRGAN reflect-pads to the unshuffle grid and crops after;
    compared with basicsr's RRDBNet on the same weights, and the lazy API too."""
    from lpdask import RRDBConfig, RRDBNet

    from .basicsr_import import basicsr_rrdbnet
    from .reference import lively

    torch.manual_seed(scale)
    net = lively(RRDBNet(RRDBConfig(scale=scale, num_feat=12, num_block=2, num_grow_ch=6)), seed=scale)
    theirs = basicsr_rrdbnet(net.state_dict())
    image = smooth_image(height, width, seed=scale + height)
    tifffile.imwrite(tmp_path / "in.tif", image)
    upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=net, chunk=chunk)
    expected = whole_image(theirs, image)
    assert expected.shape == (3, height * scale, width * scale)
    assert_exact(level0(tmp_path / "out.zarr"), expected)
    lazy = upscale_array(da.from_array(image, chunks=(24, 24, 3)), net, chunk=64).compute()
    assert_exact(np.moveaxis(lazy, -1, 0), expected)


@pytest.mark.slow  # the real x4plus weights
def test_default_model_on_a_real_image(default_net, tmp_path):
    """The real x4plus weights (23 RRDBs, reach 349 px) on a real photograph, chunks of 24 px."""
    from skimage import data

    image = np.ascontiguousarray(data.astronaut()[90:134, 170:206])
    tifffile.imwrite(tmp_path / "in.tif", image)
    upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=default_net, chunk=24, blocks_per_stage=4)
    assert_exact(level0(tmp_path / "out.zarr"), whole_image(default_net, image))


def test_halos_too_small_are_caught(small_net, tmp_path):
    """The comparison above can fail: the same engine with halved halos is off by more than the
    tolerance, near the chunk borders."""
    image = smooth_image(64, 64, seed=17, dtype=np.float32)
    zarr.create_array(tmp_path / "in.zarr", data=image)
    stages = [dataclasses.replace(s, halo=s.halo // 2) for s in stages_for(small_net, "exact", 2, 0)]
    source = open_source(tmp_path / "in.zarr")
    sink = OmeZarrSink(tmp_path / "out.zarr", "cyx", (3, 256, 256), np.dtype(np.float32), 128)
    run_job(Job(source, stages, 32, WorkFolder(tmp_path / "work"), sink), Threads(1))
    with pytest.raises(AssertionError, match="max float difference"):
        assert_exact(level0(tmp_path / "out.zarr"), whole_image_float(small_net, image))


def test_window_is_clipped_at_the_border():
    assert Box(0, 16, 16, 32).grow(5, 20, 40) == Box(0, 20, 11, 37)


def test_uint16_normalised_by_65535(small_net, tmp_path):
    image = smooth_image(37, 45, seed=23, dtype=np.uint16)
    tifffile.imwrite(tmp_path / "in.tif", image, tile=(16, 16))
    upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, chunk=16)
    result = level0(tmp_path / "out.zarr")
    assert result.dtype == np.uint16 and int(result.max()) > 255
    assert_exact(result, whole_image(small_net, image))


@pytest.mark.parametrize("channels", [3, 4])
def test_the_lazy_executor_runs_a_job_exactly(small_net, tmp_path, channels):
    """The lazy executor plugs into the same runner: one dask graph per channel pass (RGBA: two),
    written into the same output; against whole-image inference within 1 level (rounding)."""
    image = smooth_image(70, 60, seed=91)
    if channels == 4:
        image = np.concatenate([image, image[..., 1:2]], axis=-1)
        tifffile.imwrite(tmp_path / "in.tif", image, photometric="rgb", extrasamples=["unassalpha"])
    else:
        tifffile.imwrite(tmp_path / "in.tif", image)
    summary = upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, chunk=32, blocks_per_stage=1,
                      executor="lazy")
    assert summary.runs == (2 if channels == 4 else 1)
    assert_exact(zarr.open_array(str(tmp_path / "out.zarr" / "0"))[:], whole_image_any(small_net, image))
    assert not (tmp_path / "out.zarr.work").exists()
