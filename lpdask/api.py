"""The Python API: ``upscale`` (files in, OME-Zarr out) and ``upscale_array`` (dask in, dask out)."""

from __future__ import annotations

import os
import resource
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterator, Literal

import dask.array as da
import numpy as np
import torch
from torch.nn import functional as F

from .chunks import Box
from .errors import LpdaskError
from .graph import Job, run_job, run_window
from .io.omezarr import OmeZarrSink
from .io.sources import open_source
from .jobs import WorkFolder, check_output, default_workdir
from .models import load_model
from .models.network import Network
from .pixels import check_dtype, from_unit, max_value
from .device import resolve_device, resolve_precision
from .plan import DEFAULT_TILE_PAD, Plan
from .progress import Bars
from .stages import IMAGE, Stage, validate
from .tiles import tile_stages

Mode = Literal["exact", "tile"]


@dataclass(frozen=True)
class Summary:
    """What a finished ``upscale`` did."""

    output: Path
    seconds: float
    input_megapixels: float
    output_shape: tuple[int, ...]
    chunks: int
    stages: int
    levels: int
    peak_memory_bytes: int

    @property
    def megapixels_per_second(self) -> float:
        return self.input_megapixels / self.seconds if self.seconds else float("inf")

    def __str__(self) -> str:
        return (f"wrote {self.output} {self.output_shape} in {self.seconds:.1f} s: "
                f"{self.input_megapixels:.3f} input megapixels, {self.megapixels_per_second:.4f} MP/s, "
                f"{self.stages} stages x {self.chunks} chunks, {self.levels} pyramid levels, "
                f"peak memory {self.peak_memory_bytes / 2**20:.0f} MiB")


def stages_for(net: Network, mode: Mode, blocks_per_stage: int, tile_pad: int) -> list[Stage]:
    """The exact staged network, or Real-ESRGAN's tile mode for comparison."""
    if mode == "exact":
        stages = net.stages(blocks_per_stage)
    elif mode == "tile":
        if tile_pad < 0:
            raise LpdaskError(f"--tile-pad {tile_pad} must be at least 0")
        stages = tile_stages(net, tile_pad)
    else:
        raise LpdaskError(f"unknown mode {mode!r} (use exact or tile)")
    validate(stages)
    return stages


def upscale(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] | Network | None = None,
    chunk: int = Plan.chunk,
    blocks_per_stage: int = Plan.blocks_per_stage,
    threads: int = 0,
    device: str = "auto",
    precision: str = "fp32",
    workdir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    mode: Mode = "exact",
    tile_pad: int = DEFAULT_TILE_PAD,
    progress: bool = False,
) -> Summary:
    """Super-resolve the image at ``src`` into an OME-Zarr at ``dst``, chunk by chunk.

    ``model`` is a checkpoint path, a model name or a loaded network (default: Real-ESRGAN x4plus).
    ``precision`` fp16 / bf16 need CUDA. Intermediate activations go to ``workdir`` (default:
    beside ``dst``), in a folder removed at the end.
    """
    start = time.perf_counter()
    plan = Plan(chunk, blocks_per_stage, threads)
    source = open_source(src)
    output = check_output(Path(src), Path(dst), overwrite)
    net = model if isinstance(model, Network) else load_model(model)
    torch_device = resolve_device(device)
    compute = resolve_precision(precision, torch_device)
    stages = stages_for(net.to(torch_device, compute), mode, plan.blocks_per_stage, tile_pad)

    check_grid(plan.chunk, net)
    if output.exists():
        _remove(output)
    scale = net.scale
    sink = OmeZarrSink(output, net.out_channels, source.height * scale, source.width * scale,
                       source.dtype, plan.chunk * scale)
    work = WorkFolder(Path(workdir or output.parent) / default_workdir(output).name)
    job = Job(source, stages, plan.chunk, work, sink, torch_device, net.input_factor, compute)
    chunks = len(job.grid(0))
    bars = Bars(stages, chunks, disable=not progress)
    workers = plan.workers(torch_device.type)
    try:
        with _threads(workers, torch_device):
            run_job(job, workers, bars)
            bars.close()
            levels = sink.finish(1 / scale, Path(src).name, scheduler="threads", num_workers=workers)
    except BaseException:
        bars.close()
        shutil.rmtree(output, ignore_errors=True)  # no half-written result left (resume comes later)
        raise
    finally:
        work.clear()
    return Summary(output, time.perf_counter() - start, source.height * source.width / 1e6,
                   tuple(sink.level0.shape), chunks, len(stages), levels, _peak_rss())


def upscale_array(
    image: da.Array,
    model: str | os.PathLike[str] | Network | None = None,
    *,
    chunk: int = Plan.chunk,
    blocks_per_stage: int = Plan.blocks_per_stage,
    device: str = "cpu",
    precision: str = "fp32",
    mode: Mode = "exact",
    tile_pad: int = DEFAULT_TILE_PAD,
) -> da.Array:
    """Lazy: a (y, x, c) dask array in, its (y*s, x*s, c) super-resolution out, same dtype.

    Stages pass activations through dask's memory (halos by ``dask.array.overlap`` with
    ``boundary='none'``, so halos stop at the image border) instead of a Zarr work folder.
    """
    if image.ndim != 3:
        raise LpdaskError(f"image of shape {image.shape} is not (y, x, c)")
    dtype = check_dtype(image.dtype)
    plan = Plan(chunk, blocks_per_stage)
    net = model if isinstance(model, Network) else load_model(model)
    torch_device = resolve_device(device)
    compute = resolve_precision(precision, torch_device)
    stages = stages_for(net.to(torch_device, compute), mode, plan.blocks_per_stage, tile_pad)
    check_grid(plan.chunk, net)
    d = net.input_factor
    widest = max(stage.halo for stage in stages)
    height, width = image.shape[:2]
    padded = (-(-height // d) * d, -(-width // d) * d)
    if padded != (height, width):  # Real-ESRGAN's reflect padding for pixel-unshuffle models
        image = da.pad(image, ((0, padded[0] - height), (0, padded[1] - width), (0, 0)), mode="reflect")
    rows = _chunk_sizes(padded[0] // d, plan.chunk // d, widest)
    cols = _chunk_sizes(padded[1] // d, plan.chunk // d, widest)
    pixels = image.rechunk((tuple(n * d for n in rows), tuple(n * d for n in cols), -1)).transpose(2, 0, 1)
    arrays = {IMAGE: pixels.map_blocks(_normalise, dtype=np.float32, scale=max_value(dtype), factor=d,
                                       chunks=(pixels.shape[0] * d * d, rows, cols))}
    factor = 1
    for stage in stages:
        inputs = [arrays[name] for name in stage.inputs]
        depth = {0: 0, 1: stage.halo if len(rows) > 1 else 0, 2: stage.halo if len(cols) > 1 else 0}
        grown = [da.overlap.overlap(a, depth=depth, boundary="none") for a in inputs]
        s = stage.scale
        arrays[stage.name] = da.map_blocks(
            partial(_run_block, stage, torch_device, compute, (len(rows), len(cols))), *grown,
            dtype=np.float32, chunks=(stage.channels, tuple(n * factor * s for n in rows),
                                      tuple(n * factor * s for n in cols)))
        factor *= s
    result = arrays[stages[-1].name][:, : height * net.scale, : width * net.scale]
    return result.map_blocks(_denormalise, dtype=dtype, out_dtype=dtype).transpose(1, 2, 0)


def _chunk_sizes(length: int, chunk: int, halo: int) -> tuple[int, ...]:
    """Chunk sizes along one axis; a last chunk narrower than the halo joins the one before it."""
    sizes = [chunk] * (length // chunk) + ([length % chunk] if length % chunk else [])
    if len(sizes) > 1 and sizes[-1] < halo:
        sizes[-2:] = [sizes[-2] + sizes[-1]]
    if len(sizes) > 1 and min(sizes) < halo:
        raise LpdaskError(f"chunk {chunk} is smaller than the widest stage halo {halo}; "
                          "use a larger chunk or fewer blocks per stage")
    return tuple(sizes)


def _normalise(block: np.ndarray, scale: float, factor: int) -> np.ndarray:
    values = torch.from_numpy(block.astype(np.float32) / np.float32(scale))
    return F.pixel_unshuffle(values[None], factor)[0].numpy() if factor > 1 else values.numpy()


def _denormalise(block: np.ndarray, out_dtype: np.dtype) -> np.ndarray:
    return from_unit(block, out_dtype)


def _run_block(stage: Stage, device: torch.device, precision: torch.dtype, blocks: tuple[int, int],
               *grown: np.ndarray,
               block_id: tuple[int, int, int]) -> np.ndarray:
    _, i, j = block_id
    halo = stage.halo
    top, left = (halo if i > 0 else 0), (halo if j > 0 else 0)
    bottom, right = (halo if i < blocks[0] - 1 else 0), (halo if j < blocks[1] - 1 else 0)
    h, w = grown[0].shape[1:]
    inner = Box(top, h - bottom, left, w - right)
    out = run_window(stage, [torch.from_numpy(np.ascontiguousarray(g))[None] for g in grown], inner, device,
                     precision)
    return out[0].cpu().numpy()


def check_grid(chunk: int, net: Network) -> None:
    """Chunks of pixel-unshuffle models must hold whole unshuffle cells."""
    if chunk % net.input_factor:
        raise LpdaskError(f"--chunk {chunk} must be a multiple of {net.input_factor} for this "
                          f"x{net.scale} model (it pixel-unshuffles by {net.input_factor})")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def _threads(workers: int, device: torch.device) -> Iterator[None]:
    """Give torch the cores divided among the chunks running at once, and restore it after."""
    before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
