"""Seam report: how far tiled methods land from whole-image inference, in numbers and a picture.

``compare`` reads a crop of an image and super-resolves it four ways:

- **whole image** (the reference): the network on the whole crop in one piece, as Real-ESRGAN's
  ``enhance`` does with ``tile=0``: normalise, run, clamp, round;
- **tile mode**: Real-ESRGAN's tile/tile_pad stitching (lpdask ``mode="tile"``, tile = chunk);
- **neighbour-patch context (RealESRGAN-LP-style)**: each patch computed by the whole network on
  its 3x3 patch neighbourhood (one patch of context each side, the network's zero padding beyond).
  This is the context RealESRGAN-LP's local padding gives a patch, not its streaming schedule (which
  pads not-yet-computed patches with zeros and is worse at the right and bottom image border);
- **lpdask**: the exact staged engine with the same chunk.

Tile mode and lpdask run as ``lpdask upscale`` does, on the crop written to a temporary folder. The
neighbour-patch run uses the same tile stage (the whole network on a window, ``tile_pad`` = patch)
patch by patch in memory, so patches smaller than the engine's 16 px minimum chunk can be tried.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import zarr
from PIL import Image, ImageDraw
from torch.nn import functional as F

from .channels import Pass, passes, photometric_of
from .chunks import Box, Grid
from .device import network_on, resolve_device
from .errors import LpdaskError
from .task import run_window
from .io.sources import Source, open_source
from .models import load_model
from .models.names import DEFAULT_MODEL
from .models.network import Network
from .pixels import from_unit, network_input, reflect_to_cells
from .options import check_chunk
from .plan import DEFAULT_TILE_PAD
from .executors.staged import tile_stages

MAX_SIZE = 1024
"""Largest crop side: the whole-image reference must fit in memory."""
SEAM_REACH = 4
"""Output pixels either side of a chunk border counted as "at the border"."""
GAIN = 8
"""Amplification of the difference maps."""
PANEL = 384
"""Side of one picture panel in the figure, in figure pixels."""
GAP, TOP, LINE = 10, 25, 14

LP_STYLE = "neighbour-patch context (RealESRGAN-LP-style)"
_CHANNEL_MODE = {"rgb": "rgb", "rgba": "rgba", "minisblack": "separate"}

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class MethodError:
    """One method against whole-image inference, in levels of the image's dtype."""

    key: str
    label: str
    max_error: int
    mean_error: float
    off_by_more_than_1: float
    """Fraction of output values that differ by more than 1 level."""
    max_at_border: int
    """Largest error within ``SEAM_REACH`` output pixels of a border of the method's own grid
    (chunks, tiles or patches)."""
    seconds: float


@dataclass
class Report:
    """What ``compare`` measured; ``images`` holds the (c, H, W) results by method key."""

    input: str
    model: str
    crop: tuple[int, int, int, int]
    """(top, left, height, width) of the crop in the input image."""
    scale: int
    dtype: str
    chunk: int
    tile_pad: int
    patch: int
    whole_seconds: float
    methods: list[MethodError]
    figure: str
    images: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def heading(self) -> str:
        top, left, height, width = self.crop
        return (f"{self.input}: rows {top}:{top + height}, columns {left}:{left + width} ({height} x {width} px, "
                f"{self.dtype}), {self.model} x{self.scale}; errors in levels vs whole-image inference")

    def table(self) -> list[tuple[str, ...]]:
        """The numbers as rows of cells, the column names first."""
        rows = [("method", "max error", "mean error", "> 1 level", f"max within {SEAM_REACH} px of a border",
                 "seconds")]
        rows += [(m.label, str(m.max_error), f"{m.mean_error:.3f}", f"{m.off_by_more_than_1:.2%}",
                  str(m.max_at_border), f"{m.seconds:.1f}") for m in self.methods]
        rows.append(("whole image (reference)", "-", "-", "-", "-", f"{self.whole_seconds:.1f}"))
        return rows

    def __str__(self) -> str:
        rows = self.table()
        widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        return "\n".join([self.heading(), *lines, f"figure: {self.figure}"])

    def to_json(self) -> str:
        """Everything but the images."""
        data = asdict(replace(self, images={}))
        del data["images"]
        return json.dumps(data, indent=2)


def compare(
    src: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] | Network | None = None,
    chunk: int = 64,
    size: int = 256,
    tile_pad: int = DEFAULT_TILE_PAD,
    patch: int | None = None,
    out: str | os.PathLike[str] = "seams.png",
    origin: tuple[int, int] | None = None,
) -> Report:
    """Compare tile mode, neighbour-patch context and lpdask with whole-image inference on the CPU,
    on a ``size`` x ``size`` crop of ``src`` (centred, or with its top-left corner at ``origin``; at
    most the image), and draw the figure to ``out`` (PNG).

    Chunks (and tiles) of ``chunk`` px and patches of ``patch`` px (default: ``chunk``) start at the
    crop's top-left corner. The first t/z plane is used; uint8 and uint16 images, any channel count
    (run as lpdask's ``channels="auto"`` does). A line is logged (logger ``lpdask.compare``, level INFO) as each method finishes.
    """
    patch = chunk if patch is None else patch
    check_chunk(chunk)
    if not 1 <= patch <= MAX_SIZE:
        raise LpdaskError(f"--patch {patch} is out of range (1 to {MAX_SIZE} pixels)")
    if tile_pad < 0:
        raise LpdaskError(f"--tile-pad {tile_pad} must be at least 0")
    figure = _check_figure_path(out)
    source = open_source(src)
    box = crop_box(source, size, chunk, origin)
    net = model if isinstance(model, Network) else load_model(model)
    for side, option in ((chunk, "--chunk"), (patch, "--patch")):
        if side % net.input_factor:
            raise LpdaskError(f"{option} {side} must be a multiple of {net.input_factor} for this x{net.scale} model")
    images, methods, whole_seconds = _run_methods(source, source.read(box), net, chunk, tile_pad, patch, "cpu",
                                                  LOG.info)
    report = Report(str(src), _model_name(model), (box.y0, box.x0, *box.shape), net.scale, str(source.dtype),
                    chunk, tile_pad, patch, whole_seconds, methods, str(figure), images)
    corner = _corner(box.shape, chunk)
    panels = [(m.label.split(",")[0], images[m.key]) for m in methods]
    seam_figure(panels, images["whole"], (corner[0] * net.scale, corner[1] * net.scale),
                notes=[(report.heading(),), *report.table()]).save(figure)
    return report


def _run_methods(source: Source, pixels: np.ndarray, net: Network, chunk: int, tile_pad: int, patch: int,
                 device: str, say: Callable[[str], None]) -> tuple[dict[str, np.ndarray], list[MethodError], float]:
    """Whole image, tile mode, neighbour patches and lpdask on ``pixels`` (h, w, c): the results by
    key, each method's errors, and the seconds the whole image took."""
    photometric = photometric_of(source.channels, "auto", source.photometric)
    runs = passes(source.channels, photometric, net=net)
    torch_device = resolve_device(device)
    start = time.perf_counter()
    whole = whole_image(net, pixels, runs, torch_device)
    whole_seconds = time.perf_counter() - start
    say(f"whole image (reference): {whole_seconds:.1f} s")
    images, methods = {"whole": whole}, []

    def measure(key: str, label: str, side: int, compute: Callable[[], np.ndarray]) -> None:
        start = time.perf_counter()
        images[key] = compute()
        seconds = time.perf_counter() - start
        methods.append(method_error(key, label, images[key], whole, side * net.scale, seconds))
        say(f"{label}: {seconds:.1f} s")

    channels = _CHANNEL_MODE[photometric]
    with tempfile.TemporaryDirectory(prefix="lpdask-compare-") as temporary:
        folder = Path(temporary)
        crop = write_crop(folder / "crop.zarr", pixels)
        measure("tile", f"tile mode (Real-ESRGAN), tile {chunk}, tile_pad {tile_pad}", chunk,
                lambda: _engine(crop, folder / "tile.zarr", net, "tile", chunk, tile_pad, channels, device))
        measure("patch", f"{LP_STYLE}, patch {patch}", patch,
                lambda: neighbour_patches(net, pixels, runs, patch, torch_device))
        measure("lpdask", f"lpdask exact, chunk {chunk}", chunk,
                lambda: _engine(crop, folder / "lpdask.zarr", net, "exact", chunk, 0, channels, device))
    return images, methods, whole_seconds


def crop_box(source: Source, size: int, chunk: int, origin: tuple[int, int] | None = None) -> Box:
    """The crop: ``size`` px square (at most the image), centred unless ``origin`` is given; it must
    be larger than ``chunk`` so chunk borders cross it."""
    if not 1 <= size <= MAX_SIZE:
        raise LpdaskError(f"--size {size} is out of range (1 to {MAX_SIZE}: the whole-image reference "
                          "must fit in memory)")
    if source.dtype.kind != "u":
        raise LpdaskError(f"compare measures errors in integer levels; {source.dtype} images are not supported "
                          "(use uint8 or uint16)")
    height, width = min(size, source.height), min(size, source.width)
    if height <= chunk or width <= chunk:
        raise LpdaskError(f"the crop ({height} x {width} px) must be larger than --chunk {chunk} so chunk "
                          "borders cross it; use a larger --size or a smaller --chunk")
    top, left = origin if origin is not None else ((source.height - height) // 2, (source.width - width) // 2)
    if not (0 <= top <= source.height - height and 0 <= left <= source.width - width):
        raise LpdaskError(f"a {height} x {width} crop at ({top}, {left}) does not fit in the "
                          f"{source.height} x {source.width} image")
    return Box(top, top + height, left, left + width)


def whole_image(net: Network, pixels: np.ndarray, runs: Sequence[Pass], device: torch.device) -> np.ndarray:
    """(h, w, c) pixels -> (c, h*s, w*s) pixels: the network on the whole image in one piece."""
    net = network_on(net, device, torch.float32)

    def run_whole(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return net(x.to(device)).float().cpu()

    return _each_pass(net, pixels, runs, device, run_whole)


def neighbour_patches(net: Network, pixels: np.ndarray, runs: Sequence[Pass], patch: int,
                      device: torch.device) -> np.ndarray:
    """(h, w, c) pixels -> (c, h*s, w*s) pixels, each ``patch`` px square computed by the whole
    network on its 3x3 patch neighbourhood (clipped at the image border, as whole-image inference
    is). On the pixel-unshuffled grid of x2 / x1 models, patches are ``patch / input_factor``."""
    net = network_on(net, device, torch.float32)
    d = net.input_factor
    stage = tile_stages(net, patch // d)[0]

    def run_patches(x: torch.Tensor) -> torch.Tensor:
        x = F.pixel_unshuffle(x, d) if d > 1 else x
        height, width = x.shape[2:]
        out = torch.empty(1, stage.channels, height * stage.scale, width * stage.scale)
        for inner, boxes, windows in _batches(Grid(height, width, patch // d), stage.halo):
            batch = torch.cat([x[:, :, window.y0 : window.y1, window.x0 : window.x1] for window in windows])
            result = run_window(stage, [batch], inner, device).cpu()
            for k, box in enumerate(boxes):
                ys, xs = box.scaled(stage.scale).slices()
                out[:, :, ys, xs] = result[k]
        return out

    return _each_pass(net, pixels, runs, device, run_patches)


def _batches(grid: Grid, halo: int) -> Iterator[tuple[Box, list[Box], list[Box]]]:
    """The grid's chunks grown by ``halo``, in batches of windows of one shape and the same chunk
    position within them, each batch at most the image's area (one network call each)."""
    groups: dict[tuple[tuple[int, int], Box], list[tuple[Box, Box]]] = {}
    for i, j in grid.indices():
        box = grid.box(i, j)
        window = box.grow(halo, grid.height, grid.width)
        groups.setdefault((window.shape, box.within(window)), []).append((box, window))
    for (shape, inner), members in groups.items():
        size = max(1, grid.height * grid.width // (shape[0] * shape[1]))
        for start in range(0, len(members), size):
            part = members[start : start + size]
            yield inner, [box for box, _ in part], [window for _, window in part]


def _each_pass(net: Network, pixels: np.ndarray, runs: Sequence[Pass], device: torch.device,
               run: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
    """Normalise each channel pass, reflect-pad it to whole unshuffle cells (as Real-ESRGAN does
    for x2 / x1 models), ``run`` it, crop, clamp and round back to pixels."""
    height, width, channels = pixels.shape
    s, d = net.scale, net.input_factor
    result = np.empty((channels, height * s, width * s), pixels.dtype)
    padded = reflect_to_cells(pixels, d)
    for one in runs:
        x = torch.from_numpy(network_input(padded, one))[None]
        y = run(x)[0, :, : height * s, : width * s].numpy()
        result[list(one.channels)] = from_unit(one.from_network(y), pixels.dtype)
    return result


def write_crop(path: Path, pixels: np.ndarray) -> Path:
    """Store (h, w, c) pixels as a Zarr array with named axes, for the engine to read."""
    zarr.create_array(str(path), data=pixels, chunks=(64, 64, pixels.shape[2]), dimension_names=("y", "x", "c"))
    return path


def _engine(crop: Path, out: Path, net: Network, mode: str, chunk: int, tile_pad: int, channels: str,
            device: str) -> np.ndarray:
    """Run lpdask on the stored crop; the result as (c, H, W)."""
    from .api import upscale

    upscale(crop, out, model=net, chunk=chunk, mode=mode, tile_pad=tile_pad, channels=channels,  # type: ignore[arg-type]
            device=device)
    return zarr.open_array(str(out / "0"), mode="r")[:]


def seam_mask(height: int, width: int, step: int, reach: int = SEAM_REACH) -> np.ndarray:
    """(height, width) booleans: within ``reach`` px of an inner border of a grid of ``step`` px."""
    def near(length: int) -> np.ndarray:
        mask = np.zeros(length, bool)
        for border in range(step, length, step):
            mask[max(0, border - reach) : border + reach] = True
        return mask

    return near(height)[:, None] | near(width)[None, :]


def method_error(key: str, label: str, result: np.ndarray, whole: np.ndarray, step: int,
                 seconds: float) -> MethodError:
    """Errors of a (c, H, W) result against ``whole``; ``step`` is its grid in output px."""
    diff = np.abs(result.astype(np.int64) - whole.astype(np.int64))
    mask = seam_mask(*diff.shape[1:], step)
    at_border = int(diff[:, mask].max()) if mask.any() else 0
    return MethodError(key, label, int(diff.max()), float(diff.mean()), float((diff > 1).mean()), at_border,
                       seconds)


def seam_figure(panels: Sequence[tuple[str, np.ndarray]], whole: np.ndarray, border: int | tuple[int, int],
                half: int = 64, gain: int = GAIN, notes: Sequence[Sequence[str]] = ()) -> Image.Image:
    """A crop of ``2 * half`` output px around ``border`` (a chunk corner, (y, x)) of each (c, H, W)
    image in ``panels`` and of ``whole`` (top row), each panel's |difference from whole| amplified
    by ``gain`` below it, a colour bar, and ``notes``: lines of text, each a row of table cells."""
    by, bx = (border, border) if isinstance(border, int) else border
    height, width = whole.shape[1:]
    half = max(1, min(half, by, bx, height - by, width - bx))
    zoom = max(1, PANEL // (2 * half))
    side = 2 * half * zoom
    crop = np.s_[:, by - half : by + half, bx - half : bx + half]
    columns = [*panels, ("whole image", whole)]
    heat_top = TOP + side + 30
    text_top = heat_top + side + 12
    canvas = Image.new("RGB", (len(columns) * (side + GAP) + GAP, text_top + LINE * len(notes) + GAP), "white")
    draw = ImageDraw.Draw(canvas)
    for k, (label, image) in enumerate(columns):
        x = GAP + k * (side + GAP)
        canvas.paste(_enlarged(_rgb(image[crop], whole.dtype), side), (x, TOP))
        draw.text((x, 8), label, fill="black")
        mark = half * zoom  # the chunk corner, as ticks on the panel's edges
        draw.line([(x + mark, TOP), (x + mark, TOP + 6)], fill="red", width=2)
        draw.line([(x, TOP + mark), (x + 6, TOP + mark)], fill="red", width=2)
        if k < len(panels):
            diff = np.abs(image[crop].astype(np.int64) - whole[crop].astype(np.int64)).max(0)
            canvas.paste(_enlarged(_heat(diff * gain), side), (x, heat_top))
            draw.text((x, heat_top - 17), f"|difference from whole| x{gain}: max {diff.max()} in this crop",
                      fill="black")
    _legend(draw, canvas, GAP + len(panels) * (side + GAP), heat_top, side, gain)
    _table(draw, notes, GAP, text_top)
    return canvas


def _table(draw: ImageDraw.ImageDraw, rows: Sequence[Sequence[str]], x: int, y: int) -> None:
    """Rows of cells in aligned columns (a one-cell row is a line of its own)."""
    columns = max((len(row) for row in rows if len(row) > 1), default=0)
    widths = [max(draw.textlength(row[k]) for row in rows if len(row) > 1) for k in range(columns)]
    for n, row in enumerate(rows):
        left = x
        for k, cell in enumerate(row):
            draw.text((left, y + n * LINE), cell, fill="black")
            left += int(widths[k]) + 16 if len(row) > 1 else 0


def _rgb(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """(c, h, w) pixels -> (h, w, 3) uint8 for display: grey shown as grey, RGB(A) as RGB."""
    if np.dtype(dtype).itemsize > 1:
        values = (values.astype(np.float64) * 255 / np.iinfo(dtype).max).round()
    values = values.astype(np.uint8)
    shown = values[:3] if values.shape[0] >= 3 else np.repeat(values[:1], 3, axis=0)
    return np.ascontiguousarray(np.moveaxis(shown, 0, -1))


def _heat(values: np.ndarray) -> np.ndarray:
    """Values 0..255 (clipped) -> (h, w, 3) uint8: black, red, yellow, white."""
    v = np.clip(values, 0, 255).astype(np.int64) * 3
    return np.stack([np.clip(v, 0, 255), np.clip(v - 255, 0, 255), np.clip(v - 510, 0, 255)], -1).astype(np.uint8)


def _enlarged(pixels: np.ndarray, side: int) -> Image.Image:
    return Image.fromarray(pixels).resize((side, side), Image.NEAREST)


def _legend(draw: ImageDraw.ImageDraw, canvas: Image.Image, x: int, y: int, side: int, gain: int) -> None:
    """The colour bar of the difference maps: 0 to 255 / ``gain`` levels and more."""
    bar = _heat(np.tile(np.linspace(0, 255, side), (16, 1)))
    canvas.paste(Image.fromarray(bar), (x, y + 20))
    draw.text((x, y), f"difference maps: |method - whole image| x{gain}", fill="black")
    draw.text((x, y + 40), "0", fill="black")
    top = f">= {255 / gain:.3g} levels"
    draw.text((x + side - 6 * len(top), y + 40), top, fill="black")
    draw.text((x, y + 60), "black: equal to the whole image", fill="black")


def _corner(shape: tuple[int, int], chunk: int) -> tuple[int, int]:
    """The inner chunk corner nearest the crop's centre, in crop pixels."""
    def nearest(length: int) -> int:
        return min(max(1, round(length / 2 / chunk)), (length - 1) // chunk) * chunk

    return nearest(shape[0]), nearest(shape[1])


def _check_figure_path(out: str | os.PathLike[str]) -> Path:
    path = Path(out)
    if path.suffix.lower() != ".png":
        raise LpdaskError(f"--out {path} must be a .png file")
    if not path.parent.is_dir():
        raise LpdaskError(f"--out {path}: folder {path.parent} does not exist")
    return path


def _model_name(model: str | os.PathLike[str] | Network | None) -> str:
    if model is None:
        return DEFAULT_MODEL
    if isinstance(model, Network):
        return type(model).__name__
    return str(model)
