"""The pipelines (``pipelines/*.py``, run as scripts) and their Python-API examples write what they
promise: pixels equal to independent whole-image inference with the same small network, and metadata
read back with independent readers (ome-zarr-py, rasterio, tifffile)."""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import rasterio
import tifffile
import zarr
from rasterio.transform import Affine

from .reference import assert_exact, whole_image_any

ROOT = Path(__file__).parent.parent
PIPELINES = ROOT / "pipelines"


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pipelines() -> dict[str, ModuleType]:
    """The pipeline modules, imported under the names the scripts import each other by
    (``from common import ...``)."""
    import lpdask.samples

    names = ("common", "microscopy", "satellite", "pathology")
    sys.path.insert(0, str(PIPELINES))
    try:
        yield {"samples": lpdask.samples, **{name: importlib.import_module(name) for name in names}}
    finally:
        sys.path.remove(str(PIPELINES))
        for name in names:
            sys.modules.pop(name, None)


def run_script(name: str, folder: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, str(PIPELINES / f"{name}.py"), "--folder", str(folder), *args],
                          capture_output=True, text=True, timeout=180, cwd=folder.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def microscopy_run(tmp_path_factory, small_checkpoint) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("microscopy")
    return folder, run_script("microscopy", folder, "--model", str(small_checkpoint), "--chunk", "32")


@pytest.fixture(scope="module")
def satellite_run(tmp_path_factory, small_checkpoint) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("satellite")
    return folder, run_script("satellite", folder, "--model", str(small_checkpoint), "--chunk", "32")


@pytest.fixture(scope="module")
def pathology_run(tmp_path_factory, small_checkpoint) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("pathology")
    return folder, run_script("pathology", folder, "--model", str(small_checkpoint), "--chunk", "32")


# ---- the samples ------------------------------------------------------------------------------


def smoothness(plane: np.ndarray) -> float:
    """Correlation of horizontally adjacent pixels: near 0 for white noise, near 1 for structure."""
    a, b = plane[:, :-1].astype(float).ravel(), plane[:, 1:].astype(float).ravel()
    return float(np.corrcoef(a, b)[0, 1])


def test_samples_are_deterministic_structured_and_described(tmp_path, pipelines):
    samples = pipelines["samples"]
    cells = samples.write_microscopy(tmp_path / "a.ome.tif")
    assert np.array_equal(tifffile.imread(cells), tifffile.imread(samples.write_microscopy(tmp_path / "b.ome.tif")))
    with tifffile.TiffFile(cells) as tif:
        assert tif.is_ome and tif.series[0].axes == "ZCYX" and tif.series[0].dtype == np.uint16
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
        assert [c["Name"] for c in pixels["Channel"]] == ["DAPI", "GFP", "mCherry"]
        assert (pixels["PhysicalSizeX"], pixels["PhysicalSizeXUnit"], pixels["PhysicalSizeZ"]) == (0.325, "µm", 1.5)
        stack = tif.asarray()
    assert all(smoothness(stack[0, c]) > 0.5 for c in range(3)) and stack.max() > 20000

    with rasterio.open(samples.write_satellite(tmp_path / "field.tif")) as ds:
        assert (ds.count, ds.dtypes[0], ds.crs.to_epsg(), ds.nodata) == (4, "uint16", 32633, 0)
        assert ds.transform == Affine(10, 0, 500000, 0, -10, 4600000)
        assert ds.profile["tiled"] and ds.interleaving.name == "band"
        bands = ds.read()
    assert 0 < (bands == 0).all(0).mean() < 0.2 and all(smoothness(b) > 0.5 for b in bands)
    assert bands[3].mean() > 1.5 * bands[2].mean()  # vegetation: NIR above red

    with tifffile.TiffFile(samples.write_pathology(tmp_path / "slide.svs")) as tif:
        assert tif.is_svs and tif.is_bigtiff and "MPP = 0.499" in tif.pages.first.description
        assert [level.shape for level in tif.series[0].levels] == [(96, 128, 3), (48, 64, 3), (24, 32, 3)]
        assert tif.pages.first.compression == tifffile.COMPRESSION.JPEG
        slide = tif.asarray()
    assert all(smoothness(slide[..., c]) > 0.5 for c in range(3))


# ---- the pipelines ----------------------------------------------------------------------------


def ome_zarr_image(path: Path):
    """The image node ome-zarr-py's reader (napari-ome-zarr's) finds first."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    return next(iter(Reader(parse_url(str(path)))()))


@pytest.mark.slow  # the pipeline script in a subprocess
def test_microscopy_pipeline_is_exact_and_opens_in_ome_zarr_reader(microscopy_run, small_net):
    folder, stdout = microscopy_run
    out = folder / "cells_sr.zarr"
    assert f"napari --plugin napari-ome-zarr {out.name}" in stdout.replace(str(folder) + "/", "")
    image = ome_zarr_image(out)
    assert image.metadata["channel_names"] == ["DAPI", "GFP", "mCherry"]
    assert [a["name"] for a in image.metadata["axes"]] == ["c", "z", "y", "x"]
    transforms = {t["type"]: t[t["type"]] for t in image.metadata["coordinateTransformations"][0]}
    assert transforms["scale"] == pytest.approx([1, 1.5, 0.325 / 4, 0.325 / 4])
    # pixel centres: output pixel 0 sits 3/8 of an input pixel before input pixel 0
    assert transforms["translation"] == pytest.approx([0, 0, -0.325 * 3 / 8, -0.325 * 3 / 8])
    assert [d.shape for d in image.data] == [(3, 2, 320, 320), (3, 2, 160, 160)]
    stack = tifffile.imread(folder / "cells.ome.tif")  # (z, c, y, x)
    result = np.asarray(image.data[0])
    for z in range(2):
        assert_exact(result[:, z], whole_image_any(small_net, stack[z].transpose(1, 2, 0), "separate"))


def test_microscopy_pipeline_takes_a_czi(pipelines, small_net, small_checkpoint, tmp_path, capsys):
    """A Zeiss CZI (written by libCZI) through the pipeline's own run and check, which reads the CZI
    with bioio and the result with ome-zarr-py."""
    import pylibCZIrw.czi as pyczi

    from .reference import smooth_image

    stack = np.stack([np.moveaxis(smooth_image(32, 40, seed=80 + z, dtype=np.uint16)[..., :2], -1, 0)
                      for z in range(2)])  # (z, c, y, x)
    with pyczi.create_czi(str(tmp_path / "cells.czi")) as czi:
        for z in range(2):
            for c in range(2):
                czi.write(stack[z, c], plane={"T": 0, "Z": z, "C": c}, location=(0, 0))
        czi.write_metadata(document_name="cells", channel_names={0: "DAPI", 1: "GFP"}, scale_x=0.5e-6,
                           scale_y=0.5e-6, scale_z=2e-6)
    out = tmp_path / "cells_sr.zarr"
    assert pipelines["microscopy"].main([str(tmp_path / "cells.czi"), str(out), "--model", str(small_checkpoint),
                                        "--chunk", "16"]) == 0
    assert "['DAPI', 'GFP']" in capsys.readouterr().out
    result = np.asarray(ome_zarr_image(out).data[0])
    for z in range(2):
        assert_exact(result[:, z], whole_image_any(small_net, stack[z].transpose(1, 2, 0), "separate"))


@pytest.mark.slow  # the pipeline script in a subprocess
def test_satellite_pipeline_is_exact_georeferenced_and_keeps_nodata(satellite_run, small_net):
    folder, _ = satellite_run
    with rasterio.open(folder / "field.tif") as ds:
        bands = ds.read()
    with rasterio.open(folder / "field_sr.tif") as out:
        assert (out.count, out.dtypes[0], out.crs.to_epsg(), out.nodata) == (4, "uint16", 32633, 0)
        assert out.transform == Affine(2.5, 0, 500000, 0, -2.5, 4600000)
        assert out.profile["tiled"] and out.overviews(1) == [2]
        assert out.descriptions == ("blue", "green", "red", "nir")
        result = out.read()
    with rasterio.open(folder / "field_sr.tif", overview_level=0) as overview:
        assert overview.transform == Affine(5, 0, 500000, 0, -5, 4600000)
        reduced = overview.read()

    # Independently: stretch each band's valid range over 1..65535, fill the nodata pixels as lpdask
    # does (tests/test_nodata.py checks that fill), whole-image inference band by band, stretch back,
    # nodata where the input pixel was.
    from lpdask.nodata import fill

    valid = bands != 0
    low = np.array([b[v].min() for b, v in zip(bands, valid)], float)[:, None, None]
    high = np.array([b[v].max() for b, v in zip(bands, valid)], float)[:, None, None]
    stretched = np.where(valid, np.round((bands - low) / (high - low) * 65534 + 1), 0).astype(np.uint16)
    filled = fill(stretched.transpose(1, 2, 0), valid.transpose(1, 2, 0))
    filled = np.clip(np.rint(filled), 0, 65535).astype(np.uint16)
    upscaled = whole_image_any(small_net, filled, "separate").astype(float)
    back = np.clip(np.round((upscaled - 1) / 65534 * (high - low) + low), 0, 65535).astype(np.uint16)
    back[back == 0] = 1
    back[~valid.repeat(4, 1).repeat(4, 2)] = 0
    assert_exact(result, back)

    # Overview: 2x2 means of valid pixels, nodata where none is.
    blocks = result.reshape(4, 192, 2, 192, 2).transpose(0, 1, 3, 2, 4).reshape(4, 192, 192, 4)
    counts = (blocks != 0).sum(-1)
    means = np.where(counts > 0, np.round(blocks.astype(float).sum(-1) / np.maximum(counts, 1)), 0)
    assert np.array_equal(reduced, means.astype(np.uint16))
    assert (reduced == 0).any()


@pytest.mark.slow  # the pipeline script in a subprocess
def test_pathology_pipeline_is_exact_pyramidal_ome_tiff(pathology_run, small_net):
    folder, stdout = pathology_run
    assert "Aperio properties" in stdout  # lpdask's warning about what it could not carry is shown
    with tifffile.TiffFile(folder / "slide_sr.ome.tif") as tif:
        assert tif.is_ome and tif.is_bigtiff
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
        assert (pixels["PhysicalSizeX"], pixels["PhysicalSizeY"]) == pytest.approx((0.499 / 4, 0.499 / 4))
        assert pixels["PhysicalSizeXUnit"] == "µm"
        assert [level.shape for level in tif.series[0].levels] == [(384, 512, 3), (192, 256, 3)]
        assert len(tif.pages.first.subifds) == 1 and tif.pages.first.is_tiled
        result = tif.series[0].asarray()
    slide = tifffile.imread(folder / "slide.svs")  # level 0 as decoded from its JPEG tiles
    assert_exact(result.transpose(2, 0, 1), whole_image_any(small_net, slide))


@pytest.mark.slow  # the three pipeline scripts in subprocesses
def test_pipelines_print_their_report(microscopy_run, satellite_run, pathology_run):
    assert "['DAPI', 'GFP', 'mCherry']" in microscopy_run[1] and "0.08125 µm" in microscopy_run[1]
    assert "(2.5, -2.5)" in satellite_run[1] and "EPSG:32633" in satellite_run[1]
    assert "0.12475" in pathology_run[1] and "[(384, 512), (192, 256)]" in pathology_run[1]


@pytest.mark.slow  # the three pipeline scripts in subprocesses
def test_checks_fail_on_wrong_outputs(microscopy_run, satellite_run, pathology_run, pipelines, tmp_path):
    """Each pipeline's own check accepts its output and refuses one with the metadata broken."""
    CheckFailed = pipelines["common"].CheckFailed
    folder, _ = microscopy_run
    pipelines["microscopy"].check(folder / "cells.ome.tif", folder / "cells_sr.zarr")
    broken = tmp_path / "cells.zarr"
    shutil.copytree(folder / "cells_sr.zarr", broken)
    group = zarr.open_group(str(broken), mode="r+")
    ome = group.attrs["ome"]
    ome["omero"]["channels"][1]["label"] = "YFP"
    group.attrs["ome"] = ome
    with pytest.raises(CheckFailed, match="channel names"):
        pipelines["microscopy"].check(folder / "cells.ome.tif", broken)

    folder, _ = satellite_run
    pipelines["satellite"].check(folder / "field.tif", folder / "field_sr.tif")
    shifted = tmp_path / "field.tif"
    shutil.copy(folder / "field_sr.tif", shifted)
    with rasterio.open(shifted, "r+", IGNORE_COG_LAYOUT_BREAK="YES") as ds:  # a COG: edited in place
        ds.transform = ds.transform @ Affine.translation(1, 0)
    with pytest.raises(CheckFailed, match="origin"):
        pipelines["satellite"].check(folder / "field.tif", shifted)
    holes = tmp_path / "holes.tif"
    shutil.copy(folder / "field_sr.tif", holes)
    with rasterio.open(holes, "r+", IGNORE_COG_LAYOUT_BREAK="YES") as ds:
        ds.write(np.zeros((8, 8), np.uint16), 2, window=rasterio.windows.Window(200, 40, 8, 8))
    with pytest.raises(CheckFailed, match="nodata"):
        pipelines["satellite"].check(folder / "field.tif", holes)

    folder, _ = pathology_run
    pipelines["pathology"].check(folder / "slide.svs", folder / "slide_sr.ome.tif")
    resized = tmp_path / "slide.ome.tif"
    shutil.copy(folder / "slide_sr.ome.tif", resized)
    with tifffile.TiffFile(resized) as tif:
        xml = tif.ome_metadata
    tifffile.tiffcomment(resized, xml.replace('PhysicalSizeX="0.12475"', 'PhysicalSizeX="0.499"').encode())
    with pytest.raises(CheckFailed, match="pixel size"):
        pipelines["pathology"].check(folder / "slide.svs", resized)


# ---- the examples -----------------------------------------------------------------------------


def example(name: str) -> ModuleType:
    return load(ROOT / "examples" / f"{name}.py", f"example_{name}")


def test_microscopy_example(tmp_path, small_checkpoint, small_net):
    found = example("microscopy").main(tmp_path, small_checkpoint)
    assert found["channels"] == ["DAPI", "GFP", "mCherry"] and found["axes"] == ["c", "z", "y", "x"]
    assert found["scale"] == pytest.approx([1, 1.5, 0.325 / 4, 0.325 / 4])
    assert found["shapes"] == [(3, 2, 320, 320), (3, 2, 160, 160)]
    stack = np.asarray(ome_zarr_image(tmp_path / "cells.ome.zarr").data[0])  # (c, z, y, x)
    result = zarr.open_group(str(found["path"]), mode="r")["0"][:]
    assert_exact(result[:, 1], whole_image_any(small_net, stack[:, 1].transpose(1, 2, 0), "separate"))


def test_satellite_example(tmp_path, small_checkpoint, small_net):
    path = example("satellite").main(tmp_path, small_checkpoint)
    with rasterio.open(tmp_path / "field.tif") as ds:
        bands = ds.read()
    with rasterio.open(path) as out:
        assert (out.count, out.crs.to_epsg(), out.nodata) == (4, 32633, 0)
        assert out.transform == Affine(2.5, 0, 500000, 0, -2.5, 4600000)
        assert out.overviews(1) == [2, 4] and out.descriptions == ("blue", "green", "red", "nir")
        result = out.read()
    valid = bands != 0
    low = np.array([b[v].min() for b, v in zip(bands, valid)], np.float32)[:, None, None]
    high = np.array([b[v].max() for b, v in zip(bands, valid)], np.float32)[:, None, None]
    unit = np.where(valid, (bands - low) / (high - low), 0).astype(np.float32)
    upscaled = whole_image_any(small_net, unit.transpose(1, 2, 0), "separate")
    back = np.clip(np.round(upscaled * (high - low) + low), 1, 65535).astype(np.uint16)
    back[~valid.repeat(4, 1).repeat(4, 2)] = 0
    assert_exact(result, back)


def test_pathology_example(tmp_path, small_checkpoint, small_net):
    from lpdask.errors import MetadataWarning

    with pytest.warns(MetadataWarning, match="Aperio properties: AppMag"):
        found = example("pathology").main(tmp_path, small_checkpoint)
    assert found["mpp"] == pytest.approx(0.499 / 4) and found["unit"] == "µm"
    assert found["levels"] == [(384, 512, 3), (192, 256, 3)]
    result = tifffile.imread(found["path"])
    assert_exact(result.transpose(2, 0, 1), whole_image_any(small_net, tifffile.imread(tmp_path / "slide.svs")))
