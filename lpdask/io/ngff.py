"""OME-NGFF metadata: read it from OME-Zarr 0.4 and 0.5 inputs, write it for lpdask results.

Coordinates follow NGFF: array index i of an axis lies at ``scale * i + translation``, taken as the
centre of pixel i. Pyramid level k holds ``downscale**k`` x ``downscale**k`` means of level 0,
so its first pixel is centred ``(downscale**k - 1) / 2`` level-0 pixels further along y and x:

    scale_k = scale_0 * downscale**k
    translation_k = translation_0 + (downscale**k - 1) / 2 * scale_0

Every level but level 0 therefore has a translation; level 0 has one where the image has one.
lpdask's own attributes sit beside ``ome`` under ``lpdask``: ``photometric`` and ``geotiff``
(:meth:`GeoTiff.to_json`).
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import zarr

from ..errors import LpdaskError
from .metadata import SPATIAL, Axis, Channel, GeoTiff, ImageMetadata, Photometric

NGFF_VERSION = "0.5"
OWN_KEY = "lpdask"
PHOTOMETRICS = ("rgb", "rgba", "minisblack")

RGBA_LABELS = ("R", "G", "B", "A")
RGBA_COLORS = ("FF0000", "00FF00", "0000FF", "FFFFFF")
PALETTE = ("FF0000", "00FF00", "0000FF", "FF00FF", "00FFFF", "FFFF00", "FF8000", "8000FF")
"""Default colours of channels 0-7 of a many-channel image; later ones step round the hue circle."""

_KNOWN_OME_KEYS = {"version", "multiscales", "omero", "_creator"}
_KNOWN_ATTRS = {"ome", "multiscales", "omero", OWN_KEY, "_ARRAY_DIMENSIONS", "_creator"}


# ---- reading ----------------------------------------------------------------------------------


def zarr_metadata(group_attrs: Mapping[str, Any] | None, array: zarr.Array, array_path: str, axes: str,
                  photometric: Photometric) -> ImageMetadata:
    """The metadata of dataset ``array_path`` of an (OME-)Zarr image, with output axes ``axes``.

    Reads OME-NGFF 0.4 (attributes at the top) and 0.5 (under ``ome``); a bare array or a group
    without ``multiscales`` gives unitless axes of scale 1.
    """
    attrs = dict(group_attrs or {})
    ome = ome_attributes(attrs)
    multiscale, dropped = _multiscale(ome, array_path)
    names = _axis_names(multiscale, array)
    scale, translation = _transform(multiscale, array_path, array.ndim)
    units = {name: unit for name, unit in zip(names or (), _axis_units(multiscale))}
    stored = names or ()
    out_axes = tuple(
        Axis(name, units.get(name), scale[stored.index(name)], translation[stored.index(name)])
        if name in stored else Axis(name)
        for name in axes)
    count = _channel_count(array, names)
    omero = ome.get("omero") if isinstance(ome.get("omero"), Mapping) else {}
    channels = [_read_channel(ch) for ch in omero.get("channels", []) if isinstance(ch, Mapping)]
    if count is not None:
        channels = (channels + [Channel()] * count)[:count]
    dropped += [f"NGFF {key}" for key in _unknown_keys(attrs, ome)]
    if _custom_windows(omero, array.dtype):
        dropped.append("omero window")
    own = attrs.get(OWN_KEY) if isinstance(attrs.get(OWN_KEY), Mapping) else {}
    if own.get("photometric") in PHOTOMETRICS:
        photometric = own["photometric"]
    geotiff = GeoTiff.from_json(own["geotiff"]) if isinstance(own.get("geotiff"), Mapping) else None
    return ImageMetadata(axes=out_axes, channels=tuple(channels), photometric=photometric, geotiff=geotiff,
                         dropped=tuple(dict.fromkeys(dropped)))


def read_ngff_metadata(group_path: str | os.PathLike[str]) -> tuple[ImageMetadata, list[str]]:
    """Level 0's metadata (axes as stored) and the dataset paths, finest first, of an OME-Zarr image."""
    group = zarr.open_group(str(group_path), mode="r")
    attrs = dict(group.attrs)
    check_attributes(attrs, group_path)
    multiscales = ome_attributes(attrs).get("multiscales")
    if not multiscales:
        raise LpdaskError(f"{group_path}: not an OME-Zarr image (no multiscales metadata)")
    paths = [str(d["path"]) for d in multiscales[0]["datasets"]]
    array = group[paths[0]]
    assert isinstance(array, zarr.Array)
    axes = "".join(_axis_names(multiscales[0], array) or ())
    return zarr_metadata(attrs, array, paths[0], axes, "minisblack"), paths


def check_attributes(attrs: Mapping[str, Any], where: object) -> None:
    """Refuse group attributes whose NGFF parts lpdask reads are not shaped as NGFF 0.4/0.5 says:
    multiscales (axes, datasets and their paths, coordinate transformations), omero channels and
    lpdask's own attributes. Parts lpdask does not read are not checked."""
    def refuse(part: str, what: str) -> None:
        raise LpdaskError(f"{where}: invalid OME-NGFF metadata: {part} {what}")

    def transforms(value: Any, part: str) -> None:
        if value is None:
            return
        if not isinstance(value, list) or not all(isinstance(t, Mapping) for t in value):
            refuse(part, "must be a list of objects")
        for k, t in enumerate(value):
            kind = t.get("type")
            if not isinstance(kind, str):
                refuse(f"{part}[{k}].type", "must be a string")
            numbers = t.get(kind)
            if kind in ("scale", "translation") and numbers is not None and not (
                    isinstance(numbers, list) and all(_finite(v) for v in numbers)):
                refuse(f"{part}[{k}].{kind}", "must be a list of finite numbers")

    ome = ome_attributes(attrs)
    multiscales = ome.get("multiscales")
    if multiscales is not None:
        if not isinstance(multiscales, list) or not all(isinstance(m, Mapping) for m in multiscales):
            refuse("multiscales", "must be a list of objects")
        for i, multiscale in enumerate(multiscales):
            part = f"multiscales[{i}]"
            datasets = multiscale.get("datasets")
            if not isinstance(datasets, list) or not datasets:
                refuse(f"{part}.datasets", "must be a list of at least one dataset")
            for j, dataset in enumerate(datasets):
                if not isinstance(dataset, Mapping) or not isinstance(dataset.get("path"), str):
                    refuse(f"{part}.datasets[{j}]", "must be an object with a string path")
                transforms(dataset.get("coordinateTransformations"), f"{part}.datasets[{j}].coordinateTransformations")
            transforms(multiscale.get("coordinateTransformations"), f"{part}.coordinateTransformations")
            axes = multiscale.get("axes")
            if axes is not None and not (isinstance(axes, list) and all(
                    isinstance(a, str) or (isinstance(a, Mapping) and isinstance(a.get("name"), str)) for a in axes)):
                refuse(f"{part}.axes", "must be a list of names or of objects with a string name")
    omero = ome.get("omero")
    if isinstance(omero, Mapping) and not isinstance(omero.get("channels", []), list):
        refuse("omero.channels", "must be a list")
    own = attrs.get(OWN_KEY)
    if isinstance(own, Mapping) and isinstance(own.get("geotiff"), Mapping):
        try:
            GeoTiff.from_json(dict(own["geotiff"]))
        except ValueError as exc:
            raise LpdaskError(f"{where}: invalid {OWN_KEY}.geotiff attribute: {exc}") from None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def ome_attributes(attrs: Mapping[str, Any]) -> Mapping[str, Any]:
    """NGFF 0.5 keeps its metadata under "ome"; 0.4 at the top of the attributes."""
    ome = attrs.get("ome")
    return ome if isinstance(ome, Mapping) else attrs


def _unknown_keys(attrs: Mapping[str, Any], ome: Mapping[str, Any]) -> list[str]:
    """Attributes lpdask does not read (bioformats2raw.layout, plate, image-label, ...)."""
    if ome is attrs:
        return [key for key in attrs if key not in _KNOWN_OME_KEYS | _KNOWN_ATTRS]
    return [key for key in ome if key not in _KNOWN_OME_KEYS] + [key for key in attrs if key not in _KNOWN_ATTRS]


def _multiscale(ome: Mapping[str, Any], array_path: str) -> tuple[Mapping[str, Any], list[str]]:
    """The multiscale holding ``array_path`` (else the first; {} when none)."""
    multiscales = [m for m in ome.get("multiscales") or [] if isinstance(m, Mapping)]
    if not multiscales:
        return {}, []
    holding = [m for m in multiscales if array_path in _paths(m)]
    chosen = (holding or multiscales)[0]
    return chosen, ["other multiscales"] if len(multiscales) > 1 else []


def _paths(multiscale: Mapping[str, Any]) -> list[str]:
    return [str(d.get("path")) for d in multiscale.get("datasets", []) if isinstance(d, Mapping)]


def _axis_names(multiscale: Mapping[str, Any], array: zarr.Array) -> tuple[str, ...] | None:
    """Axis names from the multiscale, else from the array's dimension names."""
    axes = multiscale.get("axes")
    if axes and len(axes) == array.ndim:
        return tuple(str(a["name"] if isinstance(a, Mapping) else a).lower() for a in axes)
    names = getattr(array.metadata, "dimension_names", None) or array.attrs.get("_ARRAY_DIMENSIONS")
    if names and all(names) and len(names) == array.ndim:
        return tuple(str(n).lower()[:1] if str(n).lower() in ("time", "channel") else str(n).lower()
                     for n in names)
    return None


def _axis_units(multiscale: Mapping[str, Any]) -> list[str | None]:
    return [a.get("unit") if isinstance(a, Mapping) and isinstance(a.get("unit"), str) else None
            for a in multiscale.get("axes") or []]


def _transform(multiscale: Mapping[str, Any], array_path: str, ndim: int) -> tuple[list[float], list[float]]:
    """Scale and translation of the dataset composed with the multiscale's own transformations."""
    scale, translation = [1.0] * ndim, [0.0] * ndim
    dataset = next((d for d in multiscale.get("datasets", [])
                    if isinstance(d, Mapping) and str(d.get("path")) == array_path), {})
    for transforms in (dataset.get("coordinateTransformations"), multiscale.get("coordinateTransformations")):
        for transform in transforms or []:
            kind, values = transform.get("type"), transform.get(transform.get("type"))
            if not isinstance(values, Sequence) or len(values) != ndim:
                continue  # identity, or values stored in a file ("path")
            if kind == "scale":
                scale = [s * float(v) for s, v in zip(scale, values)]
                translation = [t * float(v) for t, v in zip(translation, values)]
            elif kind == "translation":
                translation = [t + float(v) for t, v in zip(translation, values)]
    return scale, translation


def _channel_count(array: zarr.Array, names: tuple[str, ...] | None) -> int | None:
    if names is None:
        return 1 if array.ndim == 2 else None
    return int(array.shape[names.index("c")]) if "c" in names else 1


def _read_channel(channel: Mapping[str, Any]) -> Channel:
    label = channel.get("label")
    return Channel(None if label in (None, "") else str(label), _hex_color(channel.get("color")))


def _hex_color(value: Any) -> str | None:
    """"RRGGBB" from "RRGGBB", "#RRGGBB" or "RRGGBBAA"; None for anything else."""
    if not isinstance(value, str):
        return None
    text = value.strip().lstrip("#").upper()
    if len(text) not in (6, 8) or any(ch not in "0123456789ABCDEF" for ch in text):
        return None
    return text[:6]


def _custom_windows(omero: Mapping[str, Any], dtype: np.dtype) -> bool:
    """Whether some channel's display window is other than the full range lpdask writes."""
    full = _window(dtype)
    windows = [ch.get("window") for ch in omero.get("channels", []) if isinstance(ch, Mapping)]
    return any(isinstance(w, Mapping) and any(w.get(k) != full[k] for k in ("start", "end"))
               for w in windows)


# ---- writing ----------------------------------------------------------------------------------


def ngff_attributes(meta: ImageMetadata, levels: int, name: str, dtype: np.dtype,
                    downscale: int = 2) -> dict[str, Any]:
    """The group attributes of a finished result: ``ome`` (NGFF 0.5 multiscales, omero) and ``lpdask``.

    Level k's array has the axes of ``meta`` and ``downscale**k`` times fewer pixels in y and x.
    ``meta.channels`` should hold one entry per channel; without them, an RGB(A) image still
    gets its omero channels, an image of unknown channel count none.
    """
    multiscale = {
        "name": name,
        "axes": [_axis_json(axis) for axis in meta.axes],
        "datasets": [_dataset(meta, k, downscale) for k in range(levels)],
        "type": "mean",
    }
    ome: dict[str, Any] = {"version": NGFF_VERSION, "multiscales": [multiscale]}
    omero = _omero(meta, name, np.dtype(dtype))
    if omero is not None:
        ome["omero"] = omero
    own: dict[str, Any] = {"photometric": meta.photometric}
    if meta.geotiff is not None:
        own["geotiff"] = meta.geotiff.to_json()
    return {"ome": ome, OWN_KEY: own}


def _axis_json(axis: Axis) -> dict[str, str]:
    entry = {"name": axis.name, "type": axis.type}
    if axis.unit:
        entry["unit"] = axis.unit
    return entry


def _dataset(meta: ImageMetadata, level: int, downscale: int) -> dict[str, Any]:
    return {"path": str(level), "coordinateTransformations": _transforms(meta, downscale**level)}


def _transforms(meta: ImageMetadata, factor: int) -> list[dict[str, Any]]:
    """The coordinate transformations of an array whose pixels are ``factor`` x ``factor`` of the
    image's (pixel centres kept in place)."""
    scale = [a.scale * factor if a.name in SPATIAL else a.scale for a in meta.axes]
    translation = [a.translation + (factor - 1) / 2 * a.scale if a.name in SPATIAL else a.translation
                   for a in meta.axes]
    transforms: list[dict[str, Any]] = [{"type": "scale", "scale": scale}]
    if any(translation):
        transforms.append({"type": "translation", "translation": translation})
    return transforms


def _omero(meta: ImageMetadata, name: str, dtype: np.dtype) -> dict[str, Any] | None:
    rgb = meta.photometric in ("rgb", "rgba")
    count = len(meta.channels) or {"rgb": 3, "rgba": 4}.get(meta.photometric, 0)
    if not count:
        return None
    given = list(meta.channels) + [Channel()] * (count - len(meta.channels))
    window = _window(dtype)
    channels = [{
        "label": channel.label or (RGBA_LABELS[k] if rgb and k < 4 else f"Channel {k}"),
        "color": _hex_color(channel.color) or _default_color(k, count, rgb),
        "window": dict(window),
        "active": True,
    } for k, channel in enumerate(given)]
    model = "greyscale" if count == 1 else "color"
    return {"name": name, "channels": channels, "rdefs": {"model": model}}


def _window(dtype: np.dtype) -> dict[str, float]:
    """The whole range of ``dtype`` (0 to 1 for floats) as an omero window."""
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        low, high = float(info.min), float(info.max)
    else:
        low, high = 0.0, 1.0
    return {"start": low, "end": high, "min": low, "max": high}


def _default_color(index: int, count: int, rgb: bool) -> str:
    if rgb and index < 4:
        return RGBA_COLORS[index]
    if count == 1:
        return "FFFFFF"
    if index < len(PALETTE):
        return PALETTE[index]
    hue = (index * 0.618033988749895) % 1.0  # golden-ratio steps keep later hues apart
    return "".join(f"{round(v * 255):02X}" for v in colorsys.hsv_to_rgb(hue, 1.0, 1.0))


def label_attributes(meta: ImageMetadata, name: str, factor: int, colour: str = "00FF0080") -> dict[str, Any]:
    """The NGFF attributes of a label image ``name`` of the image ``meta`` describes, one level whose
    pixels are ``factor`` x ``factor`` of the image's (value 1 drawn in ``colour``, RRGGBBAA)."""
    rgba = [int(colour[k:k + 2], 16) for k in range(0, 8, 2)]
    return {"ome": {
        "version": NGFF_VERSION,
        "multiscales": [{"name": name, "axes": [_axis_json(axis) for axis in meta.axes],
                         "datasets": [{"path": "0", "coordinateTransformations": _transforms(meta, factor)}]}],
        "image-label": {"version": NGFF_VERSION, "colors": [{"label-value": 1, "rgba": rgba}],
                        "source": {"image": "../../"}},
    }}
