"""A region of interest (``--region``): the output is exactly the crop of independent whole-image
inference on the whole image (tolerance: ``reference.assert_exact``, 8-bit within 1 level on at most
0.1% of values), placed where it lies by its metadata; its job has its own identity."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr

from lpdask import RRDBConfig, RRDBNet, upscale
from lpdask.errors import LpdaskError
from lpdask.geometry import reach

from .reference import assert_exact, lively, smooth_image, whole_image, whole_image_any

HEIGHT, WIDTH = 90, 110
SMALL_REACH = 34  # the small net's reach (conftest): every region below lies within it of a border or of another


def level0(path: Path) -> np.ndarray:
    return zarr.open_array(str(path / "0"), mode="r")[:]


def crop(reference: np.ndarray, x: int, y: int, w: int, h: int, scale: int = 4) -> np.ndarray:
    return reference[:, y * scale:(y + h) * scale, x * scale:(x + w) * scale]


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return smooth_image(HEIGHT, WIDTH, seed=31)


@pytest.fixture(scope="module")
def reference(small_net, image) -> np.ndarray:
    return whole_image(small_net, image)


def test_the_small_net_reaches_as_the_regions_assume(small_net) -> None:
    assert reach(small_net.stages(1)) == SMALL_REACH


REGIONS = {
    "middle": (40, 30, 24, 20),
    "top-left corner": (0, 0, 15, 11),
    "bottom-right corner": (95, 77, 15, 13),
    "top border": (50, 0, 9, 7),
    "left border": (0, 41, 5, 17),
    "bottom border": (61, 83, 13, 7),
    "right border": (103, 35, 7, 19),
    "one pixel": (57, 44, 1, 1),
    "all of it": (0, 0, WIDTH, HEIGHT),
}


@pytest.mark.parametrize("executor", ["stream", "staged"])
@pytest.mark.parametrize("where", list(REGIONS))
def test_a_region_is_the_crop_of_whole_image_inference(tmp_path, small_net, image, reference, where, executor) -> None:
    tifffile.imwrite(tmp_path / "in.tif", image, photometric="rgb", tile=(16, 16))
    x, y, w, h = REGIONS[where]
    summary = upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, region=(x, y, w, h),
                      executor=executor, chunk=16)
    result = level0(tmp_path / "out.zarr")
    assert result.shape == (3, h * 4, w * 4)
    assert_exact(result, crop(reference, x, y, w, h))
    window = ((min(HEIGHT, y + h + SMALL_REACH) - max(0, y - SMALL_REACH))
              * (min(WIDTH, x + w + SMALL_REACH) - max(0, x - SMALL_REACH)))
    assert summary.input_megapixels == pytest.approx(window / 1e6)  # the window computed, not the image


def test_a_region_with_too_little_context_is_not_exact(tmp_path, small_net, image, reference, monkeypatch) -> None:
    """The negative control: the comparison catches a window that holds less than the reach around the
    region (4 px here; this random net's far pixels weigh too little to catch 17)."""
    import lpdask.geometry

    monkeypatch.setattr(lpdask.geometry, "reach", lambda stages: 4)
    tifffile.imwrite(tmp_path / "in.tif", image, photometric="rgb")
    upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, region=(40, 30, 24, 20), chunk=16)
    with pytest.raises(AssertionError):
        assert_exact(level0(tmp_path / "out.zarr"), crop(reference, 40, 30, 24, 20))


def test_a_pixel_unshuffle_model_keeps_its_cells(tmp_path) -> None:
    """An x2 model unshuffles 2 x 2 cells from the image's corner: a region at odd pixels computes from
    a window on that grid, and the bottom-right border's reflect padding stays the whole image's."""
    torch.manual_seed(3)
    net = lively(RRDBNet(RRDBConfig(scale=2, num_feat=16, num_block=1, num_grow_ch=8)), seed=3)
    image = smooth_image(47, 61, seed=5)
    tifffile.imwrite(tmp_path / "in.tif", image, photometric="rgb")
    reference = whole_image(net, image)
    for x, y, w, h in ((13, 7, 21, 17), (45, 30, 16, 17)):
        upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=net, region=(x, y, w, h), overwrite=True)
        assert_exact(level0(tmp_path / "out.zarr"), crop(reference, x, y, w, h, scale=2))


@pytest.mark.parametrize("kind", ["grey", "rgba", "five channels"])
def test_regions_of_grey_rgba_and_multichannel_images(tmp_path, small_net, kind) -> None:
    from .test_channels import image_with

    channels = {"grey": 1, "rgba": 4, "five channels": 5}[kind]
    image = image_with(channels, 50, 58, seed=7, dtype=np.uint16 if channels > 1 else np.uint8)
    if kind == "grey":
        tifffile.imwrite(tmp_path / "in.tif", image[..., 0])
    elif kind == "rgba":
        tifffile.imwrite(tmp_path / "in.tif", image, photometric="rgb", extrasamples=["unassalpha"])
    else:
        tifffile.imwrite(tmp_path / "in.tif", np.moveaxis(image, -1, 0), metadata={"axes": "CYX"})
    upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, region=(9, 40, 31, 10), chunk=16)
    photometric = {"grey": "auto", "rgba": "rgba", "five channels": "separate"}[kind]
    assert_exact(level0(tmp_path / "out.zarr"), crop(whole_image_any(small_net, image, photometric), 9, 40, 31, 10))


def test_the_ome_zarr_region_lies_where_it_was_in_the_image(tmp_path, small_net, image) -> None:
    tifffile.imwrite(tmp_path / "in.ome.tif", image, photometric="rgb",
                     metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    upscale(tmp_path / "in.ome.tif", tmp_path / "whole.zarr", model=small_net)
    upscale(tmp_path / "in.ome.tif", tmp_path / "out.zarr", model=small_net, region=(40, 30, 24, 20))
    whole, part = ({t["type"]: t[t["type"]] for t in zarr.open_group(str(p), mode="r").attrs["ome"]["multiscales"][0]
                    ["datasets"][0]["coordinateTransformations"]} for p in (tmp_path / "whole.zarr", tmp_path / "out.zarr"))
    assert part["scale"] == whole["scale"] == [1.0, 0.125, 0.125]
    # output pixel (0, 0) of the region is output pixel (120, 160) of the whole image, in micrometres
    assert part["translation"][1:] == pytest.approx([whole["translation"][1] + 120 * 0.125,
                                                     whole["translation"][2] + 160 * 0.125])
    assert zarr.open_group(str(tmp_path / "out.zarr"), mode="r").attrs["lpdask"]["region"] == [30, 50, 40, 64]


def test_a_region_in_micrometres_and_its_ome_tiff_plane_position(tmp_path, small_net, image, reference) -> None:
    tifffile.imwrite(tmp_path / "in.ome.tif", image, photometric="rgb",
                     metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    upscale(tmp_path / "in.ome.tif", tmp_path / "out.ome.tif", model=small_net, region="20,15,12,10um")
    with tifffile.TiffFile(tmp_path / "out.ome.tif") as tif:
        result = np.moveaxis(tif.series[0].asarray(), -1, 0)
        ome = ET.fromstring(tif.ome_metadata)
    assert_exact(result, crop(reference, 40, 30, 24, 20))  # 20 um / 0.5 um per pixel
    namespace = {"ome": ome.tag.split("}")[0][1:]}
    pixels = ome.find(".//ome:Pixels", namespace)
    plane = ome.find(".//ome:Plane", namespace)
    assert float(pixels.get("PhysicalSizeX")) == pytest.approx(0.125)
    assert float(plane.get("PositionX")) == pytest.approx(20.0) and float(plane.get("PositionY")) == pytest.approx(15.0)
    assert plane.get("PositionXUnit") == "µm"


def test_a_geotiff_region_in_map_coordinates_keeps_its_place_on_the_ground(tmp_path, small_net, image,
                                                                           reference) -> None:
    """Written by GDAL, read back by GDAL: the region's output corner is where the region's corner is."""
    import rasterio
    from rasterio.transform import from_origin

    transform = from_origin(500000.0, 4100000.0, 30.0, 30.0)
    with rasterio.open(tmp_path / "in.tif", "w", driver="GTiff", width=WIDTH, height=HEIGHT, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=transform) as dst:
        dst.write(np.moveaxis(image, -1, 0))
    x, y, w, h = 40, 30, 24, 20
    left, top = transform @ (x, y)
    region = f"{left},{top - h * 30},{w * 30},{h * 30}map"  # the box's lower-left corner, then its size
    upscale(tmp_path / "in.tif", tmp_path / "out.tif", model=small_net, region=region)
    with rasterio.open(tmp_path / "out.tif") as out:
        assert out.crs.to_epsg() == 32633
        assert out.transform.almost_equals(from_origin(left, top, 7.5, 7.5))
        assert_exact(out.read(), crop(reference, x, y, w, h))


def test_a_region_has_its_own_identity(tmp_path, small_net, image) -> None:
    tifffile.imwrite(tmp_path / "in.tif", image, photometric="rgb")
    upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, region=(10, 10, 20, 20))
    again = upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, region=(10, 10, 20, 20))
    assert again.already_complete
    for other in ((10, 10, 20, 21), None):
        with pytest.raises(LpdaskError, match="holds a different job"):
            upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, region=other)
    assert not list(tmp_path.glob("*.work"))


def lpdask(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LPDASK_CACHE_DIR": str(cwd / "cache")}
    return subprocess.run([sys.executable, "-m", "lpdask", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize(("region", "message"), [
    ("10,10,20", "--region 10,10,20 is not X,Y,W,H"),
    ("10,10,0,5", "--region 10,10,0,5 needs a width and a height above 0"),
    ("100,10,20,20", "--region 100,10,20,20 reaches outside the image (110 x 90 px)"),
    ("1.5,2,3,4", "--region 1.5,2,3,4 needs whole pixels"),
    ("1,2,3,4furlong", "has an unknown unit 'furlong'"),
    ("1,2,3,4um", "--region 1,2,3,4µm is in µm, and this input has no pixel size in a length unit"),
    ("1,2,3,4map", "is in map units, and this input has no geotransform"),
])
def test_a_bad_region_is_one_line_and_nothing_is_written(tmp_path, small_checkpoint, image, region, message) -> None:
    tifffile.imwrite(tmp_path / "in.tif", image, photometric="rgb")
    done = lpdask(tmp_path, "upscale", "in.tif", "out.zarr", "--model", str(small_checkpoint), "--region", region, "-q")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lpdask: error: ") and message in lines[0], done.stderr
    assert not (tmp_path / "out.zarr").exists() and not (tmp_path / "out.zarr.work").exists()


def test_tile_mode_refuses_a_region(tmp_path, small_checkpoint, image) -> None:
    tifffile.imwrite(tmp_path / "in.tif", image, photometric="rgb")
    done = lpdask(tmp_path, "upscale", "in.tif", "out.zarr", "--model", str(small_checkpoint), "--region", "1,2,3,4",
                  "--mode", "tile")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["lpdask: error: --mode tile cuts the image into tiles from its corner, "
                                                "so a region of it is not the crop of the whole image's result; use "
                                                "--region with --mode exact"]


def test_plan_prices_the_window_of_a_region(tmp_path, small_checkpoint) -> None:
    tifffile.imwrite(tmp_path / "in.tif", smooth_image(400, 500, seed=2), photometric="rgb")
    done = lpdask(tmp_path, "plan", "in.tif", "--model", str(small_checkpoint), "--region", "200,150,32,32")
    assert done.returncode == 0, done.stderr
    assert ("region 200,150,32,32: 32 x 32 px at x 200, y 150; computed from the window x 166 to 266, y 116 to 216 "
            "(100 x 100 px, 5.0% of the image)") in done.stdout
