"""Ringing of a nodata border into the valid pixels next to it: the fill lpdask puts under missing
pixels (lpdask.nodata.fill) against a black border, each against the network's output on the
whole scene before its border went missing. The scene and network are those of
tests/test_nodata.py: a 120 x 120 smooth image with a 10-pixel frame missing, the 16-feature
2-block RRDBNet x4 (growth 8, lively, seed 1; reach 34 px).

    .venv/bin/python -m benchmarks.nodata_ringing

Prints, for the valid pixels within 4, 10 and 34 input pixels of the frame, the mean and largest
absolute error in 8-bit levels.
"""

from __future__ import annotations

import numpy as np

from lpdask.nodata import fill
from lpdask.samples import smooth_image

from .common import network, table, whole_image

SIDE, BORDER, SCALE = 120, 10, 4


def main() -> None:
    net = network(num_feat=16, num_block=2, num_grow_ch=8, seed=1)
    truth = np.maximum(smooth_image(SIDE, SIDE, seed=5), 1)  # no zero inside: zero marks nodata
    valid = np.zeros((SIDE, SIDE), bool)
    valid[BORDER:-BORDER, BORDER:-BORDER] = True
    image = np.where(valid[..., None], truth, 0).astype(truth.dtype)
    filled = np.clip(np.rint(fill(image, np.broadcast_to(valid[..., None], image.shape))), 0, 255).astype(np.uint8)
    expected = whole_image(net, truth)[0].astype(float)
    outputs = [whole_image(net, filled)[0].astype(float), whole_image(net, image)[0].astype(float)]
    low, high = BORDER * SCALE, (SIDE - BORDER) * SCALE
    rows = []
    for band in (4, 10, 34):
        ring = np.zeros(expected.shape[1:], bool)
        ring[low:high, low:high] = True
        ring[low + band * SCALE:high - band * SCALE, low + band * SCALE:high - band * SCALE] = False
        errors = [np.abs(out - expected)[:, ring] for out in outputs]
        rows.append([f"{band} px of the frame", *(f"{e.mean():.2f} / {e.max():.0f}" for e in errors)])
    print("\n".join(table(["valid pixels within", "fill: mean / max levels", "black border: mean / max levels"], rows)))


if __name__ == "__main__":
    main()
