"""Whole-slide images through OpenSlide: a tiled pyramidal TIFF written here, read through OpenSlide
(forced: tifffile reads TIFFs by default), must give tifffile's pixels and the exact upscale of
them (tolerances in reference.py); microns per pixel are carried; the empty slide is composited
over the background colour; without the extra, one line names it."""

from __future__ import annotations

import sys

import numpy as np
import openslide
import pytest
import tifffile
import zarr

from lpdask import upscale
from lpdask.chunks import Box
from lpdask.cli import main
from lpdask.errors import LpdaskError
from lpdask.io.slides import background, composite
from lpdask.io.sources import open_source

from .reference import assert_exact, smooth_image, whole_image



@pytest.fixture
def pyramid(tmp_path):
    """A generic tiled TIFF as OpenSlide reads it: 16 x 16 zlib tiles, a half-size level in its own
    IFD, 0.5 µm pixels in the resolution tags."""
    image = smooth_image(48, 64, seed=51)
    path = tmp_path / "slide.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, tile=(16, 16), photometric="rgb", compression="zlib", resolution=(2e4, 2e4),
                  resolutionunit="CENTIMETER")
        tif.write(image[::2, ::2], tile=(16, 16), photometric="rgb", compression="zlib", subfiletype=1)
    assert openslide.OpenSlide.detect_format(str(path)) == "generic-tiff"
    return path


@pytest.mark.parametrize("level", [0, 1])
def test_openslide_reads_tifffiles_pixels(pyramid, level):
    source = open_source(pyramid, level=level, reader="openslide")
    assert (source.kind, source.axes, source.photometric) == ("openslide", "yxc", "rgb")
    decoded = tifffile.imread(pyramid, level=level)
    assert source.shape == decoded.shape == (48 >> level, 64 >> level, 3)
    for box in (Box(0, source.height, 0, source.width), Box(3, 20, 5, 30), Box(15, 17, 15, 17)):
        assert np.array_equal(source.read(box), decoded[box.slices()])
    assert np.array_equal(source.read(Box(3, 20, 5, 30), channels=slice(1, 3)), decoded[3:20, 5:30, 1:3])
    y, x = source.meta.axis("y"), source.meta.axis("x")
    assert (y.unit, y.scale, x.unit, x.scale) == ("micrometer", 0.5 * 2**level, "micrometer", 0.5 * 2**level)


def test_openslide_upscale_exact(small_net, small_checkpoint, tmp_path, pyramid, monkeypatch):
    reads = []
    read_region = openslide.OpenSlide.read_region
    monkeypatch.setattr(openslide.OpenSlide, "read_region",
                        lambda self, *args: reads.append(args) or read_region(self, *args))
    monkeypatch.setenv("LPDASK_READER", "openslide")
    upscale(pyramid, tmp_path / "out.zarr", model=small_checkpoint, chunk=16, blocks_per_stage=1)
    from lpdask.known import READ_BLOCK

    # the chunks read their windows; looking for what is known reads blocks of at most READ_BLOCK a side
    assert sum(size[0] * size[1] < 48 * 64 for _, _, size in reads) > 10, "read region by region"
    assert all(max(size) <= READ_BLOCK for _, _, size in reads)
    group = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    assert_exact(group["0"][:], whole_image(small_net, tifffile.imread(pyramid)))
    multiscale = group.attrs["ome"]["multiscales"][0]
    assert [(a["name"], a.get("unit")) for a in multiscale["axes"]] == [
        ("c", None), ("y", "micrometer"), ("x", "micrometer")]
    assert multiscale["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 0.125, 0.125]


def test_composite_over_background():
    """Against the float formula: alpha 255 keeps the pixel, alpha 0 gives the background."""
    rng = np.random.default_rng(5)
    rgba = rng.integers(0, 256, (40, 50, 4), dtype=np.uint8)
    rgba[:10, :, 3], rgba[10:20, :, 3] = 0, 255
    color = (240, 230, 220)
    alpha = rgba[..., 3:].astype(np.float64) / 255
    expected = np.round(rgba[..., :3] * alpha + np.array(color) * (1 - alpha)).astype(np.uint8)
    result = composite(rgba, color)
    assert np.array_equal(result, expected)
    assert (result[:10] == color).all() and np.array_equal(result[10:20], rgba[10:20, :, :3])
    opaque = rgba[10:20]
    assert np.array_equal(composite(opaque, color), opaque[..., :3])
    assert background({"openslide.background-color": "F0E6DC"}) == color
    assert background({}) == (255, 255, 255)


def test_outside_the_slide_is_white(pyramid):
    """OpenSlide's transparent pixels past the slide's edge come back white."""
    from lpdask.io.slides import SlideArray

    array = SlideArray(openslide.OpenSlide(str(pyramid)), 0)
    array.shape = (60, 70, 3)  # pretend the level is larger than the scanned area
    pixels = array[40:60, 50:70, :]
    assert (pixels[8:, :] == 255).all() and (pixels[:, 14:] == 255).all()
    assert np.array_equal(pixels[:8, :14], tifffile.imread(pyramid)[40:48, 50:64])


def test_slide_choices_and_errors(tmp_path, pyramid, monkeypatch):
    assert open_source(pyramid).kind == "tiff"  # tifffile keeps TIFFs unless told otherwise
    fake = tmp_path / "scan.mrxs"
    fake.write_bytes(b"not a slide")
    with pytest.raises(LpdaskError, match="not a slide OpenSlide can read"):
        open_source(fake)
    with pytest.raises(LpdaskError, match="--level 2 does not exist"):
        open_source(pyramid, level=2, reader="openslide")
    with pytest.raises(LpdaskError, match="--series 1 does not exist"):
        open_source(pyramid, series=1, reader="openslide")
    monkeypatch.setenv("LPDASK_READER", "vips")
    with pytest.raises(LpdaskError, match="unknown reader 'vips'"):
        open_source(pyramid)


@pytest.mark.parametrize("forced", [False, True])
def test_missing_openslide_is_one_line(tmp_path, pyramid, monkeypatch, capsys, forced):
    monkeypatch.setitem(sys.modules, "openslide", None)  # import openslide now raises ImportError
    path = pyramid
    if forced:
        monkeypatch.setenv("LPDASK_READER", "openslide")
    else:
        path = tmp_path / "scan.mrxs"
        path.write_bytes(b"")
    assert main(["upscale", str(path), str(tmp_path / "out.zarr")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lpdask: error: "), lines
    assert "pip install 'lpdask[pathology]'" in lines[0]
    assert not (tmp_path / "out.zarr").exists()
