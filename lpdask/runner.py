"""The runner: runs a job (:class:`~lpdask.jobs.JobSpec`) with any executor over a scheduler: resume
bookkeeping (work folder, chunk markers), the disk check, progress, the output sink and the TIFF it
may become, and the faults met on the way. Executors (:mod:`lpdask.executors`) compute one run (a
plane and channel pass) each.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
import zarr

from .channels import Pass
from .chunks import stored_chunk
from .device import storage_dtype
from .errors import RESUMES, Fault, InputChanged, LpdaskError, MetadataWarning, OutputBusy, fault_of, writing
from .export import partial_tiff_path, publish, scratch_tiff_path, tiff_kind, write_pyramid_tiff
from .io.locations import Location, existing_folder
from .io.metadata import ImageMetadata
from .io.omezarr import OmeZarrSink, write_label
from .io.sources import Source
from .jobs import SOFTWARE_PREFIX, Identity, JobSpec, State, WorkFolder, fingerprint
from .lease import Leases
from .memory import peak_bytes
from .options import Reports
from .plan import Plan
from .progress import Bars
from .schedulers import Cluster, Threads
from .stages import Stage, resize_stages
from .task import Job

if TYPE_CHECKING:
    from .known import Known

KNOWING = ("stream", "staged", "whole")
"""The executors that compute only what is not known without the network (:mod:`lpdask.known`)."""
INPUT_CHECK_SECONDS = 1.0
"""How often, at most, progress within a stage (or a streamed tile) looks whether the input changed:
one stat (one request for a remote input) a second."""


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
    executor: str = "staged"
    """What computed it (``chunks`` are tiles when it streamed)."""
    plan: Plan | None = None
    """The plan it ran, with the planner's prediction where the planner made it."""
    engine: str = "eager"
    """What ran the stages' arithmetic (:mod:`lpdask.engines`)."""

    @property
    def megapixels_per_second(self) -> float:
        return self.input_megapixels / self.seconds if self.seconds else float("inf")

    def __str__(self) -> str:
        if self.already_complete:
            return f"{self.output} is already complete for this input, model and options; nothing to do"
        unit = "tile" if self.executor == "stream" else "chunk"
        resumed = f" (resumed: {self.computed_chunks} {unit} tasks recomputed)" if self.resumed else ""
        return (f"wrote {self.output} {self.output_shape} in {self.seconds:.1f} s: "
                f"{self.input_megapixels:.3f} input megapixels, {self.megapixels_per_second:.4f} MP/s, "
                f"{self.runs} run{'s' if self.runs > 1 else ''} x {self.stages} stages x {self.chunks} {unit}{'s' if self.chunks > 1 else ''}"
                f"{' streamed' if self.executor == 'stream' else ''}"
                f"{f' by {self.engine}' if self.engine != 'eager' else ''}, "
                f"{self.levels} pyramid levels, "
                f"peak memory {self.peak_memory_bytes / 2**20:.0f} MiB{resumed}")


def run(spec: JobSpec, state: State, scheduler: Threads | Cluster, leases: Leases, reports: Reports,
        started: float) -> Summary:
    """Run (or resume, or find complete) ``spec`` on ``scheduler`` with its executor and finish its output
    (a TIFF one as a Cloud Optimized GeoTIFF as the job says: :func:`~lpdask.export.tiff_kind`)."""
    source, output, work, identity, plan, meta = spec.source, spec.output, spec.work, spec.identity, spec.plan, spec.meta
    executor = spec.executor
    network_stages, scale, as_tiff = spec.stages, spec.network.scale, spec.as_tiff
    shape, computed_shape, crop = spec.output_shape, spec.computed_shape, spec.crop
    if state == "complete":
        return Summary(output, time.perf_counter() - started, _megapixels(source), shape, 0, len(network_stages), 0,
                       peak_bytes(), 0, already_complete=True, plan=plan,
                       engine=spec.engine.name if spec.engine else "eager")
    _warn_dropped(meta, as_tiff)
    kind = tiff_kind(output, source.ome, meta, spec.cog, source.plane_count, warn=True) if as_tiff else None
    # the result before it becomes a TIFF (or is cropped to the region) goes to the work folder first
    result = work.path / "result.zarr" if as_tiff or crop else output
    if state == "resume" and not (result / "0").exists():
        state = "new"  # its stored result is gone (removed by hand, or killed before it began): start again
    resumed = state == "resume" and work.identity() == identity.digest
    result_bytes = math.prod(shape) * source.dtype.itemsize * 4 // 3
    scratch = executor.scratch_bytes(network_stages, source.height, source.width, spec.network.input_factor,
                                     storage_dtype(spec.precision).itemsize)
    if crop:  # the window's whole output, then the region's with its pyramid before it becomes a TIFF
        scratch += math.prod(computed_shape) * source.dtype.itemsize
    # a COG's source pyramid goes to the work folder too
    need = {work.path: scratch + result_bytes * (as_tiff + (kind == "cog")), output: result_bytes}
    if not resumed:
        check_disk(work.path, output, need[work.path], need[output])
    try:
        if state == "new":
            output.remove()
            work.clear()
        work.start(identity)
        if not resumed:
            result.remove()
        marks = spec.nodata.output if spec.nodata and spec.nodata.marks else None
        chunk = stored_chunk(plan.chunk * scale)
        channel_chunk = source.channels if meta.photometric != "minisblack" else 1
        status = {"job": identity.digest, "plan": identity.plan, **({"region": identity.region} if crop else {})}
        sink = (OmeZarrSink.reopen(result, source.output_axes, computed_shape, source.dtype, chunk, marks) if resumed
                else OmeZarrSink(result, source.output_axes, computed_shape, source.dtype, chunk, channel_chunk,
                                 status, marks))
        if isinstance(scheduler, Cluster) and reports.on_cluster:
            reports.on_cluster(scheduler.dashboard_link)
        jobs = [_job(spec, sink, plane, p, k)
                for k, (plane, p) in enumerate((plane, p) for plane in source.planes() for p in spec.passes)]
        chunks = executor.tasks(jobs[0])
        torch_threads = 0
        if isinstance(scheduler, Threads):  # cores split between the chunks that can run at once
            torch_threads = max(1, (os.cpu_count() or 1) // max(1, min(scheduler.workers, chunks)))
            jobs = [replace(job, torch_threads=torch_threads) for job in jobs]
        bars = Bars([job.stages for job in jobs], chunks, disable=not reports.progress)
        partial_tiff = partial_tiff_path(output, work.path)
        computed = 0

        def checked() -> None:
            """Between stages and before the output is finished: the leases are still ours and the input
            is what it was when the job started."""
            leases.check()
            _check_input(source, identity)

        input_looked_at = time.monotonic()

        def stage(index: int | None, stage: Stage, chunks: int) -> Callable[[], None]:
            checked()
            tick = bars(index, stage, chunks)

            def ticked() -> None:
                nonlocal input_looked_at
                leases.check()
                if time.monotonic() - input_looked_at >= INPUT_CHECK_SECONDS:  # a streamed tile can take hours
                    input_looked_at = time.monotonic()
                    _check_input(source, identity)
                tick()

            return ticked

        try:
            if (spec.tissue or not spec.compute_all) and executor.name in KNOWING and spec.identity.mode == "exact":
                jobs = _with_known(jobs, plan.chunk, spec.compute_all, spec.tissue, spec.known)
            with _threads(torch_threads or None):
                for job in jobs:
                    bars.start(job.run, _label(job, len(jobs)))
                    computed += executor.run(job, scheduler, stage)
                    if job.known is not None and job.known.tissue is not None:
                        with writing(job.sink.path):
                            job.known.paint_background(job.pixels, scale)
                bars.close()
                checked()
                compute = {"scheduler": "threads", "num_workers": plan.chunks_at_once("cpu")}
                if spec.tissue:
                    known = jobs[0].known
                    assert known is not None and known.tissue is not None
                    with writing(result):
                        write_label(result, "tissue", known.tissue, meta, known.cell * scale)
                if crop:
                    final = work.path / "region.zarr" if as_tiff else output
                    with writing(final):
                        final.remove()  # what a run stopped while cropping left
                        region = OmeZarrSink(final, source.output_axes, shape, source.dtype, chunk, channel_chunk,
                                             status, marks)
                        region.copy(sink.level0, crop.scaled(scale), **compute)
                        levels = region.finish(meta, Location.of(source.path).name, 1, **compute)
                else:
                    final = result
                    with writing(result):
                        levels = sink.finish(meta, Location.of(source.path).name, executor.levels_written(jobs[0]),
                                             **compute)
                if kind is not None:
                    group = zarr.open_group(str(final), mode="r")
                    software = f"{SOFTWARE_PREFIX}{identity.digest} {json.dumps(identity.plan)}"
                    with writing(output):
                        write_pyramid_tiff(partial_tiff, [group[str(k)] for k in range(levels)], meta, kind,
                                           scratch=scratch_tiff_path(output, work.path), software=software,
                                           compression=spec.compression)
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
        workers = tuple(scheduler.worker_peaks()) if isinstance(scheduler, Cluster) else ()
        return Summary(output, time.perf_counter() - started, _megapixels(source), shape, chunks, len(network_stages),
                       levels, peak_bytes() + sum(workers), len(jobs), computed, resumed,
                       worker_peak_memory_bytes=workers, executor=executor.name, plan=plan,
                       engine=spec.engine.name if spec.engine else "eager")
    except BaseException as exc:
        fault = _fault(exc, source, identity, output, work, need, started=state != "new" or work.path.exists())
        if fault is not None:
            raise fault from None
        raise


def _job(spec: JobSpec, sink: OmeZarrSink, plane: dict[str, int], pass_: Pass, run: int) -> Job:
    """The chunk tasks' view of run ``run`` of ``spec``: one plane, one channel pass."""
    net, plan = spec.network, spec.plan
    return Job(spec.source, spec.stages if pass_.uses_network else resize_stages(pass_.kind, net.scale), plan.chunk,
               spec.work, sink, device=spec.device, input_factor=net.input_factor if pass_.uses_network else 1,
               precision=spec.precision, plane=plane, pass_=pass_, value_range=spec.value_range, run=run,
               strip=plan.strip, nodata=spec.nodata, tile_rows=plan.tile_rows)


def _with_known(jobs: list[Job], chunk: int, everything: bool, tissue: str | None, first: Known | None) -> list[Job]:
    """``jobs`` with what of each is known without the network (:mod:`lpdask.known`; with
    ``everything``, only what lies outside the ``tissue`` mask), or all as they are where nothing is
    known in any (the streaming executor's tiles then write the first pyramid levels as they go, as
    they cannot where they are cut down). ``first``: the first run's cells as the planner found them,
    used instead of reading the input again where they fit (the colours' responses computed again by
    the run's own stages)."""
    from .known import cell_for

    cell = cell_for(chunk)

    def of(k: int, job: Job) -> Known:
        if k == 0 and first is not None and first.cell == cell and not everything:
            return first.responding(job.pixels, list(job.stages), job.device, job.precision)
        return job.find_known(cell, everything, tissue)

    found = [of(k, job) for k, job in enumerate(jobs)]
    if not tissue and all(k.computed_share == 1.0 for k in found):
        return jobs
    return [replace(job, known=k) for job, k in zip(jobs, found)]


def _input_changed(source: Source, identity: Identity) -> str | None:
    """How the input differs from when the job started ("changed", "vanished"), or None."""
    try:
        return "changed" if fingerprint(source) != identity.input else None
    except FileNotFoundError:
        return "vanished"


def _input_fault(source: Source, identity: Identity) -> InputChanged | None:
    """The fault to raise if the input is not what it was when the job started (one stat)."""
    how = _input_changed(source, identity)
    if how == "vanished":
        return InputChanged(f"the input {source.path} vanished during the run; nothing more was written: put it "
                            f"back as it was and {RESUMES}")
    if how:
        return InputChanged(f"the input {source.path} changed during the run (its size or modification time differ "
                            "from when it started), so the output would mix two images; nothing more was written: "
                            "run again with --overwrite to start over from the new input")
    return None


def _check_input(source: Source, identity: Identity) -> None:
    fault = _input_fault(source, identity)
    if fault is not None:
        raise fault


def _fault(exc: BaseException, source: Source, identity: Identity, output: Location, work: WorkFolder,
           need: dict[Location, int], started: bool) -> Fault | None:
    """The one-line fault behind ``exc``, if it is one: the input changed under the run, or a write
    failed for want of space or permission."""
    if isinstance(exc, Fault):
        return None
    changed = _input_fault(source, identity) if isinstance(exc, Exception) else None
    if changed is not None:
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


def _megapixels(source: Source) -> float:
    """The input megapixels computed (a region's: its window's)."""
    return source.height * source.width * source.plane_count / 1e6


def check_disk(work: Location, output: Location, work_bytes: int, output_bytes: int) -> None:
    """Refuse up front a job whose work folder (or output) will not fit on its disk (object
    stores are not checked)."""
    for what, where, need in (("work folder", work, work_bytes), ("output", output, output_bytes)):
        if not where.is_local:
            continue
        folder = where.local_path
        existing = existing_folder(folder)
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
