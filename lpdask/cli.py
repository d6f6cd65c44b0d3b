"""The ``lpdask`` command: parsing and messages only; the work is in :mod:`lpdask.api`."""

from __future__ import annotations

import signal
import sys
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import click

from . import __version__
from .errors import (INTERRUPTED, RESUMES, TERMINATED, USAGE, InputWarning, LeaseWarning, LpdaskError, MetadataWarning,
                     PlanWarning)
from .io.boundary import keep_warning, quiet_libraries
from .kernels import KERNELS
from .memory import prefer_expandable_segments
from .engines import ENGINES, NAMES as ENGINE_NAMES
from .executors import EXECUTORS
from .options import (ALPHA_MODES, CHANNEL_MODES, COMPRESSIONS, DEFAULT_TILE_PAD, OptionError, Reports, UpscaleOptions,
                      check_chunk, check_grid)
from .plan import Plan

# Only what checks the options is imported here: numpy, zarr and tifffile load once they pass, torch
# once the input is found, so mistakes are answered at once.

USER_ERROR = USAGE
EXECUTOR_CHOICES = ("auto", *(e.name for e in EXECUTORS if e.planned))
REGION_HELP = ("Compute only this region of INPUT: X,Y,W,H in pixels from the top-left corner, or with a unit "
               "after H: um, nm, mm... (the input's physical coordinates, as QuPath or napari show them) or map "
               "(a GeoTIFF's map coordinates, the box from X,Y to X+W,Y+H). The output is exactly that crop of the "
               "whole image's result, placed where it lies by its metadata.")
EXECUTOR_HELP = " ".join(f"{e.name}: {e.help}." for e in EXECUTORS if e.planned) + " auto: the planner's choice."
ENGINE_HELP = ("What runs each stage's arithmetic. " + " ".join(f"{e.name}: {e.help}." for e in ENGINES)
               + " auto: the fastest installed for the device and precision, counting the time to build it.")


def _value_range(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        low, high = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not LOW,HIGH (two numbers)") from None
    return low, high


def one_line(text: str) -> str:
    """``text`` as one terminal line: what a file's metadata or a path brings in that is not printable
    (a newline, a vertical tab, a line separator, an escape sequence) written as its escape."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@contextmanager
def _warning_lines() -> Iterator[None]:
    """For the command's duration, lpdask's own warnings print as one ``lpdask: warning:`` line; others
    as they did before, and the way warnings are shown is given back afterwards."""
    previous = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, (MetadataWarning, PlanWarning, LeaseWarning, InputWarning)):
            click.echo(f"lpdask: warning: {one_line(str(message))}", err=True)
        elif keep_warning(message, str(args[0] if args else kwargs.get("filename", ""))):
            return
        else:
            previous(message, category, *args, **kwargs)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lpdask")
def cli() -> None:
    """Exact, seamless super-resolution of images too big for memory."""


@cli.command(name="upscale")
@click.argument("input", type=click.Path(dir_okay=True, path_type=str))
@click.argument("output", type=click.Path(path_type=str))
@click.option("--model", "model", metavar="NAME|PATH",
              help="A model name (see `lpdask models`) or a Real-ESRGAN/ESRGAN checkpoint [default: RealESRGAN_x4plus].")
@click.option("--chunk", type=int, default=None, help="Chunk side in input pixels [default: the planner's choice].")
@click.option("--blocks-per-stage", type=int, default=None,
              help="RRDB blocks per stage (Compact nets: 15 convs per block; 0: the whole network as one "
                   "stage, nothing stored between stages) [default: the planner's choice].")
@click.option("--max-memory", type=float, default=None, metavar="GB",
              help="Memory the planner may plan for [default: 4 GiB, or half the available memory if less].")
@click.option("--threads", type=int, default=0, show_default=True, help="Chunks at once (0: one per CPU core).")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
              help="Compute precision; fp16 needs CUDA, bf16 CUDA or a CPU with AVX512-BF16 or AMX.")
@click.option("--engine", type=click.Choice(ENGINE_NAMES), default="auto", show_default=True, help=ENGINE_HELP)
@click.option("--workdir", metavar="DIR", help="Folder for intermediate activations [default: beside OUTPUT].")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--mode", type=click.Choice(["exact", "tile"]), default="exact", show_default=True,
              help="exact: staged, seamless. tile: Real-ESRGAN's tile/tile_pad stitching (seams), for comparison.")
@click.option("--tile-pad", type=int, default=DEFAULT_TILE_PAD, show_default=True, help="Context pixels per tile in tile mode.")
@click.option("--series", type=int, default=0, show_default=True,
              help="TIFF series (OME-Zarr: bioformats2raw series; CZI, ND2, LIF: scene).")
@click.option("--level", type=int, default=0, show_default=True, help="Pyramid level of the input (0: full resolution).")
@click.option("--channels", type=click.Choice(CHANNEL_MODES), default="auto", show_default=True,
              help="auto: RGB / RGBA where the input says so, else each channel as a grey image. "
                   "separate: always each channel as a grey image.")
@click.option("--alpha", type=click.Choice(ALPHA_MODES), default="network", show_default=True,
              help="How an alpha channel is upscaled: through the network as a grey image, or resized.")
@click.option("--value-range", metavar="LOW,HIGH", callback=_value_range,
              help="The values the network sees as black and white: required for float32 images not in "
                   "[0, 1] and for int8, int16, int32, uint32 and float64 images (the output keeps the input's "
                   "type); or a window of a uint8/uint16 image. Integer values outside it are clipped.")
@click.option("--workers", type=int, default=0, show_default=True,
              help="Start a local dask.distributed cluster of N worker processes (0: threads in this process).")
@click.option("--scheduler", metavar="ADDRESS", help="Run on an existing Dask cluster, e.g. tcp://host:8786.")
@click.option("--resources", metavar="NAME=N,...", help="Worker resources each chunk task needs, e.g. GPU=1.")
@click.option("--compression", type=click.Choice(COMPRESSIONS), default="zlib", show_default=True,
              help="Codec of a TIFF output (jpeg: 8-bit only).")
@click.option("--cog/--no-cog", default=None,
              help="Write a .tif as a Cloud Optimized GeoTIFF (overviews in the main IFD chain, laid out by "
                   "GDAL: needs lpdask[geo]); --no-cog: levels as SubIFDs [default: COG for a plain .tif of a "
                   "GeoTIFF input].")
@click.option("--nodata", metavar="VALUE|none",
              help="The value of missing pixels (a number or nan), overriding the input's; none: no pixel is "
                   "missing. Missing pixels are filled before the network and take this value in the output "
                   "[default: the input's GDAL nodata tag and internal mask].")
@click.option("--executor", type=click.Choice(EXECUTOR_CHOICES), default="auto", show_default=True,
              help=EXECUTOR_HELP)
@click.option("--strip", type=int, default=None, help="Rows per strip when streaming [default: the planner's choice].")
@click.option("--tile-rows", type=int, default=None,
              help="Rows per tile when streaming; 0: the image's height [default: the planner's choice].")
@click.option("--kernels", type=click.Choice(KERNELS), default="fast", show_default=True,
              help="fast: lpdask's kernels. eager: the network's reference forward, for comparison.")
@click.option("--region", metavar="X,Y,W,H[UNIT]", help=REGION_HELP)
@click.option("--tissue", metavar="auto|FILE",
              help="Compute only the tissue of a brightfield slide: auto finds it (Otsu on saturation, cleaned "
                   "up, grown by 32 px); or a label image (non-zero: tissue) or GeoJSON polygons in the slide's "
                   "pixels (as QuPath exports them). Outside it the output is the slide's background colour; the "
                   "OME-Zarr output carries the mask as labels/tissue.")
@click.option("--compute-all", is_flag=True,
              help="Compute every output pixel with the same plan and engine, also those known without the network (where "
                   "the input holds no data, or is one colour as far as the network reaches), for comparison: the "
                   "output is the same.")
@click.option("--wait", is_flag=True, help="If another run holds OUTPUT, wait for it to end instead of exiting.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def upscale_command(input: str, output: str, quiet: bool, **given: Any) -> None:
    """Super-resolve INPUT (TIFF, OME-TIFF, GeoTIFF, Zarr, OME-Zarr; MRXS, VMS, SCN, BIF slides
    through OpenSlide, with lpdask[pathology]; CZI, ND2, LIF through bioio, with lpdask[microscopy];
    LPDASK_READER=openslide|bioio|tifffile forces a reader) into OUTPUT: an OME-Zarr (.zarr) or a
    tiled pyramidal TIFF (.tif, .ome.tif).

    A job that stops (crash, kill, lost worker, full disk) resumes when the same command is run again.
    One run at a time holds OUTPUT: another exits 2 at once naming the holder, or waits with --wait.

    Exit codes: 0 done, 1 a bug (with a traceback), 2 bad input or options or OUTPUT in use, 3 no space
    left, 4 a place not writable, 5 the input changed during the run, 130 SIGINT, 143 SIGTERM."""
    options = UpscaleOptions.from_cli(src=input, dst=output, **given)  # answered before the slow imports
    from .jobs import check_output, held_places, preflight
    from .lease import hold

    prepared = preflight(options)
    with hold(held_places(output, options.workdir), options.wait):  # before the output is read, and torch loads
        check_output(input, output, options.overwrite)
        from .api import run_upscale

        reports = Reports(progress=not quiet,
                          on_plan=None if quiet else lambda text: click.echo(f"lpdask: {text}", err=True),
                          on_cluster=lambda link: click.echo(f"Dask dashboard: {link}", err=True))
        click.echo(str(run_upscale(options, reports, prepared)), err=True)


@cli.command(name="plan")
@click.argument("input", type=click.Path(dir_okay=True, path_type=str))
@click.option("--model", "model", metavar="NAME|PATH", help="A model name or checkpoint [default: RealESRGAN_x4plus].")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
              help="Compute precision; fp16 needs CUDA, bf16 CUDA or a CPU with AVX512-BF16 or AMX.")
@click.option("--engine", type=click.Choice(ENGINE_NAMES), default="auto", show_default=True, help=ENGINE_HELP)
@click.option("--series", type=int, default=0, show_default=True, help="TIFF series.")
@click.option("--level", type=int, default=0, show_default=True, help="Pyramid level of the input.")
@click.option("--channels", type=click.Choice(CHANNEL_MODES), default="auto", show_default=True,
              help="How channels go through the network, as for upscale.")
@click.option("--alpha", type=click.Choice(ALPHA_MODES), default="network", show_default=True,
              help="How an alpha channel is upscaled, as for upscale.")
@click.option("--value-range", metavar="LOW,HIGH", callback=_value_range,
              help="The values the network sees as black and white, as for upscale.")
@click.option("--chunk", type=int, default=None, help="Fix the chunk side.")
@click.option("--blocks-per-stage", type=int, default=None, help="Fix the stage grouping.")
@click.option("--max-memory", type=float, default=None, metavar="GB", help="Memory budget [default: 4 GiB or half the available if less].")
@click.option("--threads", type=int, default=0, show_default=True, help="Chunks at once (0: one per CPU core).")
@click.option("--workers", type=int, default=0, show_default=True, help="Worker processes of a local cluster.")
@click.option("--workdir", metavar="DIR", help="Where the work folder would go (its disk speed is measured) "
                                               "[default: beside INPUT, where an output beside it puts it].")
@click.option("--executor", type=click.Choice(EXECUTOR_CHOICES), default="auto", show_default=True,
              help="Plan only for this executor, as for upscale.")
@click.option("--strip", type=int, default=None, help="Fix the strip height of a streaming plan.")
@click.option("--tile-rows", type=int, default=None, help="Fix the tile height of a streaming plan (0: the image's).")
@click.option("--kernels", type=click.Choice(KERNELS), default="fast", show_default=True,
              help="fast: lpdask's kernels. eager: the network's reference forward, for comparison.")
@click.option("--region", metavar="X,Y,W,H[UNIT]", help="Plan for only this region of INPUT, as for upscale.")
@click.option("--top", type=int, default=8, show_default=True, help="How many alternatives to list.")
def plan_command(input: str, workdir: str | None, top: int, **given: Any) -> None:
    """Print the plan `lpdask upscale` would use for INPUT with the same options (executor, chunk or
    tile, strip, stage grouping) with its predicted time, compute overhead, scratch space and peak
    memory; the best plan of each executor; and the alternatives it weighed."""
    options = UpscaleOptions.from_cli(src=input, workdir=workdir, resources=None, **given)
    from .channels import passes
    from .jobs import preflight

    pre = preflight(options)
    source = pre.source
    from .api import network_for
    from .io.locations import Location
    from .executors import executor_named
    from .device import resolve_precision as torch_precision
    from .jobs import known_before_planning, region_window
    from .planner import computed_share, known_work, measure_machine, plan_for, scratch_space
    from .runner import KNOWING

    net, torch_device = network_for(options.model, options.device, options.precision, options.kernels)
    source, box, _ = region_window(pre, net)
    runs = source.plane_count * len(passes(source.channels, pre.photometric, options.alpha, net))
    work = Location.of(workdir) if workdir else Location.of(input).parent
    known = known_before_planning(pre, net, source, torch_device, torch_precision(options.precision, torch_device))
    best, plans = plan_for(net, source, torch_device, options, work, known=known)
    check_grid(best.chunk, net.input_factor, net.scale, best.strip, best.tile_rows)  # what upscale would refuse
    whole = pre.source
    click.echo(f"{input}: {whole.height} x {whole.width} px, {source.channels} channel(s), {source.plane_count} plane(s)")
    if box is not None and source.window is not None:
        w = source.window
        click.echo(f"region {options.region}: {box.shape[1]} x {box.shape[0]} px at x {box.x0}, y {box.y0}; computed "
                   f"from the window x {w.x0} to {w.x1}, y {w.y0} to {w.y1} ({w.shape[1]} x {w.shape[0]} px, "
                   f"{w.shape[0] * w.shape[1] / (whole.height * whole.width):.1%} of the image): the region and "
                   "the network's reach around it")
    click.echo(f"plan: {best.describe()}")
    click.echo(engine_of(net, best, torch_device, options, source.height * source.width).describe())
    if known is not None and best.executor in KNOWING:
        empty, constant = known_work(known)
        stages = executor_named(best.executor).stages(net, best, options.mode, options.tile_pad)
        share = computed_share(best, stages, known, source, net.input_factor)
        click.echo(f"known without the network: {empty:.1%} of the input holds no data, {constant:.1%} is one colour "
                   f"as far as the network reaches; this plan computes {share:.0%} of its work (the prediction "
                   "above counts only that; --compute-all computes all of it)")
    if runs > 1:
        click.echo(f"  (per run; this input takes {runs} runs: planes x channel passes)")
    if not plans:
        return
    budget = int(options.max_memory) if options.max_memory else None
    limit = measure_machine(torch_device.type, work.url if work.is_local else None, budget).memory_budget
    free = scratch_space(work, None, source, net.scale)

    def mark(e: Plan) -> str:
        return "!" if free is not None and e.scratch_bytes > free else "*" if e.peak_memory > limit else " "

    click.echo("best of each executor (* over the memory budget, ! more scratch than the work folder's "
               f"disk has{f': {free / 1e9:.1f} GB free' if free is not None else ''}):")
    for entry in EXECUTORS:
        own = [e for e in plans if e.executor == entry.name]
        if own:
            pick = min(own, key=lambda e: (mark(e) != " ", e.seconds))
            click.echo(f" {mark(pick)} {pick.describe()}")
    if any(mark(e) == "!" for e in plans) and best.executor != "staged":
        click.echo(f"the staged executor's activations need more scratch than the {free / 1e9:.1f} GB free where "
                   "the work folder goes, so the plan streams instead")
    click.echo("alternatives (fastest first):")
    for estimate in plans[:top]:
        click.echo(f" {mark(estimate)} {estimate.describe()}")


def engine_of(net: Any, plan: Plan, device: Any, options: UpscaleOptions, pixels: int) -> Any:
    """The engine ``lpdask upscale`` would run ``plan`` with (a fresh job's choice)."""
    from .executors import executor_named
    from .planner import choose_engine

    stages = executor_named(plan.executor).stages(net, plan, options.mode, options.tile_pad)
    return choose_engine(net, stages, device, options.precision, options.engine, plan, pixels)


@cli.command(name="export")
@click.argument("input", type=click.Path(dir_okay=True, path_type=str))
@click.argument("output", type=click.Path(path_type=str))
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--compression", type=click.Choice(COMPRESSIONS), default="zlib", show_default=True,
              help="TIFF codec (jpeg: 8-bit only).")
@click.option("--cog/--no-cog", default=None,
              help="Write a .tif as a Cloud Optimized GeoTIFF (overviews in the main IFD chain, laid out by "
                   "GDAL: needs lpdask[geo]); --no-cog: levels as SubIFDs [default: COG for a plain .tif of a "
                   "georeferenced INPUT].")
def export_command(input: str, output: str, overwrite: bool, compression: str, cog: bool | None) -> None:
    """Convert an OME-Zarr result (INPUT.zarr) into a tiled pyramidal TIFF (.tif or .ome.tif),
    carrying its metadata (physical sizes, channels, GeoTIFF tags)."""
    from .export import export

    click.echo(f"wrote {export(input, output, overwrite=overwrite, compression=compression, cog=cog)}", err=True)


@cli.command(name="models")
@click.option("--blocks-per-stage", type=int, default=Plan.blocks_per_stage, show_default=True,
              help="Stage grouping to show the halos for.")
def models_command(blocks_per_stage: int) -> None:
    """List the models --model takes by name: architecture, scale, size, halo per stage, weights."""
    if blocks_per_stage < 1:
        raise LpdaskError(f"--blocks-per-stage {blocks_per_stage} must be at least 1 here")
    from .models.names import table

    click.echo(table(blocks_per_stage))


@cli.command(name="compare")
@click.argument("input", type=click.Path(dir_okay=True, path_type=str))
@click.option("--model", "model", metavar="NAME|PATH",
              help="A model name (see `lpdask models`) or a checkpoint [default: RealESRGAN_x4plus].")
@click.option("--chunk", type=int, default=64, show_default=True, help="Chunk (and tile) side in input pixels.")
@click.option("--size", type=int, default=256, show_default=True,
              help="Side of the centred crop compared, in input pixels (at most the image).")
@click.option("--tile-pad", type=int, default=DEFAULT_TILE_PAD, show_default=True, help="Context pixels per tile in tile mode.")
@click.option("--patch", type=int, default=None, help="Patch side of the neighbour-patch run [default: --chunk].")
@click.option("--out", default="seams.png", show_default=True, help="The figure (PNG).")
@click.option("--json", "json_path", metavar="FILE", help="Also write the numbers as JSON.")
def compare_command(input: str, model: str | None, chunk: int, size: int, tile_pad: int, patch: int | None,
                    out: str, json_path: str | None) -> None:
    """Seam report: super-resolve a crop of INPUT with Real-ESRGAN's tile mode, neighbour-patch
    context (RealESRGAN-LP-style) and lpdask, measure each against whole-image inference, and draw
    the seams across a chunk corner."""
    import logging
    import os

    check_chunk(chunk)
    from .io.sources import open_source

    open_source(input)
    if json_path and not os.path.isdir(os.path.dirname(os.path.abspath(json_path))):
        raise LpdaskError(f"--json {json_path}: its folder does not exist")
    from .compare import compare

    handler = logging.StreamHandler(click.get_text_stream("stderr"))
    logger = logging.getLogger("lpdask.compare")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        report = compare(input, model=model, chunk=chunk, size=size, tile_pad=tile_pad, patch=patch, out=out)
    finally:
        logger.removeHandler(handler)
    click.echo(str(report))
    if json_path:
        with open(json_path, "w", encoding="utf-8") as file:
            file.write(report.to_json() + "\n")


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt for SIGINT."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def _abandon_pending_writes() -> None:
    """An interrupt that lands while Zarr waits on its I/O loop leaves that write pending; asyncio
    would report it at exit ("Task was destroyed but it is pending!"). The run stops on purpose and
    resumes from its markers, so that report is noise."""
    import logging

    logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def main(argv: list[str] | None = None) -> int:
    """Entry point: user mistakes and faults become one line on stderr and their exit code
    (:mod:`lpdask.errors`); only a bug prints a traceback (exit 1)."""
    prefer_expandable_segments()
    import threading

    main_thread = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        with _warning_lines(), quiet_libraries():
            cli.main(args=argv, prog_name="lpdask", standalone_mode=False)
    except OptionError as exc:
        click.echo(f"lpdask: error: {one_line(exc.for_cli())}", err=True)
        return exc.exit_code
    except LpdaskError as exc:
        click.echo(f"lpdask: error: {one_line(str(exc))}", err=True)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        click.echo(f"lpdask: error: {one_line(exc.format_message())}", err=True)
        return USER_ERROR
    except (click.exceptions.Abort, KeyboardInterrupt):
        _abandon_pending_writes()
        click.echo(f"lpdask: interrupted; {RESUMES}", err=True)
        return INTERRUPTED
    except Terminated:
        _abandon_pending_writes()
        click.echo(f"lpdask: terminated; {RESUMES}", err=True)
        return TERMINATED
    except Exception:
        traceback.print_exc()
        click.echo(f"lpdask: internal error (a bug: please report it with the traceback above); finished chunks "
                   f"are kept: {RESUMES}", err=True)
        return 1
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
