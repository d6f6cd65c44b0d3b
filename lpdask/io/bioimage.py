"""Microscopy files through bioio (the ``microscopy`` extra): Zeiss CZI, Nikon ND2, Leica LIF, and
any other file a bioio plugin reads when that reader is forced.

bioio describes a scene: its dimensions (T, C, Z, Y, X, and S for the samples of an RGB pixel),
physical pixel sizes in µm, time interval and channel names. ``--series`` picks the scene. Pixels
are read region by region, by the cheapest way the file allows:

* CZI through libCZI (pylibCZIrw, which bioio-czi installs): only the sub-blocks under the
  region are decoded, mosaics included. CZI stores colour as BGR; lpdask reads it as RGB.
* readers that read sub-regions themselves (bioio-nd2) through ``get_image_data``;
* any other reader (bioio-lif) through ``get_image_dask_data``, which decodes every whole plane
  (bioio's chunk) that the region touches;
* LIF images bioio-lif describes wrongly (XZ scans, wavelength sweeps) through liffile (:mod:`.lif`).
"""

from __future__ import annotations

import importlib
import re
import threading
from typing import Any

import numpy as np

from ..errors import LpdaskError
from . import lif
from .boundary import Unreadable, mark, notes_since
from .locations import Location
from .metadata import NGFF_ORDER, Axis, Channel, ImageMetadata, Photometric

PLUGINS = {".czi": "bioio_czi", ".nd2": "bioio_nd2", ".lif": "bioio_lif"}
"""Read through bioio unless another reader is forced, with the plugin each needs."""
EXTRA = "pip install 'lpdask[microscopy]'"
_AXES = {"T": "t", "C": "c", "Z": "z", "Y": "y", "X": "x", "S": "c"}


def claims(path: Location) -> bool:
    """Whether bioio reads ``path`` when no reader is forced."""
    return path.name.lower().endswith(tuple(PLUGINS))


def _bioio(path: Location) -> tuple[Any, Any]:
    """The bioio module and, for a suffix in PLUGINS, that plugin's reader (None: bioio chooses)."""
    suffix = next((s for s in PLUGINS if path.name.lower().endswith(s)), "")
    try:
        bioio = importlib.import_module("bioio")
        plugin = importlib.import_module(PLUGINS[suffix]) if suffix else None
        if suffix == ".czi":
            importlib.import_module("pylibCZIrw.czi")
    except ImportError:
        raise LpdaskError(f"{path}: reading microscopy files needs bioio: {EXTRA}") from None
    return bioio, plugin.Reader if plugin else None


def _image(path: Location, series: int) -> Any:
    """The bioio image of ``path`` set to scene ``series``, or a one-line error."""
    bioio, reader = _bioio(path)
    if not path.is_local:
        raise LpdaskError(f"{path}: lpdask reads microscopy files from local disks only; copy it to one")
    start = mark()
    try:
        image = bioio.BioImage(str(path.local_path), reader=reader)
        scenes = image.scenes
    except Exception as exc:  # plugins raise many types for files they cannot read
        raise Unreadable(f"{path}: bioio cannot read it ({_why(exc, notes_since(start), path)})",
                         noted=True) from None
    if series >= len(scenes):
        raise LpdaskError(f"{path}: --series {series} does not exist (the file has {len(scenes)} "
                          f"scene{'s' if len(scenes) > 1 else ''})")
    image.set_scene(series)
    return image


def _layout(path: Location, image: Any) -> tuple[str, str, dict[str, int]]:
    """lpdask's axes, the bioio dimension each one reads, and the dimensions read at index 0.

    T and Z are kept where they have more than one position, C always; an RGB image's S becomes c.
    """
    inner = dict(zip(image.reader.dims.order, image.reader.dims.shape))
    unknown = sorted(d for d, n in inner.items() if d not in _AXES and d != "M" and n > 1)
    sizes = dict(zip(image.dims.order, image.dims.shape))
    samples = sizes.get("S", 1) > 1
    if unknown or (samples and sizes.get("C", 1) > 1):
        what = f"dimension {', '.join(unknown)}" if unknown else "both samples (S) and channels (C)"
        raise LpdaskError(f"{path}: bioio dimensions {image.reader.dims.order!r} are not supported ({what}); "
                          "lpdask reads T, C or S, Z, Y, X")
    names = "".join(d for d in image.dims.order
                    if d in "YX" or (d in "TZ" and sizes[d] > 1) or d == ("S" if samples else "C"))
    fixed = {d: 0 for d in image.dims.order if d not in names}
    return "".join(_AXES[d] for d in names), names, fixed


def _is_czi(image: Any) -> bool:
    return type(image.reader).__module__.startswith("bioio_czi")


def describe(path: Location, series: int, level: int) -> dict[str, Any]:
    """The :class:`~lpdask.io.sources.Source` fields of scene ``series`` of the file at ``path``."""
    image = _image(path, series)
    if level:
        raise LpdaskError(f"{path}: --level {level} does not exist (lpdask reads microscopy files at full "
                          "resolution only)")
    found = _lif_layout(path, image, series)
    if found is not None:
        return lif.describe(path, series, found, _channel_names(image), _other_scenes(image, series))
    axes, names, _ = _layout(path, image)
    sizes = dict(zip(image.dims.order, image.dims.shape))
    channels = sizes["S"] if "S" in names else sizes.get("C", 1)
    photometric: Photometric = "minisblack"
    if "S" in names and channels in (3, 4):
        photometric = "rgb" if channels == 3 else "rgba"
    if _is_czi(image):
        _czi_scene(path, image)  # refuses a file libCZI and bioio see differently
    output_axes = "".join(a for a in NGFF_ORDER if a in axes or a in "cyx")
    return {"axes": axes, "shape": tuple(sizes[d] for d in names), "dtype": image.dtype,
            "photometric": photometric, "ome": True,
            "meta": _metadata(image, output_axes, channels, photometric, series)}


def _why(exc: Exception, notes: list[tuple[str, str]], path: Location) -> str:
    """What the plugin said: bioio raises "None of the specified readers were able to read this
    image" and logs the plugin's own reason ("... error=<reason>"), which is the one to show."""
    said = next((m.rsplit("error=", 1)[1] for _, m in reversed(notes) if "error=" in m), "")
    said = said or next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    for name in (str(path.local_path), path.name):
        said = said.replace(f"'{name}'", "it").replace(name, "it")
    said = re.sub(r"^.*?does not support the image: it\.?\s*(file is not supported:\s*)?", "", said) or said
    return said if len(said) <= 200 else said[:197] + "..."


def _metadata(image: Any, axes: str, channels: int, photometric: Photometric, series: int) -> ImageMetadata:
    """Physical pixel sizes (µm), the time interval (s) and channel names."""
    sizes: dict[str, tuple[str, float]] = {}
    unread = []
    try:
        physical = image.physical_pixel_sizes
        for name in "zyx":
            size = getattr(physical, name.upper())
            if size is not None and np.isfinite(size) and size > 0:
                sizes[name] = ("micrometer", float(size))
    except Exception:  # plugins raise their own errors for metadata they cannot parse
        unread.append("physical pixel sizes (unreadable)")
    if "t" in axes:
        try:
            interval = image.time_interval
            if interval is not None and interval.total_seconds() > 0:
                sizes["t"] = ("second", interval.total_seconds())
        except Exception:
            unread.append("time interval (unreadable)")
    out_axes = tuple(Axis(a, *sizes[a]) if a in sizes else Axis(a) for a in NGFF_ORDER if a in axes)
    names = [Channel(name) for name in _channel_names(image)] if photometric == "minisblack" else []
    if len(names) != channels:
        names = [Channel()] * channels
    others = _other_scenes(image, series)
    dropped = unread + ([f"other scenes: {', '.join(others)}"] if others else [])
    return ImageMetadata(axes=out_axes, channels=tuple(names), photometric=photometric, dropped=tuple(dropped))


def _channel_names(image: Any) -> list[str]:
    try:
        return [str(name) for name in image.reader.channel_names or ()]
    except Exception:  # plugins raise their own errors for metadata they cannot parse
        return []


def _other_scenes(image: Any, series: int) -> list[str]:
    return [str(s) for k, s in enumerate(image.scenes) if k != series]


def _lif_layout(path: Location, image: Any, series: int) -> lif.Layout | None:
    """A LIF scene's layout where bioio-lif describes it wrongly (:func:`lif.layout`), else None."""
    if not type(image.reader).__module__.startswith("bioio_lif"):
        return None
    try:
        return lif.layout(path, series)
    except (ImportError, LpdaskError):
        raise
    except Exception as exc:  # liffile raises several types for files it cannot parse
        raise LpdaskError(f"{path}: liffile cannot read scene {series} ({type(exc).__name__}: {exc})") from None


def _czi_scene(path: Location, image: Any) -> tuple[int | None, int, int, dict[str, int]]:
    """libCZI's scene index, the scene's top-left corner and each plane dimension's first index."""
    from pylibCZIrw import czi

    try:
        with czi.open_czi(str(path.local_path)) as f:
            rects = f.scenes_bounding_rectangle_no_pyramid
            box = f.total_bounding_box_no_pyramid
    except RuntimeError as exc:
        raise LpdaskError(f"{path}: libCZI cannot read it ({exc})") from None
    if rects and len(rects) != len(image.scenes):
        raise LpdaskError(f"{path}: libCZI finds {len(rects)} scenes, bioio {len(image.scenes)}")
    if rects:
        scene: int | None = sorted(rects)[image.current_scene_index]
        rect = rects[scene]
        x, y, width, height = rect.x, rect.y, rect.w, rect.h
    else:
        scene = None
        x, y = box["X"][0], box["Y"][0]
        width, height = box["X"][1] - x, box["Y"][1] - y
    sizes = dict(zip(image.dims.order, image.dims.shape))
    if (height, width) != (sizes["Y"], sizes["X"]):
        raise LpdaskError(f"{path}: libCZI and bioio disagree on the size of scene {image.current_scene_index} "
                          f"({width} x {height} against {sizes['X']} x {sizes['Y']})")
    return scene, x, y, {d: box.get(d, (0, 1))[0] for d in "TZC"}


class BioArray:
    """A bioio scene indexed like an array over lpdask's axes; reads only the region asked for."""

    def __init__(self, path: Location, series: int, image: Any = None):
        self.path, self.image = path, image if image is not None else _image(path, series)
        self.axes, self.names, self.fixed = _layout(path, self.image)
        self.sizes = dict(zip(self.image.dims.order, self.image.dims.shape))
        self.bgr = _is_czi(self.image) and "S" in self.names
        if _is_czi(self.image):
            self.scene, self.x, self.y, self.first = _czi_scene(path, self.image)
            self._local = threading.local()
            self._read = self._libczi
        elif "M" not in self.image.reader.dims.order and _reads_regions(self.image.reader):
            self._read = self._region
        else:
            self._read = self._planes

    def close(self) -> None:
        close = getattr(self.image, "close", None)
        if close is not None:
            close()

    def __getitem__(self, index: tuple[int | slice, ...]) -> np.ndarray:
        """Integers pick a position (the axis is dropped), slices a range; the result keeps the
        sliced axes in stored order."""
        selection: dict[str, int | slice] = dict(self.fixed)
        order = ""
        for name, item in zip(self.names, index):
            if isinstance(item, slice):  # bioio takes slices with their ends given
                selection[name], order = slice(*item.indices(self.sizes[name])), order + name
            else:
                selection[name] = int(item)
        wanted = selection.get("S", slice(None))
        if self.bgr:
            selection["S"] = slice(0, 3)
        pixels = np.asarray(self._read(order, selection))
        return pixels[..., ::-1][..., wanted] if self.bgr else pixels

    def _region(self, order: str, selection: dict[str, Any]) -> np.ndarray:
        return self.image.get_image_data(order, **selection)

    def _planes(self, order: str, selection: dict[str, Any]) -> np.ndarray:
        return self.image.get_image_dask_data(order, **selection).compute(scheduler="synchronous")

    def _libczi(self, order: str, selection: dict[str, Any]) -> np.ndarray:
        reader = getattr(self._local, "reader", None)
        if reader is None:  # one reader per thread: libCZI readers are not documented thread-safe
            from pylibCZIrw import czi

            reader = self._local.reader = czi.CziReader(str(self.path.local_path))
        sizes = self.sizes
        y0, y1, _ = selection["Y"].indices(sizes["Y"])
        x0, x1, _ = selection["X"].indices(sizes["X"])
        roi = (self.x + x0, self.y + y0, x1 - x0, y1 - y0)
        if any(isinstance(selection.get(d), slice) for d in "TZ"):
            raise ValueError("libCZI reads one T and Z position at a time")
        plane = {d: self.first[d] + selection.get(d, 0) for d in "TZ"}
        if "C" not in order:
            pixels = reader.read(roi=roi, plane={**plane, "C": self.first["C"] + selection.get("C", 0)},
                                 scene=self.scene)
            return pixels if "S" in order else pixels[..., 0]
        channels = range(sizes["C"])[selection["C"]]
        return np.stack([reader.read(roi=roi, plane={**plane, "C": self.first["C"] + c}, scene=self.scene)[..., 0]
                         for c in channels])


def _reads_regions(reader: Any) -> bool:
    """Whether the reader overrides bioio's whole-image ``_read_indexed`` with sub-region reads."""
    from bioio_base.reader import Reader

    return type(reader)._read_indexed is not Reader._read_indexed


def open_bioimage(source: Any) -> BioArray | lif.LifArray:
    """The array a worker reads ``source`` (kind "bioio") through."""
    path = Location.of(source.path)
    image = _image(path, source.series)
    found = _lif_layout(path, image, source.series)
    return lif.LifArray(path, source.series, found) if found is not None else BioArray(path, source.series, image)
