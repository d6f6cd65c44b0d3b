"""Pathology with the Python API: super-resolve level 0 of an Aperio SVS-like slide into an OME-Zarr,
then export it as a pyramidal OME-TIFF (SubIFD pyramid, OME physical size = MPP / scale) that
QuPath opens; the Zarr stays for napari or further Dask work.

``lpdask.upscale(slide, "x.ome.tif")`` does both steps at once (``pipelines/pathology.py``); going
through the Zarr keeps a result that can be exported again, to other places, without rerunning the
network. ``level=`` picks a pyramid level of the slide instead of level 0.

Run: ``.venv/bin/python examples/pathology.py`` (writes pathology-output/).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tifffile

import lpdask
from lpdask.export import export

from lpdask.samples import write_pathology


def main(out: Path = Path("pathology-output"), model: str | Path | None = None) -> dict[str, Any]:
    out.mkdir(exist_ok=True)
    slide = write_pathology(out / "slide.svs")  # RGB, JPEG tiles, 96 x 128 at 0.499 µm, 3 levels
    result = out / "slide_sr.zarr"
    print(lpdask.upscale(slide, result, model=model, chunk=48, level=0, overwrite=True))
    tiff = export(result, out / "slide_sr.ome.tif", overwrite=True)

    with tifffile.TiffFile(tiff) as tif:
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
        found = {"path": tiff, "levels": [level.shape for level in tif.series[0].levels],
                 "mpp": float(pixels["PhysicalSizeX"]), "unit": pixels["PhysicalSizeXUnit"]}
    print(f"wrote {tiff}: levels {found['levels']}, {found['mpp']} {found['unit']} per pixel")
    return found


if __name__ == "__main__":
    main()
