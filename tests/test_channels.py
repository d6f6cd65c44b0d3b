"""Pixel types and channel layouts, each compared with an independent whole-image run
(``reference.whole_image_any``; tolerances in reference.py: 8-bit within 1 level on at most 0.1% of
values, 16-bit within 1 level on at most 2%, float within 1e-4)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

from lpdask import upscale, upscale_array
from lpdask.errors import LpdaskError

from .reference import assert_exact, smooth_image, whole_image_any


def level0(path) -> np.ndarray:
    return zarr.open_array(str(path / "0"), mode="r")[:]


def image_with(channels: int, height: int, width: int, seed: int, dtype=np.uint8) -> np.ndarray:
    """(h, w, channels) structured test pixels; channel k is a different mix of smooth images."""
    planes = [smooth_image(height, width, seed=seed + k, dtype=dtype)[..., k % 3] for k in range(channels)]
    return np.stack(planes, axis=-1)


def test_grey_runs_as_rgb_and_returns_luma(small_net, tmp_path):
    image = image_with(1, 41, 53, seed=1)
    tifffile.imwrite(tmp_path / "in.tif", image[..., 0], tile=(16, 16))
    upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, chunk=16)
    result = level0(tmp_path / "out.zarr")
    assert result.shape == (1, 164, 212)
    assert_exact(result, whole_image_any(small_net, image))


@pytest.mark.parametrize("alpha", ["network", "nearest", "bilinear"])
def test_rgba_16bit(small_net, tmp_path, alpha):
    """The seed work could not do 16-bit 4-channel images."""
    image = image_with(4, 38, 45, seed=2, dtype=np.uint16)
    tifffile.imwrite(tmp_path / "in.tif", image, photometric="rgb", extrasamples=["unassalpha"], tile=(16, 16))
    upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, chunk=16, alpha=alpha)
    result = level0(tmp_path / "out.zarr")
    assert result.dtype == np.uint16 and result.shape == (4, 152, 180)
    assert_exact(result, whole_image_any(small_net, image, "rgba", alpha))
    if alpha != "network":  # the resized alpha differs from the network's
        assert np.abs(result[3].astype(int) - whole_image_any(small_net, image, "rgba")[3]).max() > 100


def test_multichannel_ome_tiff_keeps_channel_order(small_net, tmp_path):
    """Five 16-bit microscopy channels: each runs as a grey image; order and count kept."""
    image = image_with(5, 33, 40, seed=3, dtype=np.uint16)
    tifffile.imwrite(tmp_path / "in.ome.tif", np.moveaxis(image, -1, 0), metadata={"axes": "CYX"})
    upscale(tmp_path / "in.ome.tif", tmp_path / "out.zarr", model=small_net, chunk=16)
    result = level0(tmp_path / "out.zarr")
    assert result.shape == (5, 132, 160)
    assert_exact(result, whole_image_any(small_net, image, "separate"))
    means = result.reshape(5, -1).mean(axis=1)
    assert np.all(np.abs(means - np.moveaxis(image, -1, 0).reshape(5, -1).mean(axis=1)) < 0.2 * means)


def test_four_fluorescence_channels_are_not_rgba(small_net, tmp_path):
    """A 4-channel OME image is microscopy, not RGBA; --channels rgba overrides."""
    image = image_with(4, 30, 34, seed=4, dtype=np.uint16)
    tifffile.imwrite(tmp_path / "in.ome.tif", np.moveaxis(image, -1, 0), metadata={"axes": "CYX"})
    upscale(tmp_path / "in.ome.tif", tmp_path / "sep.zarr", model=small_net, chunk=16)
    assert_exact(level0(tmp_path / "sep.zarr"), whole_image_any(small_net, image, "separate"))
    upscale(tmp_path / "in.ome.tif", tmp_path / "rgba.zarr", model=small_net, chunk=16, channels="rgba")
    assert_exact(level0(tmp_path / "rgba.zarr"), whole_image_any(small_net, image, "rgba"))


def test_time_and_z_run_plane_by_plane(small_net, tmp_path):
    stack = np.stack([np.stack([np.moveaxis(image_with(2, 26, 30, seed=10 * t + z), -1, 0) for z in range(3)])
                      for t in range(2)])  # (t, z, c, y, x)
    tifffile.imwrite(tmp_path / "in.ome.tif", stack, metadata={"axes": "TZCYX"})
    upscale(tmp_path / "in.ome.tif", tmp_path / "out.zarr", model=small_net, chunk=16)
    out = zarr.open_array(str(tmp_path / "out.zarr" / "0"), mode="r")
    assert out.metadata.dimension_names == ("t", "c", "z", "y", "x")
    assert out.shape == (2, 2, 3, 104, 120)
    for t in range(2):
        for z in range(3):
            expected = whole_image_any(small_net, np.moveaxis(stack[t, z], 0, -1), "separate")
            assert_exact(out[t, :, z], expected)


def test_zarr_with_dimension_names(small_net, tmp_path):
    image = image_with(2, 30, 28, seed=5)
    zarr.create_array(tmp_path / "in.zarr", data=np.moveaxis(image, -1, 0)[None], dimension_names=["z", "c", "y", "x"])
    upscale(tmp_path / "in.zarr", tmp_path / "out.zarr", model=small_net, chunk=16)
    out = zarr.open_array(str(tmp_path / "out.zarr" / "0"), mode="r")
    assert out.metadata.dimension_names == ("c", "z", "y", "x")
    assert_exact(out[:, 0], whole_image_any(small_net, image, "separate"))


def test_float_value_range(small_net, tmp_path):
    """Float images outside [0, 1] need --value-range; it maps LOW..HIGH to 0..1 and back."""
    unit = image_with(3, 30, 31, seed=6, dtype=np.float32)
    image = unit * 400 - 100
    zarr.create_array(tmp_path / "in.zarr", data=image)
    with pytest.raises(LpdaskError, match=r"float32 values .* outside \[0, 1\].*--value-range"):
        upscale(tmp_path / "in.zarr", tmp_path / "bad.zarr", model=small_net, chunk=16)
    assert not (tmp_path / "bad.zarr").exists()
    upscale(tmp_path / "in.zarr", tmp_path / "out.zarr", model=small_net, chunk=16, value_range=(-100, 300))
    result = level0(tmp_path / "out.zarr")
    assert result.min() < 0 and result.max() > 100
    expected = whole_image_any(small_net, unit) * 400 - 100
    assert np.abs(result - expected).max() <= 400 * 1e-4


def test_integer_value_range(small_net, tmp_path):
    """A 16-bit image using only 0..6000 (reflectances): --value-range 0,6000 lets the network see
    the full range and maps the output back into it; values above are clipped."""
    unit = image_with(3, 28, 30, seed=8, dtype=np.float32)
    image = np.round(unit * 6000).astype(np.uint16)
    image[0, 0] = 9000  # outside the window: clipped to 6000 on the way in
    tifffile.imwrite(tmp_path / "in.tif", image, photometric="rgb")
    upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, chunk=16, value_range=(0, 6000))
    result = level0(tmp_path / "out.zarr")
    seen = np.minimum(image, 6000).astype(np.float32) / 6000
    expected = np.round(whole_image_any(small_net, seen) * np.float32(6000)).astype(np.uint16)
    assert result.max() <= 6000 and result.max() > 3000
    assert_exact(result, expected)


@pytest.mark.parametrize("channels", [1, 4, 5])
def test_lazy_api_channels(small_net, channels):
    image = image_with(channels, 40, 36, seed=7)
    result = upscale_array(da.from_array(image, chunks=(20, 20, channels)), small_net, chunk=16).compute()
    assert result.shape == (160, 144, channels)
    assert_exact(np.moveaxis(result, -1, 0), whole_image_any(small_net, image))
