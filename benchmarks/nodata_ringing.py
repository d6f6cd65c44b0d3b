"""Ringing of a nodata border into the valid pixels next to it: the fill lpdask puts under missing
pixels (lpdask.nodata.fill) against a black border, each against the network's output on the
whole scene before its border went missing. The scene and network are the tests' (a 120 x 120
smooth image with a 10-pixel frame missing, the 16-feature 2-block RRDBNet x4, reach 34 px).

    .venv/bin/python benchmarks/nodata_ringing.py

Prints, for the valid pixels within 4, 10 and 34 input pixels of the frame, the mean and largest
absolute error in 8-bit levels.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lpdask import RRDBConfig, RRDBNet  # noqa: E402
from tests.reference import lively, smooth_image, whole_image  # noqa: E402
from tests.test_nodata import BORDER, SCALE, SIDE, filled, scene  # noqa: E402


def main() -> None:
    torch.manual_seed(1)
    net = lively(RRDBNet(RRDBConfig(num_feat=16, num_block=2, num_grow_ch=8)), seed=1)
    image, valid = scene()
    expected = whole_image(net, np.maximum(smooth_image(SIDE, SIDE, seed=5), 1)).astype(float)
    outputs = {"fill": whole_image(net, filled(image, valid)).astype(float),
               "black border": whole_image(net, image).astype(float)}
    low, high = BORDER * SCALE, (SIDE - BORDER) * SCALE
    print("| valid pixels within | fill: mean / max levels | black border: mean / max levels |")
    print("|---|---|---|")
    for band in (4, 10, 34):
        ring = np.zeros(expected.shape[1:], bool)
        ring[low:high, low:high] = True
        ring[low + band * SCALE:high - band * SCALE, low + band * SCALE:high - band * SCALE] = False
        cells = [f"{np.abs(out - expected)[:, ring].mean():.2f} / {np.abs(out - expected)[:, ring].max():.0f}"
                 for out in outputs.values()]
        print(f"| {band} px of the frame | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
