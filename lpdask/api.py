"""The Python API: ``upscale`` (files in, OME-Zarr out) and ``upscale_array`` (dask in, dask out)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Callable, Iterator, Literal

import dask.array as da
import numpy as np
import torch
import zarr
from torch.nn import functional as F

from . import __version__
from .channels import AlphaMode, ChannelMode, Pass, passes, photometric_of
from .chunks import Box, stored_chunk
from .device import network_on, resolve_device, resolve_precision, storage_dtype
from .errors import RESUMES, Fault, InputChanged, LpdaskError, MetadataWarning, OutputBusy, fault_of, writing
from .export import TIFF_SUFFIXES, check_compression, partial_tiff_path, publish, wants_ome
from .graph import Job, run_job, run_window
from .io.locations import Location
from .io.metadata import ImageMetadata
from .io.omezarr import OmeZarrSink
from .io.sources import Source, open_source
from .jobs import (SOFTWARE_PREFIX, WorkFolder, check_output, check_output_name, default_workdir, digest,
                   held_places, output_state, stored_plan)
from .lease import Leases, hold
from .memory import peak_bytes
from .models import load_model
from .models.network import Network
from .pixels import ValueRange, check_dtype, check_value_range, from_unit, to_unit
from .plan import DEFAULT_TILE_PAD, Plan
from .progress import Bars
from .schedulers import Cluster, Threads
from .stages import IMAGE, Stage, resize_stages, validate
from .tiles import tile_stages, whole_stages

Mode = Literal["exact", "tile"]


@dataclass(frozen=True)
class Summary:
    """What a finished ``upscale`` did."""

    output: Location
    seconds: float
    input_megapixels: float
    output_shape: tuple[int, ...]
    chunks: int
    stages: int
    levels: int
    peak_memory_bytes: int
    """This process's own peak (``VmHWM``), plus its local cluster's workers'."""
    runs: int = 1
    """Planes times channel passes (each a run of every stage)."""
    computed_chunks: int = 0
    """Chunk tasks computed by this call (fewer than runs x stages x chunks when it resumed)."""
    resumed: bool = False
    already_complete: bool = False
    worker_peak_memory_bytes: tuple[int, ...] = ()
    """Each worker's peak, for a local cluster the call started (counted in ``peak_memory_bytes``)."""

    @property
    def megapixels_per_second(self) -> float:
        return self.input_megapixels / self.seconds if self.seconds else float("inf")

    def __str__(self) -> str:
        if self.already_complete:
            return f"{self.output} is already complete for this input, model and options; nothing to do"
        resumed = f" (resumed: {self.computed_chunks} chunk tasks recomputed)" if self.resumed else ""
        return (f"wrote {self.output} {self.output_shape} in {self.seconds:.1f} s: "
                f"{self.input_megapixels:.3f} input megapixels, {self.megapixels_per_second:.4f} MP/s, "
                f"{self.runs} run{'s' if self.runs > 1 else ''} x {self.stages} stages x {self.chunks} chunks, "
                f"{self.levels} pyramid levels, "
                f"peak memory {self.peak_memory_bytes / 2**20:.0f} MiB{resumed}")


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
    on_cluster: Callable[[str], None] | None = None,
    on_plan: Callable[[str], None] | None = None,
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
    is the TIFF output's codec (zlib, zstd, lzw, jpeg for 8-bit, none).

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
    """
    start = time.perf_counter()
    Plan(Plan.chunk if chunk is None else chunk,  # check what was given
         Plan.blocks_per_stage if blocks_per_stage is None else blocks_per_stage, threads)
    if workers < 0:
        raise LpdaskError(f"--workers {workers} must be at least 1 (0: threads in this process)")
    if workers and scheduler:
        raise LpdaskError("--workers starts a local cluster and --scheduler joins one: give only one")
    check_output_name(dst)
    with hold(held_places(dst, workdir), wait) as leases:
        source = open_source(src, series, level)
        value_range = check_value_range(value_range, source.dtype)
        photometric = photometric_of(source.channels, channels, source.photometric)
        runs = passes(source.channels, photometric, alpha)
        output = check_output(src, dst, overwrite)
        torch_device = resolve_device(device)
        compute = resolve_precision(precision, torch_device)
        net = _network(model, torch_device, compute)
        if torch_device.type == "cuda":
            net.to(memory_format=torch.channels_last)  # type: ignore[call-arg]
        scale = net.scale
        meta = replace(source.meta, photometric=photometric).rescaled(scale)
        as_tiff = output.name.lower().endswith(TIFF_SUFFIXES)
        check_compression(compression, source.dtype)
        work = WorkFolder(Location.of(workdir) / default_workdir(output).name if workdir else default_workdir(output))
        chosen = _choose_plan(net, source, torch_device, mode, chunk, blocks_per_stage, threads, workers, scheduler,
                              None if overwrite else stored_plan(output, work), work, max_memory)
        plan = Plan(chosen["chunk"], chosen["blocks_per_stage"], threads or chosen.get("workers", 0))
        if on_plan and "estimate" in chosen:
            on_plan(chosen["estimate"])
        if chosen["storage"] == "memory":
            network_stages = whole_stages(net)
        else:
            network_stages = stages_for(net, mode, plan.blocks_per_stage, tile_pad)
        check_grid(plan.chunk, net)
        stored = {k: chosen[k] for k in ("chunk", "blocks_per_stage", "storage")}
        identity = digest({
            "input": _fingerprint(source), "model": _model_digest(net), "scale": scale, "mode": mode,
            "tile_pad": tile_pad if mode == "tile" else None, "plan": stored,
            "channels": photometric, "alpha": alpha, "value_range": value_range, "precision": precision,
            "device": torch_device.type, "output": "tiff" if as_tiff else "zarr", "version": __version__})
        state = output_state(output, work, identity["digest"], overwrite)
        runner = _scheduler(plan, torch_device, workers, scheduler, resources)  # before any output: it may fail
        try:
            return _run(state, output, work, identity, runner, source, plan, net, network_stages, runs, meta, as_tiff,
                        value_range, torch_device, compute, src, start, progress, on_cluster, compression, leases)
        finally:
            if isinstance(runner, Cluster):
                runner.close()


def _run(state: str, output: Location, work: WorkFolder, identity: dict[str, Any], runner: Threads | Cluster,
         source: Source, plan: Plan, net: Network, network_stages: list[Stage], runs: list[Pass],
         meta: ImageMetadata, as_tiff: bool, value_range: ValueRange | None, torch_device: torch.device,
         compute: torch.dtype, src: str | os.PathLike[str], start: float, progress: bool,
         on_cluster: Callable[[str], None] | None, compression: str, leases: Leases) -> Summary:
    """Run (or resume) the job on ``runner`` and finish its output."""
    scale = net.scale
    shape = tuple(source.channels if a == "c" else source.height * scale if a == "y"
                  else source.width * scale if a == "x" else source.shape[source.axes.index(a)]
                  for a in source.output_axes)
    if state == "complete":
        return Summary(output, time.perf_counter() - start, _megapixels(source), shape, 0, len(network_stages), 0,
                       peak_bytes(), 0, already_complete=True)
    _warn_dropped(meta, as_tiff)
    resumed = state == "resume" and work.identity() == identity["digest"]
    need = {work.path: _work_bytes(network_stages, source, net.input_factor, as_tiff, shape,
                                   storage_dtype(compute).itemsize),
            output: math.prod(shape) * source.dtype.itemsize * 4 // 3}
    if not resumed:
        check_disk(work.path, output, need[work.path], need[output])
    try:
        if state == "new":
            output.remove()
            work.clear()
        work.start(identity)
        result = work.path / "result.zarr" if as_tiff else output
        if not resumed:
            result.remove()
        sink = OmeZarrSink(result, source.output_axes, shape, source.dtype, stored_chunk(plan.chunk * scale),
                           source.channels if meta.photometric != "minisblack" else 1,
                           {"job": identity["digest"], "plan": identity["plan"]}, resume=resumed)
        if isinstance(runner, Cluster) and on_cluster:
            on_cluster(runner.dashboard_link)
        torch_threads = max(1, (os.cpu_count() or 1) // runner.workers) if isinstance(runner, Threads) else 0
        jobs = [Job(source, network_stages if p.uses_network else resize_stages(p.kind, scale), plan.chunk, work,
                    sink, torch_device, net.input_factor if p.uses_network else 1, compute, plane, p, value_range, k,
                    torch_threads)
                for k, (plane, p) in enumerate((plane, p) for plane in source.planes() for p in runs)]
        chunks = len(jobs[0].grid(0))
        bars = Bars([job.stages for job in jobs], chunks, disable=not progress)
        partial_tiff = partial_tiff_path(output, work.path)
        computed = 0

        def checked() -> None:
            """Between stages and before the output is finished: the leases are still ours and the input
            is what it was when the job started."""
            leases.check()
            _check_input(source, identity)

        def stage(index: int, stage: Stage, chunks: int) -> Callable[[], None]:
            checked()
            tick = bars(index, stage, chunks)

            def ticked() -> None:
                leases.check()
                tick()

            return ticked

        try:
            with _threads(torch_threads or None):
                for job in jobs:
                    bars.start(job.run, _label(job, len(jobs)))
                    computed += run_job(job, runner, stage)
                bars.close()
                checked()
                with writing(result):
                    levels = sink.finish(meta, Location.of(src).name, scheduler="threads",
                                         num_workers=plan.workers("cpu"))
                if as_tiff:
                    from .io.tiff import write_tiff

                    group = zarr.open_group(str(result), mode="r")
                    with writing(output):
                        write_tiff(partial_tiff, [group[str(k)] for k in range(levels)], meta,
                                   ome=wants_ome(output, source.ome, meta),
                                   software=f"{SOFTWARE_PREFIX}{identity['digest']} {json.dumps(identity['plan'])}",
                                   compression=compression)
                        publish(partial_tiff, output)
        except BaseException as exc:
            bars.close()
            partial_tiff.unlink(missing_ok=True)
            mistake = isinstance(exc, LpdaskError) and not isinstance(exc, (Fault, OutputBusy))
            if mistake and not _input_changed(source, identity):
                output.remove()  # a user mistake found while running (e.g. float values out of range)
                work.clear()
            raise  # otherwise the work folder and the unfinished output stay: the same command again resumes
        work.clear()
        workers = tuple(runner.worker_peaks()) if isinstance(runner, Cluster) else ()
        return Summary(output, time.perf_counter() - start, _megapixels(source), shape, chunks, len(network_stages),
                       levels, peak_bytes() + sum(workers), len(jobs), computed, resumed,
                       worker_peak_memory_bytes=workers)
    except BaseException as exc:
        fault = _fault(exc, source, identity, output, work, need, started=state != "new" or work.path.exists())
        if fault is not None:
            raise fault from None
        raise


def _input_changed(source: Source, identity: dict[str, Any]) -> str | None:
    """How the input differs from when the job started ("changed", "vanished"), or None."""
    try:
        return "changed" if _fingerprint(source) != identity["input"] else None
    except FileNotFoundError:
        return "vanished"


def _check_input(source: Source, identity: dict[str, Any]) -> None:
    how = _input_changed(source, identity)
    if how:
        if how == "vanished":
            raise InputChanged(f"the input {source.path} vanished during the run; nothing more was written: put it "
                               f"back as it was and {RESUMES}")
        raise InputChanged(f"the input {source.path} changed during the run (its size or modification time differ "
                           "from when it started), so the output would mix two images; nothing more was written: "
                           "run again with --overwrite to start over from the new input")


def _fault(exc: BaseException, source: Source, identity: dict[str, Any], output: Location, work: WorkFolder,
           need: dict[Location, int], started: bool) -> Fault | None:
    """The one-line fault behind ``exc``, if it is one: the input changed under the run, or a write
    failed for want of space or permission."""
    if isinstance(exc, Fault):
        return None
    if isinstance(exc, Exception) and _input_changed(source, identity):
        try:
            _check_input(source, identity)
        except InputChanged as changed:
            return changed
    if not isinstance(exc, OSError):
        return None
    where = str(getattr(exc, "lpdask_place", None) or exc.filename or "")
    for place, what in ((work.path, "the work folder"), (output, "the output")):
        if where and Location.of(where).path.startswith(place.path):
            size = need[place]
            return fault_of(exc, f"{what} {place}", started=started,
                            need=f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{max(size / 1e6, 0.1):.1f} MB")
    return fault_of(exc, f"the output {output} or its work folder {work.path}", started=started)


def _network(model: str | os.PathLike[str] | Network | None, device: torch.device, dtype: torch.dtype) -> Network:
    """The model on ``device`` in ``dtype``: loaded by name or path, or the caller's network (a copy
    where converting would change it)."""
    if isinstance(model, Network):
        return network_on(model, device, dtype)
    return network_on(load_model(model), device, dtype, owned=True)


def _choose_plan(net: Network, source: Source, device: torch.device, mode: str, chunk: int | None,
                 blocks_per_stage: int | None, threads: int, workers: int, scheduler: str | None,
                 stored: dict[str, Any] | None, work: WorkFolder, max_memory: float | None) -> dict[str, Any]:
    """Chunk, grouping and storage: as given, as a resumed job started, or from the planner."""
    if mode == "tile":
        return {"chunk": chunk or Plan.chunk, "blocks_per_stage": 1, "storage": "zarr"}
    if chunk is not None and blocks_per_stage is not None:
        return {"chunk": chunk, "blocks_per_stage": blocks_per_stage, "storage": "memory" if blocks_per_stage == 0
                else "zarr"}
    if stored and chunk in (None, stored.get("chunk")) and blocks_per_stage in (None, stored.get("blocks_per_stage")):
        return dict(stored)
    from .planner import choose

    local = threads or workers or None
    best, _ = choose(net, source.height, source.width, device, chunk=chunk, blocks_per_stage=blocks_per_stage,
                     workers=local if not scheduler else None, work=work.path.url if work.path.is_local else None,
                     memory_budget=int(max_memory) if max_memory else None)
    return {"chunk": best.chunk, "blocks_per_stage": best.blocks_per_stage, "storage": best.storage,
            "workers": 0 if scheduler or workers else best.workers, "estimate": "plan: " + best.describe()}


def _scheduler(plan: Plan, device: torch.device, workers: int, address: str | None,
               resources: dict[str, float] | None) -> Threads | Cluster:
    if address:
        return Cluster.connect(address, resources)
    if workers:
        return Cluster.local(workers, resources)
    return Threads(plan.workers(device.type))


def _megapixels(source: Source) -> float:
    return source.height * source.width * source.plane_count / 1e6


def _fingerprint(source: Source) -> dict[str, object]:
    """What identifies the input: where it is, which image, its shape, and when it last changed
    (file size and modification time; for Zarr, of the array's metadata document)."""
    where = Location.of(source.path)
    stamp = where
    if source.kind == "zarr":
        folder = where / source.array_path if source.array_path else where
        stamp = next((f for f in (folder / "zarr.json", folder / ".zarray") if f.exists()), folder)
    size, modified = stamp.size_and_mtime()
    return {"path": source.path, "array": source.array_path, "series": source.series, "level": source.level,
            "shape": list(source.shape), "dtype": str(source.dtype), "size": size, "modified": modified}


def _model_digest(net: Network) -> str:
    """A hash of the network's class and weights."""
    h = hashlib.sha256(type(net).__qualname__.encode())
    for name, tensor in net.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


def _work_bytes(stages: list[Stage], source: Source, d: int, as_tiff: bool, shape: tuple[int, ...],
                itemsize: int = 4) -> int:
    """Disk the work folder needs at most: the three largest activations (no more are ever kept
    at once), plus the result before it becomes a TIFF."""
    height, width = -(-source.height // d), -(-source.width // d)
    sizes, factor = [], 1
    for stage in stages[:-1]:
        factor *= stage.scale
        sizes.append(stage.channels * height * factor * width * factor * itemsize)
    need = sum(sorted(sizes)[-3:])
    if as_tiff:
        need += math.prod(shape) * source.dtype.itemsize * 4 // 3
    return need


def check_disk(work: Location, output: Location, work_bytes: int, output_bytes: int) -> None:
    """Refuse up front a job whose work folder (or output) will not fit on its disk (object
    stores are not checked)."""
    for what, where, need in (("work folder", work, work_bytes), ("output", output, output_bytes)):
        if not where.is_local:
            continue
        folder = where.local_path
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        free = shutil.disk_usage(existing).free
        if need > free:
            raise LpdaskError(f"not enough disk for the {what}: it needs about {need / 1e9:.1f} GB and "
                              f"{existing} has {free / 1e9:.1f} GB free; use --workdir on a larger disk or a "
                              "smaller input")


def _warn_dropped(meta: ImageMetadata, as_tiff: bool) -> None:
    if meta.dropped:
        warnings.warn(f"input metadata not carried to the output: {', '.join(meta.dropped)}", MetadataWarning,
                      stacklevel=3)
    if meta.geotiff and not as_tiff:
        warnings.warn("GeoTIFF georeferencing has no OME-Zarr equivalent: kept under the group's "
                      "lpdask.geotiff attribute, which GIS tools do not read; write a .tif output "
                      "(or `lpdask export`) for a GeoTIFF", MetadataWarning, stacklevel=3)


def _label(job: Job, runs: int) -> str:
    if runs == 1:
        return ""
    plane = " ".join(f"{a}={i}" for a, i in job.plane.items())
    return f"{plane} {job.pass_.describe()}".strip()


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
    channels: ChannelMode = "auto",
    alpha: AlphaMode = "network",
    value_range: ValueRange | None = None,
) -> da.Array:
    """Lazy: a (y, x, c) dask array in, its (y*s, x*s, c) super-resolution out, same dtype.

    ``channels="auto"`` runs 3 channels as RGB, 4 as RGBA, others each as a grey image. Stages pass
    activations through dask's memory (halos by ``dask.array.overlap`` with ``boundary='none'``,
    so halos stop at the image border) instead of a Zarr work folder.
    """
    if image.ndim != 3:
        raise LpdaskError(f"image of shape {image.shape} is not (y, x, c)")
    dtype = check_dtype(image.dtype)
    value_range = check_value_range(value_range, dtype)
    hint = {3: "rgb", 4: "rgba"}.get(image.shape[2], "minisblack")
    runs = passes(image.shape[2], photometric_of(image.shape[2], channels, hint), alpha)  # type: ignore[arg-type]
    plan = Plan(chunk, blocks_per_stage)
    torch_device = resolve_device(device)
    compute = resolve_precision(precision, torch_device)
    net = _network(model, torch_device, compute)
    network_stages = stages_for(net, mode, plan.blocks_per_stage, tile_pad)
    check_grid(plan.chunk, net)
    pixels = image.transpose(2, 0, 1)
    outputs = []
    for run in runs:
        stages = network_stages if run.uses_network else resize_stages(run.kind, net.scale)
        factor = net.input_factor if run.uses_network else 1
        values = _lazy_run(pixels, run, stages, factor, plan.chunk, torch_device, compute, value_range)
        outputs.append(values.map_blocks(_denormalise, run, dtype, value_range, dtype=dtype,
                                         chunks=(len(run.channels), *values.chunks[1:])))
    result = outputs[0] if len(outputs) == 1 else da.concatenate(outputs, axis=0)
    return result.transpose(1, 2, 0)


def _lazy_run(pixels: da.Array, run: Pass, stages: list[Stage], d: int, chunk: int, device: torch.device,
              compute: torch.dtype, value_range: ValueRange | None) -> da.Array:
    """One channel pass as a lazy graph: (c, y, x) pixels -> (3 or 1, y*s, x*s) float32 output."""
    pixels = pixels[list(run.channels)]
    run = Pass(run.kind, tuple(range(len(run.channels))))
    height, width = pixels.shape[1:]
    widest = max(stage.halo for stage in stages)
    padded = (-(-height // d) * d, -(-width // d) * d)
    if padded != (height, width):  # Real-ESRGAN's reflect padding for pixel-unshuffle models
        pixels = da.pad(pixels, ((0, 0), (0, padded[0] - height), (0, padded[1] - width)), mode="reflect")
    rows = _chunk_sizes(padded[0] // d, chunk // d, widest)
    cols = _chunk_sizes(padded[1] // d, chunk // d, widest)
    pixels = pixels.rechunk((-1, tuple(n * d for n in rows), tuple(n * d for n in cols)))
    width_in = 3 if run.kind == "grey" else len(run.channels)
    arrays = {IMAGE: pixels.map_blocks(_normalise, run, value_range, d, dtype=np.float32,
                                       chunks=(width_in * d * d, rows, cols))}
    factor = 1
    for stage in stages:
        inputs = [arrays[name] for name in stage.inputs]
        depth = {0: 0, 1: stage.halo if len(rows) > 1 else 0, 2: stage.halo if len(cols) > 1 else 0}
        grown = [da.overlap.overlap(a, depth=depth, boundary="none") for a in inputs]
        s = stage.scale
        arrays[stage.name] = da.map_blocks(
            partial(_run_block, stage, device, compute, (len(rows), len(cols))), *grown,
            dtype=np.float32, chunks=(stage.channels, tuple(n * factor * s for n in rows),
                                      tuple(n * factor * s for n in cols)))
        factor *= s
    return arrays[stages[-1].name][:, : height * factor // d, : width * factor // d]


def _chunk_sizes(length: int, chunk: int, halo: int) -> tuple[int, ...]:
    """Chunk sizes along one axis; a last chunk narrower than the halo joins the one before it."""
    sizes = [chunk] * (length // chunk) + ([length % chunk] if length % chunk else [])
    if len(sizes) > 1 and sizes[-1] < halo:
        sizes[-2:] = [sizes[-2] + sizes[-1]]
    if len(sizes) > 1 and min(sizes) < halo:
        raise LpdaskError(f"chunk {chunk} is smaller than the widest stage halo {halo}; "
                          "use a larger chunk or fewer blocks per stage")
    return tuple(sizes)


def _normalise(block: np.ndarray, run: Pass, value_range: ValueRange | None, factor: int) -> np.ndarray:
    values = torch.from_numpy(run.to_network(to_unit(block.transpose(1, 2, 0), value_range)))
    return F.pixel_unshuffle(values[None], factor)[0].numpy() if factor > 1 else values.numpy()


def _denormalise(block: np.ndarray, run: Pass, out_dtype: np.dtype, value_range: ValueRange | None) -> np.ndarray:
    return from_unit(run.from_network(block), out_dtype, value_range)


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


@contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """Give torch ``count`` threads (the cores divided among the chunks running at once) and
    restore it after."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)

