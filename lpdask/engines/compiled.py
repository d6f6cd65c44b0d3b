"""A stage's module as a compiling engine runs it, and the artifacts it keeps.

:class:`Compiled` is called like the stage's module and holds it (its weights stay visible, and
travel to cluster workers with it). What it runs is built on its first call in each process, per
engine, stage digest, precision and thread count, and kept for the process; the engine keeps its
artifacts on disk under ``<cache folder>/engines/<engine>-<version>/``, named by the stage's digest,
so a later process (a second run, a resumed job, another worker on the machine) builds nothing.

A build is checked before it is used: the compiled form and the module run a small random window
and must agree (:data:`PROBE_TOLERANCE`); an artifact from the disk that does not is removed and
built again, and a fresh build that does not is a bug.
"""

from __future__ import annotations

import copy
import hashlib
import locale
import os
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from ..kernels import use_kernels
from ..models.checkpoint import cache_dir
from ..stages import IMAGE, Stage
from . import Engine, entry

FORMAT = 1
"""Version of what lpdask writes into the engines' folders; part of every digest."""
PROBE = 20
"""Side of the random window a build is checked on."""
PROBE_TOLERANCE = {"fp32": 1e-4, "bf16": 0.1, "fp16": 0.1}
"""Largest difference from the module allowed on the probe, relative to its largest value."""

EVENTS: Counter[str] = Counter()
"""What this process's builds did: ``converted`` (a stage turned into the engine's form),
``compiled`` (compiled for this machine), ``loaded`` (taken from the disk cache), ``rebuilt`` (a
cached artifact that failed its check)."""
_built: dict[tuple[str, str, str, int], Callable[..., Tensor]] = {}
_lock = threading.Lock()


def stage_digest(module: nn.Module, channels: Sequence[int]) -> str:
    """A hash of what a stage computes: its modules' classes and settings, its weights and buffers,
    and its inputs' channels."""
    h = hashlib.sha256(f"lpdask-engine-{FORMAT}/{list(channels)}/{module!r}".encode())
    for name, value in module.state_dict().items():
        h.update(f"{name}{tuple(value.shape)}{value.dtype}".encode())
        h.update(value.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def folder_of(engine: Engine) -> Path:
    """Where ``engine`` keeps its artifacts."""
    return cache_dir() / "engines" / f"{engine.name}-{engine.version()}"


def reference_module(module: nn.Module) -> nn.Module:
    """``module`` with the reference (eager) kernels, on the CPU in float32, for converters: lpdask's
    fast kernels write into a buffer in place, which tracing converters do not follow."""
    module = copy.deepcopy(module).to("cpu", torch.float32).eval()
    use_kernels(module, "eager")
    return module


@contextmanager
def keeping_locale() -> Iterator[None]:
    """Put the process's C locale back if an engine changed it. OpenVINO sets it to "C" and back while it
    reads and compiles a model; two threads doing that at once leave it "C", after which Python decodes
    subprocess output and opens text files as ASCII. Callers hold a lock: the locale is the process's."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        if locale.setlocale(locale.LC_ALL) != saved:
            locale.setlocale(locale.LC_ALL, saved)


class Compiled(nn.Module):
    """``module`` run by engine ``engine`` in ``precision`` (a stage's inputs of ``channels``)."""

    def __init__(self, module: nn.Module, engine: str, precision: str, channels: Sequence[int],
                 digest: str | None = None) -> None:
        super().__init__()
        self.reference = module
        self.engine, self.precision, self.channels = engine, precision, tuple(channels)
        self.digest = digest or stage_digest(module, channels)

    def forward(self, *inputs: Tensor) -> Tensor:
        return runner(self)(*inputs)

    def extra_repr(self) -> str:
        return f"engine={self.engine}, precision={self.precision}, digest={self.digest}"


def runner(stage: Compiled) -> Callable[..., Tensor]:
    """What ``stage`` runs in this process on torch's current thread count: built once."""
    key = (stage.engine, stage.digest, stage.precision, torch.get_num_threads())
    found = _built.get(key)
    if found is None:
        with _lock:
            found = _built.get(key)
            if found is None:
                found = _built[key] = build(stage, key[3])
    return found


def build(stage: Compiled, threads: int) -> Callable[..., Tensor]:
    """Build ``stage``'s callable and check it on a probe window; an artifact from the disk cache that
    cannot be loaded or fails the check is removed and built again."""
    engine = entry(stage.engine).load()
    folder = folder_of(engine)
    error = float("inf")
    for attempt in range(2):
        cached = attempt == 0 and any(folder.glob(f"{stage.digest}.*"))
        try:
            run = engine.build(stage.reference, stage.channels, stage.precision, threads, folder, stage.digest)
            error = probe_error(stage, run)
        except Exception:  # noqa: BLE001 - a damaged file makes an engine's loader raise anything
            if not cached:
                raise
        if error <= PROBE_TOLERANCE[stage.precision]:
            return run
        if not cached:
            break
        EVENTS["rebuilt"] += 1
        forget_artifacts(folder, stage.digest)
    raise RuntimeError(f"engine {stage.engine} built stage {stage.digest} wrongly: relative error {error:.2e} "
                       "on a probe window")


def probe_error(stage: Compiled, run: Callable[..., Tensor]) -> float:
    """Largest difference between ``run`` and the module on a random window, relative to the largest
    value the module gives."""
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.rand(1, c, PROBE, PROBE + 3, generator=generator) for c in stage.channels]
    with torch.inference_mode():
        weights = next(stage.reference.parameters(), None)
        expected = stage.reference(*(x.to(weights.dtype if weights is not None else torch.float32)
                                     for x in inputs)).float()
        got = run(*inputs).float()
    if got.shape != expected.shape:
        return float("inf")
    return float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-6))


def forget_artifacts(folder: Path, digest: str) -> None:
    for path in folder.glob(f"{digest}*"):
        path.unlink(missing_ok=True)


def forget() -> None:
    """Drop this process's builds (the disk cache stays): the next call builds or loads again."""
    with _lock:
        _built.clear()


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write(temporary path)``, then rename it to ``path``: a reader never sees half a file. A
    read-only cache folder leaves nothing behind (the build is simply not kept)."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(partial)
        os.replace(partial, path)
    except OSError:
        partial.unlink(missing_ok=True)


EXAMPLE = 16
"""Side of the example window an export traces a stage with (height and width are made dynamic)."""


def onnx_file(module: nn.Module, channels: Sequence[int], folder: Path, digest: str) -> Path:
    """``<folder>/<digest>.onnx``: ``module`` exported to ONNX with dynamic height and width, made
    once (renamed into place whole). Where ``folder`` cannot be written, a temporary file is made
    for this process instead."""
    path = folder / f"{digest}.onnx"
    if path.exists():
        return path
    start = time.perf_counter()
    names = [f"x{i}" for i in range(len(channels))]
    example = tuple(torch.zeros(1, c, EXAMPLE, EXAMPLE) for c in channels)
    reference = reference_module(module)
    axes = {name: {2: "height", 3: "width"} for name in [*names, "y"]}

    def export(target: Path) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
            torch.onnx.export(reference, example, str(target), input_names=names, output_names=["y"],
                              dynamic_axes=axes, dynamo=False)

    write_atomically(path, export)
    if not path.exists():
        path = Path(tempfile.mkdtemp(prefix="lpdask-engine-")) / path.name
        export(path)
    TIMES("converted", start)
    return path


def input_channels(stages: Sequence[Stage], image_channels: int) -> list[list[int]]:
    """The channels of each stage's inputs."""
    channels = {IMAGE: image_channels, **{stage.name: stage.channels for stage in stages}}
    return [[channels[name] for name in stage.inputs] for stage in stages]


def stage_digests(stages: Sequence[Stage], image_channels: int) -> list[str]:
    """Each stage's :func:`stage_digest` (a hash of all the network's weights: worth computing once)."""
    return [stage_digest(stage.module, c) for stage, c in zip(stages, input_channels(stages, image_channels))]


def compiled_stages(stages: Sequence[Stage], engine: str, precision: str, image_channels: int,
                    digests: Sequence[str] | None = None) -> list[Stage]:
    """``stages`` as ``engine`` runs them (unchanged for the eager engine); ``digests``: their
    :func:`stage_digests`, where already known."""
    if engine == "eager":
        return list(stages)
    digests = digests or stage_digests(stages, image_channels)
    return [replace(stage, module=Compiled(stage.module, engine, precision, channels, digest))
            for stage, channels, digest in zip(stages, input_channels(stages, image_channels), digests)]


@dataclass
class Timer:
    """Counts each build event (:data:`EVENTS`) and the seconds spent on each kind, for benchmarks."""

    seconds: Counter[str]

    def __call__(self, kind: str, start: float) -> None:
        EVENTS[kind] += 1
        self.seconds[kind] += time.perf_counter() - start


TIMES = Timer(Counter())


def is_cached(module: Compiled) -> bool:
    """Whether the disk cache holds ``module``'s artifact (its engine's folder has the stage's file)."""
    folder = folder_of(entry(module.engine).load())
    return any(folder.glob(f"{module.digest}.*"))
