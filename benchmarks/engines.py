"""Inference engines on lpdask's own stages and window shapes, side by side in one process.

``.venv/bin/python -m benchmarks.engines [--repeat 3] [--engines E ...] [--only CASE ...] [--report JSON]``
(ONNX Runtime needs the ``onnxruntime`` extra; OpenVINO and onnx come with lpdask). Each case is one stage of lpdask's staged or
streaming plans on the window a chunk or a strip really reads (the chunk, strip or tile plus the
stage's halo on each side), fed with real features (the head conv of a photo crop), or the whole
network on a whole 256^2 image. Every engine is built, called once (its first call: conversion,
compilation and one run), then all engines are timed in turn, ``--repeat`` rounds, and the median
kept. Speeds are ratios to PyTorch eager measured in the same rounds; errors are against eager fp32.

Engines: ``eager`` (lpdask's path: fast kernels, NCHW), ``channels_last``, ``compile`` (inductor,
one compile per shape), ``compile_dynamic`` (inductor, ``dynamic=True``, one compile per stage),
``openvino_f32`` (f32 forced: OpenVINO picks bf16 by itself where the CPU has it), ``openvino_f32_dynamic``
(one compiled model per stage, dynamic H and W), ``openvino_bf16``, ``onnxruntime`` (fp32, one
session per stage, dynamic H and W). Converters and compilers get the stage with the reference
(eager) kernels: the fast kernels write into a buffer in place, which OpenVINO does not convert.
Prints the table on stdout and writes benchmarks/results/engines.json.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .common import astronaut, fmt, machine, save, say, table

if TYPE_CHECKING:
    import torch

    from lpdask.stages import Stage

Run = Callable[..., np.ndarray]
ENGINES = ("eager", "channels_last", "compile", "compile_dynamic", "openvino_f32", "openvino_f32_dynamic",
           "openvino_bf16", "onnxruntime")


@dataclasses.dataclass
class Case:
    """One stage on one window shape."""

    name: str
    key: str
    """Names the stage module: engines that serve any shape build once per key."""
    stage: Stage
    height: int
    width: int


@dataclasses.dataclass
class Builder:
    """Makes each engine's callable for a case, keeping what serves every shape of a stage."""

    threads: int
    folder: Path
    kept: dict[tuple[str, str], Any] = dataclasses.field(default_factory=dict)
    convert_seconds: float = 0.0
    """Spent so far converting stages (OpenVINO's convert_model, the ONNX export)."""
    precision: dict[str, str] = dataclasses.field(default_factory=dict)
    """The inference precision each OpenVINO engine's compiled model reports."""

    def build(self, engine: str, case: Case, inputs: Sequence[torch.Tensor]) -> Run:
        return getattr(self, engine)(case, inputs)

    def _once(self, engine: str, case: Case, make: Callable[[], Any]) -> Any:
        if (engine, case.key) not in self.kept:
            self.kept[engine, case.key] = make()
        return self.kept[engine, case.key]

    def reference_module(self, case: Case) -> torch.nn.Module:
        """The stage with the eager kernels (concatenations, no in-place buffer), for converters."""
        from lpdask.kernels import use_kernels

        def make() -> torch.nn.Module:
            module = copy.deepcopy(case.stage.module).eval()
            use_kernels(module, "eager")
            return module
        return self._once("reference", case, make)

    def eager(self, case: Case, inputs: Sequence[torch.Tensor]) -> Run:
        return _torch_run(case.stage.module, None)

    def channels_last(self, case: Case, inputs: Sequence[torch.Tensor]) -> Run:
        import torch

        return _torch_run(case.stage.module, torch.channels_last)

    def compile(self, case: Case, inputs: Sequence[torch.Tensor]) -> Run:
        import torch

        return _torch_run(torch.compile(self.reference_module(case), dynamic=False), None)

    def compile_dynamic(self, case: Case, inputs: Sequence[torch.Tensor]) -> Run:
        import torch

        compiled = self._once("compile_dynamic", case,
                              lambda: torch.compile(self.reference_module(case), dynamic=True))
        return _torch_run(compiled, None)

    def _openvino_model(self, case: Case, inputs: Sequence[torch.Tensor]) -> Any:
        import openvino as ov
        import torch

        def make() -> Any:
            module = self.reference_module(case)
            start = time.perf_counter()
            with torch.no_grad():
                model = ov.convert_model(module, example_input=tuple(inputs))
            self.convert_seconds += time.perf_counter() - start
            return model
        return self._once("openvino_model", case, make)

    def _openvino(self, case: Case, inputs: Sequence[torch.Tensor], precision: str, static: bool) -> Run:
        import openvino as ov

        model = self._openvino_model(case, inputs)
        if static:
            model = model.clone()
            model.reshape({i: ov.PartialShape(list(t.shape)) for i, t in enumerate(inputs)})
        config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": self.threads,
                  "PERFORMANCE_HINT": "LATENCY"}
        compiled = ov.Core().compile_model(model, "CPU", config)
        hint = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
        self.precision[precision if static else f"{precision} dynamic"] = hint
        request = compiled.create_infer_request()

        def run(*xs: torch.Tensor) -> np.ndarray:
            return request.infer([x.numpy() for x in xs])[0].copy()
        return run

    def openvino_f32(self, case: Case, inputs: Sequence[torch.Tensor]) -> Run:
        return self._openvino(case, inputs, "f32", static=True)

    def openvino_bf16(self, case: Case, inputs: Sequence[torch.Tensor]) -> Run:
        return self._openvino(case, inputs, "bf16", static=True)

    def openvino_f32_dynamic(self, case: Case, inputs: Sequence[torch.Tensor]) -> Run:
        return self._once("openvino_f32_dynamic", case, lambda: self._openvino(case, inputs, "f32", static=False))

    def onnxruntime(self, case: Case, inputs: Sequence[torch.Tensor]) -> Run:
        return self._once("onnxruntime", case, lambda: self._onnx_session(case, inputs))

    def _onnx_session(self, case: Case, inputs: Sequence[torch.Tensor]) -> Run:
        import onnxruntime as ort
        import torch

        path = self.folder / f"{case.key}.onnx"
        names = [f"x{i}" for i in range(len(inputs))]
        axes = {name: {2: "h", 3: "w"} for name in [*names, "y"]}
        module = self.reference_module(case)
        start = time.perf_counter()
        with torch.no_grad():
            torch.onnx.export(module, tuple(inputs), str(path), input_names=names, output_names=["y"],
                              dynamic_axes=axes, dynamo=False)
        self.convert_seconds += time.perf_counter() - start
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def run(*xs: torch.Tensor) -> np.ndarray:
            return session.run(None, {n: x.numpy() for n, x in zip(names, xs)})[0]
        return run


def _torch_run(module: Callable[..., torch.Tensor], layout: torch.memory_format | None) -> Run:
    """``module`` on the inputs (moved to ``layout`` first, where given) under inference mode, as numpy."""
    import torch

    def run(*xs: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            if layout is not None:
                xs = tuple(x.contiguous(memory_format=layout) for x in xs)
            return module(*xs).contiguous().numpy()
    return run


def errors(out: np.ndarray, reference: np.ndarray, image: bool) -> dict[str, float]:
    """Largest absolute difference, and in 8-bit levels (values x 255, rounded; an image output is
    clamped to [0, 1] first, as lpdask writes it): the largest and the share off by more than 1."""
    def levels(a: np.ndarray) -> np.ndarray:
        return np.round((np.clip(a, 0, 1) if image else a).astype(np.float64) * 255).astype(np.int64)
    off = np.abs(levels(out) - levels(reference))
    return {"max_abs": float(np.abs(out - reference).max()), "max_levels": int(off.max()),
            "over_1_level": float((off > 1).mean())}


def window_inputs(net: Any, case: Case) -> list[torch.Tensor]:
    """A photo crop of the window's size (the image), or the head conv's output on it (features) once
    per input of the stage."""
    import torch

    side = max(case.height, case.width)
    pixels = astronaut(max(side, 64))[: case.height, : case.width]
    x = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32) / 255)[None]
    if case.stage.inputs == ("image",):
        return [x]
    with torch.no_grad():
        features = net.conv_first(x)
    return [features] * len(case.stage.inputs)


def cases(net: Any, only: Sequence[str]) -> list[Case]:
    """The windows lpdask's plans run on x4plus: the plan ``lpdask plan`` picks for a 1024^2 image on the
    2-core development machine (staged, chunk 256, 2 RRDBs per stage), streaming strips of one RRDB
    per stage (tile 192 or 512 wide, strips of 32, 64, 128 rows), the trunk's last stage (two
    inputs) and the tail, and the whole network on a whole 256^2 image."""
    from lpdask.executors.staged import whole_stages

    one, two = net.stages(1), net.stages(2)
    body1, body2 = one[1], two[1]
    found = [Case("staged chunk 256, 2 RRDB/stage", "k2:body.0", body2, 256 + 2 * body2.halo, 256 + 2 * body2.halo)]
    for width in (192, 512):
        for strip in (32, 64, 128):
            found.append(Case(f"strip {strip} x tile {width}, 1 RRDB", "k1:body.0", body1,
                              strip + 2 * body1.halo, width + 2 * body1.halo))
    for stage in (one[-2], one[-1]):
        found.append(Case(f"strip 64 x tile 192, {stage.name}", f"k1:{stage.name}", stage,
                          64 + 2 * stage.halo, 192 + 2 * stage.halo))
    found.append(Case("whole network, whole 256^2 image", "whole", whole_stages(net)[0], 256, 256))
    return [c for c in found if not only or any(o in c.name for o in only)]


def measure(net: Any, case: Case, engines: Sequence[str], builder: Builder, repeat: int) -> list[dict]:
    """Build every engine for ``case`` (its first call timed), then time them in turn ``repeat``
    rounds; one row per engine."""
    inputs = window_inputs(net, case)
    load = os.getloadavg()[0]
    runs: dict[str, Run] = {}
    rows: dict[str, dict] = {}
    reference = None
    for engine in ("eager", *[e for e in engines if e != "eager"]):
        start, converted = time.perf_counter(), builder.convert_seconds
        try:
            runs[engine] = builder.build(engine, case, inputs)
            out = runs[engine](*inputs)
        except Exception as exc:  # noqa: BLE001 - a failing engine is a result
            say(f"  {engine}: failed: {exc!r}"[:400])
            rows[engine] = {"engine": engine, "failed": repr(exc)[:300]}
            runs.pop(engine, None)
            continue
        first = time.perf_counter() - start
        ran = builder.precision.get("bf16", "")
        if engine == "openvino_bf16" and "bf16" not in ran:
            say(f"  {engine}: this CPU has no bf16: OpenVINO compiled {ran}; not timed")
            rows[engine] = {"engine": engine, "failed": f"no bf16 on this CPU: OpenVINO compiled {ran}"}
            runs.pop(engine)
            continue
        reference = out if reference is None else reference
        rows[engine] = {"engine": engine, "first_call_seconds": first, "seconds": [],
                        "convert_seconds": builder.convert_seconds - converted,
                        **errors(out, reference, case.stage.channels == 3)}
        say(f"  {engine}: first call {first:.1f} s (converting {rows[engine]['convert_seconds']:.1f} s)")
    for _ in range(repeat):
        for engine, run in runs.items():
            start = time.perf_counter()
            run(*inputs)
            rows[engine]["seconds"].append(time.perf_counter() - start)
    eager = statistics.median(rows["eager"]["seconds"])
    for row in rows.values():
        if "seconds" in row:
            row["median_seconds"] = statistics.median(row["seconds"])
            row["speed_vs_eager"] = eager / row["median_seconds"]
        row.update(case=case.name, stage=case.stage.name, window=f"{case.height}x{case.width}",
                   loadavg_before=load, loadavg_after=os.getloadavg()[0])
    return list(rows.values())


def main() -> None:
    import torch

    import lpdask

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a model name or checkpoint (default: RealESRGAN_x4plus)")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds (the median is kept)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads of every engine")
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    parser.add_argument("--only", nargs="*", default=[], help="cases whose name contains one of these")
    parser.add_argument("--output", default=None, help="JSON path (default: benchmarks/results/engines.json)")
    parser.add_argument("--report", default=None, help="print the table of this JSON file again, run nothing")
    args = parser.parse_args()
    if args.report:
        print("\n".join(report_table(json.loads(Path(args.report).read_text())["rows"])))
        return
    torch.set_num_threads(args.threads)
    torch._dynamo.config.cache_size_limit = 64
    net = lpdask.load_model(args.model).eval()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="lpdask-engines-") as folder:
        # A cold inductor cache: compile times are what a first run pays.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(folder) / "inductor")
        builder = Builder(args.threads, Path(folder))
        for case in cases(net, args.only):
            say(f"{case.name}: {case.stage.name} on {case.height}x{case.width}, load average {os.getloadavg()[0]:.1f}")
            rows += measure(net, case, args.engines, builder, args.repeat)
            # After every case: a long run stopped part way keeps what it measured.
            save("engines", {"machine": machine(), "threads": args.threads, "repeat": args.repeat,
                             "versions": engine_versions(), "openvino_precision": builder.precision, "rows": rows},
                 args.output)
    print("\n".join(report_table(rows)))
    say(f"torch threads {torch.get_num_threads()}; {engine_versions()}; OpenVINO's precision {builder.precision}")


def report_table(rows: Sequence[dict]) -> list[str]:
    """One line per case and engine: speed against eager, first call, errors."""
    def line(r: dict) -> list[object]:
        if "failed" in r:
            return [r["case"], r["window"], r["engine"], f"not run: {r['failed']}", "", "", "", ""]
        return [r["case"], r["window"], r["engine"], fmt(r["speed_vs_eager"], ".2f", "x"),
                fmt(r["first_call_seconds"], ".1f", " s") + (f" ({r['convert_seconds']:.1f} s converting)"
                                                               if r["convert_seconds"] >= 0.05 else ""),
                f"{r['max_abs']:.2g}", r["max_levels"],
                f"{r['over_1_level']:.2%}"]
    return table(["case", "window", "engine", "speed vs eager", "first call", "max abs diff", "max levels",
                  "> 1 level"], [line(r) for r in rows])


def engine_versions() -> dict[str, str]:
    """The versions of torch and the engines measured."""
    import importlib.metadata as md

    found = {}
    for name in ("torch", "openvino", "onnxruntime", "onnx"):
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            found[name] = "absent"
    return found


if __name__ == "__main__":
    main()
