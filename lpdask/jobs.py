"""Jobs: their description (:class:`JobSpec`), the work folder (activations and chunk markers), job
identity, and resume.

A job is identified by its input, its model and every option that changes the result. The work
folder records which chunks of which stage are fully written (an empty marker file, created only
after the chunk's write returned), so a job that died resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import zarr

from .errors import LpdaskError
from .io.locations import Location

if TYPE_CHECKING:
    import torch

    from .channels import Pass
    from .chunks import Box
    from .executors import Executor
    from .known import Known
    from .io.metadata import Photometric
    from .options import UpscaleOptions
    from .io.metadata import ImageMetadata
    from .io.sources import Source
    from .models.network import Network
    from .nodata import Nodata
    from .pixels import ValueRange
    from .plan import Plan
    from .planner import EngineChoice
    from .stages import Stage

IDENTITY_FILE = "job.json"
State = Literal["new", "resume", "complete"]


def default_workdir(output: str | os.PathLike[str] | Location) -> Location:
    """``OUTPUT.work`` beside the output: activations are large (256 bytes per input pixel each for
    Real-ESRGAN), so they go on the output's disk rather than a small system temp folder."""
    out = Location.of(output)
    return out.with_name(out.name + ".work")


def held_places(output: str | os.PathLike[str] | Location,
                workdir: str | os.PathLike[str] | None) -> list[Location]:
    """What a run on ``output`` holds a lease on: the output, and its work folder when ``workdir``
    puts it elsewhere (two outputs of one name may share that folder)."""
    out = Location.of(output)
    return [out] + ([Location.of(workdir) / default_workdir(out).name] if workdir else [])


class WorkFolder:
    """Intermediate stage outputs as float32 or float16 (c, y, x) Zarr v3 arrays, chunked like the stage grid,
    and the markers of finished chunks and stages (under ``markers/r<run>/``)."""

    def __init__(self, path: str | os.PathLike[str] | Location) -> None:
        self.path = Location.of(path)
        self._arrays: dict[str, zarr.Array] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_arrays": {}}  # workers reopen the arrays themselves

    def create(self, name: str, channels: int, height: int, width: int, chunk: int,
               dtype: str = "float32") -> zarr.Array:
        """The array for stage ``name``: kept if it exists with this shape and type (a resumed stage)."""
        location = str(self.path / f"{name}.zarr")
        shape, chunks = (channels, height, width), (channels, chunk, chunk)
        try:
            array = zarr.open_array(location, mode="r+")
            if array.shape != shape or array.chunks != chunks or array.dtype != np.dtype(dtype):
                raise ValueError("another shape")
        except (FileNotFoundError, ValueError, KeyError, zarr.errors.NodeTypeValidationError):
            array = zarr.create_array(location, shape=shape, chunks=chunks, dtype=dtype, compressors=None,
                                      fill_value=0.0, overwrite=True)
        self._arrays[name] = array
        return array

    def __getitem__(self, name: str) -> zarr.Array:
        array = self._arrays.get(name)
        if array is None:
            array = self._arrays[name] = zarr.open_array(str(self.path / f"{name}.zarr"), mode="r+")
        return array

    def remove(self, name: str) -> None:
        self._arrays.pop(name, None)
        (self.path / f"{name}.zarr").remove()

    def clear(self) -> None:
        self._arrays.clear()
        self.path.remove()

    def _markers(self, run: int) -> Location:
        return self.path / "markers" / f"r{run}"

    def mark_chunk(self, run: int, stage: str, i: int, j: int) -> None:
        """Record chunk (i, j) of ``stage`` as fully written."""
        folder = self._markers(run) / stage
        if folder.is_local:
            folder.mkdir()
        (folder / f"{i}.{j}").touch()

    def chunks_done(self, run: int, stage: str) -> set[tuple[int, int]]:
        names = (self._markers(run) / stage).names()
        return {(int(i), int(j)) for i, j in (name.split(".") for name in names)}

    def mark_stage(self, run: int, stage: str) -> None:
        """Record ``stage`` as finished and drop its chunk markers."""
        folder = self._markers(run)
        if folder.is_local:
            folder.mkdir()
        (folder / f"{stage}.done").touch()
        (folder / stage).remove()

    def stage_done(self, run: int, stage: str) -> bool:
        return (self._markers(run) / f"{stage}.done").exists()

    def identity(self) -> str | None:
        try:
            return json.loads((self.path / IDENTITY_FILE).read_text())["digest"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def start(self, identity: Identity) -> bool:
        """Begin or resume the job ``identity``; returns whether earlier work was kept."""
        if self.identity() == identity.digest:
            return True
        self.clear()
        self.path.mkdir()
        (self.path / IDENTITY_FILE).write_text(json.dumps(identity.to_json(), indent=1))
        return False


@dataclass(frozen=True)
class Identity:
    """What identifies a job: the input, the model and every option that changes the result's bytes.
    Two runs with the same ``digest`` write the same output, so one may resume the other."""

    input: dict[str, object]
    model: str
    scale: int
    mode: str
    tile_pad: int | None
    plan: dict[str, Any]
    channels: str
    alpha: str
    value_range: tuple[float, float] | None
    precision: str
    device: str
    kernels: str
    output: str
    nodata: dict[str, object] | None
    version: str
    region: list[int] | None = None
    """The region of interest asked for ([y0, y1, x0, x1] in the image's pixels), or None for all of it."""
    tissue: dict[str, object] | None = None
    """The tissue mask asked for ("auto", or its file's path, size and modification time), or None."""

    @property
    def digest(self) -> str:
        fields = {k: v for k, v in asdict(self).items()
                  if not (k in ("region", "tissue") and v is None)}  # older jobs' digests stay
        text = json.dumps(fields, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def to_json(self) -> dict[str, Any]:
        """What the work folder records (with the digest)."""
        return {**asdict(self), "digest": self.digest}


@dataclass(frozen=True)
class JobSpec:
    """One job, described once and handed down: what to read, what to run, where to write, how."""

    source: Source
    output: Location
    work: WorkFolder
    identity: Identity
    plan: Plan
    executor: Executor
    network: Network
    stages: list[Stage]
    passes: list[Pass]
    meta: ImageMetadata
    """The output's metadata (already rescaled)."""
    device: torch.device
    precision: torch.dtype
    value_range: ValueRange | None = None
    compression: str = "zlib"
    nodata: Nodata | None = None
    """The input's missing pixels (filled before the network, marked in the output)."""
    cog: bool | None = None
    """A TIFF output as a Cloud Optimized GeoTIFF: :func:`~lpdask.export.tiff_kind`."""
    engine: EngineChoice | None = None
    """What runs the stages' arithmetic (None: eager)."""
    compute_all: bool = False
    """Compute every pixel, also those known without the network (:mod:`lpdask.known`): the same bytes."""
    tissue: str | None = None
    """A tissue mask ("auto", or a label image or GeoJSON file: :mod:`lpdask.tissue`): only output
    inside it is computed."""
    crop: Box | None = None
    """The region of interest in the source's pixels (the source being the window that computes it
    exactly: :mod:`lpdask.region`); None for the whole image."""
    known: Known | None = None
    """What of the first run is known without the network, as the planner saw it (the runner uses its
    cells rather than read the input again)."""

    @property
    def as_tiff(self) -> bool:
        return self.output.name.lower().endswith((".tif", ".tiff"))

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Level 0 of the output, in NGFF axis order (the region's, where one is asked for)."""
        return self._shape(*(self.crop.shape if self.crop else (self.source.height, self.source.width)))

    @property
    def computed_shape(self) -> tuple[int, ...]:
        """Level 0 of what the executors compute: the output, or the whole window of a region."""
        return self._shape(self.source.height, self.source.width)

    def _shape(self, height: int, width: int) -> tuple[int, ...]:
        source, scale = self.source, self.network.scale
        return tuple(source.channels if a == "c" else height * scale if a == "y" else width * scale if a == "x"
                     else source.shape[source.axes.index(a)] for a in source.output_axes)


def fingerprint(source: Source) -> dict[str, object]:
    """What identifies the input: where it is, which image, its shape, and when it last changed
    (file size and modification time; for Zarr, of the array's metadata document)."""
    from .io.sources import stamp_location

    size, modified = stamp_location(source).size_and_mtime()
    window = source.window
    return {"path": source.path, "array": source.array_path, "series": source.series, "level": source.level,
            "shape": list(source.shape), "dtype": str(source.dtype), "size": size, "modified": modified,
            **({"window": [window.y0, window.y1, window.x0, window.x1]} if window else {})}


def model_digest(net: Network) -> str:
    """A hash of the network's class and weights."""
    import torch

    h = hashlib.sha256(type(net).__qualname__.encode())
    for name, tensor in net.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


def check_output(src: str | os.PathLike[str] | Location, dst: str | os.PathLike[str] | Location,
                 overwrite: bool) -> Location:
    """Refuse an output that is not .zarr / .tif / .tiff, would hold the input, or exists without
    ``overwrite`` and is not an lpdask result (whose job identity is checked once it is known)."""
    output, source = check_output_name(dst), Location.of(src)
    if output.exists():
        if output.is_local and source.is_local:
            resolved, inside = output.local_path.resolve(), source.local_path.resolve()
            if resolved == inside or resolved in inside.parents:
                raise LpdaskError(f"output {output} is or holds the input; refusing to write there")
        elif output.url.rstrip("/") == source.url.rstrip("/") or source.url.startswith(output.url.rstrip("/") + "/"):
            raise LpdaskError(f"output {output} is or holds the input; refusing to write there")
        if not overwrite and stored_identity(output) is None:
            raise LpdaskError(f"output {output} already exists; use --overwrite to replace it")
    return output


def check_output_name(dst: str | os.PathLike[str] | Location) -> Location:
    """Refuse an output that is not .zarr / .tif / .tiff (before anything is created for it)."""
    output = Location.of(dst)
    if not output.name.lower().endswith((".zarr", ".tif", ".tiff")):
        raise LpdaskError(f"output {output} must be a .zarr folder (OME-Zarr) or a .tif / .ome.tif file")
    return output


SOFTWARE_PREFIX = "lpdask job "


def _stored_status(output: Location) -> dict[str, Any] | None:
    """The ``lpdask`` status an earlier job left on ``output`` (job digest, complete, plan): the
    attributes of an OME-Zarr result, or the Software tag of a TIFF one; None for anything else."""
    if output.name.lower().endswith(".zarr"):
        try:
            own = zarr.open_group(output.url, mode="r").attrs.get("lpdask")
        except Exception:  # zarr raises several types for a folder that is not a store
            return None
        return dict(own) if isinstance(own, dict) and isinstance(own.get("job"), str) else None
    if output.is_file():
        import tifffile

        try:
            with output.open() as f, tifffile.TiffFile(f) as tif:
                software = tif.pages[0].software or ""
        except (OSError, tifffile.TiffFileError, IndexError):
            return None
        if software.startswith(SOFTWARE_PREFIX):
            job, _, plan = software[len(SOFTWARE_PREFIX):].partition(" ")
            try:
                stored_plan = json.loads(plan) if plan else None
            except ValueError:
                stored_plan = None
            return {"job": job.strip(), "complete": True, "plan": stored_plan}  # named only once complete
    return None


def stored_identity(output: Location) -> tuple[str, bool] | None:
    """(job digest, complete) of an lpdask result at ``output``, or None for anything else."""
    status = _stored_status(output)
    return (status["job"], bool(status.get("complete"))) if status else None


def stored_plan(output: Location, work: WorkFolder) -> dict[str, Any] | None:
    """The plan (chunk, blocks per stage, storage) a job on ``output`` started with, if any: a
    resumed or finished job keeps it, whatever the planner would choose today."""
    try:
        return dict(json.loads((work.path / IDENTITY_FILE).read_text())["plan"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    status = _stored_status(output)
    plan = status.get("plan") if status else None
    return dict(plan) if isinstance(plan, dict) else None


def output_state(output: Location, work: WorkFolder, job: str, overwrite: bool) -> State:
    """What to do with ``output`` for job digest ``job``: start anew, resume, or nothing (complete).

    A different job's result is refused unless ``overwrite``.
    """
    if overwrite:
        return "new"
    stored = stored_identity(output)
    if stored is None:
        if output.exists():
            raise LpdaskError(f"output {output} already exists; use --overwrite to replace it")
        return "resume" if work.identity() == job else "new"
    digest_on_disk, complete = stored
    if digest_on_disk != job:
        raise LpdaskError(f"output {output} holds a different job (input, model or options differ); "
                          "use --overwrite to replace it")
    return "complete" if complete else "resume"


@dataclass(frozen=True)
class Preflight:
    """What is known of a job before its output is held and its model loaded: the input, opened
    once, how its channels go through the network, and its missing pixels."""

    options: UpscaleOptions
    source: Source
    photometric: Photometric
    nodata: Nodata | None
    value_range: ValueRange | None


def preflight(options: UpscaleOptions) -> Preflight:
    """Open the input and answer what can be told without torch: the value range, channel, nodata and
    compression options for this input, and whether the output can be the TIFF asked for."""
    from .channels import photometric_of
    from .export import tiff_kind
    from .io.sources import open_source
    from .nodata import nodata_of
    from .options import check_compression, check_value_range

    source = open_source(options.src, options.series, options.level)
    value_range = check_value_range(options.value_range, source.dtype)
    photometric = photometric_of(source.channels, options.channels, source.photometric)
    nodata = nodata_of(source, options.nodata, photometric)
    check_compression(options.compression, source.dtype, photometric)
    if options.tissue not in (None, "auto"):
        from .tissue import given

        given(options.tissue, (1, 1), 1, 1, 1)  # a mask file that cannot be read is refused before anything is written
    if options.dst is not None:
        tiff_kind(check_output_name(options.dst), source.ome, source.meta, options.cog, source.plane_count)
    return Preflight(options, source, photometric, nodata, value_range)


def build(pre: Preflight, device: torch.device) -> tuple[JobSpec, State]:
    """The job ``pre`` describes, on ``device``, and what to do with its output (start, resume,
    nothing): the network loaded, the plan made (or the one a resumed job started with), the stages
    and the identity. Its output must be held (:func:`~lpdask.lease.hold`) and checked."""
    from . import __version__
    from .channels import passes
    from .device import load_network, resolve_precision
    from .executors import executor_named
    from .options import check_grid
    from .planner import choose_engine, plan_for

    o, source = pre.options, pre.source
    assert o.dst is not None
    output = Location.of(o.dst)
    precision = resolve_precision(o.precision, device)
    net = load_network(o.model, device, precision, o.kernels)  # type: ignore[arg-type]
    source, box, crop = region_window(pre, net)
    meta = _output_meta(pre, net.scale, box)
    work = WorkFolder(held_places(output, o.workdir)[-1] if o.workdir else default_workdir(output))
    stored = None if o.overwrite else stored_plan(output, work)
    known = known_before_planning(pre, net, source, device, precision)
    plan, _ = plan_for(net, source, device, o, work.path, output, stored, known)
    check_grid(plan.chunk, net.input_factor, net.scale, plan.strip, plan.tile_rows)
    executor = o.executor if not isinstance(o.executor, str) else executor_named(plan.executor)
    stages = executor.stages(net, plan, o.mode, o.tile_pad)
    engine = choose_engine(net, stages, device, o.precision, o.engine, plan, source.height * source.width,
                           stored_engine(stored) if stored is not None else None)
    stages = list(engine.compiled)
    as_tiff = output.name.lower().endswith((".tif", ".tiff"))
    missing = pre.nodata
    identity = Identity(
        fingerprint(source), model_digest(net), net.scale, o.mode, o.tile_pad if o.mode == "tile" else None,
        plan_record(plan, engine.name), pre.photometric, o.alpha, pre.value_range, o.precision, device.type, o.kernels,
        "tiff" if as_tiff else "zarr", missing.to_json() if missing else None, __version__,
        [box.y0, box.y1, box.x0, box.x1] if box else None, tissue_record(o.tissue))
    spec = JobSpec(source, output, work, identity, plan, executor, net, stages,
                   passes(source.channels, pre.photometric, o.alpha, net), meta, device, precision,
                   pre.value_range, o.compression, missing, o.cog, engine, o.compute_all, tissue=o.tissue, crop=crop,
                   known=known)
    return spec, output_state(output, work, identity.digest, o.overwrite)


def tissue_record(tissue: str | None) -> dict[str, object] | None:
    """What identifies a tissue mask: "auto", or its file's path, size and modification time."""
    if tissue is None:
        return None
    if tissue == "auto":
        return {"mask": "auto"}
    where = Location.of(tissue)
    size, modified = where.size_and_mtime()
    return {"mask": where.url, "size": size, "modified": modified}


def plan_record(plan: Plan, engine: str) -> dict[str, Any]:
    """What a job's identity and its output record of how it ran: the plan, and the engine where it is
    not eager (jobs from before engines keep their identity)."""
    return {**plan.to_json(), **({"engine": engine} if engine != "eager" else {})}


def stored_engine(stored: dict[str, Any]) -> str:
    """The engine a job whose recorded plan is ``stored`` ran (:func:`plan_record`)."""
    return str(stored.get("engine", "eager"))


def known_before_planning(pre: Preflight, net: Network, source: Source, device: torch.device,
                          precision: torch.dtype) -> Known | None:
    """What of the first run of ``source`` is known without the network (:mod:`lpdask.known`), for the
    planner to price each plan's share of the work; None where the options give the plan or tile mode
    runs. Reads the input's first plane once."""
    from .channels import passes
    from .known import CELL
    from .task import Job

    o = pre.options
    if o.mode != "exact" or (o.chunk is not None and o.blocks_per_stage is not None):
        return None
    first = passes(source.channels, pre.photometric, o.alpha, net)[0]
    job = Job(source, net.stages(1), CELL, None, None, device=device, precision=precision,  # type: ignore[arg-type]
              input_factor=net.input_factor, pass_=first, nodata=pre.nodata)
    found = job.find_known(CELL, tissue=o.tissue)  # with --compute-all too: the same plan, every pixel computed
    return found if found.computed_share < 1.0 else None


def region_window(pre: Preflight, net: Network) -> tuple[Source, Box | None, Box | None]:
    """The source a job computes (the window that computes the region asked for exactly, or the whole
    input), the region in the image's pixels and the region in the window's (None, None without one)."""
    from .geometry import reach
    from .nodata import FILL_RADIUS
    from .region import window

    o, source = pre.options, pre.source
    if o.region is None:
        return source, None, None
    box = o.region.box(source.height, source.width, source.meta)
    # a filled nodata pixel depends on the pixels within FILL_RADIUS of it, beyond the network's reach
    margin = reach(net.stages(1)) * net.input_factor + (FILL_RADIUS if pre.nodata is not None else 0)
    computed = window(box, margin, net.input_factor, source.height, source.width)
    return source.cropped(computed), box, box.within(computed)


def _output_meta(pre: Preflight, scale: int, box: Box | None = None) -> ImageMetadata:
    """The input's metadata as the output's (of the region ``box`` where one is asked for): rescaled,
    with the GDAL nodata of what it marks missing."""
    from .nodata import gdal_number
    from .region import cropped

    source, missing = pre.source, pre.nodata
    meta = replace(source.meta, photometric=pre.photometric)
    meta = (cropped(meta, box) if box else meta).rescaled(scale)
    if meta.geotiff is not None and (pre.options.nodata is not None or source.palette or missing is not None):
        value = gdal_number(missing.output) if missing is not None and missing.marks else None
        meta = replace(meta, geotiff=replace(meta.geotiff, gdal_nodata=value))
    return meta
