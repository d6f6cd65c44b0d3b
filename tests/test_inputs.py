"""Input kinds: TIFF series and pyramid levels, JPEG-tiled slides, BigTIFF, OME-Zarr 0.4 and 0.5.
Pixels are compared with an independent whole-image run of the chosen image (tolerances in
reference.py)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from lpdask import upscale
from lpdask.errors import LpdaskError
from lpdask.io.sources import open_source

from .reference import assert_exact, smooth_image, whole_image, whole_image_any


def level0(path) -> np.ndarray:
    return zarr.open_array(str(path / "0"), mode="r")[:]


@pytest.fixture
def slide(tmp_path):
    """An SVS-like pyramid: JPEG-compressed RGB tiles, a half-size SubIFD level, then a
    second series (a grey label image)."""
    image = smooth_image(96, 112, seed=31)
    path = tmp_path / "slide.tif"
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(image, tile=(32, 32), subifds=1, compression="jpeg", photometric="rgb")
        tif.write(image[::2, ::2], tile=(32, 32), subfiletype=1, compression="jpeg", photometric="rgb")
        tif.write(smooth_image(20, 24, seed=32)[..., 1])
    return path


def test_slide_level_zero_is_the_default(small_net, tmp_path, slide):
    upscale(slide, tmp_path / "out.zarr", model=small_net, chunk=32)
    decoded = tifffile.imread(slide)  # the JPEG-decoded pixels the network sees
    assert decoded.shape == (96, 112, 3)
    assert_exact(level0(tmp_path / "out.zarr"), whole_image(small_net, decoded))


def test_slide_level_and_series(small_net, tmp_path, slide):
    upscale(slide, tmp_path / "half.zarr", model=small_net, chunk=16, level=1)
    decoded = tifffile.imread(slide, level=1)
    assert decoded.shape == (48, 56, 3)
    assert_exact(level0(tmp_path / "half.zarr"), whole_image(small_net, decoded))
    upscale(slide, tmp_path / "label.zarr", model=small_net, chunk=16, series=1)
    label = tifffile.imread(slide, series=1)
    assert_exact(level0(tmp_path / "label.zarr"), whole_image_any(small_net, label[..., None]))
    with pytest.raises(LpdaskError, match="--level 2 does not exist"):
        open_source(slide, level=2)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_input_level(small_net, tmp_path, version):
    """An OME-Zarr pyramid written by ome-zarr-py (0.4: Zarr v2; 0.5: Zarr v3), level 1 chosen."""
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image

    image = smooth_image(64, 80, seed=33, dtype=np.uint16)
    group = zarr.open_group(str(tmp_path / "in.zarr"), mode="w", zarr_format=2 if version == "0.4" else 3)
    write_image(np.moveaxis(image, -1, 0), group, axes="cyx", fmt=FormatV04() if version == "0.4" else FormatV05(),
                scale_factors=[2])
    attrs = group.attrs.asdict()
    datasets = (attrs["ome"] if version == "0.5" else attrs)["multiscales"][0]["datasets"]
    chosen = group[datasets[1]["path"]][:]
    assert chosen.shape == (3, 32, 40)
    upscale(tmp_path / "in.zarr", tmp_path / "out.zarr", model=small_net, chunk=16, level=1)
    assert_exact(level0(tmp_path / "out.zarr"), whole_image_any(small_net, np.moveaxis(chosen, 0, -1), "separate"))



def test_bioformats2raw_series(small_net, tmp_path):
    """A bioformats2raw layout (what `bioformats2raw` makes of a multi-series file): --series picks
    the image group."""
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_image

    root = zarr.open_group(str(tmp_path / "in.zarr"), mode="w", zarr_format=3)
    root.attrs["ome"] = {"version": "0.5", "bioformats2raw.layout": 3}
    images = [smooth_image(24, 28, seed=40 + k) for k in range(2)]
    for k, image in enumerate(images):
        write_image(np.moveaxis(image, -1, 0), root.create_group(str(k)), axes="cyx", fmt=FormatV05(),
                    scale_factors=[])
    upscale(tmp_path / "in.zarr", tmp_path / "out.zarr", model=small_net, chunk=16, series=1, channels="rgb")
    assert_exact(level0(tmp_path / "out.zarr"), whole_image(small_net, images[1]))
    with pytest.raises(LpdaskError, match="--series 2 does not exist"):
        open_source(tmp_path / "in.zarr", series=2)
