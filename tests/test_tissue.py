"""Tissue only (``--tissue``): on a real brightfield slide (tests/data/CMU-1-Small-Region.svs), the mask
covers the tissue, the output inside it is that of computing every pixel (whose exactness the other
tests hold against whole-image inference; tolerance ``reference.assert_exact``), outside it is the
slide's background colour, and the OME-Zarr output carries the mask as its NGFF label image."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from lpdask import upscale
from lpdask.errors import LpdaskError

from .reference import assert_exact, smooth_image

SLIDE = Path(__file__).parent / "data" / "CMU-1-Small-Region.svs"
THUMBNAIL = 1  # the slide's thumbnail series (574 x 768), a real H&E image small enough to upscale here


def saturation(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.float32)
    top = rgb.max(axis=-1)
    return (top - rgb.min(axis=-1)) / np.maximum(top, 1)


def cells_of(label: np.ndarray, shape: tuple[int, int], factor: int) -> np.ndarray:
    """A label image of ``factor``-pixel cells over an image of ``shape``."""
    return np.repeat(np.repeat(label, factor, 0), factor, 1)[: shape[0], : shape[1]].astype(bool)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_net):
    folder = tmp_path_factory.mktemp("tissue")
    plan = {"chunk": 128, "blocks_per_stage": 1, "strip": 64, "executor": "stream"}  # one plan for both
    upscale(SLIDE, folder / "all.zarr", model=small_net, series=THUMBNAIL, **plan)
    upscale(SLIDE, folder / "tissue.zarr", model=small_net, series=THUMBNAIL, tissue="auto", **plan)
    return folder


def test_the_found_mask_covers_the_tissue(runs) -> None:
    image = tifffile.imread(SLIDE, series=THUMBNAIL)
    group = zarr.open_group(str(runs / "tissue.zarr"), mode="r")
    label = group["labels/tissue/0"][0]
    assert label.shape == (48, 36)  # 16-pixel cells of the 768 x 574 input
    inside = cells_of(label, image.shape[:2], 16)
    stained, glass = saturation(image) > 0.2, saturation(image) < 0.04
    assert inside[stained].mean() > 0.97  # the stained pixels are in it
    assert (~inside[glass]).mean() > 0.75  # most of the glass is out
    assert 0.3 < inside.mean() < 0.7


def test_inside_the_mask_is_computed_exactly_and_outside_is_the_background(runs) -> None:
    group = zarr.open_group(str(runs / "tissue.zarr"), mode="r")
    out, every = group["0"][:], zarr.open_array(str(runs / "all.zarr" / "0"), mode="r")[:]
    inside = cells_of(group["labels/tissue/0"][0], out.shape[1:], 64)
    # a tile cut to the tissue runs narrower windows, so float sums may round a rare pixel the other way
    assert_exact(out[:, inside][:, None], every[:, inside][:, None])
    background = np.unique(out[:, ~inside].reshape(3, -1), axis=1)
    assert background.shape == (3, 1) and background.min() > 220  # one colour: the glass's
    assert not np.array_equal(out[:, ~inside], every[:, ~inside])  # not what the network gives there


def test_the_mask_is_an_ngff_label_image(runs) -> None:
    group = zarr.open_group(str(runs / "tissue.zarr"), mode="r")
    assert group["labels"].attrs["ome"]["labels"] == ["tissue"]
    attrs = group["labels/tissue"].attrs["ome"]
    assert attrs["image-label"]["source"] == {"image": "../../"}
    image_scale = group.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    label_scale = attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert label_scale[1:] == [s * 64 for s in image_scale[1:]]  # a cell is 64 output pixels
    from ome_zarr_models.v05.image_label import ImageLabel

    ImageLabel.from_zarr(group["labels/tissue"])  # valid as NGFF 0.5 says


def test_a_mask_given_as_geojson_or_as_a_label_image(tmp_path, small_net) -> None:
    image = smooth_image(96, 128, seed=9)
    tifffile.imwrite(tmp_path / "in.tif", image, photometric="rgb")
    polygon = [[16, 16], [80, 16], [80, 64], [16, 64], [16, 16]]  # x, y in the image's pixels
    (tmp_path / "tissue.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"objectType": "annotation"},
         "geometry": {"type": "Polygon", "coordinates": [polygon]}}]}))
    labels = np.zeros((48, 64), np.uint8)  # half the image's size
    labels[8:32, 8:40] = 1
    Image.fromarray(labels).save(tmp_path / "tissue.png")
    masks = []
    for given in ("tissue.geojson", "tissue.png"):
        upscale(tmp_path / "in.tif", tmp_path / f"{given}.zarr", model=small_net, chunk=32,
                tissue=str(tmp_path / given))
        masks.append(zarr.open_array(str(tmp_path / f"{given}.zarr" / "labels" / "tissue" / "0"), mode="r")[0])
    expected = np.zeros((6, 8), np.uint8)
    expected[1:4, 1:5] = 1
    assert np.array_equal(masks[0], expected) and np.array_equal(masks[1], expected)


def test_a_tissue_job_has_its_own_identity(tmp_path, small_net) -> None:
    tifffile.imwrite(tmp_path / "in.tif", smooth_image(64, 64, seed=2), photometric="rgb")
    upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, tissue="auto")
    assert upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, tissue="auto").already_complete
    with pytest.raises(LpdaskError, match="holds a different job"):
        upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net)


def lpdask(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LPDASK_CACHE_DIR": str(cwd / "cache")}
    return subprocess.run([sys.executable, "-m", "lpdask", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize(("output", "tissue", "message"), [
    ("out.tif", "auto", "--tissue auto writes its mask as an OME-Zarr label image: give a .zarr output"),
    ("out.zarr", "missing.geojson", "--tissue missing.geojson: no such file"),
    ("out.zarr", "empty.geojson", "--tissue empty.geojson: no Polygon or MultiPolygon in it"),
    ("out.zarr", "broken.geojson", "--tissue broken.geojson: not GeoJSON"),
])
def test_a_bad_tissue_mask_is_one_line_and_nothing_is_written(tmp_path, small_checkpoint, output, tissue,
                                                              message) -> None:
    tifffile.imwrite(tmp_path / "in.tif", smooth_image(48, 48, seed=1), photometric="rgb")
    (tmp_path / "empty.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    (tmp_path / "broken.geojson").write_text('{"type": "Feat')
    done = lpdask(tmp_path, "upscale", "in.tif", output, "--model", str(small_checkpoint), "--tissue", tissue, "-q")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lpdask: error: ") and message in lines[0], done.stderr
    assert not (tmp_path / output).exists()
