"""Cloud Optimized GeoTIFF output, checked with rio-cogeo's validator, GDAL (rasterio) and tifffile:
layout (ghost header, overviews as reduced-resolution pages of the main IFD chain, in COG order),
pixels of every level, georeferencing, codec; the choice of COG or not; one-line refusals."""

from __future__ import annotations

import errno
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import tifffile
import zarr
from rasterio.transform import Affine
from rio_cogeo.cogeo import cog_validate

import lpdask
import lpdask.io.cog
import lpdask.runner
from lpdask.cli import main
from lpdask.errors import LpdaskError, MetadataWarning
from lpdask.export import export, tiff_kind
from lpdask.io.cog import write_cog
from lpdask.io.locations import Location
from lpdask.io.metadata import Axis, Channel, ImageMetadata

from .reference import assert_exact, smooth_image, whole_image
from .test_tiff_output import GEO, image, metadata, pyramid

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

RUN = {"chunk": 16, "blocks_per_stage": 1}
TRANSFORM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0)
HEIGHT, WIDTH = 40, 72  # x4: 160 x 288, so one overview (80 x 144); write_cog's own tests have more


def half(level: np.ndarray) -> np.ndarray:
    """lpdask's documented pyramid rule, written here from its description: 2x2 means over (y, x),
    an odd last row or column averaged with itself, rounded half to even."""
    values = level.astype(np.float64)
    if values.shape[-2] % 2:
        values = np.concatenate([values, values[..., -1:, :]], axis=-2)
    if values.shape[-1] % 2:
        values = np.concatenate([values, values[..., -1:]], axis=-1)
    mean = (values[..., 0::2, 0::2] + values[..., 1::2, 0::2] + values[..., 0::2, 1::2] + values[..., 1::2, 1::2]) / 4
    return np.round(mean).astype(level.dtype)


def assert_cog(path: Path, levels: int) -> None:
    """Valid for rio-cogeo (no errors, no warnings), with GDAL's ghost header and ``levels - 1``
    overviews as reduced-resolution pages of the main IFD chain, no SubIFDs."""
    valid, errors, warnings = cog_validate(path, quiet=True)
    assert valid and not errors and not warnings, (errors, warnings)
    head = path.read_bytes()[:512]
    assert b"LAYOUT=IFDS_BEFORE_DATA" in head and b"KNOWN_INCOMPATIBLE_EDITION=NO" in head
    with tifffile.TiffFile(path) as tif:
        pages = list(tif.pages)
        assert len(pages) == levels and all(p.is_tiled and not p.subifds for p in pages)
        assert [int(p.subfiletype) for p in pages] == [0] + [1] * (levels - 1)
    with rasterio.open(path) as cog:
        assert cog.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert len(cog.overviews(1)) == levels - 1


def read_levels(path: Path) -> list[np.ndarray]:
    """Every level as GDAL reads it: the image, then each overview."""
    with rasterio.open(path) as cog:
        found = [cog.read()]
        count = len(cog.overviews(1))
    for k in range(count):
        with rasterio.open(path, overview_level=k) as overview:
            found.append(overview.read())
    return found


@pytest.fixture(scope="module")
def geo(tmp_path_factory: pytest.TempPathFactory, small_checkpoint: Path, small_net) -> dict[str, Any]:
    """A small RGB GeoTIFF written by GDAL, upscaled to out.tif (a COG by default), and the
    reference level 0."""
    folder = tmp_path_factory.mktemp("cog")
    pixels = smooth_image(HEIGHT, WIDTH, seed=31)
    with rasterio.open(folder / "in.tif", "w", driver="GTiff", width=WIDTH, height=HEIGHT, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=TRANSFORM, tiled=True, blockxsize=16, blockysize=16) as dst:
        dst.write(np.moveaxis(pixels, -1, 0))
    lpdask.upscale(folder / "in.tif", folder / "out.tif", model=small_checkpoint, **RUN)
    return {"folder": folder, "reference": whole_image(small_net, pixels)}


def test_a_geotiff_input_gives_a_valid_cog_by_default(geo: dict[str, Any]) -> None:
    folder = geo["folder"]
    assert_cog(folder / "out.tif", 2)
    assert sorted(p.name for p in folder.iterdir()) == ["in.tif", "out.tif"]  # no scratch or partial left


def test_cog_pixels_level_0_as_the_reference_and_overviews_the_pyramid(geo: dict[str, Any]) -> None:
    levels = read_levels(geo["folder"] / "out.tif")
    assert [lv.shape for lv in levels] == [(3, 160, 288), (3, 80, 144)]
    assert_exact(levels[0], geo["reference"])
    for k in range(1, len(levels)):
        np.testing.assert_array_equal(levels[k], half(levels[k - 1]))


def test_cog_keeps_the_crs_and_scales_the_transform(geo: dict[str, Any]) -> None:
    folder = geo["folder"]
    with rasterio.open(folder / "in.tif") as before, rasterio.open(folder / "out.tif") as after:
        assert after.crs == before.crs and after.crs.to_epsg() == 32633
        assert after.transform.almost_equals(before.transform @ Affine.scale(1 / 4))
        assert after.bounds == pytest.approx(before.bounds)
        assert after.compression.name == "deflate" and after.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == "2"
        assert after.block_shapes[0] == (256, 256)


def test_a_finished_cog_is_found_complete(geo: dict[str, Any], small_checkpoint: Path) -> None:
    """GDAL carries the Software tag that names the job, so the same call again does nothing."""
    folder = geo["folder"]
    again = lpdask.upscale(folder / "in.tif", folder / "out.tif", model=small_checkpoint, **RUN)
    assert again.already_complete


def ome_zarr(folder: Path, data: np.ndarray, meta: ImageMetadata) -> list[zarr.Array]:
    """An OME-Zarr pyramid of ``data`` (c, y, x) as lpdask stores one, described by ``meta``."""
    from lpdask.io.ngff import ngff_attributes

    group = zarr.open_group(str(folder), mode="w")
    levels = pyramid(folder, data, smallest=80)
    group.attrs.update(ngff_attributes(meta, len(levels), folder.name, data.dtype))
    return levels


def test_export_of_a_georeferenced_zarr_is_a_cog_of_its_levels(tmp_path: Path) -> None:
    """By default; every overview exactly a stored level (nothing resampled by GDAL)."""
    levels = ome_zarr(tmp_path / "in.zarr", image("cyx", 3, "uint8"), metadata("cyx", "rgb", geotiff=GEO).rescaled(4))
    export(tmp_path / "in.zarr", tmp_path / "out.tif", compression="zstd")
    assert_cog(tmp_path / "out.tif", len(levels))
    for found, level in zip(read_levels(tmp_path / "out.tif"), levels, strict=True):
        np.testing.assert_array_equal(found, level[...])
    with rasterio.open(tmp_path / "out.tif") as cog:
        assert cog.crs.to_epsg() == 32633 and cog.transform == Affine(2.5, 0.0, 500000.0, 0.0, -2.5, 5000000.0)
        assert cog.compression.name == "zstd"
    export(tmp_path / "in.zarr", tmp_path / "sub.tif", cog=False)
    with tifffile.TiffFile(tmp_path / "sub.tif") as tif:
        assert len(tif.pages) == 1 and len(tif.pages[0].subifds) == len(levels) - 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.zarr", "out.tif", "sub.tif"]


def test_export_with_the_cog_option_of_the_command(tmp_path: Path) -> None:
    """The real command in a subprocess. 5 uint16 channels, not georeferenced: the bands of one
    COG, levels exact."""
    levels = ome_zarr(tmp_path / "in.zarr", image("cyx", 5, "uint16"), metadata("cyx"))
    done = subprocess.run([sys.executable, "-m", "lpdask", "export", "in.zarr", "out.tif", "--cog"], cwd=tmp_path,
                          env={**os.environ, "LPDASK_CACHE_DIR": str(tmp_path / "cache")}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stderr.strip() == "wrote out.tif", done.stderr
    assert_cog(tmp_path / "out.tif", len(levels))
    for found, level in zip(read_levels(tmp_path / "out.tif"), levels, strict=True):
        np.testing.assert_array_equal(found, level[...])


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    tifffile.imwrite(tmp_path / "in.tif", smooth_image(24, 72, seed=32), photometric="rgb", tile=(16, 16))
    return tmp_path / "in.tif"


def test_cog_on_request_for_a_plain_tiff_through_the_command(plain: Path, small_checkpoint: Path,
                                                             small_net) -> None:
    """The command's entry point (in this process: torch loads once); pixels as the reference; no
    georeferencing made up."""
    folder = plain.parent
    assert main(["upscale", str(plain), str(folder / "out.tif"), "--cog", "--model", str(small_checkpoint),
                 "--chunk", "16", "--blocks-per-stage", "1", "-q"]) == 0
    assert_cog(folder / "out.tif", 2)
    levels = read_levels(folder / "out.tif")
    assert_exact(levels[0], whole_image(small_net, tifffile.imread(plain)))
    np.testing.assert_array_equal(levels[1], half(levels[0]))
    with rasterio.open(folder / "out.tif") as cog:
        assert cog.crs is None


@pytest.mark.parametrize(("photometric", "channels", "dtype", "compression", "predictor"), [
    ("rgba", 4, "uint8", "lzw", 2),
    ("minisblack", 1, "float32", "zlib", 1),
    ("minisblack", 3, "uint16", "none", 1),
])
def test_write_cog_levels_codec_and_progress(tmp_path: Path, photometric: str, channels: int, dtype: str,
                                             compression: str, predictor: int) -> None:
    levels = pyramid(tmp_path / "zarr", image("cyx", channels, dtype), chunk=64, smallest=40)
    ticks: list[int] = []
    write_cog(tmp_path / "out.tif", levels, metadata("cyx", photometric, geotiff=GEO).rescaled(4),
              scratch=tmp_path / "scratch.tif", tile=128, compression=compression, on_tile=lambda: ticks.append(1))
    assert_cog(tmp_path / "out.tif", len(levels))
    assert not (tmp_path / "scratch.tif").exists()
    assert len(ticks) == sum(math.ceil(a.shape[-2] / 128) * math.ceil(a.shape[-1] / 128) for a in levels)
    for found, level in zip(read_levels(tmp_path / "out.tif"), levels, strict=True):
        np.testing.assert_array_equal(found, level[...])
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        page = tif.pages[0]
        assert page.compression == {"lzw": 5, "zlib": 8, "none": 1}[compression]
        assert page.predictor == predictor and page.samplesperpixel == channels
        assert page.extrasamples == ((2,) if photometric == "rgba" else (0,) * (channels - 1) or ())
        assert tif.pages[0].geotiff_tags["ModelPixelScale"] == [2.5, 2.5, 0.0]


def geo_meta(axes: str = "cyx") -> ImageMetadata:
    return ImageMetadata(axes=tuple(Axis(a) for a in axes), geotiff=GEO)


@pytest.mark.parametrize(("name", "ome", "meta", "cog", "planes", "kind"), [
    ("out.tif", False, geo_meta(), None, 1, "cog"),
    ("out.tif", False, geo_meta(), False, 1, "plain"),
    ("out.tif", False, ImageMetadata(), None, 1, "plain"),
    ("out.tif", True, ImageMetadata(), None, 1, "ome"),
    ("out.tif", True, ImageMetadata(), True, 1, "cog"),
    ("out.ome.tif", False, geo_meta(), None, 1, "ome"),
    ("out.tif", False, geo_meta("czyx"), None, 3, "plain"),
    ("out.zarr", False, geo_meta(), None, 1, None),
])
def test_what_a_tiff_output_becomes(name: str, ome: bool, meta: ImageMetadata, cog: bool | None, planes: int,
                                    kind: str | None) -> None:
    assert tiff_kind(Location.of(f"/tmp/{name}"), ome, meta, cog, planes) == kind


def test_a_cog_asked_for_in_place_of_an_ome_tiff_names_what_it_leaves_behind() -> None:
    named = ImageMetadata(channels=(Channel("DAPI", "0000FF"),))
    with pytest.warns(MetadataWarning, match="no OME-XML: channel names and colours are not carried"):
        assert tiff_kind(Location.of("/tmp/out.tif"), True, named, True, warn=True) == "cog"


@pytest.mark.parametrize(("name", "planes", "words"), [
    ("out.zarr", 1, "needs a .tif output"),
    ("out.ome.tif", 1, "is not an OME-TIFF"),
    ("out.tif", 2, "holds one image plane and this one has 2"),
])
def test_a_cog_that_cannot_be_is_refused(name: str, planes: int, words: str) -> None:
    with pytest.raises(LpdaskError, match=words):
        tiff_kind(Location.of(f"/tmp/{name}"), False, geo_meta(), True, planes)


def test_without_rasterio_one_line_names_the_extra_before_any_work(geo: dict[str, Any], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(lpdask.io.cog, "has_gdal", lambda: False)
    monkeypatch.setattr(lpdask.runner, "run", lambda *a, **k: pytest.fail("the job started"))
    with pytest.raises(LpdaskError, match=r"pip install 'lpdask\[geo\]'.*--no-cog"):
        lpdask.upscale(geo["folder"] / "in.tif", tmp_path / "out.tif", model="no such model")  # never loaded
    code = main(["upscale", str(geo["folder"] / "in.tif"), str(tmp_path / "out.tif"), "--cog", "-q"])
    stderr = capsys.readouterr().err
    assert code == 2 and stderr.count("\n") == 1 and "lpdask[geo]" in stderr and "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def tiny_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A 256 KiB file system of its own (tmpfs) where this process may mount one; elsewhere a folder
    where GDAL's copy may write at most 256 KiB to a file (RLIMIT_FSIZE) and which says it has no
    free space, as a full disk would."""
    disk = tmp_path / "tiny"
    disk.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)],
                                                   capture_output=True).returncode == 0
    if mounted:
        yield disk
        subprocess.run(["umount", "-l", str(disk)], check=True)
        return
    import resource
    import signal

    import rasterio.shutil

    copy = rasterio.shutil.copy

    def limited(*args: Any, **kwargs: Any) -> Any:
        previous = resource.getrlimit(resource.RLIMIT_FSIZE)
        handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails, not kills
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, previous[1]))
        try:
            return copy(*args, **kwargs)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, previous)
            signal.signal(signal.SIGXFSZ, handler)

    monkeypatch.setattr(rasterio.shutil, "copy", limited)
    monkeypatch.setattr(lpdask.io.cog, "_free", lambda path: 0)
    yield disk


def test_a_full_disk_under_gdal_is_an_os_error_for_the_fault_message(tmp_path: Path, tiny_disk: Path) -> None:
    """The scratch file fits (another disk, as with --workdir); GDAL's copy does not."""
    levels = pyramid(tmp_path / "zarr", image("cyx", 3, "uint8"), smallest=40)
    with pytest.raises(OSError) as caught:
        write_cog(tiny_disk / "out.tif", levels, metadata("cyx", "rgb", geotiff=GEO), scratch=tmp_path / "scratch.tif",
                  tile=128, compression="none")
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tiny_disk / "out.tif")
    assert not (tmp_path / "scratch.tif").exists()
