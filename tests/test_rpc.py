"""GeoTIFFs georeferenced without a geotransform: by RPCs (GDAL's RPCCoefficientTag, here beside the
identity ModelTransformation that GDAL reads as "no geotransform", as in DigitalGlobe images) and by
GCPs. GDAL (through rasterio) is the judge: the output's RPCs map ground points to the input's pixel
positions times the scale (corner convention), its transform stays the identity, its GCPs move with
their pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import tifffile
import zarr
from rasterio.control import GroundControlPoint
from rasterio.rpc import RPC
from rasterio.transform import Affine, RPCTransformer

from lpdask import upscale
from lpdask.export import export

from .reference import smooth_image

HEIGHT, WIDTH, SCALE = 24, 40, 4
IDENTITY = tuple(np.eye(4).ravel().tolist())
TOLERANCE = 1e-6
"""Output pixels: the output's RPCs and scale x the input's agree to this (float rounding only)."""


def _coefficients(*terms: tuple[int, float]) -> list[float]:
    values = [0.0] * 20
    for k, v in terms:
        values[k] = v
    return values


RPCS = RPC(err_bias=0.5, err_rand=0.5, line_off=11.5, samp_off=19.5, lat_off=49.2, long_off=-123.2,
           height_off=100.0, line_scale=12.0, samp_scale=20.0, lat_scale=0.01, long_scale=0.015, height_scale=500.0,
           line_num_coeff=_coefficients((0, 0.001), (1, 0.02), (2, -1.0), (3, 0.001), (4, 0.003), (8, 0.001)),
           line_den_coeff=_coefficients((0, 1.0), (1, 0.001), (2, 0.002)),
           samp_num_coeff=_coefficients((0, 0.002), (1, 1.0), (2, 0.03), (3, 0.001), (4, 0.002), (7, 0.004)),
           samp_den_coeff=_coefficients((0, 1.0), (1, 0.0005), (2, 0.001)))
"""Invented RPCs over the 24 x 40 image: samples grow with longitude, lines with falling latitude."""


@pytest.fixture(scope="module")
def rpc_tif(tmp_path_factory) -> Path:
    """An RGB GeoTIFF with GDAL's RPC and GeoKey tags (written by rasterio) and an identity
    ModelTransformation added, as GDAL writes it for a DigitalGlobe image."""
    folder = tmp_path_factory.mktemp("rpc")
    plain = folder / "gdal.tif"
    image = smooth_image(HEIGHT, WIDTH, seed=3)
    with rasterio.open(plain, "w", driver="GTiff", width=WIDTH, height=HEIGHT, count=3, dtype="uint8",
                       crs="EPSG:4326", rpcs=RPCS, photometric="RGB") as dst:
        dst.write(np.moveaxis(image, -1, 0))
    with tifffile.TiffFile(plain) as tif:
        tags = tif.pages[0].tags
        kinds = {34735: "H", 34736: "d", 34737: "s", 50844: "d"}
        extra = [(code, kind, 0 if kind == "s" else len(tags[code].value), tags[code].value, True)
                 for code, kind in kinds.items()]
    path = folder / "rpc.tif"
    tifffile.imwrite(path, image, photometric="rgb", extratags=[*extra, (34264, "d", 16, IDENTITY, True)])
    with rasterio.open(path) as src:
        assert src.rpcs is not None and src.transform == Affine.identity()
    return path


def _pixels(rpcs: RPC, points: np.ndarray) -> np.ndarray:
    """(row, column) positions, corner convention, of ground points (lon, lat, height)."""
    with RPCTransformer(rpcs) as transformer:
        rows, cols = transformer.rowcol(points[:, 0], points[:, 1], zs=points[:, 2], op=np.asarray)
    return np.stack([rows, cols], axis=-1)


def _check_rpc_output(path: Path, rpcs: RPC) -> None:
    rng = np.random.default_rng(5)
    points = np.stack([rng.uniform(-123.215, -123.185, 12), rng.uniform(49.19, 49.21, 12),
                       rng.uniform(0.0, 600.0, 12)], axis=-1)
    with rasterio.open(path) as out:
        assert out.rpcs is not None, f"{path.name}: RPCs dropped"
        assert out.transform == Affine.identity() and not out.gcps[0], f"{path.name}: {out.transform}"
        assert (out.height, out.width) == (HEIGHT * SCALE, WIDTH * SCALE)
        found = _pixels(out.rpcs, points)
    np.testing.assert_allclose(found, SCALE * _pixels(rpcs, points), rtol=0, atol=TOLERANCE, err_msg=path.name)


@pytest.mark.filterwarnings("ignore::lpdask.errors.MetadataWarning")
def test_rpcs_are_rescaled_and_identity_stays_none(small_checkpoint, tmp_path, rpc_tif):
    with rasterio.open(rpc_tif) as src:
        rpcs = src.rpcs
    upscale(rpc_tif, tmp_path / "out.zarr", model=small_checkpoint, chunk=16, blocks_per_stage=1)
    stored = zarr.open_group(str(tmp_path / "out.zarr"), mode="r").attrs["lpdask"]["geotiff"]
    assert tuple(stored["model_transformation"]) == IDENTITY
    assert len(stored.get("rpc_coefficients", ())) == 92, "RPCs dropped from the OME-Zarr's lpdask.geotiff"
    for name, cog in (("cog.tif", True), ("plain.tif", False)):
        export(tmp_path / "out.zarr", tmp_path / name, cog=cog)
        _check_rpc_output(tmp_path / name, rpcs)


def test_gcps_move_with_their_pixels(small_checkpoint, tmp_path):
    """GCPs (tiepoints without a pixel scale) stay on the same ground: their pixel positions times 4."""
    gcps = [GroundControlPoint(row, col, 500000 + 10 * col, 4100000 - 10 * row + col, 0.0)
            for row, col in ((0, 0), (0, 40), (24, 0), (24, 40), (11.5, 20.25))]
    path = tmp_path / "gcps.tif"
    with rasterio.open(path, "w", driver="GTiff", width=WIDTH, height=HEIGHT, count=1, dtype="uint8",
                       gcps=gcps, crs="EPSG:32633") as dst:
        dst.write(smooth_image(HEIGHT, WIDTH, seed=4)[..., 0][None])
    upscale(path, tmp_path / "out.tif", model=small_checkpoint, chunk=16, blocks_per_stage=1)
    with rasterio.open(tmp_path / "out.tif") as out:
        found, crs = out.gcps
    assert crs == "EPSG:32633" and len(found) == len(gcps)
    for got, want in zip(found, gcps):
        assert (got.row, got.col, got.x, got.y) == pytest.approx((want.row * SCALE, want.col * SCALE, want.x, want.y))
