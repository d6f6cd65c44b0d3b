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
from .errors import INTERRUPTED, RESUMES, TERMINATED, USAGE, LeaseWarning, LpdaskError, MetadataWarning, PlanWarning
from .kernels import KERNELS
from .memory import prefer_expandable_segments
from .options import (ALPHA_MODES, CHANNEL_MODES, COMPRESSIONS, EXECUTORS, OptionError, check_chunk, check_compression,
                      check_device, check_executor, check_grid, check_max_memory, check_plan_options,
                      check_value_range)
from .plan import DEFAULT_TILE_PAD, Plan
from .schedulers import parse_resources

# Only what checks the options is imported here: numpy, zarr and tifffile load once they pass, torch
# once the input is found, so mistakes are answered at once.

USER_ERROR = USAGE


def _value_range(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        low, high = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not LOW,HIGH (two numbers)") from None
    return low, high


@contextmanager
def _warning_lines() -> Iterator[None]:
    """For the command's duration, lpdask's own warnings print as one ``lpdask: warning:`` line; others
    as they did before, and the way warnings are shown is given back afterwards."""
    previous = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, (MetadataWarning, PlanWarning, LeaseWarning)):
            click.echo(f"lpdask: warning: {message}", err=True)
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
              help="Compute precision; fp16 and bf16 need CUDA.")
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
              help="The values the network sees as black and white: for float32 images not in [0, 1] "
                   "(required), or a window of an integer image (values outside it are clipped).")
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
@click.option("--executor", type=click.Choice(EXECUTORS[:-1]), default="auto", show_default=True,
              help="stream: tiles streamed in row strips, nothing stored between stages. staged: stage by stage "
                   "through the work folder. whole: the whole network on each chunk. auto: the planner's choice.")
@click.option("--strip", type=int, default=None, help="Rows per strip when streaming [default: the planner's choice].")
@click.option("--tile-rows", type=int, default=None,
              help="Rows per tile when streaming; 0: the image's height [default: the planner's choice].")
@click.option("--kernels", type=click.Choice(KERNELS), default="fast", show_default=True,
              help="fast: lpdask's kernels. eager: the network's reference forward, for comparison.")
@click.option("--wait", is_flag=True, help="If another run holds OUTPUT, wait for it to end instead of exiting.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def upscale_command(input: str, output: str, model: str | None, chunk: int | None, blocks_per_stage: int | None,
                    max_memory: float | None,
                    threads: int, device: str, precision: str, workdir: str | None, overwrite: bool, mode: str,
                    tile_pad: int, series: int, level: int, channels: str, alpha: str,
                    value_range: tuple[float, float] | None, workers: int, scheduler: str | None,
                    resources: str | None, compression: str, cog: bool | None, nodata: str | None, executor: str,
                    strip: int | None, tile_rows: int | None, kernels: str, wait: bool, quiet: bool) -> None:
    """Super-resolve INPUT (TIFF, OME-TIFF, GeoTIFF, Zarr, OME-Zarr; MRXS, VMS, SCN, BIF slides
    through OpenSlide, with lpdask[pathology]; CZI, ND2, LIF through bioio, with lpdask[microscopy];
    LPDASK_READER=openslide|bioio|tifffile forces a reader) into OUTPUT: an OME-Zarr (.zarr) or a
    tiled pyramidal TIFF (.tif, .ome.tif).

    A job that stops (crash, kill, lost worker, full disk) resumes when the same command is run again.
    One run at a time holds OUTPUT: another exits 2 at once naming the holder, or waits with --wait.

    Exit codes: 0 done, 1 a bug (with a traceback), 2 bad input or options or OUTPUT in use, 3 no space
    left, 4 a place not writable, 5 the input changed during the run, 130 SIGINT, 143 SIGTERM."""
    # Check what needs no torch first, so mistakes are answered before the slow imports.
    check_plan_options(chunk, blocks_per_stage, threads, workers, scheduler, tile_pad)
    check_executor(executor, blocks_per_stage, strip, tile_rows)
    check_max_memory(max_memory)
    check_value_range(value_range)
    check_device(device, precision)
    needs = parse_resources(resources)
    from .io.locations import find_input

    find_input(input)
    from .channels import photometric_of
    from .io.sources import open_source
    from .jobs import check_output, check_output_name, held_places
    from .lease import hold

    source = open_source(input, series, level)
    photometric = photometric_of(source.channels, channels, source.photometric)  # type: ignore[arg-type]
    check_compression(compression, source.dtype, photometric)
    from .nodata import nodata_of

    nodata_of(source, nodata, photometric)

    from .export import tiff_kind

    tiff_kind(check_output_name(output), source.ome, source.meta, cog, source.plane_count)
    with hold(held_places(output, workdir), wait):  # before the output is read, and before the slow imports
        check_output(input, output, overwrite)
        from .api import upscale

        summary = upscale(input, output, model=model, chunk=chunk, blocks_per_stage=blocks_per_stage,
                          threads=threads, device=device, precision=precision, workdir=workdir, overwrite=overwrite,
                          mode=mode, tile_pad=tile_pad, series=series, level=level, channels=channels,  # type: ignore[arg-type]
                          alpha=alpha, value_range=value_range, workers=workers, scheduler=scheduler,  # type: ignore[arg-type]
                          resources=needs, compression=compression, cog=cog, nodata=nodata, progress=not quiet,
                          wait=wait,
                          executor=executor, strip=strip, tile_rows=tile_rows,
                          kernels=kernels,  # type: ignore[arg-type]
                          max_memory=max_memory * 1e9 if max_memory else None,
                          on_plan=None if quiet else lambda text: click.echo(f"lpdask: {text}", err=True),
                          on_cluster=lambda link: click.echo(f"Dask dashboard: {link}", err=True))
        click.echo(str(summary), err=True)


@cli.command(name="plan")
@click.argument("input", type=click.Path(dir_okay=True, path_type=str))
@click.option("--model", "model", metavar="NAME|PATH", help="A model name or checkpoint [default: RealESRGAN_x4plus].")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
              help="Compute precision; fp16 and bf16 need CUDA.")
@click.option("--series", type=int, default=0, show_default=True, help="TIFF series.")
@click.option("--level", type=int, default=0, show_default=True, help="Pyramid level of the input.")
@click.option("--channels", type=click.Choice(CHANNEL_MODES), default="auto", show_default=True,
              help="How channels go through the network, as for upscale.")
@click.option("--alpha", type=click.Choice(ALPHA_MODES), default="network", show_default=True,
              help="How an alpha channel is upscaled, as for upscale.")
@click.option("--chunk", type=int, default=None, help="Fix the chunk side.")
@click.option("--blocks-per-stage", type=int, default=None, help="Fix the stage grouping.")
@click.option("--max-memory", type=float, default=None, metavar="GB", help="Memory budget [default: 4 GiB or half the available if less].")
@click.option("--threads", type=int, default=0, show_default=True, help="Chunks at once (0: one per CPU core).")
@click.option("--workers", type=int, default=0, show_default=True, help="Worker processes of a local cluster.")
@click.option("--workdir", metavar="DIR", help="Where the work folder would go (its disk speed is measured) "
                                               "[default: beside INPUT, where an output beside it puts it].")
@click.option("--executor", type=click.Choice(EXECUTORS[:-1]), default="auto", show_default=True,
              help="Plan only for this executor, as for upscale.")
@click.option("--strip", type=int, default=None, help="Fix the strip height of a streaming plan.")
@click.option("--tile-rows", type=int, default=None, help="Fix the tile height of a streaming plan (0: the image's).")
@click.option("--kernels", type=click.Choice(KERNELS), default="fast", show_default=True,
              help="fast: lpdask's kernels. eager: the network's reference forward, for comparison.")
@click.option("--top", type=int, default=8, show_default=True, help="How many alternatives to list.")
def plan_command(input: str, model: str | None, device: str, precision: str, series: int, level: int, channels: str,
                 alpha: str, chunk: int | None, blocks_per_stage: int | None, max_memory: float | None, threads: int,
                 workers: int, workdir: str | None, executor: str, strip: int | None, tile_rows: int | None,
                 kernels: str, top: int) -> None:
    """Print the plan `lpdask upscale` would use for INPUT with the same options (executor, chunk or
    tile, strip, stage grouping) with its predicted time, compute overhead, scratch space and peak
    memory; the best plan of each executor; and the alternatives it weighed."""
    check_plan_options(chunk, blocks_per_stage, threads, workers)
    executor = check_executor(executor, blocks_per_stage, strip, tile_rows)
    check_max_memory(max_memory)
    check_device(device, precision)
    from .channels import passes, photometric_of
    from .io.sources import open_source

    source = open_source(input, series, level)
    runs = source.plane_count * len(passes(source.channels, photometric_of(source.channels, channels,  # type: ignore[arg-type]
                                                                           source.photometric), alpha))  # type: ignore[arg-type]
    from .api import network_for, plan_for, scratch_space
    from .io.locations import Location
    from .plan import EXECUTOR_STORAGE
    from .planner import measure_machine

    net, torch_device = network_for(model, device, precision, kernels)  # type: ignore[arg-type]
    work = Location.of(workdir) if workdir else Location.of(input).parent
    budget = int(max_memory * 1e9) if max_memory else None
    best, plans = plan_for(net, source, torch_device, chunk=chunk, blocks_per_stage=blocks_per_stage, threads=threads,
                           workers=workers, work=work, max_memory=budget, executor=executor, strip=strip,
                           tile_rows=tile_rows)
    check_grid(best.chunk, net.input_factor, net.scale, best.strip, best.tile_rows)  # what upscale would refuse
    click.echo(f"{input}: {source.height} x {source.width} px, {source.channels} channel(s), {source.plane_count} plane(s)")
    click.echo(f"plan: {best.describe()}")
    if runs > 1:
        click.echo(f"  (per run; this input takes {runs} runs: planes x channel passes)")
    if not plans:
        return
    limit = measure_machine(torch_device.type, work.url if work.is_local else None, budget).memory_budget
    free = scratch_space(work, None, source, net.scale)

    def mark(e: Plan) -> str:
        return "!" if free is not None and e.scratch_bytes > free else "*" if e.peak_memory > limit else " "

    click.echo("best of each executor (* over the memory budget, ! more scratch than the work folder's "
               f"disk has{f': {free / 1e9:.1f} GB free' if free is not None else ''}):")
    for name, storage in EXECUTOR_STORAGE.items():
        own = [e for e in plans if e.storage == storage]
        if own:
            pick = min(own, key=lambda e: (mark(e) != " ", e.seconds))
            click.echo(f" {mark(pick)} {pick.describe()}")
    if any(mark(e) == "!" for e in plans) and best.storage != "zarr":
        click.echo(f"the staged executor's activations need more scratch than the {free / 1e9:.1f} GB free where "
                   "the work folder goes, so the plan streams instead")
    click.echo("alternatives (fastest first):")
    for estimate in plans[:top]:
        click.echo(f" {mark(estimate)} {estimate.describe()}")


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
    import os

    check_chunk(chunk)
    from .io.sources import open_source

    open_source(input)
    if json_path and not os.path.isdir(os.path.dirname(os.path.abspath(json_path))):
        raise LpdaskError(f"--json {json_path}: its folder does not exist")
    from .compare import compare

    report = compare(input, model=model, chunk=chunk, size=size, tile_pad=tile_pad, patch=patch, out=out,
                     progress=lambda line: click.echo(line, err=True))
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
        with _warning_lines():
            cli.main(args=argv, prog_name="lpdask", standalone_mode=False)
    except OptionError as exc:
        click.echo(f"lpdask: error: {exc.for_cli()}", err=True)
        return exc.exit_code
    except LpdaskError as exc:
        click.echo(f"lpdask: error: {exc}", err=True)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        click.echo(f"lpdask: error: {exc.format_message()}", err=True)
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
