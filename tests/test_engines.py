"""Engines: every engine installed here computes what whole-image inference computes (the exactness
cases of test_exact.py, through each engine, at the same tolerance against the same independent
references), builds each stage once per machine (the disk cache), never uses an artifact built for
another stage, model or precision, and is chosen, refused and resumed as a user would expect."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import subprocess
import sys

import dask.array as da
import numpy as np
import pytest
import tifffile
import torch
import zarr

from lpdask import LpdaskError, RRDBConfig, RRDBNet, upscale, upscale_array
from lpdask.engines import ENGINES, Entry, candidates, engine_named, refusal
from lpdask.engines import compiled as engines_compiled
from lpdask.engines.compiled import EVENTS, Compiled, compiled_stages, folder_of, forget
from lpdask.executors.staged import run_job, stages_for
from lpdask.io.omezarr import OmeZarrSink
from lpdask.io.sources import open_source
from lpdask.jobs import WorkFolder
from lpdask.plan import Plan
from lpdask.planner import choose_engine
from lpdask.schedulers import Threads
from lpdask.task import Job

from .reference import assert_exact, lively, smooth_image, whole_image, whole_image_any, whole_image_float
from .test_srvgg import lively_srvgg

ENGINE_NAMES = candidates("cpu", "fp32")
"""Every engine this machine can run fp32 on: the test extra installs them all."""
COMPILING = [name for name in ENGINE_NAMES if name != "eager"]


def test_the_test_set_up_installs_every_engine():
    assert ENGINE_NAMES == [e.name for e in ENGINES if "cpu" in e.devices]


def level0(path) -> np.ndarray:
    return zarr.open_array(str(path / "0"), mode="r")[:]


@pytest.mark.parametrize("engine", ENGINE_NAMES)
@pytest.mark.parametrize(("height", "width", "chunk", "blocks", "executor"),
                         [(70, 90, 16, 1, "staged"), (37, 41, 256, 2, "staged"), (100, 75, 32, 0, "whole"),
                          (61, 45, 32, 1, "stream")])
def test_rrdbnet_matches_whole_image(small_net, tmp_path, engine, height, width, chunk, blocks, executor):
    image = smooth_image(height, width, seed=height)
    tifffile.imwrite(tmp_path / "in.tif", image, tile=(16, 16))
    summary = upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, chunk=chunk,
                      blocks_per_stage=blocks, executor=executor, engine=engine,
                      strip=16 if executor == "stream" else None)
    assert summary.engine == engine
    assert_exact(level0(tmp_path / "out.zarr"), whole_image(small_net, image))


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_float_and_uint16_within_tolerance(small_net, tmp_path, engine):
    image = smooth_image(40, 52, seed=5, dtype=np.float32)
    zarr.create_array(tmp_path / "in.zarr", data=image, chunks=(16, 16, 3))
    upscale(tmp_path / "in.zarr", tmp_path / "out.zarr", model=small_net, chunk=16, engine=engine)
    assert_exact(level0(tmp_path / "out.zarr"), whole_image_float(small_net, image))
    image16 = smooth_image(37, 45, seed=23, dtype=np.uint16)
    tifffile.imwrite(tmp_path / "in16.tif", image16, tile=(16, 16))
    upscale(tmp_path / "in16.tif", tmp_path / "out16.zarr", model=small_net, chunk=16, engine=engine)
    assert_exact(level0(tmp_path / "out16.zarr"), whole_image(small_net, image16))


@pytest.mark.parametrize("engine", ENGINE_NAMES)
@pytest.mark.parametrize(("scale", "height", "width", "chunk"), [(2, 45, 37, 16), (1, 30, 43, 20)])
def test_pixel_unshuffle_networks(tmp_path, engine, scale, height, width, chunk):
    net = lively(RRDBNet(RRDBConfig(scale=scale, num_feat=12, num_block=2, num_grow_ch=6)), seed=scale)
    image = smooth_image(height, width, seed=scale + height)
    tifffile.imwrite(tmp_path / "in.tif", image)
    upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=net, chunk=chunk, engine=engine)
    assert_exact(level0(tmp_path / "out.zarr"), whole_image(net, image))


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_compact_network(tmp_path, engine):
    from lpdask.models.srvgg import SRVGGConfig

    net = lively_srvgg(SRVGGConfig(num_feat=16, num_conv=8, upscale=4), seed=3)
    image = smooth_image(47, 39, seed=8)
    tifffile.imwrite(tmp_path / "in.tif", image)
    upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=net, chunk=16, blocks_per_stage=1, engine=engine)
    assert_exact(level0(tmp_path / "out.zarr"), whole_image(net, image))


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_grey_and_rgba_passes(small_net, tmp_path, engine):
    image = smooth_image(42, 50, seed=31)
    rgba = np.concatenate([image, image[..., :1]], axis=-1)
    tifffile.imwrite(tmp_path / "in.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    summary = upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, chunk=32, engine=engine)
    assert summary.runs == 2
    assert_exact(level0(tmp_path / "out.zarr"), whole_image_any(small_net, rgba))


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_lazy_api(small_net, engine):
    image = smooth_image(75, 66, seed=11)
    result = upscale_array(da.from_array(image, chunks=(40, 40, 3)), small_net, chunk=32, engine=engine).compute()
    assert_exact(np.moveaxis(result, -1, 0), whole_image(small_net, image))


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_halved_halos_are_caught(small_net, tmp_path, engine):
    """The negative control through each engine: the same stages with halved halos are off by more
    than the tolerance, so the cases above can fail."""
    image = smooth_image(64, 64, seed=17, dtype=np.float32)
    zarr.create_array(tmp_path / "in.zarr", data=image)
    stages = [dataclasses.replace(s, halo=s.halo // 2) for s in stages_for(small_net, "exact", 2, 0)]
    stages = compiled_stages(stages, engine, "fp32", 3)
    source = open_source(tmp_path / "in.zarr")
    sink = OmeZarrSink(tmp_path / "out.zarr", "cyx", (3, 256, 256), np.dtype(np.float32), 128)
    run_job(Job(source, stages, 32, WorkFolder(tmp_path / "work"), sink), Threads(1))
    with pytest.raises(AssertionError, match="max float difference"):
        assert_exact(level0(tmp_path / "out.zarr"), whole_image_float(small_net, image))


@pytest.mark.parametrize("engine", COMPILING)
def test_a_second_run_builds_nothing(tmp_path, engine, monkeypatch):
    """The first run converts and compiles every stage; a second one, in a process that has built
    nothing (its in-process builds dropped), only loads them from the disk cache."""
    monkeypatch.setenv("LPDASK_CACHE_DIR", str(tmp_path / "cache"))
    net = lively(RRDBNet(RRDBConfig(num_feat=8, num_block=2, num_grow_ch=4)), seed=41)
    image = smooth_image(30, 34, seed=2)
    tifffile.imwrite(tmp_path / "in.tif", image)
    forget()
    before = EVENTS.copy()
    upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=net, chunk=16, blocks_per_stage=1, engine=engine)
    first = EVENTS - before
    assert first["converted"] == 4 and first["rebuilt"] == 0  # head, two blocks, tail
    forget()
    before = EVENTS.copy()
    upscale(tmp_path / "in.tif", tmp_path / "again.zarr", model=net, chunk=16, blocks_per_stage=1, engine=engine)
    second = EVENTS - before
    assert second["converted"] == 0 and second["compiled"] == 0 and second["loaded"] >= 4  # per task thread
    assert (level0(tmp_path / "again.zarr") == level0(tmp_path / "out.zarr")).all()

    changed = copy.deepcopy(net)
    with torch.no_grad():
        changed.conv_last.weight.mul_(1.01)  # one stage's weights: that stage alone is built again
    before = EVENTS.copy()
    upscale(tmp_path / "in.tif", tmp_path / "changed.zarr", model=changed, chunk=16, blocks_per_stage=1, engine=engine)
    assert (EVENTS - before)["converted"] == 1
    assert_exact(level0(tmp_path / "changed.zarr"), whole_image(changed, image))


def test_another_precision_does_not_reuse_a_compiled_model(small_net, tmp_path, monkeypatch):
    """OpenVINO's compiled models are kept per precision: bf16 (which this test asks of the engine
    directly, whatever the CPU) compiles afresh after fp32, then loads."""
    monkeypatch.setenv("LPDASK_CACHE_DIR", str(tmp_path / "cache"))
    engine = engine_named("openvino")
    stage = small_net.stages(1)[1]
    folder, digest = folder_of(engine), engines_compiled.stage_digest(stage.module, [16])
    before = EVENTS.copy()
    engine.build(stage.module, [16], "fp32", 1, folder, digest)
    engine.build(stage.module, [16], "fp32", 1, folder, digest)
    engine.build(stage.module, [16], "bf16", 1, folder, digest)
    engine.build(stage.module, [16], "bf16", 1, folder, digest)
    events = EVENTS - before
    assert events["compiled"] == 2 and events["loaded"] == 2 and events["converted"] == 1


@pytest.mark.parametrize("engine", COMPILING)
@pytest.mark.parametrize("damage", ["garbage", "another stage's"])
def test_a_damaged_or_foreign_artifact_is_never_used(small_net, tmp_path, monkeypatch, engine, damage):
    """An artifact whose bytes were damaged, or that holds another stage under this stage's name, fails
    the check every build passes, and is built again."""
    monkeypatch.setenv("LPDASK_CACHE_DIR", str(tmp_path / "cache"))
    net = lively(RRDBNet(RRDBConfig(num_feat=16, num_block=3, num_grow_ch=8)), seed=5)
    stages = compiled_stages(net.stages(1), engine, "fp32", 3)  # body.0 and body.1: one input each, alike
    trunk, other = stages[1].module, stages[2].module
    assert isinstance(trunk, Compiled) and isinstance(other, Compiled)
    x = torch.rand(1, 16, 24, 29)
    with torch.inference_mode():
        expected = stages[1].module.reference(x)
        stages[1].module(x), stages[2].module(x)  # both built and kept on disk
    folder = folder_of(engine_named(engine))
    path = folder / f"{trunk.digest}.onnx"
    if damage == "garbage":
        path.write_bytes(b"not a model" + path.read_bytes()[11:200])
    else:
        path.write_bytes((folder / f"{other.digest}.onnx").read_bytes())
    forget()
    before = EVENTS.copy()
    with torch.inference_mode():
        got = stages[1].module(x)
    assert (EVENTS - before)["rebuilt"] == 1
    assert float((got - expected).abs().max()) < 1e-4


def test_compiled_stages_pickle_without_what_they_built(small_net):
    """A cluster receives the stage's module and weights, never the engine's compiled objects: each
    worker builds its own."""
    stage = compiled_stages(small_net.stages(1), "openvino", "fp32", 3)[1]
    x = torch.rand(1, 16, 20, 20)
    with torch.inference_mode():
        expected = stage.module(x)
    sent = pickle.loads(pickle.dumps(stage))
    with torch.inference_mode():
        assert float((sent.module(x) - expected).abs().max()) == 0.0


def test_engines_on_cluster_workers(small_net, tmp_path):
    """Two worker processes each build the stages they run (from the shared disk cache)."""
    image = smooth_image(50, 66, seed=21)
    tifffile.imwrite(tmp_path / "in.tif", image)
    summary = upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, chunk=32, blocks_per_stage=1,
                      workers=2, engine="openvino")
    assert summary.engine == "openvino"
    assert_exact(level0(tmp_path / "out.zarr"), whole_image(small_net, image))


def test_auto_counts_the_time_to_build(small_net, monkeypatch, tmp_path):
    """auto weighs each engine's measured speed against the time to build its stages: a short job runs
    eager, a long one the compiled engine that is faster."""
    import lpdask.planner as planner

    monkeypatch.setenv("LPDASK_CACHE_DIR", str(tmp_path / "cache"))  # nothing built yet
    monkeypatch.setattr(planner, "engine_speed", lambda name, net, device, precision: (
        {"openvino": 1.5, "onnxruntime": 1.2}[name], 1e-6))
    stages = small_net.stages(1)
    cpu = torch.device("cpu")
    short = Plan(seconds=0.3, compute_seconds=0.3)
    long = Plan(seconds=600.0, compute_seconds=590.0)
    assert choose_engine(small_net, stages, cpu, "fp32", "auto", short, 1).name == "eager"
    assert choose_engine(small_net, stages, cpu, "fp32", "auto", long, 1).name == "openvino"
    assert choose_engine(small_net, stages, cpu, "fp32", "onnxruntime", short, 1).name == "onnxruntime"
    assert choose_engine(small_net, stages, cpu, "fp32", "auto", short, 1, stored="openvino").name == "openvino"
    assert choose_engine(small_net, stages, cpu, "fp32", "auto", Plan(), 1_000_000_000).name == "openvino"
    assert choose_engine(small_net, stages, cpu, "fp32", "auto", Plan(), 100).name == "eager"


def test_an_engine_not_installed_names_its_extra(monkeypatch):
    import lpdask.engines as engines

    missing = Entry("onnxruntime", "onnxruntime", "", ("cpu",), "no_such_module_here", "onnxruntime")
    monkeypatch.setattr(engines, "ENGINES", (*ENGINES[:2], missing))
    assert refusal("onnxruntime", "cpu", "fp32") == ("engine onnxruntime is not installed here "
                                                      "(pip install 'lpdask[onnxruntime]')")
    with pytest.raises(LpdaskError, match=r"lpdask\[onnxruntime\]"):
        engine_named("onnxruntime")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lpdask", *args], capture_output=True, text=True, timeout=600)


def test_bf16_on_this_cpu(small_checkpoint, tmp_path):
    """bf16 on a CPU runs through OpenVINO where the CPU computes bf16 natively, and is refused in one
    line where it does not."""
    from lpdask.engines.openvino import has_bf16

    image = smooth_image(24, 20, seed=4)
    tifffile.imwrite(tmp_path / "in.tif", image)
    done = run_cli("upscale", str(tmp_path / "in.tif"), str(tmp_path / "out.zarr"), "--model", str(small_checkpoint),
                   "--device", "cpu", "--precision", "bf16", "-q")
    if has_bf16():
        assert done.returncode == 0, done.stderr
    else:
        assert done.returncode == 2
        assert done.stderr.count("\n") == 1, done.stderr
        assert "bf16" in done.stderr and "AVX512-BF16 or AMX" in done.stderr
        assert not (tmp_path / "out.zarr").exists()


def test_the_command_keeps_a_jobs_engine(small_checkpoint, tmp_path):
    """A finished job is complete for auto (it keeps the engine it ran), and a different engine asked
    of it is another job, refused in one line without --overwrite."""
    image = smooth_image(30, 26, seed=6)
    tifffile.imwrite(tmp_path / "in.tif", image)
    out = tmp_path / "out.zarr"
    common = ["upscale", str(tmp_path / "in.tif"), str(out), "--model", str(small_checkpoint), "--chunk", "16",
              "--blocks-per-stage", "1"]
    first = run_cli(*common, "--engine", "openvino")
    assert first.returncode == 0, first.stderr
    assert "engine: openvino" in first.stderr
    before = level0(out)
    again = run_cli(*common)
    assert again.returncode == 0 and "already complete" in again.stderr, again.stderr
    other = run_cli(*common, "--engine", "eager", "-q")
    assert other.returncode == 2 and other.stderr.count("\n") == 1, other.stderr
    assert "different job" in other.stderr
    assert (level0(out) == before).all()


def test_plan_shows_the_engine(small_checkpoint, tmp_path):
    tifffile.imwrite(tmp_path / "in.tif", smooth_image(30, 26, seed=6))
    shown = run_cli("plan", str(tmp_path / "in.tif"), "--model", str(small_checkpoint), "--engine", "onnxruntime")
    assert shown.returncode == 0, shown.stderr
    assert "engine: onnxruntime, fp32, measured" in shown.stdout


@pytest.fixture(autouse=True)
def locale_kept():
    """No engine leaves the process's locale changed: OpenVINO compiling in two threads at once left it
    "C", and the next subprocess's output was decoded as ASCII."""
    import locale

    before = locale.setlocale(locale.LC_ALL)
    yield
    assert locale.setlocale(locale.LC_ALL) == before