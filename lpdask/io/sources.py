"""Open TIFF and Zarr inputs lazily and read windows of them; nothing reads a whole image.

An input is a stack of **planes** (one per t and z position) of (y, x, c) pixels. Axes come from
the file's metadata where it has some (tifffile's series axes, OME-NGFF axes, Zarr dimension
names), else from the shape: (y, x), (y, x, c) with c <= 4, or (c, y, x). A palette (colour-mapped)
TIFF is read as the RGB image its colour map makes of it.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import os
import threading
from collections import OrderedDict
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import tifffile
import zarr

from ..chunks import Box
from ..errors import LpdaskError
from ..pixels import check_dtype
from .boundary import Unreadable, reading
from .locations import Location, find_input
from .metadata import NGFF_ORDER, ImageMetadata, Photometric
from .ngff import check_attributes, ome_attributes, zarr_metadata

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_TIFF_AXES = {"Y": "y", "X": "x", "S": "c", "C": "c", "Z": "z", "T": "t"}
PLANE_AXES = ("t", "z")


@dataclass(frozen=True)
class Source:
    """A picklable description of an input image; each process opens the file itself."""

    path: str
    kind: str  # "tiff", "zarr", "openslide" (io.slides) or "bioio" (io.bioimage)
    array_path: str  # zarr: the array inside the store ("" for a bare array)
    axes: str  # the stored array's axes, each one of t, c, z, y, x
    shape: tuple[int, ...]
    dtype: np.dtype
    photometric: Photometric = "minisblack"
    """What the input says its channels are (TIFF photometric and extra samples, lpdask's own
    attributes; a plain 3- or 4-channel array counts as RGB / RGBA)."""
    series: int = 0
    level: int = 0
    ome: bool = False
    palette: bool = False
    """The file stores indices into a colour map; ``read`` looks them up, and ``axes``, ``shape`` and
    ``dtype`` describe the colours (the last axis, c, is not stored)."""
    meta: ImageMetadata = field(default_factory=ImageMetadata, compare=False, hash=False)
    stamp: tuple[object, ...] = ()
    """The input's :func:`stamp` when it was described: a file replaced since then is another input,
    never read through this one's open handle."""
    window: Box | None = None
    """The part of the image this source shows (:meth:`cropped`); None for all of it. Its height,
    width and reads are the window's."""

    @property
    def height(self) -> int:
        return self.window.shape[0] if self.window else self.shape[self.axes.index("y")]

    @property
    def width(self) -> int:
        return self.window.shape[1] if self.window else self.shape[self.axes.index("x")]

    def cropped(self, box: Box) -> Source:
        """This image's part ``box`` (in this source's pixels) as a source of its own."""
        outer = self.window or Box(0, self.height, 0, self.width)
        return replace(self, window=Box(outer.y0 + box.y0, outer.y0 + box.y1, outer.x0 + box.x0, outer.x0 + box.x1))

    def in_image(self, box: Box) -> Box:
        """``box`` of this source in the pixels of the whole stored image."""
        w = self.window
        return box if w is None else Box(box.y0 + w.y0, box.y1 + w.y0, box.x0 + w.x0, box.x1 + w.x0)

    @property
    def channels(self) -> int:
        return self.shape[self.axes.index("c")] if "c" in self.axes else 1

    @property
    def plane_axes(self) -> str:
        """The t and z axes present, in output (NGFF) order."""
        return "".join(a for a in NGFF_ORDER if a in PLANE_AXES and a in self.axes)

    @property
    def output_axes(self) -> str:
        """The output's axes in NGFF order: t and z where present, always c, y, x."""
        return "".join(a for a in NGFF_ORDER if a in self.axes or a in "cyx")

    def planes(self) -> Iterator[dict[str, int]]:
        """Every plane's position, e.g. {"t": 0, "z": 3}; one empty position for a 2-D image."""
        names = self.plane_axes
        sizes = [range(self.shape[self.axes.index(a)]) for a in names]
        for position in itertools.product(*sizes):
            yield dict(zip(names, position))

    @property
    def plane_count(self) -> int:
        count = 1
        for a in self.plane_axes:
            count *= self.shape[self.axes.index(a)]
        return count

    def read(self, box: Box, plane: dict[str, int] | None = None, channels: slice = slice(None)) -> np.ndarray:
        """The pixels of ``box`` in ``plane`` as (h, w, c), channels ``channels`` only."""
        plane = plane or {}
        ys, xs = self.in_image(box).slices()
        stored = self.axes[:-1] if self.palette else self.axes
        index = tuple(ys if a == "y" else xs if a == "x" else channels if a == "c" else plane.get(a, 0)
                      for a in stored)
        kept = [a for a in stored if a in "cyx"]
        where = "".join(f" {a}={i}" for a, i in plane.items())
        with reading(self.path, f"rows {ys.start}:{ys.stop} columns {xs.start}:{xs.stop}{where}"):
            handle = _opened(self)
            pixels = _read_settled(handle.array, index)
        if "c" not in kept:
            pixels = pixels.transpose([kept.index("y"), kept.index("x")])
            return handle.table[:, channels][pixels] if self.palette else pixels[..., None]
        return pixels.transpose([kept.index("y"), kept.index("x"), kept.index("c")])


def open_source(path: str | os.PathLike[str] | Location, series: int = 0, level: int = 0,
                reader: str | None = None) -> Source:
    """Describe the image at ``path`` (TIFF file, Zarr array or OME-Zarr group; a local path or an
    fsspec URL; a whole-slide or microscopy file, see :func:`_reader`); check it is usable.

    ``series`` and ``level`` pick a TIFF series and pyramid level (OME-Zarr: a bioformats2raw
    series and a multiscale level); the default is the full-resolution image of the first series.
    """
    where = find_input(path)
    if series < 0 or level < 0:
        raise LpdaskError(f"--series {series} and --level {level} must be at least 0")
    with reading(where, "it", warn=True):
        if where.is_dir():
            source = _zarr_source(where, series, level)
        elif (chosen := _reader(where, reader)) in ("openslide", "bioio"):
            from . import bioimage, slides

            fields = (slides if chosen == "openslide" else bioimage).describe(where, series, level)
            source = _checked(Source(_stored(where), chosen, "", series=series, level=level, **fields))
        else:
            source = _tiff_source(where, series, level)
    return replace(source, stamp=stamp(source))


def stamp_location(source: Source) -> Location:
    """The file whose size and modification time tell when the input last changed: the file itself;
    for Zarr, the array's metadata document."""
    where = Location.of(source.path)
    if source.kind != "zarr":
        return where
    folder = where / source.array_path if source.array_path else where
    return next((f for f in (folder / "zarr.json", folder / ".zarray") if f.exists()), folder)


def stamp(source: Source) -> tuple[object, ...]:
    """The input's size, modification time and, for a local file, inode (a file replaced by another
    of the same size and time is still told apart)."""
    where = stamp_location(source)
    if where.is_local:
        stat = where.local_path.stat()
        return stat.st_size, stat.st_mtime_ns, stat.st_ino
    return where.size_and_mtime()


READERS = ("auto", "tifffile", "openslide", "bioio")


def _reader(path: Location, reader: str | None) -> str:
    """Which library reads the file at ``path``: ``reader``, else the LPDASK_READER environment
    variable, else "auto": OpenSlide or bioio for the suffixes they claim (io.slides.SUFFIXES,
    io.bioimage.PLUGINS), tifffile for the rest."""
    chosen = reader or os.environ.get("LPDASK_READER") or "auto"
    if chosen not in READERS:
        raise LpdaskError(f"unknown reader {chosen!r} (LPDASK_READER); use one of {', '.join(READERS)}")
    if chosen != "auto":
        return chosen
    from . import bioimage, slides

    return "openslide" if slides.claims(path) else "bioio" if bioimage.claims(path) else "tifffile"


def _tiff_source(path: Location, series: int, level: int) -> Source:
    _check_tiff(path)
    from .tiffmeta import tiff_metadata

    with open_tiff(path) as tif:
        if series >= len(tif.series):
            raise LpdaskError(f"{path}: --series {series} does not exist (the file has {len(tif.series)})")
        chosen = tif.series[series]
        if level >= len(chosen.levels):
            raise LpdaskError(f"{path}: --level {level} does not exist (series {series} has "
                              f"{len(chosen.levels)} level{'s' if len(chosen.levels) > 1 else ''})")
        image = chosen.levels[level]
        _check_chunk_count(path, image)
        axes, shape, dtype = _tiff_axes(path, image.axes), tuple(image.shape), image.dtype
        page = image.keyframe
        hint = _tiff_photometric(page)
        table = _level_colour_table(chosen, level)
        if table is not None:
            if "c" in axes:
                raise LpdaskError(f"{path}: a palette image with several channels ({image.axes}) is not supported")
            axes, shape, dtype, hint = axes + "c", (*shape, table.shape[1]), table.dtype, "rgb"
        source = _checked(Source(_stored(path), "tiff", "", axes, shape, dtype, hint, series, level,
                                 bool(tif.is_ome), table is not None))
        meta = tiff_metadata(tif, series, level, source.output_axes, source.channels, hint, source.palette)
    return replace(source, meta=meta)


def _check_chunk_count(path: Location, image: tifffile.TiffPageSeries) -> None:
    """Refuse pages that hold fewer tile or strip offsets than their size needs: tifffile would read
    the missing ones as zeros, as it reads a sparse file's empty tiles (which have offsets, of 0)."""
    for page in image.pages:
        if not isinstance(page, tifffile.TiffPage):
            continue
        need = int(np.prod(page.chunked))
        if len(page.dataoffsets) < need:
            kind = "tiles" if page.is_tiled else "strips"
            raise Unreadable(f"{path}: page {page.index} is {page.imagewidth} x {page.imagelength} px in {need} {kind} "
                             f"but holds the offsets of {len(page.dataoffsets)} (a damaged IFD)")


def _stored(path: Location) -> str:
    """Absolute for local files, so worker processes with another working folder find them."""
    return path.path if path.is_local else path.url


def open_tiff(path: Location) -> tifffile.TiffFile:
    """A TiffFile reading the local file, or an fsspec file object for a URL."""
    return tifffile.TiffFile(path.local_path if path.is_local else path.open("rb"))


def _grey_jpeg_planes() -> None:
    """Make tifffile decode the planes of a band-interleaved RGB JPEG TIFF (GDAL's COMPRESS=JPEG
    INTERLEAVE=BAND) as the one-component JPEGs they are: it asks libjpeg for RGB input, which
    always fails ("Bogus JPEG colorspace"). Only that failing case changes."""
    module = tifffile.tifffile
    original = module.jpeg_decode_colorspace
    if getattr(original, "lpdask", False):
        return

    def colorspace(photometric: int, planarconfig: int, extrasamples: tuple[int, ...], jfif: bool, /
                   ) -> tuple[int | None, int | str | None]:
        space, out = original(photometric, planarconfig, extrasamples, jfif)
        return (None if planarconfig != 1 else space), out

    colorspace.lpdask = True  # type: ignore[attr-defined]
    module.jpeg_decode_colorspace = colorspace


_grey_jpeg_planes()


def _tiff_axes(path: Location, axes: str) -> str:
    unknown = sorted(set(axes) - set(_TIFF_AXES))
    if unknown or ("S" in axes and "C" in axes):
        what = f"axis {', '.join(unknown)}" if unknown else "both samples (S) and channels (C)"
        raise LpdaskError(f"{path}: TIFF axes {axes!r} are not supported ({what}); "
                          "lpdask reads T, C or S, Z, Y, X")
    return "".join(_TIFF_AXES[a] for a in axes)


def _tiff_photometric(page: Any) -> Photometric:
    rgb = page.photometric in (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR)
    if rgb and page.samplesperpixel == 3:
        return "rgb"
    alpha = tuple(page.extrasamples) in ((tifffile.EXTRASAMPLE.ASSOCALPHA,), (tifffile.EXTRASAMPLE.UNASSALPHA,))
    if rgb and page.samplesperpixel == 4 and alpha:
        return "rgba"
    return "minisblack"


def colour_table(page: Any) -> np.ndarray | None:
    """A one-sample page's colour map as an (indices, 3) lookup table, or None without one.

    GDAL writes a ColorMap tag for a palette band even where it leaves Photometric at MinIsBlack,
    and reads it as a palette either way; so does lpdask. The table is uint8 where the 16-bit map
    holds 8-bit colours (each a multiple of 257, as GDAL writes them, or all at most 255, as some
    old writers do), else uint16. Indices past the map's end are black.
    """
    colormap = page.colormap
    if colormap is None or page.samplesperpixel != 1:
        return None
    colormap = np.asarray(colormap)
    if colormap.size < 3 or colormap.size % 3:
        raise Unreadable(f"{page.parent.filehandle.path or page.parent.filename}: its ColorMap holds "
                         f"{colormap.size} values, not three equal parts (a damaged tag)")
    values = np.asarray(colormap, np.uint16).reshape(3, -1).T
    if values.max(initial=0) <= 255:
        table = values.astype(np.uint8)
    elif not (values % 257).any():
        table = (values // 257).astype(np.uint8)
    else:
        table = values
    missing = (1 << page.bitspersample) - len(table)
    return np.pad(table, ((0, missing), (0, 0))) if missing > 0 else table


def _level_colour_table(series: tifffile.TiffPageSeries, level: int) -> np.ndarray | None:
    """The colour table of a series' level: GDAL writes none into a palette image's overviews, which
    then take level 0's."""
    page = series.levels[level].keyframe
    own = colour_table(page)
    if own is not None or level == 0 or page.samplesperpixel != 1:
        return own
    return colour_table(series.levels[0].keyframe)


def _checked(source: Source) -> Source:
    """Refuse what lpdask cannot run: odd axes, too small, an unsupported pixel type."""
    path, axes, shape = source.path, source.axes, source.shape
    if len(set(axes)) != len(axes) or not {"y", "x"} <= set(axes):
        raise LpdaskError(f"{path}: axes {axes!r} of shape {shape} need one y and one x axis")
    if min(source.height, source.width) < 1 or source.channels < 1:
        raise LpdaskError(f"{path}: empty image of shape {shape}")
    if max(shape) > MAX_SIDE:
        raise LpdaskError(f"{path}: shape {shape} has a side beyond the {MAX_SIDE:,} pixels lpdask handles "
                          "(a damaged size?)")
    try:
        check_dtype(source.dtype)
    except LpdaskError as exc:
        raise LpdaskError(f"{path}: {exc}") from None
    return replace(source, dtype=np.dtype(source.dtype))


def _check_tiff(path: Location) -> None:
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise LpdaskError(f"cannot read input {path}: {exc.strerror or exc}") from None
    if head not in _TIFF_MAGIC:
        raise LpdaskError(f"{path} is neither a TIFF file nor a Zarr folder")
    with reading(path, "it as a TIFF file"), open_tiff(path) as tif:
        if not tif.series:
            raise Unreadable(f"{path}: TIFF file holds no image")


def _zarr_source(path: Location, series: int, level: int) -> Source:
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # zarr raises several types for a folder that is not a store
        raise LpdaskError(f"{path} is not a Zarr array or group ({type(exc).__name__})") from None
    prefix = ""
    if isinstance(node, zarr.Group) and "bioformats2raw.layout" in ome_attributes(node.attrs):
        prefix = f"{series}/"
        if str(series) not in node:
            raise LpdaskError(f"{path}: --series {series} does not exist in this bioformats2raw layout")
        node = node[str(series)]
    elif series:
        raise LpdaskError(f"{path}: --series {series} does not exist (a Zarr input holds one series)")
    attrs: dict[str, Any] | None = None
    if isinstance(node, zarr.Array):
        if level:
            raise LpdaskError(f"{path}: --level {level} does not exist (a bare Zarr array has one level)")
        array, array_path, names = node, "", _dimension_names(node)
    else:
        attrs = dict(node.attrs)
        check_attributes(attrs, path)
        multiscales = ome_attributes(attrs).get("multiscales")
        if multiscales:
            datasets = multiscales[0]["datasets"]
            if level >= len(datasets):
                raise LpdaskError(f"{path}: --level {level} does not exist (the pyramid has {len(datasets)})")
            array_path = datasets[level]["path"]
            names = [a["name"] if isinstance(a, dict) else a for a in multiscales[0].get("axes", [])] or None
        else:
            arrays = sorted(name for name, _ in node.arrays())
            if len(arrays) != 1:
                raise LpdaskError(f"{path}: Zarr group with arrays {arrays}; point at one array")
            array_path, names = arrays[0], None
        array = node[array_path]
        names = names or _dimension_names(array)
    axes = _zarr_axes(path, array.shape, names)
    hint = _zarr_photometric(attrs, axes, array.shape)
    source = _checked(Source(_stored(path), "zarr", prefix + array_path, axes, tuple(array.shape), array.dtype, hint,
                             series, level, bool(attrs and ome_attributes(attrs).get("multiscales"))))
    meta = zarr_metadata(attrs, array, array_path, source.output_axes, hint)
    return replace(source, meta=meta)


def _dimension_names(array: zarr.Array) -> list[str] | None:
    names = getattr(array.metadata, "dimension_names", None) or array.attrs.get("_ARRAY_DIMENSIONS")
    return list(names) if names and all(names) else None


def _zarr_axes(path: Location, shape: tuple[int, ...], names: list[str] | None) -> str:
    if names:
        lowered = "".join(str(n).lower()[:1] if str(n).lower() in ("t", "c", "z", "y", "x", "time", "channel")
                          else "?" for n in names)
        if len(lowered) != len(shape) or "?" in lowered:
            raise LpdaskError(f"{path}: axes {list(names)} are not supported; lpdask reads t, c, z, y, x")
        return lowered
    if len(shape) == 2:
        return "yx"
    if len(shape) == 3 and shape[-1] <= 4:
        return "yxc"
    if len(shape) == 3 and shape[0] <= 4:
        return "cyx"
    raise LpdaskError(f"{path}: cannot tell the axes of shape {shape}; name them (Zarr dimension_names or "
                      "OME-NGFF axes) or use (y, x), (y, x, c) or (c, y, x)")


def _zarr_photometric(attrs: dict[str, Any] | None, axes: str, shape: tuple[int, ...]) -> Photometric:
    own = (attrs or {}).get("lpdask", {})
    if isinstance(own, dict) and own.get("photometric") in ("rgb", "rgba", "minisblack"):
        return own["photometric"]
    if attrs and ome_attributes(attrs).get("multiscales"):
        return "minisblack"  # OME: microscopy channels unless it says otherwise
    channels = shape[axes.index("c")] if "c" in axes else 1
    return {3: "rgb", 4: "rgba"}.get(channels, "minisblack")  # type: ignore[return-value]


MAX_SIDE = 2**31 - 1
"""The longest axis lpdask reads (2 gigapixels a side); longer is a damaged size, not an image."""
OPEN_HANDLES = 8
"""How many inputs a process keeps open; the least recently read is closed beyond that."""


@dataclass
class _Handle:
    """An open input: the array read through, a palette image's colour table, and what holds the
    file open (closed with the handle)."""

    array: Any
    stamp: tuple[object, ...]
    table: np.ndarray | None = None
    holder: Any = None

    def close(self) -> None:
        close = getattr(self.holder, "close", None)
        if close is not None:
            close()


_lock = threading.Lock()
_open: OrderedDict[tuple[object, ...], _Handle] = OrderedDict()


def _opened(source: Source, page: int | None = None) -> _Handle:
    """The open handle of ``source`` (or of its TIFF file's page ``page``), opened once per process
    for each version of the file (:attr:`Source.stamp`): a handle of an older version, or the least
    recently read beyond :data:`OPEN_HANDLES`, is closed."""
    key = (source.path, source.kind, source.array_path, source.series, source.level, page)
    with _lock:
        handle = _open.get(key)
        if handle is not None and handle.stamp == source.stamp:
            _open.move_to_end(key)
            return handle
        if handle is not None:
            del _open[key]
            handle.close()
        if source.stamp and stamp(source) != source.stamp:
            raise LpdaskError(f"{source.path} changed since it was opened; open it again")
        handle = _open[key] = _open_handle(source, page)
        while len(_open) > OPEN_HANDLES:
            _open.popitem(last=False)[1].close()
        return handle


def _open_handle(source: Source, page: int | None) -> _Handle:
    if source.kind in ("openslide", "bioio"):
        from .bioimage import open_bioimage
        from .slides import open_slide

        if source.kind == "openslide":
            slide = open_slide(source)
            return _Handle(slide, source.stamp, holder=slide.slide)
        image = open_bioimage(source)
        return _Handle(image, source.stamp, holder=image)
    if source.kind == "tiff":
        tif = open_tiff(Location.of(source.path))  # stays open: the store reads through it
        if page is not None:
            return _Handle(zarr.open(tif.pages[page].aszarr(), mode="r"), source.stamp, holder=tif)
        chosen = tif.series[source.series]
        table = _level_colour_table(chosen, source.level) if source.palette else None
        return _Handle(zarr.open(chosen.aszarr(level=source.level), mode="r"), source.stamp, table, tif)
    node = zarr.open(source.path, mode="r")
    return _Handle(node[source.array_path] if source.array_path else node, source.stamp)


def read_tiff_page(source: Source, page: int, box: Box) -> np.ndarray:
    """The pixels of ``box`` of page ``page`` of ``source``'s TIFF file (a page no series holds,
    such as GDAL's internal mask)."""
    ys, xs = source.in_image(box).slices()
    with reading(source.path, f"page {page} rows {ys.start}:{ys.stop} columns {xs.start}:{xs.stop}"):
        return _read_settled(_opened(source, page).array, (ys, xs))


_read_tasks: contextvars.ContextVar[set[asyncio.Task[Any]] | None] = contextvars.ContextVar("lpdask_read_tasks",
                                                                                              default=None)


def _read_settled(array: Any, index: tuple[Any, ...]) -> np.ndarray:
    """``array[index]`` as a NumPy array. Zarr gathers a read's chunks on its I/O loop without
    cancelling the others when one fails (a damaged TIFF tile or Zarr chunk), and they would go on
    failing unheard or be destroyed pending at exit; so where the read fails, the tasks it started are
    cancelled and their outcomes taken before its error is raised."""
    if not isinstance(array, zarr.Array):
        return np.asarray(array[index])
    from zarr.core.sync import _get_loop, sync

    loop = _get_loop()
    _track_tasks(loop)
    tasks: set[asyncio.Task[Any]] = set()
    token = _read_tasks.set(tasks)
    try:
        try:
            return np.asarray(array[index])
        finally:
            _read_tasks.reset(token)  # before settling: the settling task is not one of the read's
    except Exception:
        sync(_settle(tasks), loop)
        raise


def _track_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Make ``loop`` add each task it creates to the set :func:`_read_settled` has in its context
    (a task's context is a copy of its creator's, so a read's tasks all see its set)."""
    previous = loop.get_task_factory()
    if getattr(previous, "lpdask", False):
        return

    def factory(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any) -> asyncio.Task[Any]:
        task = previous(loop, coro, **kwargs) if previous else asyncio.Task(coro, loop=loop, **kwargs)
        tasks = _read_tasks.get()
        if tasks is not None:
            tasks.add(task)  # type: ignore[arg-type]
        return task  # type: ignore[return-value]

    factory.lpdask = True  # type: ignore[attr-defined]
    loop.set_task_factory(factory)


async def _settle(tasks: set[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` (and those they start meanwhile), wait for them, and take their errors."""
    while pending := [t for t in tasks if not t.done()]:
        for task in pending:
            task.cancel()
        await asyncio.wait(pending)
    for task in tasks:
        if not task.cancelled():
            task.exception()
