"""Checks of the options a job takes, shared by the command line and the Python API; no torch, no zarr.

A bad value raises :class:`OptionError`, which names the Python parameter (``chunk=8 is out of
range``) where Python called, and the command line turns into the flag (``--chunk 8 is out of range``).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from .errors import LpdaskError, OptionError
from .executors import EXECUTORS as _REGISTERED

if TYPE_CHECKING:
    import numpy as np

MIN_CHUNK = 16
MAX_CHUNK = 8192
MAX_TILE_ROWS = 10**7
COMPRESSIONS = ("zlib", "zstd", "lzw", "jpeg", "none")
ChannelMode = Literal["auto", "rgb", "rgba", "separate"]
AlphaMode = Literal["network", "nearest", "bilinear"]
CHANNEL_MODES = ("auto", "rgb", "rgba", "separate")
ALPHA_MODES = ("network", "nearest", "bilinear")
EXECUTORS = ("auto", *(e.name for e in _REGISTERED))
"""What ``executor`` takes: "auto" (the planner's choice), or one of :data:`lpdask.executors.EXECUTORS`."""
MODES = ("exact", "tile")
DEFAULT_TILE_PAD = 10
"""Real-ESRGAN's default ``tile_pad``, for tile mode."""
ValueRange = tuple[float, float]


def check_chunk(chunk: int) -> int:
    if not MIN_CHUNK <= chunk <= MAX_CHUNK:
        raise OptionError("chunk", chunk, f"is out of range ({MIN_CHUNK} to {MAX_CHUNK} pixels)")
    return chunk


def check_strip(strip: int) -> int:
    if not 1 <= strip <= MAX_CHUNK:
        raise OptionError("strip", strip, f"is out of range (1 to {MAX_CHUNK} rows)")
    return strip


def check_tile_rows(tile_rows: int) -> int:
    if not 0 <= tile_rows <= MAX_TILE_ROWS:
        raise OptionError("tile_rows", tile_rows, f"is out of range (0 to {MAX_TILE_ROWS} rows; 0: the image's height)")
    return tile_rows


def check_grouping(blocks_per_stage: int) -> int:
    if blocks_per_stage < 0:
        raise OptionError("blocks_per_stage", blocks_per_stage,
                          "must be at least 0 (0: the whole network as one stage)")
    return blocks_per_stage


DEVICES = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device(device: str, precision: str = "fp32") -> None:
    """What can be told of ``device`` and ``precision`` without torch (the command line answers
    these before its slow imports; :func:`lpdask.device.resolve_device` checks the rest)."""
    if not DEVICES.fullmatch(device):
        raise LpdaskError(f"unknown device {device!r} (use cpu, cuda, cuda:N or auto)")
    if precision == "fp16" and device == "cpu":
        raise LpdaskError("--precision fp16 needs a CUDA device; on cpu use fp32 (or bf16 on CPUs that have it)")


def check_engine(engine: str) -> str:
    from .engines import NAMES

    if engine not in NAMES:
        raise OptionError("engine", engine, f"is not one of {', '.join(NAMES)}")
    return engine


def check_kernels(kernels: str) -> str:
    from .kernels import KERNELS

    if kernels not in KERNELS:
        raise OptionError("kernels", kernels, f"is not one of {', '.join(KERNELS)}")
    return kernels


def check_threads(threads: int) -> int:
    if threads < 0:
        raise OptionError("threads", threads, "must be at least 1 (0 picks one per core)")
    return threads


def check_workers(workers: int, scheduler: str | None) -> None:
    if workers < 0:
        raise OptionError("workers", workers, "must be at least 1 (0: threads in this process)")
    if workers and scheduler:
        raise OptionError("workers", workers, "starts a local cluster and {scheduler} joins one: give only one")


def check_max_memory(gigabytes: float | None) -> None:
    if gigabytes is not None and not gigabytes > 0:
        raise OptionError("max_memory", gigabytes, "must be more than 0 GB", f"{gigabytes:g}")


def check_tile_pad(tile_pad: int) -> int:
    if tile_pad < 0:
        raise OptionError("tile_pad", tile_pad, "must be at least 0")
    return tile_pad


def check_value_range(value_range: ValueRange | None, dtype: np.dtype | None = None) -> ValueRange | None:
    """LOW maps to 0 and HIGH to 1: finite, LOW < HIGH; required for a ``dtype`` without a natural
    [0, 1] (:func:`lpdask.pixels.needs_value_range`: signed and 32-bit integers, float64)."""
    if value_range is None:
        from .pixels import needs_value_range

        if dtype is not None and needs_value_range(dtype):
            raise OptionError("value_range", None, f"is required for {dtype} pixels: they have no natural range "
                              "to map to the network's [0, 1] (give the values that become 0 and 1, e.g. the "
                              "data's minimum and maximum)", "LOW,HIGH")
        return None
    low, high = (float(v) for v in value_range)
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise OptionError("value_range", value_range, "needs finite LOW < HIGH", f"{low:g},{high:g}")
    return low, high


def check_compression(compression: str, dtype: np.dtype, photometric: str | None = None) -> None:
    """TIFF codecs lpdask writes; JPEG only for 8-bit pixels without alpha."""
    if compression not in COMPRESSIONS:
        raise OptionError("compression", compression, f"is not one of {', '.join(COMPRESSIONS)}")
    import numpy as np

    if compression == "jpeg" and np.dtype(dtype) != np.uint8:
        raise OptionError("compression", compression, f"needs 8-bit pixels; this image is {np.dtype(dtype)}")
    if compression == "jpeg" and photometric == "rgba":
        raise OptionError("compression", compression, "cannot hold an alpha channel; use zlib, or --channels separate")


def check_grid(chunk: int, input_factor: int, scale: int, strip: int = 0, tile_rows: int = 0) -> None:
    """Chunks (and strips) of pixel-unshuffle models must hold whole unshuffle cells; streaming tiles
    cut in height, whole rows of the output's stored chunks."""
    from .chunks import stored_chunk, tile_rows_step

    for option, value in (("chunk", chunk), ("strip", strip)):
        if value % input_factor:
            raise OptionError(option, value, f"must be a multiple of {input_factor} for this x{scale} model "
                                             f"(it pixel-unshuffles by {input_factor})")
    step, stored = tile_rows_step(chunk, scale, input_factor), stored_chunk(chunk * scale)
    if tile_rows % step:
        raise OptionError("tile_rows", tile_rows, f"must be a multiple of {step} with tiles {chunk} px wide and this "
                                                  f"x{scale} model (the output is stored in {stored} px chunks, and no "
                                                  "two tiles may write one)")


def check_plan_options(chunk: int | None, blocks_per_stage: int | None, threads: int = 0, workers: int = 0,
                       scheduler: str | None = None, tile_pad: int = 0) -> None:
    """What can be checked of the plan's options before anything is opened."""
    if chunk is not None:
        check_chunk(chunk)
    if blocks_per_stage is not None:
        check_grouping(blocks_per_stage)
    check_threads(threads)
    check_workers(workers, scheduler)
    check_tile_pad(tile_pad)


def check_executor(executor: Any, blocks_per_stage: int | None = None, strip: int | None = None,
                   tile_rows: int | None = None) -> Any:
    """The executor, agreeing with the plan options given: ``strip`` and ``tile_rows`` are
    streaming's, and ``blocks_per_stage`` 0 (the whole network as one stage) is the ``whole``
    executor's."""
    if not isinstance(executor, str):  # an executor object (a name lpdask does not list)
        if not callable(getattr(executor, "run", None)) or not isinstance(getattr(executor, "name", None), str):
            raise OptionError("executor", executor, "is neither an executor's name nor an executor object")
        return executor
    if executor not in EXECUTORS:
        raise OptionError("executor", executor, f"is not one of {', '.join(EXECUTORS)}")
    if tile_rows is not None:
        check_tile_rows(tile_rows)
        if executor not in ("auto", "stream"):
            raise OptionError("tile_rows", tile_rows, f"needs {{executor}} stream or auto, not {{executor}} {executor}")
    if strip is not None:
        check_strip(strip)
        if executor not in ("auto", "stream"):
            raise OptionError("strip", strip, f"needs {{executor}} stream or auto, not {{executor}} {executor}")
    if blocks_per_stage == 0 and executor not in ("auto", "whole", "lazy"):
        raise OptionError("blocks_per_stage", 0, "(the whole network as one stage) is {executor} whole, "
                          f"not {{executor}} {executor}")
    if blocks_per_stage and executor == "whole":
        raise OptionError("blocks_per_stage", blocks_per_stage, "does not apply to {executor} whole "
                          "(the whole network as one stage)")
    return "stream" if (strip is not None or tile_rows is not None) and executor == "auto" else executor


@dataclass(frozen=True)
class UpscaleOptions:
    """Everything :func:`lpdask.upscale` takes besides its callbacks; the command line and ``upscale``
    both build one. :meth:`checked` answers mistakes before anything is opened or loaded.

    ``model`` is a checkpoint path, a model name or a loaded network (default: Real-ESRGAN x4plus).
    ``series`` / ``level`` pick the input image; ``channels`` how channels go through the network
    (auto: RGB, RGBA, or each channel as a grey image, as the input says); ``alpha`` how an alpha
    channel is upscaled; ``value_range`` maps an image's (low, high) to [0, 1] (required for float
    images not in [0, 1] and for signed, 32-bit and float64 pixels). ``precision`` fp16 needs CUDA;
    bf16 needs CUDA or a CPU with AVX512-BF16 or AMX (through OpenVINO). ``engine`` is what runs each
    stage's arithmetic (:mod:`lpdask.engines`): "eager" (PyTorch, the reference), "openvino",
    "onnxruntime", or "auto" (the default: the fastest engine installed for the device and
    precision, counting the time to build it; a resumed job keeps the engine it started with). Chunks run on ``threads`` of this process, or on a local dask.distributed cluster of
    ``workers`` processes, or on the cluster at ``scheduler`` (tasks ask for ``resources``, e.g.
    {"GPU": 1}). ``compression`` is the TIFF output's codec (zlib, zstd, lzw, jpeg for 8-bit, none).
    ``cog``: a ``.tif`` output as a Cloud Optimized GeoTIFF (through GDAL: the ``lpdask[geo]``
    extra); None (the default) for a plain ``.tif`` of a georeferenced input, False for levels as
    SubIFDs. ``nodata``: the value of missing pixels, overriding the input's ("none": none are).
    ``kernels="eager"`` runs the network's eager reference forward instead of lpdask's fast
    kernels, for comparison.

    ``chunk`` and ``blocks_per_stage`` left out are chosen by the planner (:mod:`lpdask.planner`)
    within ``max_memory`` bytes (default: 4 GiB, or half the available memory if less). A resumed
    job keeps the plan it started with. Intermediate activations go to ``workdir`` (default: beside
    ``dst``), in a folder removed once the result is complete. ``overwrite`` replaces ``dst``;
    ``wait`` waits for another run holding it instead of raising.

    ``executor`` is how each run is computed: "stream" (tiles ``chunk`` wide and ``tile_rows`` high,
    0 for the image's height, streamed row strip by row strip through every stage, ``strip`` rows
    at a time: no activation stored), "staged" (stage by stage through the work folder), "whole"
    (the whole network on each chunk, with its full halo), "auto" (the planner's choice among
    those three, the default; the staged executor when ``chunk`` and ``blocks_per_stage`` are both
    given without ``strip``), "lazy" (one dask graph in memory, as :func:`lpdask.upscale_array`;
    nothing to resume from), or an executor object (:mod:`lpdask.executors`). ``region`` computes only a region of interest
    (``"X,Y,W,H"`` in pixels, or with a unit: ``um``..., ``map``; :mod:`lpdask.region`): exactly that
    crop of the whole image's result, placed where it lies by the output's metadata. ``mode="tile"`` runs
    Real-ESRGAN's tile mode (``tile_pad`` pixels of context, seams) for comparison."""

    src: str | os.PathLike[str]
    dst: str | os.PathLike[str] | None = None
    """None where only a plan is asked for (``lpdask plan``)."""
    model: Any = None
    chunk: int | None = None
    blocks_per_stage: int | None = None
    threads: int = 0
    device: str = "auto"
    precision: str = "fp32"
    workdir: str | os.PathLike[str] | None = None
    overwrite: bool = False
    mode: str = "exact"
    tile_pad: int = DEFAULT_TILE_PAD
    series: int = 0
    level: int = 0
    channels: ChannelMode = "auto"
    alpha: AlphaMode = "network"
    value_range: ValueRange | None = None
    workers: int = 0
    scheduler: str | None = None
    resources: dict[str, float] | None = None
    compression: str = "zlib"
    max_memory: float | None = None
    wait: bool = False
    executor: Any = "auto"
    strip: int | None = None
    tile_rows: int | None = None
    cog: bool | None = None
    nodata: str | float | None = None
    kernels: str = "fast"
    engine: str = "auto"
    compute_all: bool = False
    """Compute every output pixel, even those the input holds no data under (which take the nodata
    value whatever the network gives, and are left out otherwise): the same bytes, for comparison."""
    tissue: str | None = None
    """Compute only the tissue of a brightfield slide: "auto" (found as :mod:`lpdask.tissue` says) or a
    label image or GeoJSON file; outside it the output is the slide's background colour, and the
    OME-Zarr output carries the mask as its ``labels/tissue``."""
    region: Any = None
    """A region of interest (:mod:`lpdask.region`): ``"X,Y,W,H[unit]"``, a :class:`~lpdask.region.Region`,
    or (x, y, width, height) in pixels; None for the whole image."""

    def checked(self) -> UpscaleOptions:
        """These options checked (what needs no file, no numpy and no torch), with the executor
        settled where the plan options given imply it."""
        check_plan_options(self.chunk, self.blocks_per_stage, self.threads, self.workers, self.scheduler,
                           self.tile_pad)
        executor = check_executor(self.executor, self.blocks_per_stage, self.strip, self.tile_rows)
        if self.max_memory is not None and not self.max_memory > 0:
            raise OptionError("max_memory", self.max_memory, "must be more than 0 bytes", f"{self.max_memory:g}")
        check_value_range(self.value_range)
        check_device(self.device, self.precision)
        check_kernels(self.kernels)
        check_engine(self.engine)
        if self.mode not in MODES:
            raise OptionError("mode", self.mode, f"is not one of {', '.join(MODES)}")
        from .region import parse_region

        region = parse_region(self.region)
        if region is not None and self.mode != "exact":
            raise OptionError("mode", self.mode, "cuts the image into tiles from its corner, so a region of it is "
                              "not the crop of the whole image's result; use {region} with {mode} exact")
        if self.tissue is not None:
            if region is not None:
                raise OptionError("tissue", self.tissue, "and {region} cannot be given together yet: cut the "
                                  "region out first, or give the tissue as a file")
            if self.dst is not None and not str(self.dst).lower().rstrip("/").endswith(".zarr"):
                raise OptionError("tissue", self.tissue, "writes its mask as an OME-Zarr label image: give a .zarr "
                                  "output")
            if self.mode != "exact":
                raise OptionError("tissue", self.tissue, "needs {mode} exact")
        return replace(self, executor=executor, region=region)

    @classmethod
    def from_cli(cls, max_memory: float | None, resources: str | None, **given: Any) -> UpscaleOptions:
        """The options of ``lpdask upscale`` / ``lpdask plan`` (memory in GB, resources as NAME=N,...)."""
        from .schedulers import parse_resources

        check_max_memory(max_memory)
        return cls(max_memory=max_memory * 1e9 if max_memory else None, resources=parse_resources(resources),
                   **given).checked()


@dataclass(frozen=True)
class Reports:
    """How a run reports as it goes: progress bars, and callbacks given the plan's description and
    a cluster's dashboard link."""

    progress: bool = False
    on_plan: Callable[[str], None] | None = None
    on_cluster: Callable[[str], None] | None = None
