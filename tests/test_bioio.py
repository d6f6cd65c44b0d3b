"""Microscopy files through bioio: CZIs written here with pylibCZIrw (a two-tile mosaic of 16-bit
channels in two z-planes; an RGB one) upscale exactly (tolerances in reference.py) with their
channel names and pixel sizes carried; regions are read as regions; without the extra, one line
names it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import pylibCZIrw.czi as pyczi
import tifffile
import zarr

from lpdask import upscale
from lpdask.chunks import Box
from lpdask.cli import main
from lpdask.errors import LpdaskError
from lpdask.io.sources import open_source

from .reference import assert_exact, smooth_image, whole_image, whole_image_any



@pytest.fixture(scope="module")
def grey_czi(tmp_path_factory):
    """(z, c, y, x) = (2, 2, 32, 40) uint16, each plane written as two 20-pixel-wide tiles; channels
    DAPI and GFP; 0.5 µm pixels, 2 µm z-steps (CZI stores metres)."""
    image = np.stack([np.moveaxis(smooth_image(32, 40, seed=60 + z, dtype=np.uint16)[..., :2], -1, 0)
                      for z in range(2)])
    path = tmp_path_factory.mktemp("czi") / "cells.czi"
    with pyczi.create_czi(str(path)) as czi:
        for z in range(2):
            for c in range(2):
                for x in (0, 20):
                    czi.write(image[z, c, :, x:x + 20], plane={"T": 0, "Z": z, "C": c}, location=(x, 0))
        czi.write_metadata(document_name="cells", channel_names={0: "DAPI", 1: "GFP"}, scale_x=0.5e-6,
                           scale_y=0.5e-6, scale_z=2e-6)
    return path, image


@pytest.fixture(scope="module")
def rgb_czi(tmp_path_factory):
    """A 48 x 64 RGB CZI: libCZI's Bgr24 holds B, G, R in memory order."""
    image = smooth_image(48, 64, seed=70)
    path = tmp_path_factory.mktemp("czi") / "slide.czi"
    with pyczi.create_czi(str(path)) as czi:
        czi.write(np.ascontiguousarray(image[..., ::-1]), plane={"C": 0}, location=(0, 0))
        czi.write_metadata(document_name="slide", scale_x=0.25e-6, scale_y=0.25e-6)
    return path, image


def test_czi_channels_and_planes_upscale_exactly(small_net, small_checkpoint, tmp_path, grey_czi):
    path, image = grey_czi
    upscale(path, tmp_path / "out.zarr", model=small_checkpoint, chunk=16, blocks_per_stage=1)
    group = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    result = group["0"][:]
    assert result.shape == (2, 2, 128, 160)  # c, z, y, x
    for z in range(2):
        assert_exact(result[:, z], whole_image_any(small_net, np.moveaxis(image[z], 0, -1), "separate"))
    ome = group.attrs["ome"]
    multiscale = ome["multiscales"][0]
    assert [(a["name"], a.get("unit")) for a in multiscale["axes"]] == [
        ("c", None), ("z", "micrometer"), ("y", "micrometer"), ("x", "micrometer")]
    assert multiscale["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 2.0, 0.125, 0.125]
    assert [c["label"] for c in ome["omero"]["channels"]] == ["DAPI", "GFP"]


def test_rgb_czi_upscales_exactly(small_net, small_checkpoint, tmp_path, rgb_czi):
    path, image = rgb_czi
    source = open_source(path)
    assert (source.kind, source.axes, source.photometric) == ("bioio", "yxc", "rgb")
    upscale(path, tmp_path / "out.zarr", model=small_checkpoint, chunk=16, blocks_per_stage=1)
    group = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    assert_exact(group["0"][:], whole_image(small_net, image))
    assert group.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] == [
        1.0, 0.0625, 0.0625]


def test_czi_reads_only_the_region(grey_czi, rgb_czi, monkeypatch):
    """libCZI is asked for the box and nothing more; bioio's own ways of reading agree."""
    from lpdask.io.bioimage import BioArray
    from lpdask.io.locations import Location

    rois = []
    read = pyczi.CziReader.read
    monkeypatch.setattr(pyczi.CziReader, "read", lambda self, roi=None, **kw: rois.append(roi) or read(self, roi, **kw))
    box = Box(5, 29, 12, 34)  # across the two tiles of the grey image
    (grey_path, grey), (rgb_path, rgb) = grey_czi, rgb_czi
    source = open_source(grey_path)
    assert source.axes == "czyx"
    rois.clear()
    assert np.array_equal(source.read(box, {"z": 1}), np.moveaxis(grey[1], 0, -1)[box.slices()])
    assert np.array_equal(source.read(box, {"z": 0}, slice(1, 2)), grey[0, 1][box.slices()][..., None])
    assert rois == [(12, 5, 22, 24)] * 3
    assert np.array_equal(open_source(rgb_path).read(box, channels=slice(0, 2)), rgb[box.slices()][..., :2])
    for path, index, expected in ((grey_path, (slice(0, 2), 1, *box.slices()), grey[1][(slice(None), *box.slices())]),
                                  (rgb_path, (*box.slices(), slice(None)), rgb[box.slices()])):
        array = BioArray(Location.of(path), 0)
        # bioio-czi 3.0.1's dask array repeats an RGB CZI's first sample: only get_image_data there.
        for way in (array._region, array._planes) if path == grey_path else (array._region,):
            monkeypatch.setattr(array, "_read", way)
            assert np.array_equal(array[index], expected), way.__name__


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # bioio-ome-tiff passes ome-types an old argument
def test_forced_bioio_reads_an_ome_tiff(tmp_path):
    """bioio-ome-tiff has no region reads: each region comes from the planes it touches."""
    image = np.stack([np.moveaxis(smooth_image(30, 40, seed=80 + z, dtype=np.uint16), -1, 0) for z in range(2)])
    path = tmp_path / "cells.ome.tif"
    tifffile.imwrite(path, image, metadata={"axes": "ZCYX", "PhysicalSizeX": 0.4, "PhysicalSizeY": 0.4,
                                            "Channel": {"Name": ["a", "b", "c"]}})
    source = open_source(path, reader="bioio")
    assert (source.kind, source.axes, source.shape, source.photometric) == ("bioio", "czyx", (3, 2, 30, 40),
                                                                            "minisblack")
    box = Box(4, 25, 7, 33)
    assert np.array_equal(source.read(box, {"z": 1}, slice(1, 3)), np.moveaxis(image[1, 1:3], 0, -1)[box.slices()])
    assert [c.label for c in source.meta.channels] == ["a", "b", "c"]
    assert (source.meta.axis("x").unit, source.meta.axis("x").scale) == ("micrometer", 0.4)


def test_scene_and_level_errors(grey_czi):
    path, _ = grey_czi
    with pytest.raises(LpdaskError, match="--series 1 does not exist"):
        open_source(path, series=1)
    with pytest.raises(LpdaskError, match="--level 1 does not exist"):
        open_source(path, level=1)


def test_missing_bioio_is_one_line(tmp_path, grey_czi, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "bioio", None)  # import bioio now raises ImportError
    path, _ = grey_czi
    assert main(["upscale", str(path), str(tmp_path / "out.zarr")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lpdask: error: "), lines
    assert "pip install 'lpdask[microscopy]'" in lines[0]
    assert not (tmp_path / "out.zarr").exists()


LIF = Path(__file__).parent / "data" / "lif"


def test_lif_xz_scan_reads_z_as_rows():
    """An XZ line scan's frames are Z x X: Z is read as the rows (y); readlif's reference frames
    (exported by its authors from LAS X) agree pixel for pixel. A stack of XZ scans along Y reads Y as z."""
    source = open_source(LIF / "testdata_2channel_xz.lif", series=0)
    assert (source.axes, source.shape, source.output_axes) == ("tcyx", (20, 2, 128, 128), "tcyx")
    assert (source.meta.axis("y").unit, round(source.meta.axis("y").scale, 4)) == ("micrometer", 0.1403)
    assert (source.meta.axis("t").unit, source.meta.axis("t").scale) == ("second", pytest.approx(0.53))
    box = Box(5, 101, 12, 128)
    for t, c, name in ((0, 0, "xz_c0_t0.tif"), (8, 1, "xz_c1_t8.tif")):
        expected = tifffile.imread(LIF / name)[box.slices()]
        assert np.array_equal(source.read(box, {"t": t}, slice(c, c + 1))[..., 0], expected), name
    stack = open_source(LIF / "testdata_2channel_xz.lif", series=1)
    assert (stack.axes, stack.shape) == ("zcyx", (23, 2, 128, 128))
    assert any("Z x X frames" in item for item in stack.meta.dropped)


def test_lif_wavelength_sweep_upscales_exactly(small_net, small_checkpoint, tmp_path):
    """A LAS X excitation sweep (15 wavelengths of one 64 x 64 image): each wavelength is a channel,
    upscaled as its own grey image and named by its wavelength."""
    import liffile

    path = LIF / "LeicaLASX_wavelength-sweep_example.lif"
    with liffile.LifFile(path) as lif:
        image = np.moveaxis(lif.images[1].asarray(), 0, -1)  # (Λ, y, x) -> (y, x, Λ)
    source = open_source(path, series=1)
    assert (source.axes, source.shape) == ("cyx", (15, 64, 64))
    upscale(path, tmp_path / "out.zarr", model=small_checkpoint, series=1)
    group = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    result = group["0"][:]
    assert result.shape == (15, 256, 256)
    for first in (0, 12):  # three wavelengths at each end (each runs alone, so three stand for all)
        assert_exact(result[first:first + 3], whole_image_any(small_net, image[..., first:first + 3], "separate"))
    labels = [c["label"] for c in group.attrs["ome"]["omero"]["channels"]]
    assert labels[:2] == ["excitation 490 nm", "excitation 495 nm"] and len(labels) == 15
    planes = open_source(path, series=2)  # T, λ, Z: the wavelengths are channels, t and z planes
    assert (planes.axes, planes.shape) == ("tzcyx", (2, 11, 10, 64, 64))


def test_unreadable_lif_dimensions_are_one_line(tmp_path, monkeypatch, capsys):
    """A LIF image with a dimension lpdask cannot place (here a made-up Q) is refused in one line."""
    from lpdask.io import lif

    class Image:
        sizes = {"Q": 3, "Y": 64, "X": 64}
        frames = type("Frames", (), {"frame_dims": ("Y", "X")})()

    class File:
        images = [Image()]

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(lif, "_open", lambda path: File())
    path = LIF / "LeicaLASX_wavelength-sweep_example.lif"
    assert main(["upscale", str(path), str(tmp_path / "out.zarr")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lpdask: error: "), lines
    assert "Leica LIF dimensions 'QYX' are not supported (dimension Q)" in lines[0]
