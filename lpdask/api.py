"""The Python API: ``upscale`` (files in, OME-Zarr out) and ``upscale_array`` (dask in, dask out)."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Callable

import dask.array as da
import torch

from .channels import passes, photometric_of
from .device import load_network, resolve_device, resolve_precision
from .errors import LpdaskError
from .executors.lazy import denormalise, lazy_pass
from .executors.staged import Mode, stages_for
from .jobs import Preflight, build, check_output, check_output_name, held_places, preflight
from .kernels import Kernels
from .lease import hold
from .memory import reuse_freed_memory
from .models.network import Network
from .options import (DEFAULT_TILE_PAD, AlphaMode, ChannelMode, Reports, UpscaleOptions, check_engine, check_grid,
                      check_kernels, check_plan_options, check_value_range)
from .pixels import ValueRange, check_dtype
from .plan import Plan
from .planner import choose_engine
from . import runner
from .runner import Summary
from .schedulers import Cluster, Threads
from .stages import resize_stages

if TYPE_CHECKING:
    import xarray

    from .executors import Executor

__all__ = ["Reports", "Summary", "UpscaleOptions", "run_upscale", "upscale", "upscale_array"]


def upscale(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
    model: str | os.PathLike[str] | Network | None = None, chunk: int | None = None,
    blocks_per_stage: int | None = None, threads: int = 0, device: str = "auto", precision: str = "fp32",
    workdir: str | os.PathLike[str] | None = None, overwrite: bool = False, mode: Mode = "exact",
    tile_pad: int = DEFAULT_TILE_PAD, series: int = 0, level: int = 0, channels: ChannelMode = "auto",
    alpha: AlphaMode = "network", value_range: ValueRange | None = None, workers: int = 0,
    scheduler: str | None = None, resources: dict[str, float] | None = None, compression: str = "zlib",
    max_memory: float | None = None, progress: bool = False, wait: bool = False, executor: str | Executor = "auto",
    strip: int | None = None, tile_rows: int | None = None, on_cluster: Callable[[str], None] | None = None,
    on_plan: Callable[[str], None] | None = None, cog: bool | None = None, nodata: str | float | None = None,
    kernels: Kernels = "fast", engine: str = "auto", region: str | tuple[float, ...] | None = None,
    compute_all: bool = False, tissue: str | None = None,
) -> Summary:
    """Super-resolve the image at ``src`` into ``dst``: an OME-Zarr (``.zarr``) or a tiled, pyramidal
    (OME-/Geo)TIFF (``.tif``, ``.ome.tif``), chunk by chunk. The options are those of
    :class:`~lpdask.options.UpscaleOptions`, documented there; ``progress`` shows progress bars,
    ``on_plan`` gets the plan and its prediction, ``on_cluster`` a cluster's dashboard link.

    A job that dies leaves its work folder and partial output: the same call again resumes,
    recomputing only unfinished chunks; on a finished job it does nothing. One run at a time holds
    ``dst``: another raises :class:`~lpdask.errors.OutputBusy`, or waits with ``wait``. A fault met
    while running (disk full, a place not writable, the input changed) raises a
    :class:`~lpdask.errors.Fault` and keeps the finished chunks."""
    options = UpscaleOptions(
        src, dst, model=model, chunk=chunk, blocks_per_stage=blocks_per_stage, threads=threads, device=device,
        precision=precision, workdir=workdir, overwrite=overwrite, mode=mode, tile_pad=tile_pad, series=series,
        level=level, channels=channels, alpha=alpha, value_range=value_range, workers=workers, scheduler=scheduler,
        resources=resources, compression=compression, max_memory=max_memory, wait=wait, executor=executor,
        strip=strip, tile_rows=tile_rows, cog=cog, nodata=nodata, kernels=kernels, engine=engine,
        region=region, compute_all=compute_all, tissue=tissue)
    return run_upscale(options, Reports(progress, on_plan, on_cluster))


def run_upscale(options: UpscaleOptions, reports: Reports = Reports(), prepared: Preflight | None = None) -> Summary:
    """:func:`upscale` with its options in one object (``prepared``: its preflight, where the caller
    already made it)."""
    start = time.perf_counter()
    options = options.checked()
    check_output_name(options.dst)  # type: ignore[arg-type]
    device = resolve_device(options.device)
    if device.type == "cpu":
        reuse_freed_memory()  # before this run's threads (the lease's, the scheduler's) first allocate
    with hold(held_places(options.dst, options.workdir), options.wait) as leases:  # type: ignore[arg-type]
        pre = prepared or preflight(options)  # the output is held before anything is read
        check_output(options.src, options.dst, options.overwrite)  # type: ignore[arg-type]
        spec, state = build(pre, device)
        if reports.on_plan and spec.plan.seconds:
            reports.on_plan("plan: " + spec.plan.describe())
        if reports.on_plan and spec.engine is not None:
            reports.on_plan(spec.engine.describe())
        chunks_on = _scheduler(spec.plan, device, options)  # before any output: it may fail
        try:
            return runner.run(spec, state, chunks_on, leases, reports, start)
        finally:
            if isinstance(chunks_on, Cluster):
                chunks_on.close()


def network_for(model: str | os.PathLike[str] | Network | None, device: str = "auto",
                precision: str = "fp32", kernels: Kernels = "fast") -> tuple[Network, torch.device]:
    """The network as a job runs it: on the device, in the precision, with the kernels (a copy of a
    caller's network where that would change it), and that device."""
    check_kernels(kernels)
    torch_device = resolve_device(device)
    return load_network(model, torch_device, resolve_precision(precision, torch_device), kernels), torch_device


def _scheduler(plan: Plan, device: torch.device, options: UpscaleOptions) -> Threads | Cluster:
    if options.scheduler:
        return Cluster.connect(options.scheduler, options.resources)
    if options.workers:
        return Cluster.local(options.workers, options.resources)
    return Threads(plan.chunks_at_once(device.type))


def upscale_array(
    image: da.Array | xarray.DataArray,
    model: str | os.PathLike[str] | Network | None = None,
    *,
    chunk: int = Plan.chunk,
    blocks_per_stage: int = Plan.blocks_per_stage,
    device: str = "cpu",
    precision: str = "fp32",
    mode: Mode = "exact",
    tile_pad: int = DEFAULT_TILE_PAD,
    channels: ChannelMode = "auto",
    alpha: AlphaMode = "network",
    value_range: ValueRange | None = None,
    kernels: Kernels = "fast",
    engine: str = "auto",
) -> da.Array | xarray.DataArray:
    """Lazy: a (y, x, c) dask array in, its (y*s, x*s, c) super-resolution out, same dtype.

    ``channels="auto"`` runs 3 channels as RGB, 4 as RGBA, others each as a grey image. Stages pass
    activations through dask's memory (halos by ``dask.array.overlap`` with ``boundary='none'``,
    so halos stop at the image border) instead of a Zarr work folder.

    An xarray DataArray with y and x dims and, optionally, one of band / c / channel / channels (any
    order) comes back as a lazy DataArray with the same dims, coordinates at the new pixel centres,
    and its attrs, name, nodata encoding and (with rioxarray) CRS and scaled transform: see
    :mod:`lpdask.xarrays`.

    ``engine`` runs the stages (:mod:`lpdask.engines`); "auto" takes the fastest installed for the
    device and precision, the time to build it weighed against whole-image inference's on this image.
    """
    check_plan_options(chunk, blocks_per_stage, tile_pad=tile_pad)
    check_kernels(kernels)
    check_engine(engine)
    labels = None
    if not isinstance(image, da.Array):
        from .xarrays import unlabelled  # imports xarray only for a DataArray

        image, labels = unlabelled(image, chunk)
    if image.ndim != 3:
        raise LpdaskError(f"image of shape {image.shape} is not (y, x, c)")
    dtype = check_dtype(image.dtype)
    value_range = check_value_range(value_range, dtype)
    hint = {3: "rgb", 4: "rgba"}.get(image.shape[2], "minisblack")
    photometric = photometric_of(image.shape[2], channels, hint)  # type: ignore[arg-type]
    plan = Plan.given(chunk, blocks_per_stage)
    torch_device = resolve_device(device)
    compute = resolve_precision(precision, torch_device)
    net = load_network(model, torch_device, compute, kernels)
    runs = passes(image.shape[2], photometric, alpha, net)  # type: ignore[arg-type]
    network_stages = stages_for(net, mode, plan.blocks_per_stage, tile_pad)
    chosen = choose_engine(net, network_stages, torch_device, precision, engine, None,
                           image.shape[0] * image.shape[1] * len(runs))
    network_stages = list(chosen.compiled)
    check_grid(plan.chunk, net.input_factor, net.scale)
    pixels = image.transpose(2, 0, 1)
    outputs = []
    for run in runs:
        stages = network_stages if run.uses_network else resize_stages(run.kind, net.scale)
        factor = net.input_factor if run.uses_network else 1
        values = lazy_pass(pixels, run, stages, factor, plan.chunk, torch_device, compute, value_range)
        outputs.append(values.map_blocks(denormalise, run, dtype, value_range, dtype=dtype,
                                         chunks=(len(run.channels), *values.chunks[1:])))
    result = (outputs[0] if len(outputs) == 1 else da.concatenate(outputs, axis=0)).transpose(1, 2, 0)
    return result if labels is None else labels.apply(result, net.scale)
