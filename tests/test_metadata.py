"""Input metadata (OME-TIFF, ImageJ, SVS, NDPI, GeoTIFF, OME-Zarr 0.4 / 0.5) and the NGFF lpdask writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr.axes import KNOWN_SPATIAL_UNITS, KNOWN_TEMPORAL_UNITS
from ome_zarr_models.common.omero import Omero
from ome_zarr_models.v05 import Image

from lpdask.io.metadata import Axis, Channel, GeoTiff, ImageMetadata
from lpdask.io.ngff import ngff_attributes, read_ngff_metadata, zarr_metadata
from lpdask.io.tiffmeta import LENGTH_UNITS, TIME_UNITS, tiff_metadata


def read_tiff(path: Path, axes: str, channels: int, series: int = 0, level: int = 0,
              photometric: str = "minisblack") -> ImageMetadata:
    with tifffile.TiffFile(path) as tif:
        return tiff_metadata(tif, series, level, axes, channels, photometric)


def sizes(meta: ImageMetadata) -> dict[str, tuple[str | None, float]]:
    return {a.name: (a.unit, pytest.approx(a.scale)) for a in meta.axes}


# ---- TIFF -------------------------------------------------------------------------------------

OME_XML = """<?xml version="1.0" encoding="UTF-8"?>
<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">
 <Instrument ID="Instrument:0"><Objective ID="Objective:0" NominalMagnification="40"/></Instrument>
 <Image ID="Image:0" Name="first">
  <Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint8" SizeX="16" SizeY="12" SizeC="1" SizeZ="1"
   SizeT="1" PhysicalSizeX="0.5" PhysicalSizeY="0.25" PhysicalSizeYUnit="nm">
   <Channel ID="Channel:0:0" SamplesPerPixel="1" Name="only" Color="-1"/>
   <TiffData IFD="0" PlaneCount="1"/>
  </Pixels>
 </Image>
 <Image ID="Image:1" Name="second">
  <AcquisitionDate>2024-01-01T00:00:00</AcquisitionDate>
  <Pixels ID="Pixels:1" DimensionOrder="XYCZT" Type="uint8" SizeX="16" SizeY="12" SizeC="2" SizeZ="1"
   SizeT="1" PhysicalSizeX="2.5" PhysicalSizeXUnit="Å" PhysicalSizeY="3.5" PhysicalSizeYUnit="Å">
   <Channel ID="Channel:1:0" SamplesPerPixel="1" Name="488" Color="65535" EmissionWavelength="520"/>
   <Channel ID="Channel:1:1" SamplesPerPixel="1" Name="2,5"/>
   <TiffData IFD="1" PlaneCount="2"/>
  </Pixels>
 </Image>
 <StructuredAnnotations><CommentAnnotation ID="Annotation:0"><Value>x</Value></CommentAnnotation>
 </StructuredAnnotations>
</OME>"""


def test_hand_written_ome_xml_picks_the_series_image(tmp_path):
    path = tmp_path / "two.ome.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(np.zeros((12, 16), np.uint8), description=OME_XML.encode(), metadata=None)
        tif.write(np.zeros((2, 12, 16), np.uint8), metadata=None)
    first = read_tiff(path, "cyx", 1, series=0)
    # a size without a unit attribute is in µm (the OME default); -1 is opaque white
    assert sizes(first) == {"c": (None, 1.0), "y": ("nanometer", 0.25), "x": ("micrometer", 0.5)}
    assert first.channels == (Channel("only", "FFFFFF"),)
    second = read_tiff(path, "cyx", 2, series=1)
    assert sizes(second) == {"c": (None, 1.0), "y": ("angstrom", 3.5), "x": ("angstrom", 2.5)}
    # 65535 = 0x0000FFFF: R=00, G=00, B=FF, A=FF; a numeric name stays the text it was
    assert second.channels == (Channel("488", "0000FF"), Channel("2,5", None))
    assert {"OME Instrument", "OME StructuredAnnotations", "OME AcquisitionDate",
            "OME Channel EmissionWavelength", "other image series: first"} <= set(second.dropped)
    assert "OME Channel EmissionWavelength" not in first.dropped


def test_ome_tiff_pyramid_time_and_channels(tmp_path):
    path = tmp_path / "pyramid.ome.tif"
    data = np.zeros((2, 3, 2, 64, 48), np.uint16)
    metadata = {"axes": "TZCYX", "PhysicalSizeX": 0.325, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": 0.4,
                "PhysicalSizeZ": 1.5, "PhysicalSizeZUnit": "mm", "TimeIncrement": 0.5,
                "TimeIncrementUnit": "ms", "Channel": {"Name": ["DAPI", "GFP"], "Color": [-16776961, 16711935]},
                "Plane": {"PositionX": [1.0] * 12}}
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(data, subifds=1, metadata=metadata)
        tif.write(data[..., ::2, ::2], subfiletype=1, metadata=None)
    level0 = read_tiff(path, "tczyx", 2)
    assert sizes(level0) == {"t": ("millisecond", 0.5), "c": (None, 1.0), "z": ("millimeter", 1.5),
                             "y": ("micrometer", 0.4), "x": ("micrometer", 0.325)}
    # -16776961 = 0xFF0000FF (red, opaque), 16711935 = 0x00FF00FF (green)
    assert level0.channels == (Channel("DAPI", "FF0000"), Channel("GFP", "00FF00"))
    assert "OME Plane" in level0.dropped
    level1 = read_tiff(path, "tczyx", 2, level=1)  # 32 x 24 pixels: each twice as large, z and t as before
    assert sizes(level1) == {"t": ("millisecond", 0.5), "c": (None, 1.0), "z": ("millimeter", 1.5),
                             "y": ("micrometer", 0.8), "x": ("micrometer", 0.65)}


def test_ome_rgb_channel_gives_blank_channels(tmp_path):
    path = tmp_path / "rgb.ome.tif"
    tifffile.imwrite(path, np.zeros((8, 8, 3), np.uint8), photometric="rgb",
                     metadata={"axes": "YXS", "PhysicalSizeX": 2.0, "PhysicalSizeY": 2.0})
    meta = read_tiff(path, "cyx", 3, photometric="rgb")
    assert meta.channels == (Channel(), Channel(), Channel()) and meta.photometric == "rgb"
    assert sizes(meta)["x"] == ("micrometer", 2.0)


def test_ome_without_physical_sizes_falls_back_to_resolution_tags(tmp_path):
    path = tmp_path / "plain.ome.tif"
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8), resolution=(1e4 / 0.8, 1e4 / 0.8), resolutionunit=3,
                     metadata={"axes": "YX"})
    assert sizes(read_tiff(path, "cyx", 1))["x"] == ("micrometer", 0.8)


def test_imagej_hyperstack(tmp_path):
    path = tmp_path / "ij.tif"
    red = np.zeros((3, 256), np.uint8)
    red[0] = np.arange(256)
    grey = np.tile(np.arange(256, dtype=np.uint8), (3, 1))
    tifffile.imwrite(path, np.zeros((2, 3, 2, 16, 16), np.uint16), imagej=True, resolution=(2.0, 4.0),
                     metadata={"axes": "TZCYX", "unit": "micron", "spacing": 3.0, "finterval": 1.5,
                               "xorigin": 4, "LUTs": [red, grey], "Ranges": (0, 100, 0, 200)})
    meta = read_tiff(path, "tczyx", 2)
    # pixel size = 1 / (pixels per unit): x 1/2, y 1/4
    assert sizes(meta) == {"t": ("second", 1.5), "c": (None, 1.0), "z": ("micrometer", 3.0),
                           "y": ("micrometer", 0.25), "x": ("micrometer", 0.5)}
    assert meta.axis("x").translation == pytest.approx(-4 * 0.5)  # pixel 0 lies 4 pixels left of 0
    assert meta.axis("y").translation == 0.0
    assert meta.channels == (Channel(None, "FF0000"), Channel(None, "FFFFFF"))
    assert "ImageJ Ranges" in meta.dropped


def test_imagej_without_unit_has_no_physical_size(tmp_path):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, np.zeros((16, 16), np.uint8), imagej=True, resolution=(2.0, 2.0))
    meta = read_tiff(path, "cyx", 1)
    assert sizes(meta) == {"c": (None, 1.0), "y": (None, 1.0), "x": (None, 1.0)}


def test_svs_mpp_and_its_levels(tmp_path):
    path = tmp_path / "slide.svs"
    image = np.zeros((64, 64, 3), np.uint8)
    header = "Aperio Image Library v12.0.15\r\n64x64 [0,0 64x64] (16x16) JPEG/RGB Q=70"
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, tile=(16, 16), photometric="rgb", metadata=None,
                  description=f"{header}|AppMag = 20|ScanScope ID = SS1|MPP = 0.499|Date = 12/29/09")
        tif.write(image[::8, ::8], photometric="rgb", metadata=None, description="Aperio Image Library thumb")
        tif.write(image[::2, ::2], tile=(16, 16), photometric="rgb", metadata=None,
                  description="Aperio Image Library v12.0.15\r\n64x64 -> 32x32|AppMag = 20")
    with tifffile.TiffFile(path) as tif:
        assert tif.is_svs and len(tif.series[0].levels) == 2
    meta = read_tiff(path, "cyx", 3, photometric="rgb")
    assert sizes(meta) == {"c": (None, 1.0), "y": ("micrometer", 0.499), "x": ("micrometer", 0.499)}
    assert "Aperio properties: AppMag, ScanScope ID, Date" in meta.dropped
    assert "other image series: Thumbnail" in meta.dropped
    assert sizes(read_tiff(path, "cyx", 3, level=1))["x"] == ("micrometer", 0.998)


@pytest.mark.parametrize(("unit", "per_micrometer"), [(3, 1e-4), (4, 1e-3), (5, 1.0)])
def test_resolution_in_metric_units(tmp_path, unit, per_micrometer):
    path = tmp_path / "metric.tif"
    xres, yres = 2.0 / per_micrometer, 4.0 / per_micrometer  # 0.5 µm and 0.25 µm pixels
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8), resolution=(xres, yres), resolutionunit=unit)
    meta = read_tiff(path, "cyx", 1)
    assert sizes(meta) == {"c": (None, 1.0), "y": ("micrometer", 0.25), "x": ("micrometer", 0.5)}


def test_ndpi_like(tmp_path):
    path = tmp_path / "ndpi-like.tif"  # a .ndpi name makes tifffile expect 64-bit offsets
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8), resolution=(1e4 / 0.45, 1e4 / 0.45), resolutionunit=3,
                     metadata=None, extratags=[(271, "s", 0, "Hamamatsu", True), (65420, "I", 1, 1, True),
                                               (65421, "f", 1, 20.0, True), (65427, "s", 0, "label", True)])
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ndpi
    meta = read_tiff(path, "cyx", 1)
    assert sizes(meta)["x"] == ("micrometer", 0.45) and sizes(meta)["y"] == ("micrometer", 0.45)
    assert "NDPI properties: Magnification, SlideLabel" in meta.dropped


def test_ordinary_72_dpi_image_has_no_units(tmp_path):
    path = tmp_path / "photo.tif"
    tifffile.imwrite(path, np.zeros((8, 8, 3), np.uint8), photometric="rgb", resolution=(72, 72),
                     resolutionunit=2, iccprofile=b"\0" * 128)
    meta = read_tiff(path, "cyx", 3, photometric="rgb")
    assert sizes(meta) == {"c": (None, 1.0), "y": (None, 1.0), "x": (None, 1.0)}
    assert meta.geotiff is None and meta.dropped == ("ICC profile",)


GEO_KEYS = (1, 1, 0, 4, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633, 3076, 0, 1, 9001)


def test_geotiff_tags_and_an_overview_without_them(tmp_path):
    path = tmp_path / "geo.tif"
    tags = [(33550, "d", 3, (10.0, 10.0, 0.0), True), (33922, "d", 6, (2, 4, 0, 500000.0, 4e6, 0), True),
            (34735, "H", len(GEO_KEYS), GEO_KEYS, True), (42113, "s", 0, "0", True)]
    with tifffile.TiffWriter(path) as tif:
        tif.write(np.zeros((64, 64), np.uint8), tile=(16, 16), subifds=1, extratags=tags)
        tif.write(np.zeros((32, 32), np.uint8), tile=(16, 16), subfiletype=1, metadata=None)
    meta = read_tiff(path, "cyx", 1)
    assert meta.geotiff == GeoTiff(model_pixel_scale=(10.0, 10.0, 0.0), model_tiepoint=(2, 4, 0, 500000.0, 4e6, 0),
                                   geo_key_directory=GEO_KEYS, gdal_nodata="0")
    assert sizes(meta)["x"] == (None, 1.0)  # map units are the GeoTIFF's business, not the axes'
    overview = read_tiff(path, "cyx", 1, level=1).geotiff
    assert overview.model_pixel_scale == (20.0, 20.0, 0.0)
    assert overview.model_tiepoint == (1, 2, 0, 500000.0, 4e6, 0)  # raster (2, 4) is overview pixel (1, 2)
    assert overview.geo_key_directory == GEO_KEYS


def test_unit_names_are_ngff_ones():
    assert set(LENGTH_UNITS.values()) <= set(KNOWN_SPATIAL_UNITS)
    assert set(TIME_UNITS.values()) <= set(KNOWN_TEMPORAL_UNITS)


# ---- reading OME-Zarr -------------------------------------------------------------------------


def test_ngff_04_by_hand(tmp_path):
    group = zarr.open_group(str(tmp_path / "v04.zarr"), mode="w", zarr_format=2)
    array = group.create_array("1", shape=(2, 8, 8), dtype="uint8")
    group.attrs.update({
        "multiscales": [{
            "version": "0.4",
            "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space", "unit": "micrometer"},
                     {"name": "x", "type": "space", "unit": "nanometer"}],
            "datasets": [
                {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 0.25, 0.25]}]},
                {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [1, 0.5, 0.75]},
                                                            {"type": "translation", "translation": [0, 0.25, 1]}]},
            ],
            "coordinateTransformations": [{"type": "scale", "scale": [1, 2, 2]}],
        }],
        "omero": {"channels": [{"label": "DAPI", "color": "0000ff", "window": {"start": 5, "end": 90}},
                               {"label": "GFP", "color": "#00ff00ff"}]},
        "plate": {"name": "p"},
    })
    meta = zarr_metadata(dict(group.attrs), array, "1", "cyx", "minisblack")
    # (i * 0.5 + 0.25) * 2 along y, (i * 0.75 + 1) * 2 along x
    assert meta.axes == (Axis("c"), Axis("y", "micrometer", 1.0, 0.5), Axis("x", "nanometer", 1.5, 2.0))
    assert meta.channels == (Channel("DAPI", "0000FF"), Channel("GFP", "00FF00"))
    assert {"omero window", "NGFF plate"} <= set(meta.dropped)


@pytest.mark.filterwarnings("ignore:Call to deprecated class Scaler", "ignore:Scale value not provided")
def test_ngff_04_from_ome_zarr_writer(tmp_path):
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image

    group = zarr.open_group(str(tmp_path / "writer.zarr"), mode="w", zarr_format=2)
    write_image(np.zeros((2, 32, 32), np.uint8), group, scale_factors=(2,), axes="cyx", fmt=FormatV04(),
                scale={"y": 0.2, "x": 0.3}, axes_units={"y": "micrometer", "x": "micrometer"})
    reopened = zarr.open_group(str(tmp_path / "writer.zarr"), mode="r")
    path = reopened.attrs["multiscales"][0]["datasets"][1]["path"]
    meta = zarr_metadata(dict(reopened.attrs), reopened[path], path, "cyx", "minisblack")
    assert sizes(meta) == {"c": (None, 1.0), "y": ("micrometer", 0.4), "x": ("micrometer", 0.6)}
    assert meta.channels == (Channel(), Channel())


def test_bare_array_has_no_units(tmp_path):
    array = zarr.create_array(str(tmp_path / "bare.zarr"), shape=(16, 16, 3), dtype="uint8")
    meta = zarr_metadata(None, array, "", "cyx", "rgb")
    assert sizes(meta) == {"c": (None, 1.0), "y": (None, 1.0), "x": (None, 1.0)}
    assert meta.photometric == "rgb" and meta.geotiff is None and meta.channels == ()


# ---- writing OME-Zarr -------------------------------------------------------------------------

GEO = GeoTiff(model_pixel_scale=(2.5, 2.5, 0.0), model_tiepoint=(0, 0, 0, 500000.0, 4e6, 0),
              geo_key_directory=GEO_KEYS, gdal_nodata="0")


def write_group(path: Path, meta: ImageMetadata, shape: tuple[int, ...], levels: int, dtype: str) -> zarr.Group:
    """An OME-Zarr 0.5 group: ``levels`` arrays halving y and x, attributes from ngff_attributes."""
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    names = meta.axis_names
    for k in range(levels):
        level = tuple(-(-n // 2**k) if a in "yx" else n for a, n in zip(names, shape))
        group.create_array(str(k), shape=level, dtype=dtype, dimension_names=list(names))
    group.attrs.update(ngff_attributes(meta, levels, "result", np.dtype(dtype)))
    return group


FIVE_D = ImageMetadata(
    axes=(Axis("t", "second", 2.0), Axis("c"), Axis("z", "micrometer", 1.5, 3.0),
          Axis("y", "micrometer", 0.25, 10.0), Axis("x", "micrometer", 0.5, -4.0)),
    channels=(Channel("DAPI", "0000FF"), Channel("GFP", None)),
    photometric="minisblack", geotiff=GEO)


def test_round_trip_and_validation_5d(tmp_path):
    path = tmp_path / "five.zarr"
    write_group(path, FIVE_D, (2, 2, 3, 40, 30), 3, "uint16")
    image = Image.from_zarr(zarr.open_group(str(path), mode="r"))  # raises unless valid NGFF 0.5
    multiscale = image.attributes.ome.multiscales[0]
    assert [a.name for a in multiscale.axes] == list("tczyx")
    meta, paths = read_ngff_metadata(path)
    assert paths == ["0", "1", "2"]
    assert meta.axes == FIVE_D.axes and meta.geotiff == GEO and meta.photometric == "minisblack"
    assert meta.channels == (Channel("DAPI", "0000FF"), Channel("GFP", "00FF00")) and meta.dropped == ()


def test_level_transforms_follow_mean_pixel_centres(tmp_path):
    group = write_group(tmp_path / "five.zarr", FIVE_D, (1, 2, 1, 40, 30), 3, "uint16")
    dataset = group.attrs["ome"]["multiscales"][0]["datasets"][2]
    scale, translation = (t[t["type"]] for t in dataset["coordinateTransformations"])
    assert scale == pytest.approx([2.0, 1.0, 1.5, 1.0, 2.0])
    # level 2 pixel 0 is the mean of level-0 pixels 0..3: its centre is their centres' mean
    centres_y = [10.0 + 0.25 * i for i in range(4)]
    centres_x = [-4.0 + 0.5 * i for i in range(4)]
    assert translation == pytest.approx([0.0, 0.0, 3.0, np.mean(centres_y), np.mean(centres_x)])
    meta = zarr_metadata(dict(group.attrs), group["2"], "2", "tczyx", "minisblack")
    assert meta.axis("x") == Axis("x", "micrometer", 2.0, np.mean(centres_x))


def test_rgb_cyx_validates_and_ome_zarr_reader_sees_it(tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    meta = ImageMetadata(axes=(Axis("c"), Axis("y", "micrometer", 0.125), Axis("x", "micrometer", 0.125)),
                         photometric="rgb")
    path = tmp_path / "rgb.zarr"
    group = write_group(path, meta, (3, 64, 48), 2, "uint8")
    Image.from_zarr(zarr.open_group(str(path), mode="r"))
    omero = group.attrs["ome"]["omero"]
    Omero.model_validate(omero)
    assert omero["rdefs"]["model"] == "color"
    assert [c["label"] for c in omero["channels"]] == ["R", "G", "B"]
    assert all(c["window"] == {"start": 0, "end": 255, "min": 0, "max": 255} for c in omero["channels"])
    node = next(iter(Reader(parse_url(str(path)))()))
    assert node.metadata["channel_names"] == ["R", "G", "B"]
    assert node.metadata["colormap"] == [[[0, 0, 0], [1, 0, 0]], [[0, 0, 0], [0, 1, 0]], [[0, 0, 0], [0, 0, 1]]]
    assert node.metadata["contrast_limits"] == [[0, 255]] * 3
    scales = [t[0]["scale"] for t in node.metadata["coordinateTransformations"]]
    assert scales == [[1.0, 0.125, 0.125], [1.0, 0.25, 0.25]]
    assert [a.get("unit") for a in node.metadata["axes"]] == [None, "micrometer", "micrometer"]
    assert [d.shape for d in node.data] == [(3, 64, 48), (3, 32, 24)]


def test_omero_defaults_for_grey_and_many_channels():
    grey = ngff_attributes(ImageMetadata(channels=(Channel(),)), 1, "g", np.dtype("float32"))["ome"]["omero"]
    assert grey["rdefs"]["model"] == "greyscale"
    assert grey["channels"] == [{"label": "Channel 0", "color": "FFFFFF", "active": True,
                                 "window": {"start": 0, "end": 1, "min": 0, "max": 1}}]
    many = ngff_attributes(ImageMetadata(channels=(Channel(),) * 12), 1, "m", np.dtype("uint16"))["ome"]["omero"]
    colors = [c["color"] for c in many["channels"]]
    assert len(set(colors)) == 12 and all(len(c) == 6 and int(c, 16) >= 0 for c in colors)
    assert many["channels"][11]["window"]["end"] == 65535 and many["rdefs"]["model"] == "color"
    unknown = ngff_attributes(ImageMetadata(), 1, "u", np.dtype("uint8"))
    assert "omero" not in unknown["ome"] and unknown["lpdask"] == {"photometric": "minisblack"}


def test_own_photometric_overrides_the_hint(tmp_path):
    meta = ImageMetadata(channels=(Channel(),) * 4, photometric="rgba")
    group = write_group(tmp_path / "rgba.zarr", meta, (4, 8, 8), 1, "uint8")
    read = zarr_metadata(dict(group.attrs), group["0"], "0", "cyx", "minisblack")
    assert read.photometric == "rgba"
    assert read.channels == (Channel("R", "FF0000"), Channel("G", "00FF00"), Channel("B", "0000FF"),
                             Channel("A", "FFFFFF"))
