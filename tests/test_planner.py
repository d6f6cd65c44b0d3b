"""The planner: its arithmetic against hand-computed figures, its choices against the memory
budget, and the plans it can pick (the whole network as one stage included) staying exact."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch
import zarr

from lpdask import upscale
from lpdask.plan import Plan
from lpdask.planner import NEAR, PROCESS_MEMORY, REFERENCE, Fixed, Machine, Pricing, StageCost, choose, estimate, profile
from lpdask.stages import IMAGE, Stage

from .reference import assert_exact, smooth_image, whole_image

MACHINE = Machine(macs_per_core=1e9, cores=2, parallel_efficiency=0.8, write_bytes_per_s=1e9,
                  read_bytes_per_s=2e9, memory_budget=2**30)


def test_estimate_arithmetic():
    """100 x 100 px in chunks of 50 with a 10 px halo: along each axis the windows are [0, 60) and
    [40, 100), so compute is 120^2 / 100^2 = 1.44x whole-image; the second stage reads its input
    window through whole 50 px store chunks: [0, 100) twice, 200^2 / 120^2."""
    stages = [StageCost("a", 10, 1, macs=1000.0, memory=100.0, written=256.0, read=12.0),
              StageCost("b", 10, 1, macs=1000.0, memory=100.0, written=0.0, read=256.0)]
    e = estimate(stages, Pricing(100, 100, MACHINE), Plan(50, 1, "staged"))
    assert e.chunks == 4 and e.workers == 2
    assert e.compute_overhead == pytest.approx(1.44)
    assert e.bytes_written == 256 * 100 * 100
    assert e.read_amplification == pytest.approx(200**2 / 120**2)
    macs = 2 * 1000 * 120 * 120
    assert e.compute_seconds == pytest.approx(macs / (1e9 * 2) + 0.02 * 4 * 2 / 2)
    assert e.io_seconds == pytest.approx(256 * 100 * 100 / 1e9 + 256 * 200 * 200 / 2e9)
    assert e.peak_memory == 2 * 100 * 70 * 70 + PROCESS_MEMORY  # an inner window bounds it: 50 + 2 x 10


def test_profile_counts_convolution_work():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    [cost] = profile([Stage("c", conv, 1, 1, (IMAGE,), 8)], 3, torch.device("cpu"))
    assert cost.macs == conv.weight.numel()  # per output pixel = per input pixel here
    assert cost.written == 0  # the last stage writes the output, not an activation
    assert cost.read == 3 * 4


def test_choices_follow_the_memory_budget(small_net):
    device = torch.device("cpu")
    roomy, _ = choose(small_net, 600, 600, device, memory_budget=8 * 2**30)
    budget = PROCESS_MEMORY + (roomy.peak_memory - PROCESS_MEMORY) // 2  # half the room for windows
    tight, _ = choose(small_net, 600, 600, device, memory_budget=budget)
    assert tight.peak_memory <= budget < roomy.peak_memory
    assert tight.chunk <= roomy.chunk  # a smaller chunk, or the same one with less halo per stage
    reference, plans = choose(small_net, REFERENCE, REFERENCE, device, memory_budget=8 * 2**30)
    fastest = min(p.seconds for p in plans if p.peak_memory <= 8 * 2**30)
    near = [p for p in plans if p.peak_memory <= 8 * 2**30 and p.seconds <= fastest * (1 + NEAR)]
    assert reference == min(near, key=lambda p: (p.peak_memory, p.seconds))  # least memory among the near-fastest
    large, _ = choose(small_net, 6000, 6000, device, memory_budget=8 * 2**30)  # planned as the reference
    assert (large.chunk, large.blocks_per_stage, large.executor, large.strip) == (
        reference.chunk, reference.blocks_per_stage, reference.executor, reference.strip)
    assert large.peak_memory <= 1.05 * reference.peak_memory
    # a smaller image runs the same executor and grouping (streaming: taller strips or fewer tiles at
    # once where they fit) or, when it fits one of the large plan's chunks, the whole network as one
    # stage where that is predicted faster (on a machine measured fast); never with more memory
    assert (roomy.blocks_per_stage, roomy.executor) in {(large.blocks_per_stage, large.executor), (0, "whole")}
    assert roomy.executor != "whole" or 600 <= reference.chunk
    assert roomy.peak_memory <= reference.peak_memory
    fixed, _ = choose(small_net, 600, 600, device, Fixed(chunk=96, blocks_per_stage=2))
    assert (fixed.chunk, fixed.blocks_per_stage) == (96, 2)
    staged, _ = choose(small_net, 600, 600, device, Fixed(chunk=96, blocks_per_stage=2, executors=("staged",)))
    assert (staged.chunk, staged.blocks_per_stage, staged.executor) == (96, 2, "staged")


@pytest.mark.parametrize("blocks", [0, 2])
def test_every_grouping_is_exact(small_net, tmp_path, blocks):
    """0: the whole network as one stage with its full halo (nothing stored between stages)."""
    image = smooth_image(70, 60, seed=80)
    tifffile.imwrite(tmp_path / "in.tif", image)
    summary = upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, chunk=32, blocks_per_stage=blocks)
    assert summary.stages == (1 if blocks == 0 else 3)
    assert_exact(zarr.open_array(str(tmp_path / "out.zarr" / "0"))[:], whole_image(small_net, image))


@pytest.mark.slow
def test_planned_run_is_exact_and_plan_command(small_net, small_checkpoint, tmp_path):
    image = smooth_image(90, 80, seed=81)
    tifffile.imwrite(tmp_path / "in.tif", image)
    upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net)
    assert_exact(zarr.open_array(str(tmp_path / "out.zarr" / "0"))[:], whole_image(small_net, image))
    result = subprocess.run([sys.executable, "-m", "lpdask", "plan", "in.tif", "--model", str(small_checkpoint),
                             "--max-memory", "1"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "in.tif: 90 x 80 px, 3 channel(s), 1 plane(s)"
    assert re.match(r"plan: (staged: chunk|whole: chunk|stream: tiles) ", lines[1]), lines[1]
    assert "compute x" in lines[1] and "peak memory" in lines[1]
    assert len([line for line in lines if "predicted" in line]) >= 4
    assert np.all([float(line.split("peak memory ")[1].split(" GiB")[0]) <= 1e9 / 2**30 for line in lines[1:2]])
    assert "warning" not in result.stderr
    tight = subprocess.run([sys.executable, "-m", "lpdask", "plan", "in.tif", "--model", str(small_checkpoint),
                            "--max-memory", "0.5"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert tight.returncode == 0, tight.stderr
    assert tight.stderr.startswith("lpdask: warning: no plan fits the memory budget of 0.47 GiB; using the one "
                                   "needing the least, predicted "), tight.stderr
    assert len(tight.stderr.splitlines()) == 1


def test_machine_is_measured_once(tmp_path, monkeypatch):
    """The speeds are kept in the cache folder, so the same image gets the same plan next time."""
    from lpdask import planner

    monkeypatch.setenv("LPDASK_CACHE_DIR", str(tmp_path / "cache"))
    planner.measured_speeds.cache_clear()
    first = planner.measure_machine("cpu", str(tmp_path))
    assert (tmp_path / "cache" / "machine.json").exists()
    planner.measured_speeds.cache_clear()
    monkeypatch.setattr(planner, "_measure", lambda *args: pytest.fail("measured again"))
    assert planner.measure_machine("cpu", str(tmp_path)) == first
    planner.measured_speeds.cache_clear()


def test_the_default_budget_is_taken_at_each_call(tmp_path, monkeypatch):
    """The speeds are measured once, but the default budget (a GPU's free memory) is what it is at
    each call: not the first call's for the rest of the process."""
    from lpdask import planner

    monkeypatch.setattr(planner, "_measure", lambda *args: (1e9, 2, 0.5, 1e9, 1e9))
    monkeypatch.setenv("LPDASK_CACHE_DIR", str(tmp_path / "cache"))
    budgets = iter([3 * 2**30, 2**30])
    monkeypatch.setattr(planner, "default_budget", lambda device: next(budgets))
    assert planner.measure_machine("cpu", str(tmp_path)).memory_budget == 3 * 2**30
    assert planner.measure_machine("cpu", str(tmp_path)).memory_budget == 2**30
    assert planner.measure_machine("cpu", str(tmp_path), 5 * 2**30).memory_budget == 5 * 2**30


def plan_and_run(capsys, folder, checkpoint, name: str, *options: str) -> tuple[str, int, str]:
    """``lpdask plan`` and ``lpdask upscale`` on one input with the same options (the command line's
    entry point, in this process): the plan each states, and the runs (planes x channel passes) the
    plan command announces and upscale's summary counts."""
    from lpdask.cli import main

    common = ["--model", str(checkpoint), *options]
    here = os.getcwd()
    os.chdir(folder)
    try:
        capsys.readouterr()
        assert main(["plan", name, *common]) == 0, capsys.readouterr()
        planned = capsys.readouterr().out
        assert main(["upscale", name, "out.zarr", *common]) == 0, capsys.readouterr()
        ran = capsys.readouterr().err
    finally:
        os.chdir(here)
    plan = next(line for line in planned.splitlines() if line.startswith("plan: "))
    announced = [int(n) for n in re.findall(r"this input takes (\d+) runs", planned)] or [1]
    runs = int(re.search(r" (\d+) runs? x ", ran).group(1))
    used = next(line.removeprefix("lpdask: ") for line in ran.splitlines() if line.startswith("lpdask: plan: "))
    assert announced == [runs], (planned, ran)
    return plan, runs, used


@pytest.mark.parametrize("kind, options, runs", [
    ("rgba", ("--threads", "1", "--max-memory", "2"), 2),  # colour through the network, then alpha as grey
    ("ome", (), 3),  # microscopy: each channel as a grey image
])
def test_plan_command_states_the_plan_upscale_runs(capsys, tmp_path, small_checkpoint, kind, options, runs):
    image = smooth_image(40, 36, seed=82)
    if kind == "rgba":
        image = np.concatenate([image, image[..., :1]], axis=-1)
        tifffile.imwrite(tmp_path / "in.tif", image, photometric="rgb", extrasamples=["unassalpha"])
    elif kind == "ome":
        tifffile.imwrite(tmp_path / "in.tif", np.moveaxis(image, -1, 0), ome=True, metadata={"axes": "CYX"})
    else:
        tifffile.imwrite(tmp_path / "in.tif", image)
    plan, counted, used = plan_and_run(capsys, tmp_path, small_checkpoint, "in.tif", "--blocks-per-stage", "1",
                                       *options)
    assert plan == used
    assert counted == runs


def test_plan_command_refuses_what_upscale_refuses(capsys, monkeypatch, tmp_path, small_checkpoint):
    from lpdask.cli import main

    tifffile.imwrite(tmp_path / "in.tif", smooth_image(20, 20, seed=83))
    monkeypatch.chdir(tmp_path)
    refused = {("--precision", "fp16"): "--precision fp16 needs a CUDA device",
               ("--chunk", "64", "--strip", "16", "--tile-rows", "100"): "--tile-rows 100 must be a multiple of 64"}
    for command in (["plan", "in.tif"], ["upscale", "in.tif", "out.zarr"]):
        for options, message in refused.items():
            code = main([*command, "--model", str(small_checkpoint), *options, "--device", "cpu"])
            stderr = capsys.readouterr().err
            assert code == 2 and message in stderr, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


def test_streaming_tiles_are_cut_in_height_to_keep_the_cores_busy(small_net, monkeypatch):
    """An image one tile wide on 2 cores: where torch's two threads on one tile do half the work of
    two one-thread tiles, two bands, one per core, are faster despite the rows repeated at the cut;
    where threads scale perfectly, the cut only adds work."""
    from dataclasses import replace

    from lpdask import planner

    for efficiency, cut in ((0.5, True), (1.0, False)):
        machine = replace(MACHINE, parallel_efficiency=efficiency, memory_budget=8 * 2**30)
        monkeypatch.setattr(planner, "measure_machine", lambda *args, machine=machine: machine)
        best, _ = choose(small_net, 1024, 512, torch.device("cpu"), Fixed(chunk=512, executors=("stream",)))
        assert (best.tile_rows, best.chunks, best.workers) == ((512, 2, 2) if cut else (0, 1, 1)), best
        whole_height = planner.estimate_stream(
            planner.profile(small_net.stages(best.blocks_per_stage), 3, torch.device("cpu")),
            small_net.stages(best.blocks_per_stage), Pricing(1024, 512, machine, image_channels=3),
            Plan(512, best.blocks_per_stage, "stream", 1, best.strip))
        assert best.seconds < whole_height.seconds if cut else best.seconds == pytest.approx(whole_height.seconds)


def test_a_cut_takes_no_more_memory_than_the_plan_for_a_large_image(small_net, monkeypatch):
    """On a fast core a 600 px image is one 768 px tile, in strips of 512 rows where one at a time
    fits; two bands at once then need shorter strips, as the 4096 px image's plan has."""
    from dataclasses import replace

    from lpdask import planner

    machine = replace(MACHINE, macs_per_core=50e9, parallel_efficiency=0.7, memory_budget=8 * 2**30)
    monkeypatch.setattr(planner, "measure_machine", lambda *args: machine)
    large, _ = choose(small_net, REFERENCE, REFERENCE, torch.device("cpu"))
    small, _ = choose(small_net, 600, 600, torch.device("cpu"))
    assert (small.chunks, small.workers) == (2, 2), small  # cut: a band per core
    assert small.peak_memory <= large.peak_memory, (small, large)


def test_long_streaming_tiles_are_cut_in_height(small_net, monkeypatch):
    """A tile that would take longer than TILE_SECONDS is cut into bands of about that long (a kill
    loses less), a multiple of the output's stored chunk rows and no shorter than BAND_REACHES
    reaches; on a device fast enough, tiles stay whole."""
    from dataclasses import replace

    from lpdask import planner
    from lpdask.chunks import tile_rows_step
    from lpdask.geometry import reach

    slow = replace(MACHINE, macs_per_core=2e8, memory_budget=8 * 2**30)
    monkeypatch.setattr(planner, "measure_machine", lambda *args: slow)
    best, _ = choose(small_net, 60000, 1024, torch.device("cpu"), Fixed(chunk=1024, executors=("stream",)))
    assert best.tile_rows and best.tile_rows % tile_rows_step(1024, 4) == 0
    assert best.tile_rows >= planner.BAND_REACHES * reach(small_net.stages(best.blocks_per_stage))
    per_band = best.seconds * best.workers / best.chunks
    assert planner.TILE_SECONDS / 2 < per_band <= planner.TILE_SECONDS * 1.1, per_band
    assert best.compute_overhead < 1.1

    fast = replace(slow, macs_per_core=1e14, device_type="cuda")
    monkeypatch.setattr(planner, "measure_machine", lambda *args: fast)
    best, _ = choose(small_net, 60000, 1024, torch.device("cpu"), Fixed(chunk=1024, executors=("stream",)))
    assert best.tile_rows == 0 and best.chunks == 1


def test_tile_rows_given_keep_to_tile_widths_they_fit(small_net):
    """Tiles 64 rows high fit only tiles whose output's stored chunks they hold in whole rows (for
    this x4 net: 64 px wide, stored in 256 px chunks; 96 px wide are stored in 384 px chunks)."""
    from lpdask.chunks import tile_rows_step

    best, plans = choose(small_net, 600, 600, torch.device("cpu"), Fixed(executors=("stream",), tile_rows=64))
    assert best.tile_rows == 64 and plans
    assert all(e.tile_rows == 64 and 64 % tile_rows_step(e.chunk, 4) == 0 for e in plans)
    assert {e.chunk for e in plans} == {64}
