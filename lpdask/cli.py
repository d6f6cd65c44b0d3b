"""The ``lpdask`` command: parsing and messages only; the work is in :mod:`lpdask.api`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import __version__
from .errors import LpdaskError
from .io.sources import open_source
from .jobs import check_output
from .plan import DEFAULT_TILE_PAD, Plan

USER_ERROR = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lpdask")
def cli() -> None:
    """Exact, seamless super-resolution of images too big for memory."""


@cli.command(name="upscale")
@click.argument("input", type=click.Path(dir_okay=True, path_type=str))
@click.argument("output", type=click.Path(path_type=str))
@click.option("--model", "model", metavar="NAME|PATH",
              help="A model name (see `lpdask models`) or a Real-ESRGAN/ESRGAN checkpoint [default: RealESRGAN_x4plus].")
@click.option("--chunk", type=int, default=Plan.chunk, show_default=True, help="Chunk side in input pixels.")
@click.option("--blocks-per-stage", type=int, default=Plan.blocks_per_stage, show_default=True, help="RRDB blocks per stage (Compact nets: 15 convs per block).")
@click.option("--threads", type=int, default=0, show_default=True, help="Chunks at once (0: one per CPU core).")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
              help="Compute precision; fp16 and bf16 need CUDA.")
@click.option("--workdir", metavar="DIR", help="Folder for intermediate activations [default: beside OUTPUT].")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--mode", type=click.Choice(["exact", "tile"]), default="exact", show_default=True,
              help="exact: staged, seamless. tile: Real-ESRGAN's tile/tile_pad stitching (seams), for comparison.")
@click.option("--tile-pad", type=int, default=DEFAULT_TILE_PAD, show_default=True, help="Context pixels per tile in tile mode.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def upscale_command(input: str, output: str, model: str | None, chunk: int, blocks_per_stage: int,
                    threads: int, device: str, precision: str, workdir: str | None, overwrite: bool, mode: str,
                    tile_pad: int, quiet: bool) -> None:
    """Super-resolve INPUT (TIFF or Zarr) into OUTPUT (OME-Zarr, .zarr)."""
    # Check what needs no torch first, so mistakes are answered before the slow imports.
    Plan(chunk, blocks_per_stage, threads)
    open_source(input)
    check_output(Path(input), Path(output), overwrite)
    from .api import upscale

    summary = upscale(input, output, model=model, chunk=chunk, blocks_per_stage=blocks_per_stage,
                      threads=threads, device=device, precision=precision, workdir=workdir, overwrite=overwrite,
                      mode=mode, tile_pad=tile_pad, progress=not quiet)  # type: ignore[arg-type]
    click.echo(str(summary), err=True)


@cli.command(name="models")
@click.option("--blocks-per-stage", type=int, default=Plan.blocks_per_stage, show_default=True,
              help="Stage grouping to show the halos for.")
def models_command(blocks_per_stage: int) -> None:
    """List the models --model takes by name: architecture, scale, size, halo per stage, weights."""
    Plan(blocks_per_stage=blocks_per_stage)
    from .models.names import table

    click.echo(table(blocks_per_stage))


def main(argv: list[str] | None = None) -> int:
    """Entry point: user mistakes become one line on stderr and exit code 2."""
    try:
        cli.main(args=argv, prog_name="lpdask", standalone_mode=False)
    except LpdaskError as exc:
        click.echo(f"lpdask: error: {exc}", err=True)
        return USER_ERROR
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        click.echo(f"lpdask: error: {exc.format_message()}", err=True)
        return USER_ERROR
    except click.exceptions.Abort:
        click.echo("lpdask: interrupted", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
