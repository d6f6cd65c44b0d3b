"""Signed, 32-bit and float64 pixels (int8, int16, int32, uint32, float64): the network sees them
mapped through the value range to [0, 1], the output is written back in the input's type (OME-Zarr,
Cloud Optimized GeoTIFF), nodata keeps working; without a value range the command refuses them in
one line. Inputs: a real CBERS-4 int16 band (tests/data/README.md), GeoTIFFs written by GDAL through
rasterio, a Zarr array.

Tolerance: the engine's float output equals the independent whole-image run's within
:data:`~tests.reference.FLOAT_TOLERANCE` of [0, 1], so a pixel mapped back to LOW..HIGH is within
(HIGH - LOW) x 1e-4 of the reference's value, plus half a level of rounding for integers."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import zarr
from rasterio.crs import CRS
from rasterio.transform import Affine, from_origin

from lpdask import upscale
from lpdask.errors import LpdaskError
from lpdask.pixels import from_unit, from_unit_tensor, to_unit

from .reference import FLOAT_TOLERANCE, smooth_image, whole_image_any

HEIGHT, WIDTH = 30, 40
EPSG = "EPSG:32633"
TRANSFORM = from_origin(500000, 4100000, 10, 10)
RUN = {"chunk": 16, "blocks_per_stage": 1}
CBERS = Path(__file__).parent / "data" / "CBERS_4_AWFI_20170420_146_129_L2_BAND13.tif"
REACH = 34
"""How far the small test network (conftest.small_net) sees: its whole-network halo, in input pixels."""

CASES = {  # dtype -> the value range its pixels span
    "int8": (-100.0, 100.0),
    "int16": (-200.0, 3800.0),  # a DEM's heights in metres
    "int32": (-100_000.0, 2_000_000.0),
    "uint32": (0.0, 4_000_000_000.0),
    "float64": (-50.0, 1250.0),
}


def unit_image(seed: int = 0) -> np.ndarray:
    """(h, w, 1) float32 in [0, 1]: what the network should see."""
    return smooth_image(HEIGHT, WIDTH, seed, np.float32)[..., :1]


def mapped(unit: np.ndarray, dtype: np.dtype, value_range: tuple[float, float]) -> np.ndarray:
    """``unit`` mapped to ``value_range`` in ``dtype`` (rounded for integers)."""
    low, high = value_range
    values = unit.astype(np.float64) * (high - low) + low
    return (np.round(values) if np.dtype(dtype).kind in "iu" else values).astype(dtype)


def seen(pixels: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """What the network sees of ``pixels``, computed here in float64: (p - LOW) / (HIGH - LOW)."""
    low, high = value_range
    return np.clip((pixels.astype(np.float64) - low) / (high - low), 0, 1).astype(np.float32)


def expected_values(net: torch.nn.Module, pixels: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """The independent whole-image run on the mapped input, mapped back: (c, H, W) float64."""
    low, high = value_range
    return whole_image_any(net, seen(pixels, value_range)).astype(np.float64) * (high - low) + low


def assert_close(result: np.ndarray, expected: np.ndarray, value_range: tuple[float, float]) -> None:
    low, high = value_range
    tolerance = (high - low) * FLOAT_TOLERANCE + (0.5 if result.dtype.kind in "iu" else 0)
    worst = float(np.abs(result.astype(np.float64) - expected).max())
    assert worst <= tolerance, f"max difference {worst} > {tolerance}"


def write_geotiff(path: Path, pixels: np.ndarray, nodata: float | None = None) -> Path:
    """(h, w, bands) pixels as a tiled GeoTIFF written by GDAL."""
    with rasterio.open(path, "w", driver="GTiff", width=pixels.shape[1], height=pixels.shape[0],
                       count=pixels.shape[2], dtype=pixels.dtype, crs=EPSG, transform=TRANSFORM, nodata=nodata,
                       tiled=True, blockxsize=16, blockysize=16) as dst:
        dst.write(np.moveaxis(pixels, -1, 0))
    return path


def read_output(path: Path) -> np.ndarray:
    """The output's level 0 as (c, H, W), from an OME-Zarr or through GDAL."""
    if path.suffix == ".zarr":
        return zarr.open_array(str(path / "0"), mode="r")[:]
    with rasterio.open(path) as src:
        return src.read()


def lpdask(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LPDASK_CACHE_DIR": str(cwd / "cache")}
    return subprocess.run([sys.executable, "-m", "lpdask", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("suffix", [".zarr", ".tif"])
@pytest.mark.parametrize("dtype", list(CASES))
def test_gdal_geotiff_keeps_its_type(small_net, tmp_path: Path, dtype: str, suffix: str) -> None:
    """A GDAL-written GeoTIFF of each type comes out in that type (OME-Zarr, or a COG with its CRS
    and transform scaled), equal to the whole-image run on the mapped input."""
    value_range = CASES[dtype]
    pixels = mapped(unit_image(), np.dtype(dtype), value_range)
    source = write_geotiff(tmp_path / "in.tif", pixels)
    output = tmp_path / f"out{suffix}"
    upscale(source, output, model=small_net, value_range=value_range, **RUN)
    result = read_output(output)
    assert result.dtype == np.dtype(dtype) and result.shape == (1, HEIGHT * 4, WIDTH * 4)
    assert_close(result, expected_values(small_net, pixels, value_range), value_range)
    if suffix == ".tif":
        with rasterio.open(output) as out:
            assert out.crs == CRS.from_string(EPSG)
            assert out.transform.almost_equals(TRANSFORM @ Affine.scale(1 / 4))


@pytest.mark.parametrize("executor", ["stream", "whole", "lazy"])
def test_other_executors(small_net, tmp_path: Path, executor: str) -> None:
    """The streaming, whole-network and lazy executors convert int32 (mapped in float64) the same way
    (the test above runs the staged one)."""
    value_range = CASES["int32"]
    pixels = mapped(unit_image(2), np.dtype(np.int32), value_range)
    source = write_geotiff(tmp_path / "in.tif", pixels)
    upscale(source, tmp_path / "out.zarr", model=small_net, value_range=value_range, chunk=16, executor=executor)
    result = read_output(tmp_path / "out.zarr")
    assert result.dtype == np.int32
    assert_close(result, expected_values(small_net, pixels, value_range), value_range)

def test_zarr_int32_input(small_net, tmp_path: Path) -> None:
    """A (y, x, c) int32 Zarr array: RGB through the network, int32 out, the window clipped on the
    way in."""
    value_range = (-1_000_000.0, 1_000_000.0)
    unit = smooth_image(HEIGHT, WIDTH, 3, np.float32)
    pixels = mapped(unit, np.dtype(np.int32), value_range)
    pixels[0, 0] = 2_000_000_000  # outside the window: the network sees 1
    zarr.create_array(tmp_path / "in.zarr", data=pixels)
    upscale(tmp_path / "in.zarr", tmp_path / "out.zarr", model=small_net, value_range=value_range, **RUN)
    result = read_output(tmp_path / "out.zarr")
    assert result.dtype == np.int32 and result.min() >= -1_000_000 and result.max() <= 1_000_000
    assert_close(result, expected_values(small_net, pixels, value_range), value_range)


def test_int16_dem_nodata(small_net, tmp_path: Path) -> None:
    """An int16 DEM with GDAL nodata -9999: the output's missing pixels are exactly the upscaled
    input's, it keeps the nodata tag, and valid pixels never take -9999."""
    value_range = (0.0, 2000.0)
    pixels = mapped(unit_image(5), np.dtype(np.int16), value_range)
    pixels[:9, :13] = -9999
    pixels[20:, 31:] = -9999
    source = write_geotiff(tmp_path / "dem.tif", pixels, nodata=-9999)
    upscale(source, tmp_path / "out.tif", model=small_net, value_range=value_range, **RUN)
    with rasterio.open(tmp_path / "out.tif") as out:
        assert out.nodata == -9999 and out.dtypes == ("int16",)
        result = out.read(1)
    missing = np.kron(pixels[..., 0] == -9999, np.ones((4, 4), bool))
    assert np.array_equal(result == -9999, missing)
    assert result[~missing].min() >= 0 and result[~missing].max() <= 2000


def test_xarray_int16(small_net, tmp_path: Path) -> None:
    """``upscale_array`` on an int16 DataArray (rioxarray): int16 out, CRS and nodata kept, equal to
    the whole-image run on the mapped input; refused without a value range."""
    import rioxarray  # the test extra installs it
    from lpdask import upscale_array

    value_range = CASES["int16"]
    pixels = mapped(unit_image(7), np.dtype(np.int16), value_range)
    image = rioxarray.open_rasterio(write_geotiff(tmp_path / "in.tif", pixels, nodata=-9999), chunks={})
    with pytest.raises(LpdaskError, match="value_range=LOW,HIGH is required for int16 pixels"):
        upscale_array(image, small_net, chunk=16)
    result = upscale_array(image, small_net, chunk=16, value_range=value_range)
    assert result.dtype == np.int16 and result.rio.nodata == -9999 and result.rio.crs == CRS.from_string(EPSG)
    assert_close(result.values, expected_values(small_net, pixels, value_range), value_range)

def far_from(masked: np.ndarray, reach: int) -> np.ndarray:
    """Pixels with no ``masked`` pixel within ``reach`` (a square), through an integral image."""
    padded = np.pad(masked.astype(np.int64), reach)
    total = np.pad(padded.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    side = 2 * reach + 1
    h, w = masked.shape
    count = total[side:side + h, side:side + w] - total[:h, side:side + w] - total[side:side + h, :w] + total[:h, :w]
    return count == 0


@pytest.mark.slow
def test_cbers4_int16_band(small_net, tmp_path: Path) -> None:
    """A real CBERS-4 AWFI int16 band (written by INPE's processor, GDAL nodata 0) to a COG: int16,
    the CRS and the transform scaled, nodata exactly where the input's was; pixels beyond the
    network's reach from any nodata equal the whole-image run on the mapped input."""
    value_range = (0.0, 1023.0)
    with rasterio.open(CBERS) as src:
        pixels, crs, transform = np.moveaxis(src.read(), 0, -1), src.crs, src.transform
        assert src.dtypes == ("int16",) and src.nodata == 0
    upscale(CBERS, tmp_path / "out.tif", model=small_net, value_range=value_range, chunk=64)
    with rasterio.open(tmp_path / "out.tif") as out:
        assert out.dtypes == ("int16",) and out.nodata == 0 and out.crs == crs
        assert out.transform.almost_equals(transform @ Affine.scale(1 / 4))
        result = out.read()
    masked = pixels[..., 0] == 0
    missing = np.kron(masked, np.ones((4, 4), bool))
    assert np.array_equal(result[0] == 0, missing)
    far = np.kron(far_from(masked, REACH), np.ones((4, 4), bool))
    assert far.mean() > 0.2  # enough of the scene is far from its nodata border to compare
    expected = expected_values(small_net, pixels, value_range)
    assert_close(result[:, far], expected[:, far], value_range)


def test_refused_without_value_range(tmp_path: Path) -> None:
    """The real command refuses an int16 GeoTIFF (GDAL-written, and the CBERS-4 band) without
    --value-range: one line naming it and why, exit 2, nothing written."""
    write_geotiff(tmp_path / "dem.tif", mapped(unit_image(), np.dtype(np.int16), (0.0, 2000.0)))
    for source in (tmp_path / "dem.tif", CBERS):
        done = lpdask("upscale", source, "out.tif", cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert done.stderr.splitlines() == [
            "lpdask: error: --value-range LOW,HIGH is required for int16 pixels: they have no natural range to map "
            "to the network's [0, 1] (give the values that become 0 and 1, e.g. the data's minimum and maximum)"]
        assert not (tmp_path / "out.tif").exists()


def test_python_api_refuses_without_value_range(small_net, tmp_path: Path) -> None:
    zarr.create_array(tmp_path / "in.zarr", data=np.zeros((20, 20), np.float64))
    with pytest.raises(LpdaskError, match=r"^value_range=LOW,HIGH is required for float64 pixels"):
        upscale(tmp_path / "in.zarr", tmp_path / "out.zarr", model=small_net, **RUN)
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.parametrize(("dtype", "value_range"), [(np.int32, (-2.0**31, 2.0**31 - 1)),
                                                    (np.uint32, (0.0, 2.0**32 - 1)),
                                                    (np.int16, (-40000.0, 40000.0)), (np.int16, (0.4, 99.6))])
def test_ends_of_the_range_do_not_wrap(dtype, value_range):
    """1.0 maps to HIGH and 0.0 to LOW exactly, never past the type's ends (float32 would round
    2**31 - 1 up to 2**31, which wraps to -2**31 in int32); a range wider than the type is clipped
    to it, and pixels round to no level outside the range."""
    values = np.array([[[0.0, 1.0, 0.5, 1.5, -0.5]]], np.float32)
    info = np.iinfo(dtype)
    found = from_unit(values, np.dtype(dtype), value_range)
    low, high = max(math.ceil(value_range[0]), info.min), min(math.floor(value_range[1]), info.max)
    assert found[0, 0, [0, 1, 3, 4]].tolist() == [low, high, high, low]
    assert to_unit(np.array([[[info.min], [info.max]]], dtype), value_range).dtype == np.float32


@pytest.mark.parametrize(("dtype", "value_range"), [(np.int8, (-100, 100)), (np.int16, (-500, 1500))])
def test_torch_conversion_of_new_types(dtype, value_range):
    """Where the output is converted on a GPU (8- and 16-bit types), torch gives numpy's pixels."""
    values = np.random.default_rng(1).normal(0.5, 0.4, (3, 64, 80)).astype(np.float32)
    expected = from_unit(values.copy(), np.dtype(dtype), value_range)
    found = from_unit_tensor(torch.from_numpy(values), np.dtype(dtype), value_range).numpy().astype(dtype)
    assert np.array_equal(found, expected)
