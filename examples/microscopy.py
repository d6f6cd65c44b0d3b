"""Microscopy with the Python API: a 16-bit, 3-channel z-stack stored as OME-Zarr (written by
ome-zarr-py) super-resolved into an OME-Zarr that napari opens, with its channel names, colours and
physical pixel sizes (x and y divided by the model's scale) carried.

Every channel of every z-plane goes through the network as its own grey image, so a 16-bit channel
keeps its range and nothing mixes across channels. The full pipeline, with checks, is
``pipelines/microscopy.py``.

Run: ``.venv/bin/python examples/microscopy.py`` (writes microscopy-output/; about a minute with the
default model on 2 CPU cores).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ome_zarr.io import parse_url
from ome_zarr.reader import Reader

import lpdask
from lpdask.samples import write_microscopy_zarr


def main(out: Path = Path("microscopy-output"), model: str | Path | None = None) -> dict[str, Any]:
    out.mkdir(exist_ok=True)
    src = write_microscopy_zarr(out / "cells.ome.zarr")  # (c, z, y, x) = (3, 2, 80, 80), 0.325 µm pixels
    dst = out / "cells_sr.zarr"
    print(lpdask.upscale(src, dst, model=model, chunk=48, overwrite=True))

    image = next(iter(Reader(parse_url(str(dst)))()))  # what napari-ome-zarr does
    scale = next(t["scale"] for t in image.metadata["coordinateTransformations"][0] if t["type"] == "scale")
    result = {"channels": image.metadata["channel_names"], "axes": [a["name"] for a in image.metadata["axes"]],
              "scale": scale, "shapes": [tuple(level.shape) for level in image.data], "path": dst}
    print(f"channels {result['channels']}, axes {result['axes']}, pixel size {scale}, levels {result['shapes']}")
    print(f"view: napari --plugin napari-ome-zarr {dst}")
    return result


if __name__ == "__main__":
    main()
