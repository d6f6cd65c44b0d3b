"""What the pipeline scripts share: the command line, running lpdask with its metadata warnings shown,
and checks that fail loudly."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DEFAULT_CHUNK = 64


class CheckFailed(Exception):
    """The output does not say what the pipeline promises."""


def expect(condition: bool, message: str) -> None:
    """Fail the pipeline with ``message`` unless ``condition`` holds."""
    if not condition:
        raise CheckFailed(message)


def close(a: float, b: float, rel: float = 1e-6) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-12)


def parser(name: str, doc: str | None, output_hint: str) -> argparse.ArgumentParser:
    """``INPUT`` and ``OUTPUT`` (both optional) and the options every pipeline takes."""
    p = argparse.ArgumentParser(prog=f"pipelines/{name}.py", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", nargs="?", type=Path, help="input image (default: write the synthetic sample and use it)")
    p.add_argument("output", nargs="?", type=Path, help=f"output {output_hint} (default: in --folder)")
    p.add_argument("--folder", type=Path, default=Path("pipeline-output") / name,
                   help="where the sample and default output go (default: %(default)s)")
    p.add_argument("--model", help="model name (`lpdask models`) or checkpoint file (default: RealESRGAN_x4plus)")
    p.add_argument("--chunk", type=int, default=DEFAULT_CHUNK, help="chunk side in input pixels (default: %(default)s)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    return p


def paths(args: argparse.Namespace, write_sample: Callable[[Path], Path], sample_name: str, about: str,
          suffix: str) -> tuple[Path, Path]:
    """INPUT, or the synthetic sample written into ``--folder``; OUTPUT, or ``<input stem>_sr<suffix>``
    in ``--folder``."""
    args.folder.mkdir(parents=True, exist_ok=True)
    src = args.input
    if src is None:
        src = write_sample(args.folder / sample_name)
        print(f"sample: {src} ({about})")
    return src, args.output or args.folder / f"{src.name.split('.')[0]}_sr{suffix}"


@contextmanager
def shown_warnings(ignore: Callable[[str], bool] = lambda message: False) -> Iterator[list[str]]:
    """Collect lpdask's metadata warnings (what the output could not carry) and print them."""
    from lpdask.errors import MetadataWarning

    found: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MetadataWarning)
        yield found
    for w in caught:
        if issubclass(w.category, MetadataWarning):
            if not ignore(str(w.message)):
                found.append(str(w.message))
                print(f"  lpdask warning: {w.message}")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def upscale(src: Path, dst: Path, args: argparse.Namespace, ignore: Callable[[str], bool] = lambda m: False,
            **options: Any) -> Any:
    """``lpdask.upscale(src, dst)`` with the pipeline's model, chunk and device; prints what it did."""
    import lpdask
    from lpdask.device import prefer_expandable_segments

    prefer_expandable_segments()  # before this process first uses CUDA
    print(f"lpdask.upscale({str(src)!r}, {str(dst)!r}, model={args.model!r}, chunk={args.chunk})")
    dst.parent.mkdir(parents=True, exist_ok=True)
    with shown_warnings(ignore):
        summary = lpdask.upscale(src, dst, model=args.model, chunk=args.chunk, device=args.device,
                                 overwrite=True, **options)
    print(f"  {summary}")
    return summary


def report(title: str, rows: list[tuple[str, Any, Any]]) -> None:
    """A small before / after table."""
    width = max(len(label) for label, _, _ in rows)
    print(f"\n{title}")
    print(f"  {'':{width}}  {'input':<34} output")
    for label, before, after in rows:
        print(f"  {label:{width}}  {str(before):<34} {after}")


def run(main: Callable[[], int]) -> None:
    """Run a pipeline's ``main``: a failed check is one line on stderr and exit code 1, a problem with
    the input or options, or a fault while running (lpdask's own errors), one line and its exit code
    (2 for bad input, 3 no space, ...: see ``lpdask.errors``)."""
    from lpdask.errors import LpdaskError

    start = time.perf_counter()
    try:
        code = main()
    except CheckFailed as exc:
        print(f"CHECK FAILED: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except LpdaskError as exc:
        print(f"lpdask: error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    print(f"\ndone in {time.perf_counter() - start:.1f} s")
    raise SystemExit(code)
