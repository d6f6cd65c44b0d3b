"""Tissue only: a foreground mask of a brightfield slide, found as the field finds it or given as a
file, on the cells lpdask looks at the image in (:mod:`lpdask.known`).

Found: each cell's mean colour, its saturation (HSV's S: (max - min) / max), Otsu's threshold over the
cells (stained tissue is saturated, glass is not, as TIAToolbox and histolab threshold it), then
clean-up: small specks removed, small holes filled, and the mask grown by a margin. Given: a label
image (any size: non-zero is tissue, resized to the cells by nearest neighbour) or GeoJSON polygons in
the image's pixels, as QuPath exports annotations.

Output inside the mask is computed exactly (each pixel from the real image around it); outside it
is the slide's background colour (the median colour of the cells outside the mask), and the output
carries the mask as a label image, so nothing there pretends to be the network's.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import LpdaskError
from .io.boundary import reading
from .geometry import dilated

MARGIN = 32
"""Image pixels the found mask is grown by, so tissue at its edge is computed, not painted."""
SPECK = 4
"""Cells: connected pieces of the found mask smaller than SPECK x SPECK are removed, holes smaller filled."""
EXTRA = "lpdask[pathology]"


def _skimage():  # type: ignore[no-untyped-def]
    try:
        import skimage.filters
        import skimage.measure
        import skimage.morphology
        import skimage.draw
    except ImportError:
        raise LpdaskError(f"--tissue needs scikit-image: pip install '{EXTRA}'") from None
    return skimage


def found(means: np.ndarray, cell: int) -> np.ndarray:
    """The tissue mask over cells whose mean colours (rows, columns, 3) are ``means``."""
    skimage = _skimage()
    rgb = means.astype(np.float32)
    top, low = rgb.max(axis=-1), rgb.min(axis=-1)
    saturation = np.where(top > 0, (top - low) / np.maximum(top, 1e-6), 0)
    if np.ptp(saturation) < 1e-3:  # one colour: nothing to tell tissue from glass
        return np.zeros(saturation.shape, bool)
    mask = saturation > skimage.filters.threshold_otsu(saturation)
    mask = _without_specks(skimage.morphology.remove_small_objects, mask)
    mask = _without_specks(skimage.morphology.remove_small_holes, mask)
    return dilated(mask, -(-MARGIN // cell))


def _without_specks(remove: Any, mask: np.ndarray) -> np.ndarray:
    """``remove`` (scikit-image's small objects or holes) for specks under SPECK x SPECK cells; 0.26
    renamed the size to ``max_size`` (at most, not under) and warns on the old name."""
    if "max_size" in inspect.signature(remove).parameters:
        return remove(mask, max_size=SPECK * SPECK - 1)
    return remove(mask, SPECK * SPECK)


def given(path: str | os.PathLike[str], shape: tuple[int, int], cell: int, height: int, width: int) -> np.ndarray:
    """The tissue mask over ``shape`` cells of ``cell`` pixels from a label image or GeoJSON file."""
    where = Path(path)
    if not where.is_file():
        raise LpdaskError(f"--tissue {where}: no such file (give a label image, GeoJSON polygons, or 'auto')")
    if where.suffix.lower() in (".geojson", ".json"):
        return _polygons(where, shape, cell)
    import tifffile

    with reading(f"--tissue {where}", "it as a label image"):
        labels = tifffile.imread(where) if where.suffix.lower() in (".tif", ".tiff") else _picture(where)
    labels = np.asarray(labels)
    if labels.ndim == 3:
        labels = labels.max(axis=-1) if labels.shape[-1] <= 4 else labels.max(axis=0)
    if labels.ndim != 2:
        raise LpdaskError(f"--tissue {where}: a label image must be 2-D; this one is {labels.shape}")
    rows = np.minimum((np.arange(shape[0]) * cell + cell / 2) * labels.shape[0] // height, labels.shape[0] - 1)
    cols = np.minimum((np.arange(shape[1]) * cell + cell / 2) * labels.shape[1] // width, labels.shape[1] - 1)
    return labels[np.ix_(rows.astype(int), cols.astype(int))] != 0


def _picture(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as picture:
        return np.asarray(picture)


def _polygons(path: Path, shape: tuple[int, int], cell: int) -> np.ndarray:
    """GeoJSON polygons (and multipolygons; holes cut out) in image pixels, drawn on the cells."""
    skimage = _skimage()
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise LpdaskError(f"--tissue {path}: not GeoJSON ({exc})") from None
    features = data.get("features", [data]) if isinstance(data, dict) else data if isinstance(data, list) else []
    mask = np.zeros(shape, bool)
    drawn = 0
    for feature in features:
        geometry = feature.get("geometry", feature) if isinstance(feature, dict) else None
        if not isinstance(geometry, dict):
            continue
        kind, coordinates = geometry.get("type"), geometry.get("coordinates")
        polygons = [coordinates] if kind == "Polygon" else coordinates if kind == "MultiPolygon" else []
        if not isinstance(polygons, list) or not all(isinstance(p, list) for p in polygons):
            raise LpdaskError(f"--tissue {path}: a {kind}'s coordinates are not lists of rings")
        for polygon in polygons:
            for k, ring in enumerate(polygon):
                try:
                    points = np.asarray(ring, float)
                except (TypeError, ValueError):
                    points = np.zeros(0)
                if points.ndim != 2 or points.shape[1] < 2 or len(points) < 3 or not np.isfinite(points).all():
                    raise LpdaskError(f"--tissue {path}: a polygon ring is not a list of x, y points")
                # the cells whose centres lie inside
                rr, cc = skimage.draw.polygon(points[:, 1] / cell - 0.5, points[:, 0] / cell - 0.5, shape)
                mask[rr, cc] = k == 0  # the first ring is the outline, the others holes
                drawn += 1
    if not drawn:
        raise LpdaskError(f"--tissue {path}: no Polygon or MultiPolygon in it")
    return mask
