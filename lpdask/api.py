"""The Python API: ``upscale`` (files in, OME-Zarr out) and ``upscale_array`` (dask in, dask out)."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable

import dask.array as da
import torch

from . import __version__
from .channels import passes, photometric_of
from .device import network_on, resolve_device, resolve_precision
from .errors import LpdaskError
from .executors.staged import Mode, Staged, stages_for, whole_stages
from .executors.lazy import Lazy, denormalise, lazy_pass
from .executors.stream import Stream
from .export import TIFF_SUFFIXES, tiff_kind
from .io.locations import Location, existing_folder
from .io.sources import Source, open_source
from .jobs import (JobSpec, WorkFolder, check_output, check_output_name, default_workdir, digest, fingerprint,
                   held_places, model_digest, output_state, stored_plan)
from .kernels import Kernels
from .lease import hold
from .memory import reuse_freed_memory
from .models import load_model
from .models.network import Network
from .nodata import gdal_number, nodata_of
from .options import (AlphaMode, ChannelMode, check_compression, check_executor, check_grid, check_kernels,
                      check_plan_options, check_value_range)
from .pixels import ValueRange, check_dtype
from .plan import DEFAULT_TILE_PAD, EXECUTOR_STORAGE, Plan
from . import runner
from .runner import Summary
from .schedulers import Cluster, Threads
from .stages import resize_stages

if TYPE_CHECKING:
    import xarray

__all__ = ["Summary", "upscale", "upscale_array"]


def upscale(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] | Network | None = None,
    chunk: int | None = None,
    blocks_per_stage: int | None = None,
    threads: int = 0,
    device: str = "auto",
    precision: str = "fp32",
    workdir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    mode: Mode = "exact",
    tile_pad: int = DEFAULT_TILE_PAD,
    series: int = 0,
    level: int = 0,
    channels: ChannelMode = "auto",
    alpha: AlphaMode = "network",
    value_range: ValueRange | None = None,
    workers: int = 0,
    scheduler: str | None = None,
    resources: dict[str, float] | None = None,
    compression: str = "zlib",
    max_memory: float | None = None,
    progress: bool = False,
    wait: bool = False,
    executor: str = "auto",
    strip: int | None = None,
    tile_rows: int | None = None,
    on_cluster: Callable[[str], None] | None = None,
    on_plan: Callable[[str], None] | None = None,
    cog: bool | None = None,
    nodata: str | float | None = None,
    kernels: Kernels = "fast",
) -> Summary:
    """Super-resolve the image at ``src`` into ``dst``: an OME-Zarr (``.zarr``) or a tiled, pyramidal
    (OME-/Geo)TIFF (``.tif``, ``.ome.tif``), chunk by chunk.

    ``model`` is a checkpoint path, a model name or a loaded network (default: Real-ESRGAN x4plus).
    ``series`` / ``level`` pick the input image; ``channels`` how channels go through the network
    (auto: RGB, RGBA, or each channel as a grey image, as the input says); ``alpha`` how an alpha
    channel is upscaled; ``value_range`` maps a float image's (low, high) to [0, 1].
    ``precision`` fp16 / bf16 need CUDA. Chunks run on threads of this process, or on a local
    dask.distributed cluster of ``workers`` processes, or on the cluster at ``scheduler`` (tasks ask
    for ``resources``, e.g. {"GPU": 1}); ``on_cluster`` gets its dashboard link. ``compression``
    is the TIFF output's codec (zlib, zstd, lzw, jpeg for 8-bit, none). ``cog``: a ``.tif`` output
    as a Cloud Optimized GeoTIFF (through GDAL: the ``lpdask[geo]`` extra); None (the default) for a
    plain ``.tif`` of a georeferenced input, False for levels as SubIFDs. ``kernels="eager"`` runs
    the network's eager reference forward instead of lpdask's fast kernels, for comparison.

    ``chunk`` and ``blocks_per_stage`` left out are chosen by the planner (:mod:`lpdask.planner`)
    within ``max_memory`` bytes (default: 4 GiB, or half the available memory if less); ``on_plan``
    gets its choice and prediction. A resumed job keeps the plan it started with.

    Intermediate activations go to ``workdir`` (default: beside ``dst``), in a folder removed once
    the result is complete. A job that dies leaves it and its partial output: the same call again
    resumes, recomputing only unfinished chunks; on a finished job it does nothing. Metadata that
    cannot be carried is named in a :class:`~lpdask.errors.MetadataWarning`.

    One run at a time holds ``dst`` (:mod:`lpdask.lease`): another run on it raises
    :class:`~lpdask.errors.OutputBusy`, or waits for it with ``wait``. A fault met while running
    (disk full, a place not writable, the input changed) raises a :class:`~lpdask.errors.Fault` and
    keeps the finished chunks.

    ``executor`` is how each run is computed: "stream" (tiles ``chunk`` wide and ``tile_rows`` high,
    0 for the image's height, streamed row strip by row strip through every stage, ``strip`` rows
    at a time: no activation stored), "staged" (stage by stage through the work folder), "whole"
    (the whole network on each chunk, with its full halo), "auto" (the planner's choice among
    those three, the default; the staged executor when ``chunk`` and ``blocks_per_stage`` are both
    given without ``strip``), or "lazy" (one dask graph in memory, as :func:`upscale_array`;
    nothing to resume from)."""
    start = time.perf_counter()
    check_plan_options(chunk, blocks_per_stage, threads, workers, scheduler, tile_pad)
    executor = check_executor(executor, blocks_per_stage, strip, tile_rows)
    check_output_name(dst)
    check_kernels(kernels)
    torch_device = resolve_device(device)
    if torch_device.type == "cpu":
        reuse_freed_memory()  # before this run's threads (the lease's, the scheduler's) first allocate
    with hold(held_places(dst, workdir), wait) as leases:
        source = open_source(src, series, level)
        value_range = check_value_range(value_range, source.dtype)
        photometric = photometric_of(source.channels, channels, source.photometric)
        missing = nodata_of(source, nodata, photometric)
        output = check_output(src, dst, overwrite)
        tiff_kind(output, source.ome, source.meta, cog, source.plane_count)  # a COG that cannot be: refused now
        compute = resolve_precision(precision, torch_device)
        net = _network(model, torch_device, compute, kernels)
        runs = passes(source.channels, photometric, alpha, net)
        scale = net.scale
        meta = replace(source.meta, photometric=photometric).rescaled(scale)
        if meta.geotiff is not None and (nodata is not None or source.palette or missing is not None):
            meta = replace(meta, geotiff=replace(meta.geotiff, gdal_nodata=gdal_number(missing.output)  # what its
                                                 if missing is not None and missing.marks else None))  # missing hold
        as_tiff = output.name.lower().endswith(TIFF_SUFFIXES)
        check_compression(compression, source.dtype, photometric)
        work = WorkFolder(held_places(output, workdir)[-1] if workdir else default_workdir(output))
        stored = None if overwrite else stored_plan(output, work)
        plan, _ = plan_for(net, source, torch_device, mode=mode, chunk=chunk, blocks_per_stage=blocks_per_stage,
                           threads=threads, workers=workers, scheduler=scheduler, work=work.path, max_memory=max_memory,
                           stored=stored, executor=executor, strip=strip, tile_rows=tile_rows, output=output)
        check_grid(plan.chunk, net.input_factor, net.scale, plan.strip, plan.tile_rows)
        if on_plan and plan.seconds:
            on_plan("plan: " + plan.describe())
        network_stages = (whole_stages(net) if plan.storage == "memory"
                          else stages_for(net, mode, plan.blocks_per_stage, tile_pad))
        identity = digest({
            "input": fingerprint(source), "model": model_digest(net), "scale": scale, "mode": mode,
            "tile_pad": tile_pad if mode == "tile" else None, "plan": plan.to_json(),
            "channels": photometric, "alpha": alpha, "value_range": value_range, "precision": precision,
            "device": torch_device.type, "kernels": kernels, "output": "tiff" if as_tiff else "zarr",
            "nodata": missing.to_json() if missing else None, "version": __version__})
        state = output_state(output, work, identity["digest"], overwrite)
        chunks_on = _scheduler(plan, torch_device, workers, scheduler, resources)  # before any output: it may fail
        spec = JobSpec(source, output, work, identity, plan, net, network_stages, runs, meta, torch_device, compute,
                       value_range, compression, missing)
        try:
            executes = Lazy() if executor == "lazy" else Stream() if plan.storage == "stream" else Staged()
            return runner.run(spec, state, executes, chunks_on, leases, start, progress, on_cluster, cog)
        finally:
            if isinstance(chunks_on, Cluster):
                chunks_on.close()


def network_for(model: str | os.PathLike[str] | Network | None, device: str = "auto",
                precision: str = "fp32", kernels: Kernels = "fast") -> tuple[Network, torch.device]:
    """The network as a job runs it: on the device, in the precision, with the kernels (a copy of a
    caller's network where that would change it), and that device."""
    check_kernels(kernels)
    torch_device = resolve_device(device)
    return _network(model, torch_device, resolve_precision(precision, torch_device), kernels), torch_device


def _network(model: str | os.PathLike[str] | Network | None, device: torch.device, dtype: torch.dtype,
             kernels: Kernels = "fast") -> Network:
    """The model on ``device`` in ``dtype`` running ``kernels``: loaded by name or path, or the
    caller's network (a copy where converting would change it)."""
    if isinstance(model, Network):
        return network_on(model, device, dtype, kernels=kernels)
    return network_on(load_model(model), device, dtype, owned=True, kernels=kernels)


def plan_for(net: Network, source: Source, device: torch.device, *, mode: Mode = "exact", chunk: int | None = None,
             blocks_per_stage: int | None = None, threads: int = 0, workers: int = 0, scheduler: str | None = None,
             work: Location | None = None, max_memory: float | None = None,
             stored: dict[str, Any] | None = None, executor: str = "auto", strip: int | None = None,
             tile_rows: int | None = None, output: Location | None = None) -> tuple[Plan, list[Plan]]:
    """The plan ``upscale`` runs (and ``lpdask plan`` prints) with the alternatives the planner weighed
    (none where the plan was given or resumed): as given, as a resumed job (``stored``) started, or
    the planner's choice for ``net`` as it will run (device, precision) and ``threads`` / ``workers``,
    among the executors ``executor`` allows. Staged plans whose activations would not fit the free
    space of ``work``'s disk are left out while another plan is possible."""
    if mode == "tile":
        return Plan(chunk or Plan.chunk, 1, "zarr", threads), []
    forced = EXECUTOR_STORAGE.get(executor)
    if chunk is not None and blocks_per_stage is not None and (strip is not None or forced in (None, "zarr", "memory")):
        if forced == "stream" or strip is not None:
            return Plan.given(chunk, blocks_per_stage, threads, strip, tile_rows or 0), []
        return Plan.given(chunk, blocks_per_stage, threads), []
    if (stored and chunk in (None, stored.get("chunk")) and blocks_per_stage in (None, stored.get("blocks_per_stage"))
            and strip in (None, stored.get("strip")) and tile_rows in (None, stored.get("tile_rows", 0))
            and forced in (None, stored.get("storage", "zarr"))):
        return Plan.from_json(stored, threads), []
    from .planner import STORAGES, choose

    local = threads or workers or None
    storages = (forced,) if forced else ("zarr", "memory") if executor == "lazy" else STORAGES
    best, plans = choose(net, source.height, source.width, device, chunk=chunk, blocks_per_stage=blocks_per_stage,
                         workers=local if not scheduler else None,
                         work=work.url if work is not None and work.is_local else None,
                         memory_budget=int(max_memory) if max_memory else None, storages=storages, strip=strip,
                         tile_rows=tile_rows,
                         scratch=scratch_space(work, output, source, net.scale))
    return replace(best, workers=threads or (0 if scheduler or workers else best.workers)), plans


def scratch_space(work: Location | None, output: Location | None, source: Source, scale: int) -> int | None:
    """Bytes free for activations on the work folder's disk, less the output's where it shares that
    disk (None: not known, as on object stores)."""
    import shutil

    if work is None or not work.is_local:
        return None
    place = existing_folder(work.local_path)
    free = shutil.disk_usage(place).free
    if output is not None and output.is_local and existing_folder(output.local_path).stat().st_dev == place.stat().st_dev:
        free -= source.height * source.width * scale**2 * source.channels * source.dtype.itemsize * 4 // 3
    return max(0, free)


def _scheduler(plan: Plan, device: torch.device, workers: int, address: str | None,
               resources: dict[str, float] | None) -> Threads | Cluster:
    if address:
        return Cluster.connect(address, resources)
    if workers:
        return Cluster.local(workers, resources)
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
) -> da.Array | xarray.DataArray:
    """Lazy: a (y, x, c) dask array in, its (y*s, x*s, c) super-resolution out, same dtype.

    ``channels="auto"`` runs 3 channels as RGB, 4 as RGBA, others each as a grey image. Stages pass
    activations through dask's memory (halos by ``dask.array.overlap`` with ``boundary='none'``,
    so halos stop at the image border) instead of a Zarr work folder.

    An xarray DataArray with y and x dims and, optionally, one of band / c / channel / channels (any
    order) comes back as a lazy DataArray with the same dims, coordinates at the new pixel centres,
    and its attrs, name, nodata encoding and (with rioxarray) CRS and scaled transform: see
    :mod:`lpdask.xarrays`.
    """
    check_plan_options(chunk, blocks_per_stage, tile_pad=tile_pad)
    check_kernels(kernels)
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
    net = _network(model, torch_device, compute, kernels)
    runs = passes(image.shape[2], photometric, alpha, net)  # type: ignore[arg-type]
    network_stages = stages_for(net, mode, plan.blocks_per_stage, tile_pad)
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
