"""Small synthetic samples for the pipelines and their tests: deterministic, structured images (cells,
fields and roads, stained tissue) in the formats of each field, so everything runs offline.

- :func:`write_microscopy`: a 16-bit OME-TIFF, axes ZCYX (2 z-planes, 3 channels DAPI / GFP /
  mCherry with colours), physical sizes in µm; :func:`write_microscopy_zarr` the same as OME-Zarr.
- :func:`write_satellite`: a 4-band (B, G, R, NIR) uint16 GeoTIFF in UTM zone 33N (EPSG:32633),
  10 m pixels, nodata 0, band names in GDAL_METADATA, bands stored planar so GDAL sees 4 bands.
- :func:`write_pathology`: an Aperio SVS-like slide: RGB JPEG tiles, a 3-level pyramid, thumbnail,
  label and macro images, ``MPP = 0.499``.
- :func:`smooth_image`: an RGB picture with structure at several scales; :func:`lively`: random
  network weights made worth testing and benchmarking on it.

Run ``python -m lpdask.samples FOLDER`` to write all of them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tifffile

if TYPE_CHECKING:
    import torch

CHANNELS = ("DAPI", "GFP", "mCherry")
CHANNEL_COLORS = ("0000FF", "00FF00", "FF00FF")
PIXEL_UM = 0.325
Z_STEP_UM = 1.5

BANDS = ("blue", "green", "red", "nir")
EPSG = 32633
PIXEL_M = 10.0
ORIGIN = (500000.0, 4600000.0)

MPP = 0.499


# ---- shared drawing helpers --------------------------------------------------------------------


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur over the last two axes (edges clamped)."""
    radius = max(1, int(3 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    out = image.astype(np.float64)
    for axis in (out.ndim - 2, out.ndim - 1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        out = sum(w * np.take(padded, np.arange(k, k + n), axis=axis) for k, w in enumerate(kernel))
    return out


def _disk(shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float, angle: float = 0.0) -> np.ndarray:
    """A soft-edged ellipse in [0, 1]."""
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    dy, dx = y - cy, x - cx
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    r = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)
    return 1 / (1 + np.exp(np.minimum((r - 1) * 8, 50)))


def smooth_image(height: int, width: int, seed: int = 0, dtype: type = np.uint8) -> np.ndarray:
    """A (h, w, 3) image with structure at several scales, not white noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.empty((height, width, 3), np.float32)
    for c in range(3):
        fy, fx, phase = rng.uniform(0.02, 0.3, 2).tolist() + [rng.uniform(0, 6.3)]
        image[..., c] = 0.5 + 0.3 * np.sin(fy * y + phase) * np.cos(fx * x) + 0.2 * rng.random((height, width))
    image = np.clip(image, 0, 1)
    if np.dtype(dtype).kind == "f":
        return image.astype(dtype)
    return np.round(image * np.iinfo(dtype).max).astype(dtype)


def lively(net: torch.nn.Module, seed: int = 0, reach: float = 4.0) -> torch.nn.Module:
    """Make a random-weight RRDBNet worth testing: amplify every dense block's residual so far
    pixels matter, and set conv_last so outputs spread over [0, 1] instead of clamping flat (plain
    random weights give a nearly constant output, on which every stitching method looks exact)."""
    import torch

    torch.manual_seed(seed)
    with torch.no_grad():
        for name, module in net.named_modules():
            if name.endswith("conv5"):
                module.weight.mul_(reach)
        spread_output(net, net.conv_last, seed)  # type: ignore[arg-type]
    return net.eval()


def spread_output(net: torch.nn.Module, last: torch.nn.Conv2d, seed: int = 0) -> None:
    """Scale the last conv so the outputs on a smooth image spread over [0, 1] (mean 0.5, sd 0.25)
    instead of clamping flat."""
    import torch

    with torch.no_grad():
        probe = torch.from_numpy(smooth_image(48, 48, seed).astype(np.float32) / 255).permute(2, 0, 1)[None]
        probe = probe[:, : getattr(net, "in_channels", 3)]  # a 1-channel network sees the first
        out = net(probe)
        gain = 0.25 / float(out.std())
        last.weight.mul_(gain)
        last.bias.mul_(gain).add_(0.5 - gain * float(out.mean()))


# ---- microscopy --------------------------------------------------------------------------------


def microscopy_image(size: int = 80, seed: int = 0) -> np.ndarray:
    """(z=2, c=3, y, x) uint16 fluorescence: nuclei (DAPI), cytoplasm (GFP), puncta (mCherry);
    the second plane is out of focus."""
    rng = np.random.default_rng(seed)
    shape = (size, size)
    nuclei, cytoplasm, puncta = (np.zeros(shape) for _ in range(3))
    for _ in range(max(3, size * size // 500)):
        cy, cx = rng.uniform(4, size - 4, 2)
        r = rng.uniform(3.5, 6.0)
        angle = rng.uniform(0, np.pi)
        nuclei = np.maximum(nuclei, _disk(shape, cy, cx, r, r * rng.uniform(1.0, 1.4), angle) * rng.uniform(0.6, 1))
        cytoplasm += _disk(shape, cy, cx, 2.0 * r, 2.3 * r, angle) * rng.uniform(0.3, 0.7)
        for _ in range(6):
            a, d = rng.uniform(0, 2 * np.pi), rng.uniform(1.2, 2.0) * r
            puncta += _disk(shape, cy + d * np.sin(a), cx + d * np.cos(a), 0.9, 0.9) * rng.uniform(0.5, 1)
    cytoplasm *= 1 + 0.3 * blur(rng.standard_normal(shape), 1.5)
    signal = np.stack([nuclei, np.clip(cytoplasm, 0, 1), np.clip(puncta, 0, 1)])
    planes = np.stack([blur(signal, 0.6), 0.7 * blur(signal, 2.5)])
    amplitude = np.array([30000.0, 14000.0, 9000.0])[None, :, None, None]
    counts = 180 + amplitude * planes + rng.normal(0, 40, planes.shape)
    return np.clip(np.round(counts), 0, 65535).astype(np.uint16)


def write_microscopy(path: str | Path, size: int = 80, seed: int = 0) -> Path:
    """A tiled 16-bit OME-TIFF, axes ZCYX, with physical sizes and channel names and colours."""
    path = Path(path)
    tifffile.imwrite(
        path, microscopy_image(size, seed), photometric="minisblack", tile=(32, 32), compression="zlib",
        metadata={
            "axes": "ZCYX",
            "PhysicalSizeX": PIXEL_UM, "PhysicalSizeXUnit": "µm",
            "PhysicalSizeY": PIXEL_UM, "PhysicalSizeYUnit": "µm",
            "PhysicalSizeZ": Z_STEP_UM, "PhysicalSizeZUnit": "µm",
            "Channel": {"Name": list(CHANNELS), "Color": [_ome_color(c) for c in CHANNEL_COLORS]},
        },
    )
    return path


def write_microscopy_zarr(path: str | Path, size: int = 80, seed: int = 0) -> Path:
    """The same image as an OME-Zarr (NGFF 0.5) written by ome-zarr-py, axes CZYX, with omero channels."""
    import zarr
    from ome_zarr.writer import write_image

    path = Path(path)
    image = np.ascontiguousarray(microscopy_image(size, seed).transpose(1, 0, 2, 3))  # NGFF order: c before z
    group = zarr.open_group(str(path), mode="w")
    write_image(
        image, group, axes="czyx", scale_factors=(2,), name=path.stem,
        scale={"c": 1.0, "z": Z_STEP_UM, "y": PIXEL_UM, "x": PIXEL_UM},
        axes_units={"z": "micrometer", "y": "micrometer", "x": "micrometer"},
        storage_options={"chunks": (1, 1, 32, 32)},
        omero={"channels": [{"label": name, "color": color, "active": True,
                             "window": {"start": 0, "end": 65535, "min": 0, "max": 65535}}
                            for name, color in zip(CHANNELS, CHANNEL_COLORS)]},
    )
    return path


def _ome_color(rrggbb: str) -> int:
    """OME's Color: opaque RGBA as a signed 32-bit integer."""
    rgba = int(rrggbb, 16) << 8 | 0xFF
    return rgba - (1 << 32) if rgba >= 1 << 31 else rgba


# ---- satellite ---------------------------------------------------------------------------------

# Surface reflectance x 10000 in B, G, R, NIR.
_COVER = {
    "water": (600, 500, 300, 150),
    "forest": (300, 500, 250, 3500),
    "crop": (400, 750, 500, 4500),
    "soil": (1200, 1500, 1900, 2600),
    "town": (1500, 1600, 1700, 2000),
}
_ROAD = (1100, 1150, 1200, 1300)


def satellite_image(size: int = 96, seed: int = 0) -> np.ndarray:
    """(band=4, y, x) uint16 reflectances: fields (Voronoi parcels with crop rows), a river, two roads,
    and a nodata (0) wedge in the bottom-left corner, outside the swath."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    seeds = rng.uniform(0, size, (max(6, size * size // 600), 2))
    parcel = np.argmin((y[..., None] - seeds[:, 0]) ** 2 + (x[..., None] - seeds[:, 1]) ** 2, axis=-1)
    kinds = rng.choice(["forest", "crop", "crop", "soil", "town"], len(seeds))
    bands = np.zeros((4, size, size))
    for k, kind in enumerate(kinds):
        inside = parcel == k
        value = np.array(_COVER[kind])[:, None] * rng.uniform(0.85, 1.15)
        if kind == "crop":  # rows in a direction of their own
            a = rng.uniform(0, np.pi)
            rows = 1 + 0.12 * np.sin((x * np.cos(a) + y * np.sin(a)) * 1.6)
            value = value * rows[inside]
        bands[:, inside] = value
    bands *= 1 + 0.04 * blur(rng.standard_normal((4, size, size)), 1.0)
    river = np.abs(y - (0.35 * size + 0.08 * size * np.sin(x / size * 2 * np.pi))) < 2.5
    bands[:, river] = np.array(_COVER["water"])[:, None]
    for road in (np.abs(x - 0.62 * size) < 1.0, np.abs((x - y) / np.sqrt(2) - 0.1 * size) < 0.8):
        bands[:, road] = np.array(_ROAD)[:, None]
    bands = blur(bands, 0.5)  # the sensor's point spread
    image = np.clip(np.round(bands), 1, 65535).astype(np.uint16)
    image[:, x + (size - y) < 0.3 * size] = 0
    return image


def geo_tags(size_m: float = PIXEL_M, origin: tuple[float, float] = ORIGIN, epsg: int = EPSG,
             nodata: str = "0") -> list[tuple[int, str, int, object, bool]]:
    """GeoTIFF tags for tifffile's ``extratags``: projected CRS ``epsg``, PixelIsArea, north-up."""
    keys = (1, 1, 0, 3,  # version 1.1.0, 3 keys
            1024, 0, 1, 1,  # GTModelTypeGeoKey: projected
            1025, 0, 1, 1,  # GTRasterTypeGeoKey: PixelIsArea
            3072, 0, 1, epsg)  # ProjectedCSTypeGeoKey
    return [
        (33550, "d", 3, (size_m, size_m, 0.0), True),  # ModelPixelScale
        (33922, "d", 6, (0.0, 0.0, 0.0, origin[0], origin[1], 0.0), True),  # ModelTiepoint
        (34735, "H", len(keys), keys, True),  # GeoKeyDirectory
        (42113, "s", 0, nodata, True),  # GDAL_NODATA
    ]


def gdal_band_names(names: tuple[str, ...] = BANDS) -> tuple[int, str, int, str, bool]:
    """A GDAL_METADATA tag naming the bands (what QGIS and ``rasterio``'s ``descriptions`` show)."""
    items = "".join(f'<Item name="DESCRIPTION" sample="{k}" role="description">{name}</Item>'
                    for k, name in enumerate(names))
    return (42112, "s", 0, f"<GDALMetadata>{items}</GDALMetadata>", True)


def write_satellite(path: str | Path, size: int = 96, seed: int = 0) -> Path:
    """A tiled, planar 4-band uint16 GeoTIFF: EPSG:32633, 10 m pixels, origin (500000, 4600000), nodata 0,
    bands named blue, green, red, nir."""
    path = Path(path)
    tifffile.imwrite(path, satellite_image(size, seed), photometric="minisblack", planarconfig="separate",
                     tile=(32, 32), compression="zlib", predictor=True, extratags=[*geo_tags(), gdal_band_names()],
                     metadata=None)
    return path


# ---- pathology ---------------------------------------------------------------------------------


def pathology_image(height: int = 96, width: int = 128, seed: int = 0) -> np.ndarray:
    """(y, x, 3) uint8 H&E-like tissue: pink stroma with fibres, purple nuclei, white glass around."""
    rng = np.random.default_rng(seed)
    shape = (height, width)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    outline = blur(rng.standard_normal(shape), 6) * 12
    tissue = _disk(shape, height * 0.5, width * 0.48, height * 0.42, width * 0.4) + outline - 0.5 > 0
    tissue = blur(tissue.astype(np.float64), 1.0)
    fibres = 0.5 + 0.5 * np.sin(0.45 * (x + 6 * np.sin(y / 9)) + 3 * blur(rng.standard_normal(shape), 3))
    nuclei = np.zeros(shape)
    for _ in range(height * width // 90):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        r = rng.uniform(1.6, 3.2)
        nuclei = np.maximum(nuclei, _disk(shape, cy, cx, r, r * rng.uniform(1.0, 1.8), rng.uniform(0, np.pi)))
    glass = np.array([242.0, 240.0, 244.0])
    stroma = np.array([232.0, 150.0, 190.0])[:, None, None] - 35 * fibres
    nucleus = np.array([85.0, 55.0, 140.0])[:, None, None] + 25 * blur(rng.standard_normal(shape), 0.7)
    stained = stroma * (1 - nuclei) + nucleus * nuclei
    rgb = glass[:, None, None] * (1 - tissue) + stained * tissue + rng.normal(0, 3, (3, *shape))
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8).transpose(1, 2, 0)


def write_pathology(path: str | Path, height: int = 96, width: int = 128, seed: int = 0) -> Path:
    """An SVS-like BigTIFF: JPEG-tiled RGB levels 1, 1/2, 1/4 as Aperio stores them (main IFDs, with a
    striped thumbnail after level 0, then label and macro), each with an Aperio description."""
    path = Path(path)
    image = pathology_image(height, width, seed)
    header = f"Aperio Image Library v12.0.16 \r\n{width}x{height} [0,0 {width}x{height}] (32x32)"
    properties = f"AppMag = 20|MPP = {MPP}|ScanScope ID = SYNTHETIC|Filename = sample"
    levels = [image, _halve(image), _halve(_halve(image))]
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tiled = {"photometric": "rgb", "compression": "jpeg", "compressionargs": {"level": 90}, "tile": (32, 32),
                 "metadata": None}
        tif.write(levels[0], description=f"{header} JPEG/RGB Q=90|{properties}", **tiled)
        thumbnail = levels[2]
        tif.write(thumbnail, description=f"{header} -> {thumbnail.shape[1]}x{thumbnail.shape[0]} JPEG/RGB Q=90",
                  photometric="rgb", compression="jpeg", compressionargs={"level": 90}, metadata=None)
        for level in levels[1:]:
            tif.write(level, description=f"{header} -> {level.shape[1]}x{level.shape[0]} JPEG/RGB Q=90",
                      **tiled)
        label = np.full((32, 32, 3), 255, np.uint8)
        label[8:24, 8:24] = (20, 20, 20)
        tif.write(label, description="Aperio Image Library v12.0.16 \r\nlabel 32x32", photometric="rgb",
                  compression="lzw", subfiletype=1, metadata=None)
        tif.write(levels[2], description="Aperio Image Library v12.0.16 \r\nmacro", photometric="rgb",
                  compression="jpeg", compressionargs={"level": 90}, subfiletype=9, metadata=None)
    return path


def _halve(image: np.ndarray) -> np.ndarray:
    """2x2 mean of a (y, x, c) uint8 image."""
    h, w = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    blocks = image[:h, :w].astype(np.float64).reshape(h // 2, 2, w // 2, 2, -1)
    return np.round(blocks.mean(axis=(1, 3))).astype(np.uint8)


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "pipeline-output/samples")
    folder.mkdir(parents=True, exist_ok=True)
    for written in (write_microscopy(folder / "cells.ome.tif"), write_microscopy_zarr(folder / "cells.ome.zarr"),
                    write_satellite(folder / "field.tif"), write_pathology(folder / "slide.svs")):
        print(written)
