"""xarray in, xarray out for :func:`lpdask.upscale_array`: a DataArray's pixels go through the network
as (y, x, c), and the result comes back as a lazy DataArray with the input's dims, its coordinates at
the new pixel centres, and its attrs, name, nodata encoding and georeferencing (rioxarray) kept.

xarray is an optional dependency (``lpdask[xarray]``): nothing here imports it before a DataArray
comes in.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import LpdaskError, MetadataWarning

if TYPE_CHECKING:
    import dask.array as da
    import xarray

Y_DIMS = ("y", "latitude", "lat")
X_DIMS = ("x", "longitude", "lon")
BAND_DIMS = ("band", "c", "channel", "channels")
ENCODING_KEPT = ("_FillValue", "missing_value", "scale_factor", "add_offset", "dtype", "rasterio_dtype",
                 "grid_mapping")
"""How values are stored; chunk and compression encodings describe the input's store, not the output."""
SPACING_TOLERANCE = 1e-3
"""Largest departure from even spacing of a coordinate, as a fraction of its step (float32 coords)."""


def is_dataarray(image: object) -> bool:
    """Whether ``image`` is an xarray DataArray, without importing xarray (none exists before it is)."""
    xr = sys.modules.get("xarray")
    return xr is not None and isinstance(image, xr.DataArray)


@dataclass(frozen=True)
class Labels:
    """A DataArray's labels, to put back on its upscaled pixels."""

    source: xarray.DataArray
    y: Hashable
    x: Hashable
    band: Hashable | None
    grids: dict[Hashable, tuple[float, float]]
    """The first pixel's outer edge and the spacing of the y and x coordinates, for those dims that have them."""

    def apply(self, pixels: da.Array, scale: int) -> xarray.DataArray:
        """Upscaled (y*s, x*s, c) ``pixels`` as a DataArray shaped and labelled like the source."""
        import xarray as xr

        source = self.source
        dims: tuple[Hashable, ...] = (self.y, self.x, self.band) if self.band is not None else (self.y, self.x)
        data = pixels if self.band is not None else pixels[..., 0]
        coords: dict[Hashable, Any] = {}
        dropped = []
        for name, coord in source.coords.items():
            if name in self.grids:
                edge, step = self.grids[name]
                # pixel j of s times smaller pixels spans edge + [j, j + 1] * step / s
                centres = edge + (np.arange(coord.size * scale) + 0.5) * (step / scale)
                coords[name] = xr.Variable((name,), centres, coord.attrs)
            elif self.y in coord.dims or self.x in coord.dims:
                dropped.append(name)
            elif coord.ndim == 0 and isinstance(coord.attrs.get("GeoTransform"), str):
                attrs = {**coord.attrs, "GeoTransform": _scaled_geotransform(coord.attrs["GeoTransform"], scale)}
                coords[name] = xr.Variable((), coord.values, attrs)
            else:
                coords[name] = coord.variable
        if dropped:
            warnings.warn(f"coordinates {', '.join(map(str, dropped))} dropped: only the y and x dims' own "
                          "coordinates are rescaled", MetadataWarning, stacklevel=3)
        out = xr.DataArray(data, dims=dims, coords=coords, attrs=dict(source.attrs), name=source.name)
        out = out.transpose(*source.dims)
        out.encoding = {key: value for key, value in source.encoding.items() if key in ENCODING_KEPT}
        return _georeferenced(out, self, scale)


def unlabelled(image: Any, chunk: int) -> tuple[Any, Labels | None]:
    """A DataArray's pixels as a (y, x, c) dask array (chunked ``chunk`` pixels a side if they were
    not in dask) and its labels; anything else as it is, with no labels."""
    if not is_dataarray(image):
        return image, None
    y, x, band = _spatial_dims(image.dims)
    grids = {dim: _grid(image.coords[dim].values, dim) for dim in (y, x) if dim in image.coords}
    labels = Labels(image, y, x, band, grids)
    if image.chunks is None:
        image = image.chunk({labels.y: chunk, labels.x: chunk})
    order = (labels.y, labels.x) if labels.band is None else (labels.y, labels.x, labels.band)
    pixels = image.transpose(*order).data
    return (pixels[..., None] if labels.band is None else pixels), labels


def _grid(values: np.ndarray, name: Hashable) -> tuple[float, float]:
    """The outer edge of the first pixel and the spacing of evenly spaced pixel centres ``values``
    (ascending or descending), or a one-line error."""
    hint = f"drop them first (image.drop_vars({str(name)!r}))"
    if values.dtype.kind not in "iuf":
        raise LpdaskError(f"{name} coordinates of type {values.dtype} are not numbers, so they cannot be rescaled; "
                          f"{hint}")
    if len(values) < 2:
        raise LpdaskError(f"{name} has one pixel, so the spacing of its coordinates is unknown; {hint}")
    v = values.astype(np.float64)
    step = (v[-1] - v[0]) / (len(v) - 1)
    if step == 0 or np.abs(np.diff(v) - step).max() > SPACING_TOLERANCE * abs(step):
        raise LpdaskError(f"{name} coordinates are not evenly spaced, so the new pixel centres are unknown; {hint}")
    return float(v[0] - step / 2), float(step)


def _spatial_dims(dims: Sequence[Hashable]) -> tuple[Hashable, Hashable, Hashable | None]:
    """The y, x and band (None: absent) dims among ``dims``, or a one-line error."""
    found = {what: [d for d in dims if d in names] for what, names in
             (("y", Y_DIMS), ("x", X_DIMS), ("band", BAND_DIMS))}
    shown = "(" + ", ".join(map(str, dims)) + ")"
    if not found["y"] or not found["x"]:
        raise LpdaskError(f"DataArray dims {shown} lack a y and an x dim (named y / x, latitude / longitude "
                          "or lat / lon)")
    for what, names in found.items():
        if len(names) > 1:
            raise LpdaskError(f"DataArray dims {shown} have more than one {what} dim: {', '.join(map(str, names))}")
    y, x, band = found["y"][0], found["x"][0], (found["band"] or [None])[0]
    extra = [d for d in dims if d not in (y, x, band)]
    if extra:
        raise LpdaskError(f"DataArray dims {shown}: {', '.join(map(str, extra))} not supported, only y, x and one "
                          f"of {', '.join(BAND_DIMS)}; select or stack the others first (e.g. .isel({extra[0]}=0))")
    return y, x, band


def _scaled_geotransform(text: str, scale: int) -> str:
    """A GDAL GeoTransform string (x0, a, b, y0, d, e) with pixels ``scale`` times smaller, same origin."""
    x0, a, b, y0, d, e = (float(v) for v in text.split())
    return " ".join(str(v) for v in (x0, a / scale, b / scale, y0, d / scale, e / scale))


def _georeferenced(out: xarray.DataArray, labels: Labels, scale: int) -> xarray.DataArray:
    """``out`` with the source's CRS and its transform at pixels ``scale`` times smaller, written the
    rioxarray way, when rioxarray is installed and the source has a CRS."""
    try:
        import rioxarray  # noqa: F401  (registers the .rio accessor)
    except ImportError:
        return out
    from affine import Affine

    source = labels.source.copy(deep=False)
    source.rio.set_spatial_dims(x_dim=labels.x, y_dim=labels.y, inplace=True)
    crs = source.rio.crs
    if crs is None:
        return out
    grid = source.rio.grid_mapping
    out.rio.set_spatial_dims(x_dim=labels.x, y_dim=labels.y, inplace=True)
    out.rio.write_crs(crs, grid_mapping_name=grid, inplace=True)
    out.rio.write_transform(source.rio.transform() @ Affine.scale(1 / scale), grid_mapping_name=grid, inplace=True)
    return out
