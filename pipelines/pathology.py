"""Pathology: one level of a pyramidal whole-slide image (Aperio SVS, NDPI, OME-TIFF, and with the
``pathology`` extra every format OpenSlide reads: MRXS, SCN, BIF, VMS, ...) to a super-resolved
pyramidal OME-TIFF for QuPath.

The RGB level goes through the network as one RGB image; the output is a tiled BigTIFF with its
pyramid in SubIFDs (the OME-TIFF layout QuPath and Bio-Formats read) and an OME-XML physical pixel
size of the input's (Aperio ``MPP``, OME PhysicalSize or resolution tags) divided by the scale.
Checked with tifffile.

    python pipelines/pathology.py                        # synthetic SVS-like sample, default model
    python pipelines/pathology.py slide.svs slide_sr.ome.tif --level 1 --model realesr-animevideov3
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tifffile

from common import close, expect, parser, paths, report, run, upscale
from lpdask.samples import write_pathology

MICRONS = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


def microns_per_pixel(tif: tifffile.TiffFile) -> float | None:
    """Level 0's pixel size in µm: Aperio MPP, else OME-XML PhysicalSizeX, else resolution in cm/mm/µm."""
    page = tif.pages.first
    description = page.description or ""
    if description.startswith("Aperio"):
        for item in description.split("|")[1:]:
            key, _, value = item.partition("=")
            if key.strip() == "MPP":
                return float(value)
    if tif.is_ome and tif.ome_metadata:
        image = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
        pixels = (image[0] if isinstance(image, list) else image)["Pixels"]
        if "PhysicalSizeX" in pixels:
            return float(pixels["PhysicalSizeX"]) * MICRONS[pixels.get("PhysicalSizeXUnit", "µm")]
    per_unit = {3: 1e4, 4: 1e3, 5: 1.0}.get(int(page.resolutionunit))
    if per_unit is not None and page.resolution[0] > 0:
        return per_unit / page.resolution[0]
    return None


def describe(path: Path) -> dict[str, Any]:
    """Pyramid level shapes (y, x), pixel size, layout of a slide, as tifffile reads them."""
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes = series.axes
        page = series.keyframe
        return {
            "format": "OME-TIFF" if tif.is_ome else "Aperio SVS" if tif.is_svs else "TIFF",
            "levels": [(level.shape[axes.index("Y")], level.shape[axes.index("X")]) for level in series.levels],
            "mpp": microns_per_pixel(tif),
            "samples": page.samplesperpixel,
            "dtype": series.dtype,
            "tile": (page.tilelength, page.tilewidth),
            "compression": page.compression.name,
            "subifds": len(page.subifds or ()),
            "other series": [s.name for s in tif.series[1:]],
        }


def describe_slide(path: Path) -> dict[str, Any]:
    """The same, as OpenSlide reads a whole-slide file (MRXS, SCN, BIF, ...): RGB, 8-bit."""
    import numpy as np
    import openslide

    with openslide.OpenSlide(str(path)) as slide:
        mpp = slide.properties.get(openslide.PROPERTY_NAME_MPP_X)
        return {
            "format": f"OpenSlide {slide.detect_format(str(path))}",
            "levels": [(h, w) for w, h in slide.level_dimensions],
            "mpp": float(mpp) if mpp else None,
            "samples": 3,
            "dtype": np.dtype(np.uint8),
            "tile": (0, 0),
            "compression": "",
            "subifds": 0,
            "other series": sorted(slide.associated_images),
        }


def check(src: Path, dst: Path, level: int = 0) -> dict[str, Any]:
    """Compare input and output with tifffile (OpenSlide for the input where lpdask reads it
    through OpenSlide); raise CheckFailed where they disagree."""
    from lpdask.io.locations import Location
    from lpdask.io.slides import claims

    before = describe_slide(src) if claims(Location.of(src)) else describe(src)
    after = describe(dst)
    height, width = before["levels"][level]
    out_h, out_w = after["levels"][0]
    scale = out_w / width
    expect(scale == int(scale) and out_h == height * scale,
           f"output {out_h}x{out_w} is not a multiple of {height}x{width}")
    scale = int(scale)
    expect(after["format"] == "OME-TIFF", "output is not an OME-TIFF")
    expect(after["samples"] == before["samples"] and after["dtype"] == before["dtype"],
           f"output has {after['samples']} x {after['dtype']} samples, input {before['samples']} x {before['dtype']}")
    levels = after["levels"]
    expect(len(levels) >= 2 or max(levels[0]) <= 256, f"no pyramid: levels {levels}")
    for upper, lower in zip(levels, levels[1:]):
        expect(lower == (-(-upper[0] // 2), -(-upper[1] // 2)), f"pyramid levels {levels} do not halve")
    expect(after["subifds"] == len(levels) - 1, f"{after['subifds']} SubIFDs for {len(levels)} levels")
    expect(after["tile"][0] > 0, "output is not tiled")
    mpp = None
    if before["mpp"] is not None:
        mpp = before["mpp"] * before["levels"][0][1] / width
        expect(after["mpp"] is not None and close(after["mpp"], mpp / scale),
               f"output pixel size {after['mpp']} µm, expected {mpp} / {scale}")
    report(f"{src} -> {dst} (level {level}, x{scale})", [
        ("format", before["format"], after["format"]),
        ("levels (y, x)", before["levels"], levels),
        ("pixel size (µm)", mpp, after["mpp"]),
        ("samples, type", (before["samples"], str(before["dtype"])), (after["samples"], str(after["dtype"]))),
        ("tiles, compression", (before["tile"], before["compression"]), (after["tile"], after["compression"])),
        ("pyramid in SubIFDs", before["subifds"], after["subifds"]),
        ("other series", before["other series"], after["other series"]),
    ])
    return {"scale": scale, "before": before, "after": after}


def main(argv: list[str] | None = None) -> int:
    p = parser("pathology", __doc__, "OME-TIFF (.ome.tif)")
    p.add_argument("--level", type=int, default=0, help="pyramid level of the input to upscale (default: 0)")
    args = p.parse_args(argv)
    src, dst = paths(args, write_pathology, "slide.svs", "Aperio SVS-like, JPEG RGB, 3 levels, MPP 0.499", ".ome.tif")
    expect(dst.name.lower().endswith((".ome.tif", ".ome.tiff")), f"output {dst} should be an .ome.tif")
    upscale(src, dst, args, level=args.level)
    check(src, dst, args.level)
    print(f"\nopen it in QuPath (File > Open, Bio-Formats reads the OME-TIFF pyramid): {dst}")
    return 0


if __name__ == "__main__":
    run(main)
