"""How an image's channels go through the network, as Real-ESRGAN's whole-image inference does it.

An image is run as one or more **passes**, each an image of the network's own channel count. An RGB
network (3 channels in and out) takes RGB as itself and a grey channel copied to R, G and B, brought
back by ITU-R 601 luma; a grey network (1 channel) takes every channel, R, G and B included, as its
own grey image. Alpha goes as a grey image (or is resized without the network). Microscopy and
multi-band images run each channel as its own grey pass, so channel order and count are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .errors import LpdaskError
from .io.metadata import Photometric
from .options import ALPHA_MODES, CHANNEL_MODES, AlphaMode, ChannelMode


LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass(frozen=True)
class Pass:
    """One run over the image: input channels ``channels`` in, the same output channels out.

    ``kind`` is "rgb" (3 channels through an RGB network), "grey" (1 channel through an RGB network
    as RGB, back by luma), "mono" (1 channel through a 1-channel network) or "nearest" / "bilinear"
    (1 channel resized, no network).
    """

    kind: str
    channels: tuple[int, ...]

    @property
    def uses_network(self) -> bool:
        return self.kind in ("rgb", "grey", "mono")

    @property
    def as_is(self) -> bool:
        """Whether the channels go through the network as themselves (no copies, no luma)."""
        return self.kind in ("rgb", "mono")

    @property
    def width(self) -> int:
        """Channels of the image this pass hands its stages."""
        return 3 if self.kind == "grey" else len(self.channels)

    def to_network(self, pixels: np.ndarray) -> np.ndarray:
        """(c, h, w) values of all channels -> this pass's network input (3 or 1, h, w)."""
        whole = self.channels == tuple(range(pixels.shape[0]))
        picked = pixels if whole else pixels[list(self.channels)]  # no copy when it is all of them
        if self.kind == "grey":
            return np.repeat(picked, 3, axis=0)
        return picked

    def from_network(self, values: np.ndarray) -> np.ndarray:
        """(3 or 1, h, w) output values -> (len(channels), h, w); grey is clamped to [0, 1] before
        its luma, as Real-ESRGAN does (other kinds are clamped by :func:`lpdask.pixels.from_unit`)."""
        if self.kind == "grey":
            return np.tensordot(LUMA, np.clip(values, 0, 1), axes=1)[None].astype(np.float32)
        return values

    def describe(self) -> str:
        names = ",".join(str(c) for c in self.channels)
        return {"rgb": f"RGB {names}", "grey": f"grey {names}", "mono": f"channel {names}"}.get(
            self.kind, f"{self.kind} resize {names}")


class Channelled(Protocol):
    """What :func:`passes` reads of a network: the image channels it takes and gives."""

    @property
    def in_channels(self) -> int: ...

    @property
    def out_channels(self) -> int: ...


def network_width(net: Channelled | None) -> int:
    """The image channels ``net`` takes and gives: 3 (RGB; None stands for such a network) or 1
    (grey). Other counts, or fewer or more out than in, are refused."""
    if net is None:
        return 3
    taken, given = net.in_channels, net.out_channels
    if taken != given or taken not in (1, 3):
        raise LpdaskError(f"the model takes {taken} image channel{'s' if taken != 1 else ''} and gives {given}: "
                          "lpdask runs models of 3 (RGB) or 1 (grey) channels in and as many out")
    return taken


def photometric_of(channels: int, mode: ChannelMode, hint: Photometric) -> Photometric:
    """Resolve ``--channels``: "auto" follows what the input says (``hint``) and the count."""
    if mode == "auto":
        if hint == "rgb" and channels == 3:
            return "rgb"
        if hint == "rgba" and channels == 4:
            return "rgba"
        return "minisblack"
    if mode == "rgb" and channels != 3:
        raise LpdaskError(f"--channels rgb needs 3 channels, the input has {channels}")
    if mode == "rgba" and channels != 4:
        raise LpdaskError(f"--channels rgba needs 4 channels, the input has {channels}")
    if mode == "separate":
        return "minisblack"
    if mode not in CHANNEL_MODES:
        raise LpdaskError(f"unknown --channels {mode!r} (use {', '.join(CHANNEL_MODES)})")
    return mode  # type: ignore[return-value]


def passes(channels: int, photometric: Photometric, alpha: AlphaMode = "network",
           net: Channelled | None = None) -> list[Pass]:
    """The passes that make up one plane of the image through ``net`` (None: an RGB network)."""
    if alpha not in ALPHA_MODES:
        raise LpdaskError(f"unknown --alpha {alpha!r} (use {', '.join(ALPHA_MODES)})")
    grey = "grey" if network_width(net) == 3 else "mono"
    colour = [Pass("rgb", (0, 1, 2))] if grey == "grey" else [Pass(grey, (c,)) for c in range(3)]
    if photometric == "rgb":
        return colour
    if photometric == "rgba":
        return [*colour, Pass(grey if alpha == "network" else alpha, (3,))]
    return [Pass(grey, (c,)) for c in range(channels)]
