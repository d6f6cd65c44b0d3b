"""Seeded mutation fuzzing of everything lpdask reads: TIFF (tifffile's, GDAL's, OME-TIFF), OME-Zarr,
an OpenSlide format (SVS), a bioio format (LIF) and checkpoints (``.pth``, ``.safetensors``).

A case is a seed file of one format with a few bytes or characters changed, where a reader looks:
the header, the IFD entries, the tile offsets and byte counts, the compressed data, the OME-XML,
the ``zarr.json`` documents, the tensors, or the file cut short. Case ``i`` of seed ``s`` is the
same on every machine (``numpy.random.default_rng((s, i))``), so a failure names its case.

Each case runs the real command (:func:`lpdask.cli.main`, in a driver process that runs many cases
in a row; stderr read at the file descriptor) and passes when it either exits 0 with a complete
output, or exits 2 with exactly one ``lpdask: error:`` line and no output that looks complete;
never a traceback, never another stderr line, never a hang (the parent kills a case that runs past
its time and restarts the driver after it).

``tests/test_fuzz.py`` runs a few hundred cases; ``benchmarks/fuzz.py --cases N`` soaks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data"
RUN = ["-q", "--threads", "1", "--chunk", "32"]
CASE_SECONDS = 60.0
"""A case that runs longer hangs (the slowest honest case, a mutated slide, takes a few seconds)."""


@dataclass
class Seed:
    """A file of one format, and where in it mutations go: byte ranges by kind ("header", "ifd",
    "offsets", "data", "xml", "json", "tensor") for files; documents for folders."""

    format: str
    path: Path
    args: list[str] = field(default_factory=list)
    ranges: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    documents: list[str] = field(default_factory=list)
    model: str = "input"
    """What the case mutates: "input" (the image) or "model" (the checkpoint, run on the TIFF seed)."""
    reader: str | None = None
    """The reader forced (LPDASK_READER), if any."""


def _tiff_ranges(path: Path) -> dict[str, list[tuple[int, int]]]:
    """Byte ranges of a TIFF: its header, every IFD's entries, the tile/strip offsets and byte counts,
    the tile/strip data, and the OME-XML or ImageDescription text."""
    import tifffile

    ranges: dict[str, list[tuple[int, int]]] = {"header": [(0, 16)], "ifd": [], "offsets": [], "data": [], "xml": []}
    with tifffile.TiffFile(path) as tif:
        entry = 20 if tif.tiff.is_bigtiff else 12
        for page in tif.pages:
            tags = list(page.tags.values())
            ranges["ifd"] += [(tag.offset, tag.offset + entry) for tag in tags]
            for tag in tags:
                if tag.code in (273, 279, 324, 325):  # Strip/Tile offsets and byte counts
                    ranges["offsets"].append((tag.valueoffset, tag.valueoffset + max(tag.count, 1) * 4))
                if tag.code == 270 and tag.count > 8:
                    ranges["xml"].append((tag.valueoffset, tag.valueoffset + tag.count))
            ranges["data"] += [(int(o), int(o) + int(n)) for o, n in zip(page.dataoffsets, page.databytecounts) if n]
    return {kind: spans for kind, spans in ranges.items() if spans}


def _tiff(folder: Path) -> Seed:
    import tifffile

    image = _image(64, 64, 3)
    path = folder / "tiled.tif"
    tifffile.imwrite(path, image, tile=(32, 32), compression="zlib", predictor=True, photometric="rgb")
    return Seed("tiff", path, ranges=_tiff_ranges(path))


def _jpeg_tiff(folder: Path) -> Seed:
    import tifffile

    path = folder / "jpeg.tif"
    tifffile.imwrite(path, _image(64, 48, 3), tile=(16, 16), compression="jpeg", photometric="rgb")
    return Seed("jpeg-tiff", path, ranges=_tiff_ranges(path))


def _ome_tiff(folder: Path) -> Seed:
    import tifffile

    path = folder / "image.ome.tif"
    image = (_image(40, 48, 2).astype(np.uint16) * 257).transpose(2, 0, 1)
    tifffile.imwrite(path, image, ome=True, tile=(16, 16), compression="zlib",
                     metadata={"axes": "CYX", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25,
                               "Channel": {"Name": ["DAPI", "GFP"]}})
    return Seed("ome-tiff", path, ranges=_tiff_ranges(path))


def _geotiff(folder: Path) -> Seed:
    import rasterio
    from rasterio.transform import from_origin

    path = folder / "gdal.tif"
    image = _image(48, 64, 1)[..., 0].astype(np.int16) - 20
    image[:8] = -9999
    profile = {"driver": "GTiff", "width": 64, "height": 48, "count": 1, "dtype": "int16", "nodata": -9999,
               "crs": "EPSG:32633", "transform": from_origin(500000, 4200000, 30, 30), "tiled": True,
               "blockxsize": 16, "blockysize": 16, "compress": "deflate"}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(image, 1)
    return Seed("geotiff", path, ["--value-range", "-100,300"], ranges=_tiff_ranges(path))


def _svs(folder: Path) -> Seed:
    path = folder / "slide.svs"
    shutil.copy(DATA / "CMU-1-Small-Region.svs", path)
    return Seed("svs", path, ["--region", "1000,1000,24,24"], ranges=_tiff_ranges(path))


def _svs_openslide(folder: Path) -> Seed:
    """The same slide through OpenSlide (lpdask reads SVS with tifffile unless OpenSlide is forced)."""
    seed = _svs(folder)
    seed.format, seed.reader = "svs-openslide", "openslide"
    return seed


def _lif(folder: Path) -> Seed:
    path = folder / "sweep.lif"
    shutil.copy(DATA / "lif" / "LeicaLASX_wavelength-sweep_example.lif", path)
    data = path.read_bytes()
    xml_end = data.find(b"\x70\x00\x00\x00", 8)  # the XML block ends where the first memory block's mark is
    xml_end = xml_end if xml_end > 0 else 4096
    return Seed("lif", path, ["--series", "1", "--region", "8,8,16,16"],
                ranges={"header": [(0, 16)], "xml": [(16, xml_end)], "data": [(xml_end, len(data))]})


def _ome_zarr(folder: Path) -> Seed:
    """An OME-Zarr (NGFF 0.5) written by ome-zarr-py: two levels, three channels."""
    import zarr
    from ome_zarr.io import parse_url
    from ome_zarr.writer import write_image

    path = folder / "image.ome.zarr"
    store = parse_url(str(path), mode="w").store
    root = zarr.group(store=store)
    write_image(_image(48, 64, 3).transpose(2, 0, 1), group=root, axes="cyx", scaler=None,
                storage_options={"chunks": (3, 32, 32)})
    documents = sorted(str(p.relative_to(path)) for p in path.rglob("zarr.json"))
    chunks = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() and p.name != "zarr.json")
    return Seed("ome-zarr", path, documents=documents + chunks)


def _lpdask_zarr(folder: Path) -> Seed:
    """An lpdask result (its own attributes with GeoTIFF georeferencing, a pyramid) read as input."""
    import torch

    from lpdask import upscale

    geotiff = _geotiff(folder)
    model = folder / "model.pth"
    torch.save({"params_ema": _state()}, model)
    path = folder / "result.zarr"
    upscale(geotiff.path, path, model=model, value_range=(-100, 300), chunk=64, progress=False)
    documents = sorted(str(p.relative_to(path)) for p in path.rglob("zarr.json"))
    return Seed("lpdask-zarr", path, ["--value-range", "-100,300", "--region", "0,0,64,64"], documents=documents)


def _pth(folder: Path) -> Seed:
    path = folder / "model.pth"
    import torch

    torch.save({"params_ema": _state()}, path)
    ranges: dict[str, list[tuple[int, int]]] = {"header": [(0, 64)], "tensor": []}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            # a stored member's data follows its 30-byte local header, name and extra field
            with open(path, "rb") as file:
                file.seek(info.header_offset + 26)
                start = info.header_offset + 30 + sum(int.from_bytes(file.read(2), "little") for _ in range(2))
            (ranges["tensor"] if "/data/" in info.filename else ranges["header"]).append(
                (start, start + info.compress_size))
    return Seed("pth", path, ranges=ranges, model="model")


def _safetensors(folder: Path) -> Seed:
    from safetensors.torch import save_file

    path = folder / "model.safetensors"
    save_file(_state(), str(path))
    data = path.read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    return Seed("safetensors", path, ranges={"header": [(0, header)], "tensor": [(header, len(data))]},
                model="model")


def _state() -> dict[str, object]:
    import torch

    from lpdask import RRDBConfig, RRDBNet

    torch.manual_seed(0)
    return RRDBNet(RRDBConfig(num_feat=8, num_block=1, num_grow_ch=4)).state_dict()


def _image(height: int, width: int, channels: int) -> np.ndarray:
    y, x = np.mgrid[:height, :width]
    planes = [(x * (3 + c) + y * (5 - c) + 40 * c) % 256 for c in range(channels)]
    return np.stack(planes, -1).astype(np.uint8)


SEEDS: dict[str, Callable[[Path], Seed]] = {
    "tiff": _tiff, "jpeg-tiff": _jpeg_tiff, "ome-tiff": _ome_tiff, "geotiff": _geotiff, "svs": _svs,
    "svs-openslide": _svs_openslide, "lif": _lif, "ome-zarr": _ome_zarr, "lpdask-zarr": _lpdask_zarr,
    "pth": _pth, "safetensors": _safetensors,
}
FORMATS = tuple(SEEDS)


# Mutations ---------------------------------------------------------------------------------------

_INTERESTING = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\x01", b"\x00\x00\x00\x00", b"\xff\xff\xff\xff",
                b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80", b"\x01\x00", b"\x00\x01"]
_JSON_VALUES = [0, -1, 1, 2**31, 2**63, 1e308, -0.5, None, True, "", "x", [], {}, [0], "uint128", "zyx"]


def mutate_bytes(data: bytes, rng: np.random.Generator, spans: list[tuple[int, int]] | None) -> tuple[bytes, str]:
    """``data`` with 1 to 8 bytes changed in ``spans`` (anywhere when None), an interesting value
    written over a span, or the file cut short; and a description."""
    out = bytearray(data)
    span = spans[rng.integers(len(spans))] if spans else (0, len(data))
    start, end = max(0, span[0]), min(len(data), max(span[1], span[0] + 1))
    how = rng.choice(["flip", "set", "interesting", "truncate"], p=[0.45, 0.25, 0.2, 0.1])
    if how == "truncate":
        cut = int(rng.integers(start, end))
        return bytes(out[:cut]), f"cut at {cut}"
    if how == "interesting":
        value = _INTERESTING[rng.integers(len(_INTERESTING))]
        at = int(rng.integers(start, max(start + 1, end - len(value) + 1)))
        out[at:at + len(value)] = value
        return bytes(out[:len(data)]), f"{value.hex()} at {at}"
    places = []
    for _ in range(int(rng.integers(1, 9))):
        at = int(rng.integers(start, end))
        out[at] = (out[at] ^ (1 << int(rng.integers(8)))) if how == "flip" else int(rng.integers(256))
        places.append(at)
    return bytes(out), f"{how} {places}"


def mutate_text(text: str, rng: np.random.Generator) -> tuple[str, str]:
    """A JSON document with one value replaced or one key dropped, or any text with 1 to 4
    characters changed, inserted or deleted."""
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if document is not None and rng.random() < 0.6:
        paths = list(_json_paths(document, ()))
        if paths:
            path = paths[rng.integers(len(paths))]
            parent = document
            for key in path[:-1]:
                parent = parent[key]
            if isinstance(parent, dict) and rng.random() < 0.3:
                del parent[path[-1]]
                return json.dumps(document), f"dropped {'/'.join(map(str, path))}"
            value = _JSON_VALUES[rng.integers(len(_JSON_VALUES))]
            parent[path[-1]] = value
            return json.dumps(document), f"{'/'.join(map(str, path))} = {value!r}"
    chars = list(text)
    done = []
    for _ in range(int(rng.integers(1, 5))):
        at = int(rng.integers(len(chars) or 1))
        how = rng.choice(["change", "insert", "delete"])
        char = chr(int(rng.choice([rng.integers(32, 127), rng.integers(0, 32), rng.integers(128, 0x3000)])))
        if how == "change" and chars:
            chars[at] = char
        elif how == "insert":
            chars.insert(at, char)
        elif chars:
            del chars[at]
        done.append(f"{how} {at}")
    return "".join(chars), ", ".join(done)


def _json_paths(node: object, path: tuple[object, ...]) -> Iterator[tuple[object, ...]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*path, key)
            yield from _json_paths(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield (*path, index)
            yield from _json_paths(value, (*path, index))


def make_case(seed: Seed, rng: np.random.Generator, folder: Path) -> tuple[Path, str]:
    """A mutated copy of ``seed`` in ``folder``, and what was changed."""
    target = folder / seed.path.name
    if seed.path.is_dir():
        shutil.copytree(seed.path, target)
        name = seed.documents[rng.integers(len(seed.documents))]
        file = target / name
        if name.endswith("zarr.json"):
            text, what = mutate_text(file.read_text(encoding="utf-8"), rng)
            file.write_text(text, encoding="utf-8", errors="surrogatepass")
        else:
            data, what = mutate_bytes(file.read_bytes(), rng, None)
            file.write_bytes(data)
        return target, f"{name}: {what}"
    data = seed.path.read_bytes()
    kinds = sorted(seed.ranges)
    kind = kinds[rng.integers(len(kinds))] if kinds and rng.random() < 0.85 else "anywhere"
    if kind == "xml" and rng.random() < 0.7:
        start, end = seed.ranges["xml"][0]
        text = data[start:end].decode("latin-1")
        changed, what = mutate_text(text, rng)
        raw = changed.encode("utf-8", "replace")[: end - start].ljust(end - start, b" ")
        mutated = data[:start] + raw + data[end:]
    else:
        mutated, what = mutate_bytes(data, rng, seed.ranges.get(kind))
    target.write_bytes(mutated)
    return target, f"{kind}: {what}"


# Running cases -------------------------------------------------------------------------------------

@dataclass
class Outcome:
    case: int
    format: str
    what: str
    code: int | None
    """The exit code; None for a hang."""
    stderr: str
    complete: bool
    seconds: float

    @property
    def verdict(self) -> str:
        """"ok", or what is wrong: "traceback", "hang", "lines", "incomplete", "looks complete", "exit N"."""
        lines = self.stderr.strip().splitlines()
        if self.code is None:
            return "hang"
        if "Traceback" in self.stderr or self.code == 1:
            return "traceback"
        if self.code == 0:
            noise = [line for line in lines if not line.startswith(("lpdask: warning:", "wrote "))]
            return "lines" if noise else "ok" if self.complete else "incomplete"
        if self.code != 2:
            return f"exit {self.code}"
        errors = [line for line in lines if not line.startswith("lpdask: warning:")]
        if len(errors) != 1 or not errors[0].startswith("lpdask: error:"):
            return "lines"
        return "looks complete" if self.complete else "ok"


def cases(formats: list[str], count: int, seed: int, start: int = 0) -> Iterator[tuple[int, str]]:
    """Case numbers and formats, round robin over ``formats``."""
    for index in range(start, count):
        yield index, formats[index % len(formats)]


def drive(formats: list[str], count: int, seed: int, start: int, folder: Path) -> None:
    """The driver process: run the cases from ``start``, one JSON line on stdout each (a "start" line
    before it, so the parent knows which case hung)."""
    import logging

    from lpdask.cli import main
    from lpdask.io.omezarr import is_complete

    seeds_folder = folder / f"seeds-{start}"  # a driver started after a hang makes its own
    shutil.rmtree(seeds_folder, ignore_errors=True)
    seeds_folder.mkdir()
    seeds: dict[str, Seed] = {}
    with warnings.catch_warnings():  # an lpdask result among the seeds warns what it cannot carry
        warnings.simplefilter("ignore")
        for name in sorted({*formats, "tiff", "pth"}):
            (seeds_folder / name).mkdir(exist_ok=True)
            seeds[name] = SEEDS[name](seeds_folder / name)
    filters = list(warnings.filters)
    log_levels = {name: logger.level for name, logger in logging.root.manager.loggerDict.items()
                  if isinstance(logger, logging.Logger)}
    for index, name in cases(formats, count, seed, start):
        chosen = seeds[name]
        place = folder / f"case{index}"
        shutil.rmtree(place, ignore_errors=True)
        place.mkdir()
        mutated, what = make_case(chosen, np.random.default_rng((seed, index)), place)
        print(json.dumps({"start": index, "what": what}), flush=True)
        image, model = (seeds["tiff"].path, mutated) if chosen.model == "model" else (mutated, seeds["pth"].path)
        argv = ["upscale", str(image), str(place / "out.zarr"), *RUN, *chosen.args, "--model", str(model)]
        os.environ.pop("LPDASK_READER", None)
        if chosen.reader:
            os.environ["LPDASK_READER"] = chosen.reader
        warnings.filters[:] = filters
        warnings.resetwarnings()
        warnings.filters[:] = filters
        for logger_name, level in log_levels.items():
            logging.getLogger(logger_name).setLevel(level)
        began = time.perf_counter()
        code, stderr = _captured(lambda: main(argv))
        outcome = Outcome(index, name, what, code, stderr, is_complete(place / "out.zarr"),
                          time.perf_counter() - began)
        print(json.dumps(outcome.__dict__), flush=True)
        shutil.rmtree(place, ignore_errors=True)


def _captured(call: Callable[[], int]) -> tuple[int, str]:
    """Run ``call`` with file descriptor 2 sent to a temporary file; its exit code and what it wrote."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            code = call()
        except SystemExit as exc:
            code = int(exc.code or 0)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        sink.seek(0)
        return code, sink.read().decode("utf-8", "replace")


def run(formats: list[str], count: int, seed: int = 0, case_seconds: float = CASE_SECONDS,
        folder: Path | None = None, on_outcome: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Run cases 0 to ``count - 1`` in driver processes; a case past ``case_seconds`` is a hang
    (its driver is killed and a new one goes on after it)."""
    import selectors

    own = folder is None
    folder = Path(tempfile.mkdtemp(prefix="lpdask-fuzz-")) if folder is None else folder
    outcomes: list[Outcome] = []
    start = 0
    try:
        while start < count:
            process = subprocess.Popen(
                [sys.executable, "-m", "tests.fuzzing", "--formats", ",".join(formats), "--cases", str(count),
                 "--seed", str(seed), "--start", str(start), "--folder", str(folder)],
                cwd=Path(__file__).parent.parent, stdout=subprocess.PIPE, text=True,
                env={**os.environ, "LPDASK_CACHE_DIR": str(folder / "cache")})
            assert process.stdout is not None
            selector = selectors.DefaultSelector()
            selector.register(process.stdout, selectors.EVENT_READ)
            current, what, deadline = start, "", time.monotonic() + 600  # the first case also imports, writes seeds
            while True:
                if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                    process.kill()
                    process.wait()
                    outcome = Outcome(current, formats[current % len(formats)], what, None, "", False,
                                      case_seconds)
                    outcomes.append(outcome)
                    if on_outcome:
                        on_outcome(outcome)
                    start = current + 1
                    shutil.rmtree(folder / f"case{current}", ignore_errors=True)
                    break
                line = process.stdout.readline()
                if not line:
                    if process.wait() != 0 and current < count:
                        raise RuntimeError(f"the fuzzing driver died at case {current} (exit {process.returncode})")
                    start = count
                    break
                report = json.loads(line)
                if "start" in report:
                    current, what = report["start"], report["what"]
                    deadline = time.monotonic() + case_seconds
                    continue
                outcome = Outcome(**report)
                outcomes.append(outcome)
                if on_outcome:
                    on_outcome(outcome)
    finally:
        if own:
            shutil.rmtree(folder, ignore_errors=True)
    return outcomes


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="The fuzzing driver (started by tests.fuzzing.run).")
    parser.add_argument("--formats", required=True)
    parser.add_argument("--cases", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--folder", type=Path, required=True)
    arguments = parser.parse_args()
    drive(arguments.formats.split(","), arguments.cases, arguments.seed, arguments.start, arguments.folder)
