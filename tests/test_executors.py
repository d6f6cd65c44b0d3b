"""Executors describe themselves and plug in through one list: a new one, defined here, runs through
the public API; lazy plans are lazy plans, not staged ones."""

from __future__ import annotations

import numpy as np
import tifffile
import torch
import zarr

from lpdask import upscale
from lpdask.chunks import Box
from lpdask.executors import EXECUTORS, executor_named
from lpdask.executors.staged import whole_stages
from lpdask.io.sources import open_source
from lpdask.options import EXECUTORS as CHOICES, UpscaleOptions
from lpdask.plan import Plan
from lpdask.planner import plan_for
from lpdask.task import run_window

from .reference import assert_exact, smooth_image, whole_image


class OneWindow:
    """The whole network on the whole image in one window: the simplest executor there is."""

    name = "one-window"
    unit = "chunk"

    def stages(self, net, plan, mode, tile_pad):
        return whole_stages(net)

    def scratch_bytes(self, stages, height, width, input_factor, itemsize):
        return 0

    def fits(self, stages, chunk, rows, cols):
        return True

    def tasks(self, job):
        return 1

    def levels_written(self, job):
        return 1

    def run(self, job, scheduler, progress=None):
        stage = job.stages[0]
        tick = progress(0, stage, 1) if progress else (lambda: None)
        rows, cols = job.grid(0).height, job.grid(0).width
        whole = Box(0, rows, 0, cols)
        out = run_window(stage, [job.pixels.read(whole)], whole, job.device)
        height, width = job.sink.level0.shape[-2:]
        job.pixels.write_result(Box(0, height, 0, width), out[0, :, :height, :width].numpy())
        tick()
        return 1


def test_an_executor_defined_outside_lpdask_runs_through_the_public_api(tmp_path, small_net):
    image = smooth_image(40, 56)
    tifffile.imwrite(tmp_path / "in.tif", image, photometric="rgb")
    summary = upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, executor=OneWindow(), chunk=16)
    assert summary.executor == "one-window" and summary.plan.executor == "one-window"
    result = np.asarray(zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["0"])
    assert_exact(result, whole_image(small_net, image))  # 8-bit: within 1 level on at most 0.1% of values


def test_the_executors_are_one_list_the_options_and_the_planner_read():
    assert CHOICES == ("auto", *(e.name for e in EXECUTORS))
    for entry in EXECUTORS:
        assert executor_named(entry.name).name == entry.name


def test_a_lazy_plan_is_lazy_and_needs_no_scratch(tmp_path, small_net):
    """Lazy plans used to carry the staged executor's storage: the disk check charged them for
    activations they never write, and their JSON could not be told from a staged plan's."""
    tifffile.imwrite(tmp_path / "in.tif", smooth_image(600, 600), photometric="rgb")
    source = open_source(tmp_path / "in.tif")
    device = torch.device("cpu")
    given, _ = plan_for(small_net, source, device, UpscaleOptions(tmp_path / "in.tif", executor="lazy", chunk=64,
                                                                 blocks_per_stage=1))
    planned, _ = plan_for(small_net, source, device, UpscaleOptions(tmp_path / "in.tif", executor="lazy"))
    staged, _ = plan_for(small_net, source, device, UpscaleOptions(tmp_path / "in.tif", executor="staged",
                                                                  chunk=64, blocks_per_stage=1))
    for plan in (given, planned):
        assert plan.executor == "lazy" and plan.scratch_bytes == 0
        assert Plan.from_json(plan.to_json()).executor == "lazy"
    assert given.to_json() != staged.to_json()
    lazy = executor_named("lazy")
    stages = lazy.stages(small_net, given, "exact", 10)
    assert lazy.scratch_bytes(stages, 600, 600, 1, 4) == 0
    assert executor_named("staged").scratch_bytes(stages, 600, 600, 1, 4) > 0
