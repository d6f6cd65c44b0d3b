"""Nodata: a scene with a border of missing pixels, written by GDAL (rasterio) with its nodata tag
or an internal mask. Missing pixels are filled before the network (lpdask.nodata.fill, rebuilt
here on the whole image), the output's missing pixels are the nearest-upscaled input mask exactly,
and valid pixels farther than the network's reach from the border equal whole-image inference on
the valid region alone (the project's tolerance, tests/reference.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from rasterio.transform import from_origin

import lpdask
from lpdask.nodata import fill

from .reference import assert_exact, smooth_image, whole_image

SIDE, BORDER, REACH, SCALE = 120, 10, 34, 4  # REACH: the small net's whole-network halo
TRANSFORM = from_origin(500000, 4000000, 10, 10)


def scene(side: int = SIDE, border: int = BORDER) -> tuple[np.ndarray, np.ndarray]:
    """(h, w, 3) pixels with a ``border``-wide frame of zeros and no zero inside, and its validity."""
    image = np.maximum(smooth_image(side, side, seed=5), 1)
    valid = np.zeros((side, side), bool)
    valid[border:-border, border:-border] = True
    image[~valid] = 0
    return image, valid


def write_geotiff(path: Path, image: np.ndarray, nodata: float | None = 0, mask: np.ndarray | None = None) -> None:
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(path, "w", driver="GTiff", width=image.shape[1], height=image.shape[0], count=3,
                           dtype=image.dtype, crs="EPSG:32633", transform=TRANSFORM, nodata=nodata, tiled=True,
                           blockxsize=32, blockysize=32) as dst:
            dst.write(np.moveaxis(image, -1, 0))
            if mask is not None:
                dst.write_mask(mask.astype(np.uint8) * 255)


def filled(image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    out = fill(image, np.broadcast_to(valid[..., None], image.shape))
    return np.clip(np.rint(out), 0, 255).astype(image.dtype)


def upscaled(valid: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(valid, SCALE, 0), SCALE, 1)


def level0(path: Path) -> np.ndarray:
    return zarr.open_array(str(path / "0"), mode="r")[:]


@pytest.mark.parametrize("executor", ["staged", "stream"])
def test_a_nodata_border_is_filled_and_marked_and_the_far_pixels_are_exact(tmp_path: Path, small_net, small_checkpoint,
                                                                           executor: str) -> None:
    image, valid = scene()
    write_geotiff(tmp_path / "in.tif", image)
    options = {"strip": 32} if executor == "stream" else {}
    lpdask.upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_checkpoint, chunk=32, blocks_per_stage=1,
                   executor=executor, **options)
    out = level0(tmp_path / "out.zarr")
    held = upscaled(valid)
    assert np.array_equal(np.all(out != 0, axis=0), held) and np.all(out[:, ~held] == 0)

    # Exactly whole-image inference on the filled image (the fill does not depend on the chunks).
    reference = whole_image(small_net, filled(image, valid))
    assert_exact(np.where(held, out, 0), np.where(held, np.maximum(reference, 1), 0))

    # Far from the border, exactly the valid region run alone.
    alone = whole_image(small_net, image[BORDER:-BORDER, BORDER:-BORDER])
    far = slice((BORDER + REACH) * SCALE, (SIDE - BORDER - REACH) * SCALE)
    near = slice(REACH * SCALE, -REACH * SCALE)
    assert_exact(out[:, far, far], alone[:, near, near])


def test_the_fill_rings_less_than_a_black_border(small_net) -> None:
    """Ringing: the valid pixels next to the border against the network on the whole scene before
    its border went missing (mean absolute error in 8-bit levels), with the fill and with the black
    border as it is (``--nodata none``)."""
    truth = np.maximum(smooth_image(SIDE, SIDE, seed=5), 1)
    image, valid = scene()
    expected = whole_image(small_net, truth).astype(float)
    inside = slice(BORDER * SCALE, (SIDE - BORDER) * SCALE)
    errors = {}
    for name, pixels in (("fill", filled(image, valid)), ("black", image)):
        got = whole_image(small_net, pixels).astype(float)
        errors[name] = float(np.abs(got - expected)[:, inside, inside].mean())
    assert errors["fill"] < 0.5 * errors["black"], errors


def run_command(cwd: Path, model: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lpdask", "upscale", "in.tif", "out.tif", "--model", str(model),
                           "--chunk", "16", "--blocks-per-stage", "1", "-q", *extra],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def test_nodata_none_runs_the_pixels_as_they_are_and_the_output_has_no_nodata(tmp_path: Path, small_net,
                                                                              small_checkpoint) -> None:
    image, _ = scene(40, 6)
    write_geotiff(tmp_path / "in.tif", image)
    done = run_command(tmp_path, small_checkpoint, "--nodata", "none")
    assert done.returncode == 0, done.stderr
    with rasterio.open(tmp_path / "out.tif") as out:
        assert out.nodata is None
        assert_exact(out.read(), whole_image(small_net, image))


def test_a_nodata_override_is_written_to_the_geotiff(tmp_path: Path, small_checkpoint) -> None:
    image, valid = scene(40, 6)
    image[~valid] = 7
    write_geotiff(tmp_path / "in.tif", image, nodata=None)
    done = run_command(tmp_path, small_checkpoint, "--nodata", "7")
    assert done.returncode == 0, done.stderr
    with rasterio.open(tmp_path / "out.tif") as out:
        assert out.nodata == 7
        pixels = out.read()
    assert np.array_equal(np.all(pixels != 7, axis=0), upscaled(valid))


@pytest.mark.parametrize("value, message", [("abc", "is neither a number, nan nor none"),
                                            ("300", "cannot be a pixel of this uint8 image")])
def test_a_bad_nodata_is_one_line(tmp_path: Path, small_checkpoint, value: str, message: str) -> None:
    image, _ = scene(40, 6)
    write_geotiff(tmp_path / "in.tif", image)
    done = run_command(tmp_path, small_checkpoint, "--nodata", value)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [f"lpdask: error: --nodata {value!r} {message}"]
    assert not (tmp_path / "out.tif").exists()


def test_an_internal_mask_is_filled_and_the_output_takes_nodata_0(tmp_path: Path, small_net,
                                                                   small_checkpoint) -> None:
    """A mask and no nodata value: the output (a GeoTIFF) marks the missing pixels with 0, its
    nodata tag says so, and no valid pixel is 0."""
    image, valid = scene()
    image[~valid] = 200  # under the mask: any value; GDAL's mask says these hold nothing
    write_geotiff(tmp_path / "in.tif", image, nodata=None, mask=valid)
    lpdask.upscale(tmp_path / "in.tif", tmp_path / "out.tif", model=small_checkpoint, chunk=32, blocks_per_stage=1,
                   executor="staged")
    held = upscaled(valid)
    with rasterio.open(tmp_path / "out.tif") as out:
        assert out.nodata == 0
        pixels = out.read()
    assert np.array_equal(np.all(pixels != 0, axis=0), held) and np.all(pixels[:, ~held] == 0)
    reference = whole_image(small_net, filled(image, valid))
    assert_exact(np.where(held, pixels, 0), np.where(held, np.maximum(reference, 1), 0))


def test_nan_nodata_of_a_float_image(tmp_path: Path, small_net, small_checkpoint) -> None:
    image, valid = scene()
    floats = (image / 255).astype(np.float32)
    floats[~valid] = np.nan
    zarr.save_array(str(tmp_path / "in.zarr"), floats)
    lpdask.upscale(tmp_path / "in.zarr", tmp_path / "out.zarr", model=small_checkpoint, chunk=32, blocks_per_stage=1,
                   executor="staged", nodata="nan")
    out = level0(tmp_path / "out.zarr")
    held = upscaled(valid)
    assert np.array_equal(~np.isnan(out).any(axis=0), held) and np.isnan(out[:, ~held]).all()
    start = fill(np.nan_to_num(floats), np.broadcast_to(valid[..., None], floats.shape))
    assert_exact(np.where(held, out, 0), np.where(held, whole_image(small_net, start), 0))


def test_pyramid_levels_leave_missing_pixels_out(tmp_path: Path, small_checkpoint) -> None:
    """Each level's 2x2 means are those of the pixels above that hold data; nodata where none does
    (a valid mean that rounds onto nodata is moved one level off it)."""
    image, _ = scene(128, 10)
    write_geotiff(tmp_path / "in.tif", image)
    lpdask.upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_checkpoint, chunk=64, blocks_per_stage=1,
                   executor="stream", strip=64)
    group = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    levels = sorted(int(k) for k in group.array_keys() if k.isdigit())
    assert levels[1:], levels
    above = group["0"][:].astype(float)
    for index in levels[1:]:
        level = group[str(index)][:]
        quads = [above[:, y::2, x::2] for y in (0, 1) for x in (0, 1)]
        held = sum((q != 0).astype(float) for q in quads)
        mean = np.where(held > 0, sum(quads) / np.maximum(held, 1), 0)
        expected = np.where((held > 0) & (np.round(mean) == 0), 1, np.round(mean))
        assert np.array_equal(level, expected.astype(level.dtype)), index
        assert (level == 0).any() and (level != 0).any()
        above = level.astype(float)


def test_the_colour_under_alpha_0_is_filled_and_the_alpha_marks_it(tmp_path: Path, small_net,
                                                                   small_checkpoint) -> None:
    """An RGBA GeoTIFF (GDAL's alpha band) with a transparent frame: the colour there is filled
    before the network, and with --alpha nearest the output's alpha is the input's, upscaled."""
    image, valid = scene()
    image[~valid] = 90  # any colour: alpha 0 says there is none
    alpha = np.where(valid, 255, 0).astype(np.uint8)
    with rasterio.open(tmp_path / "in.tif", "w", driver="GTiff", width=SIDE, height=SIDE, count=4, dtype="uint8",
                       crs="EPSG:32633", transform=TRANSFORM, photometric="rgb", alpha="yes",
                       tiled=True, blockxsize=32, blockysize=32) as dst:
        dst.write(np.concatenate([np.moveaxis(image, -1, 0), alpha[None]]))
    lpdask.upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_checkpoint, chunk=32, blocks_per_stage=1,
                   executor="stream", strip=32, alpha="nearest")
    out = level0(tmp_path / "out.zarr")
    held = upscaled(valid)
    assert np.array_equal(out[3], np.where(held, 255, 0))
    reference = whole_image(small_net, filled(image, valid))
    assert_exact(np.where(held, out[:3], 0), np.where(held, reference, 0))
