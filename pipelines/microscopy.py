"""Microscopy: a 16-bit multichannel z-stack (OME-TIFF, OME-Zarr, and with the ``microscopy`` extra Zeiss
CZI, Nikon ND2, Leica LIF) to a super-resolved OME-Zarr for napari.

Each channel goes through the network as its own grey image, every z-plane separately, so channel
order, names, colours and the 16-bit range are kept; x and y pixel sizes shrink by the model's scale,
the z step stays. The result is checked with ome-zarr-py's reader (what napari-ome-zarr uses).

    python pipelines/microscopy.py                       # synthetic sample, default model
    python pipelines/microscopy.py --sample zarr         # the sample as OME-Zarr input instead
    python pipelines/microscopy.py cells.ome.tif cells_sr.zarr --model realesr-animevideov3
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tifffile

from common import close, expect, parser, paths, report, run, upscale
from lpdask.samples import write_microscopy, write_microscopy_zarr


def describe_tiff(path: Path) -> dict[str, Any]:
    """Axes sizes, physical sizes and channel names of an OME-TIFF, from tifffile and its OME-XML."""
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        sizes = dict(zip(series.axes.lower().replace("s", "c"), series.shape))
        pixels: dict[str, Any] = {}
        if tif.ome_metadata:
            image = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
            pixels = (image[0] if isinstance(image, list) else image)["Pixels"]
    physical = {a: (float(pixels[f"PhysicalSize{a.upper()}"]), pixels.get(f"PhysicalSize{a.upper()}Unit", "µm"))
                for a in "xyz" if f"PhysicalSize{a.upper()}" in pixels}
    channels = pixels.get("Channel", [])
    channels = channels if isinstance(channels, list) else [channels]
    colors = [_hex((int(c["Color"]) & 0xFFFFFFFF) >> 8) if "Color" in c else None for c in channels]
    return {"sizes": sizes, "physical": physical, "origin": {a: 0.0 for a in physical},
            "channels": [c.get("Name") for c in channels], "colors": colors,
            "levels": [_yx(series.axes.lower(), level.shape) for level in series.levels]}


def describe_bioio(path: Path) -> dict[str, Any]:
    """The same, as bioio reads a microscope's file (CZI, ND2, LIF): first scene; T and Z where they
    have more than one position, the samples of an RGB pixel as channels."""
    from bioio import BioImage

    image = BioImage(str(path))
    dims = dict(zip(image.dims.order, image.dims.shape))
    sizes = {"c": dims.get("S", 1) if dims.get("S", 1) > 1 else dims.get("C", 1)}
    sizes |= {a.lower(): dims[a] for a in "TZ" if dims.get(a, 1) > 1}
    sizes |= {"y": dims["Y"], "x": dims["X"]}
    pixel = image.physical_pixel_sizes
    physical = {a: (float(size), "micrometer") for a, size in (("x", pixel.X), ("y", pixel.Y), ("z", pixel.Z))
                if size and (a != "z" or "z" in sizes)}
    names = [] if dims.get("S", 1) > 1 else [str(n) for n in image.channel_names]
    return {"sizes": sizes, "physical": physical, "origin": {a: 0.0 for a in physical}, "channels": names,
            "colors": [], "levels": [(dims["Y"], dims["X"])]}


def describe_zarr(path: Path) -> dict[str, Any]:
    """The same, read from an OME-Zarr by ome-zarr-py's reader (napari-ome-zarr's)."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    location = parse_url(str(path))
    expect(location is not None, f"{path} does not open as OME-Zarr")
    node = next(iter(Reader(location)()))
    meta = node.metadata
    names = [a["name"] for a in meta["axes"]]
    transforms = {t["type"]: t[t["type"]] for t in meta["coordinateTransformations"][0]}
    space = [k for k, a in enumerate(meta["axes"]) if a.get("type") == "space"]
    physical = {names[k]: (transforms["scale"][k], meta["axes"][k].get("unit")) for k in space}
    origin = {names[k]: transforms.get("translation", [0.0] * len(names))[k] for k in space}
    return {"sizes": dict(zip(names, node.data[0].shape)), "physical": physical, "origin": origin,
            "channels": list(meta.get("channel_names", [])), "levels": [_yx(names, d.shape) for d in node.data],
            "colors": [_hex(int(round(r * 255)) << 16 | int(round(g * 255)) << 8 | int(round(b * 255)))
                       for _, (r, g, b) in meta.get("colormap", [])],
            "dtype": node.data[0].dtype, "node": node}


def check(src: Path, dst: Path) -> dict[str, Any]:
    """Compare input and output with independent readers; raise CheckFailed where they disagree."""
    from lpdask.io.bioimage import claims
    from lpdask.io.locations import Location

    before = (describe_zarr(src) if src.is_dir() else describe_bioio(src) if claims(Location.of(src))
              else describe_tiff(src))
    after = describe_zarr(dst)
    scale = after["sizes"]["x"] / before["sizes"]["x"]
    expect(scale == int(scale) and scale >= 1, f"output width {after['sizes']['x']} is not a multiple of the input's")
    for axis, size in before["sizes"].items():
        wanted = size * scale if axis in "yx" else size
        expect(after["sizes"].get(axis) == wanted,
               f"axis {axis}: output has {after['sizes'].get(axis)}, expected {wanted}")
    if any(before["channels"]):
        expect(after["channels"] == before["channels"], f"channel names {after['channels']} != {before['channels']}")
    if any(before["colors"]):
        expect(after["colors"] == before["colors"], f"channel colours {after['colors']} != {before['colors']}")
    for axis, (size, _unit) in before["physical"].items():
        wanted = size / scale if axis in "yx" else size
        expect(axis in after["physical"] and close(after["physical"][axis][0], wanted),
               f"physical size {axis}: output {after['physical'].get(axis)}, expected {wanted}")
        expect(bool(after["physical"][axis][1]), f"physical size {axis} lost its unit")
        # NGFF positions are pixel centres: the first output pixel's centre lies (s - 1) / 2s input
        # pixels before the first input pixel's, so the two images overlay exactly in napari.
        shift = size * (scale - 1) / (2 * scale) if axis in "yx" else 0.0
        wanted = before["origin"][axis] - shift
        expect(abs(after["origin"].get(axis, 0.0) - wanted) <= 1e-9 * max(1.0, abs(wanted)),
               f"first pixel centre {axis}: output {after['origin'].get(axis)}, expected {wanted}")
    shapes = after["levels"]
    for upper, lower in zip(shapes, shapes[1:]):
        expect(lower == (-(-upper[0] // 2), -(-upper[1] // 2)), f"pyramid levels {shapes} do not halve")
    expect(max(shapes[-1]) <= 256, f"pyramid stops at {shapes[-1]}, above 256 px")
    report(f"{src} -> {dst} (x{scale:g})", [
        ("axes and sizes", _sizes(before["sizes"]), _sizes(after["sizes"])),
        ("physical size", _physical(before["physical"]), _physical(after["physical"])),
        ("first pixel centre", _origin(before["origin"]), _origin(after["origin"])),
        ("channels", before["channels"], after["channels"]),
        ("colours", before["colors"], after["colors"]),
        ("levels (y, x)", before["levels"], shapes),
    ])
    return {"scale": int(scale), "before": before, "after": after}


def _yx(axes: str | list[str], shape: tuple[int, ...]) -> tuple[int, int]:
    return shape[list(axes).index("y")], shape[list(axes).index("x")]


def _hex(rgb: int) -> str:
    return f"{rgb:06X}"


def _sizes(sizes: dict[str, int]) -> str:
    return " ".join(f"{a}={sizes[a]}" for a in "tczyx" if a in sizes)


def _physical(physical: dict[str, tuple[float, str | None]]) -> str:
    units = {"micrometer": "µm", "nanometer": "nm", "millimeter": "mm"}
    return ", ".join(f"{a} {physical[a][0]:.6g} {units.get(physical[a][1] or '', physical[a][1] or '')}".strip()
                     for a in "xyz" if a in physical)


def _origin(origin: dict[str, float]) -> str:
    return ", ".join(f"{a} {origin[a]:.6g}" for a in "xyz" if a in origin)


def main(argv: list[str] | None = None) -> int:
    p = parser("microscopy", __doc__, "OME-Zarr (.zarr)")
    p.add_argument("--sample", choices=("tiff", "zarr"), default="tiff",
                   help="format of the synthetic sample written when no INPUT is given (default: %(default)s)")
    args = p.parse_args(argv)
    sample, name = (write_microscopy, "cells.ome.tif") if args.sample == "tiff" else (write_microscopy_zarr,
                                                                                         "cells.ome.zarr")
    src, dst = paths(args, sample, name, "2 z-planes, DAPI / GFP / mCherry, uint16", ".zarr")
    upscale(src, dst, args)
    check(src, dst)
    print(f"\nopen it in napari:  napari --plugin napari-ome-zarr {dst}")
    return 0


if __name__ == "__main__":
    run(main)
