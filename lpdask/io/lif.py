"""Leica LIF images that bioio-lif describes wrongly, read through liffile (the library bioio-lif
reads with): XZ line scans, whose frames are Z x X, and LAS X wavelength sweeps, whose emission
(λ) or excitation (Λ) wavelength dimension bioio-lif drops.

liffile names every dimension of an image; a frame is the innermost two (and S, the samples of an
RGB pixel). The frame's rows become lpdask's y and its columns x, whatever they measure (an XZ
scan's rows are Z); T is t; the spatial dimension outside the frame (Z, or Y in a stack of XZ
scans) is z; C and the wavelengths are channels (C outer), each upscaled as its own grey image.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import LpdaskError
from .locations import Location
from .metadata import NGFF_ORDER, Axis, Channel, ImageMetadata, Photometric

SPATIAL = "ZYX"
WAVELENGTHS = {"λ": "emission", "Λ": "excitation"}
CHANNEL_DIMS = ("C", *WAVELENGTHS)
_BIOIO_DIMS = set("TCZYXMS")


@dataclass(frozen=True)
class Layout:
    """Which liffile dimensions each lpdask axis reads: ``dims["y"]`` the frame's rows, ``dims["c"]``
    the channel dimensions folded into c (outer first; "S" for RGB samples)."""

    dims: dict[str, str]
    sizes: dict[str, int]

    @property
    def axes(self) -> str:
        """The array's axes: planes, then c, y, x (y, x, c for RGB samples, as a frame holds them)."""
        planes = "".join(a for a in "tz" if a in self.dims)
        return planes + ("yxc" if self.rgb else "cyx")

    @property
    def rgb(self) -> bool:
        return self.dims["c"] == "S"

    @property
    def channel_sizes(self) -> tuple[int, ...]:
        return tuple(self.sizes.get(d, 1) for d in self.dims["c"]) or (1,)

    def shape(self) -> tuple[int, ...]:
        return tuple(int(np.prod(self.channel_sizes)) if a == "c" else self.sizes[self.dims[a]] for a in self.axes)


def _open(path: Location) -> Any:
    import liffile

    return liffile.LifFile(str(path.local_path))


def layout(path: Location, scene: int) -> Layout | None:
    """How lpdask reads scene ``scene``; None where bioio-lif describes it right (Y x X frames, no
    dimension it cannot name); one line for what neither can read."""
    with _open(path) as lif:
        image = lif.images[scene]
        sizes, frame = dict(image.sizes), tuple(image.frames.frame_dims)
    if frame in (("Y", "X"), ("Y", "X", "S")) and set(sizes) <= _BIOIO_DIMS:
        return None
    unknown = [d for d in sizes if d not in (*SPATIAL, "T", "S", *CHANNEL_DIMS)]
    rows, columns = frame[:2]
    if unknown or rows not in SPATIAL or columns not in SPATIAL:
        what = f"dimension {', '.join(unknown)}" if unknown else f"frames of {rows} x {columns}"
        raise LpdaskError(f"{path}: Leica LIF dimensions {''.join(sizes)!r} are not supported ({what}); lpdask "
                          "reads frames of two spatial dimensions with T, C, Z and wavelength (λ, Λ) planes")
    channels = "".join(d for d in sizes if d in CHANNEL_DIMS)
    if "S" in sizes and channels:
        raise LpdaskError(f"{path}: Leica LIF dimensions {''.join(sizes)!r} are not supported (RGB samples "
                          f"and channels {channels}); lpdask reads one or the other")
    dims = {"y": rows, "x": columns, "c": "S" if "S" in sizes else channels}
    if "T" in sizes:
        dims["t"] = "T"
    depth = [d for d in SPATIAL if d in sizes and d not in frame]
    if depth:
        dims["z"] = depth[0]
    return Layout(dims, sizes)


def describe(path: Location, scene: int, found: Layout, names: list[str], others: list[str]) -> dict[str, Any]:
    """The :class:`~lpdask.io.sources.Source` fields of scene ``scene``; ``names``: bioio's channel
    names (used where there is one per C), ``others``: the other scenes' names."""
    with _open(path) as lif:
        image = lif.images[scene]
        dtype, coords = image.dtype, image.coords
    shape = found.shape()
    channels = shape[found.axes.index("c")]
    photometric: Photometric = "minisblack"
    if found.rgb and channels in (3, 4):
        photometric = "rgb" if channels == 3 else "rgba"
    axes = tuple(_axis(a, found.dims.get(a), coords) for a in NGFF_ORDER if a in found.axes)
    dropped = [f"axis names (the {found.dims['y']} x {found.dims['x']} frames are read as y x x)"] \
        if found.dims["y"] != "Y" or found.dims["x"] != "X" else []
    dropped += [f"other scenes: {', '.join(others)}"] if others else []
    meta = ImageMetadata(axes=axes, channels=_channels(found, coords, names), photometric=photometric,
                         dropped=tuple(dropped))
    return {"axes": found.axes, "shape": shape, "dtype": np.dtype(dtype), "photometric": photometric, "ome": True,
            "meta": meta}


def _axis(name: str, dim: str | None, coords: dict[str, np.ndarray]) -> Axis:
    """An axis with liffile's step (metres, seconds) as µm or s."""
    values = coords.get(dim) if dim is not None else None
    if values is None or len(values) < 2 or name == "c":
        return Axis(name)
    step = abs(float(values[-1] - values[0])) / (len(values) - 1)
    if not np.isfinite(step) or step <= 0:
        return Axis(name)
    return Axis(name, "second", step) if dim == "T" else Axis(name, "micrometer", step * 1e6)


def _channels(found: Layout, coords: dict[str, np.ndarray], names: list[str]) -> tuple[Channel, ...]:
    """One label per channel: bioio's C name and the wavelength, e.g. "Green emission 550 nm"."""
    if found.rgb:
        return (Channel(),) * found.channel_sizes[0]
    parts: list[list[str]] = [[]]
    for dim in found.dims["c"]:
        size = found.sizes[dim]
        if dim == "C":
            labels = [str(n) for n in names] if len(names) == size else [""] * size
        else:
            labels = [f"{WAVELENGTHS[dim]} {float(nm) * 1e9:g} nm" for nm in coords.get(dim, [np.nan] * size)]
        parts = [p + [label] for p in parts for label in labels]
    return tuple(Channel(" ".join(p for p in part if p) or None) for part in parts)


class LifArray:
    """A LIF scene indexed like an array over ``layout.axes``; reads the whole frames a region
    touches (LIF frames are stored uncompressed, one after another)."""

    def __init__(self, path: Location, scene: int, found: Layout):
        self.path, self.scene, self.layout = path, scene, found
        self._local = threading.local()
        self._files: list[Any] = []

    def _image(self) -> Any:
        image = getattr(self._local, "image", None)
        if image is None:  # one open file per thread: liffile reads through one file position
            self._local.file = _open(self.path)
            self._files.append(self._local.file)
            image = self._local.image = self._local.file.images[self.scene]
        return image

    def close(self) -> None:
        """Close the file of every thread that read."""
        while self._files:
            self._files.pop().close()

    def __getitem__(self, index: tuple[int | slice, ...]) -> np.ndarray:
        """Integers pick a position (the axis is dropped), slices a range; sliced axes keep their order."""
        found, image = self.layout, self._image()
        wanted = dict(zip(found.axes, index))
        fixed = {found.dims[a]: int(wanted.get(a, 0)) for a in "tz" if a in found.dims}
        rows, columns = wanted.get("y", slice(None)), wanted.get("x", slice(None))
        if found.rgb:
            return image.frame(**fixed)[rows, columns, wanted.get("c", slice(None))]
        count = int(np.prod(found.channel_sizes))
        channel = wanted.get("c", slice(None))
        picked = range(count)[channel] if isinstance(channel, slice) else [int(channel)]
        planes = []
        for k in picked:
            position = dict(zip(found.dims["c"], np.unravel_index(k, found.channel_sizes)))
            planes.append(image.frame(**fixed, **{d: int(i) for d, i in position.items()})[rows, columns])
        return np.stack(planes) if isinstance(channel, slice) else planes[0]
