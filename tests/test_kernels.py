"""lpdask's fast kernels against the eager forward (basicsr's RRDBNet forward, as Real-ESRGAN runs
it): the same numbers in float32 (within 1e-5; on a CPU they are bit-identical), without a single
``torch.cat``, through every way a network is run, and the switch that turns them off."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch
import zarr
from click.testing import CliRunner

from lpdask import upscale, upscale_array
from lpdask.cli import cli
from lpdask.device import network_on
from lpdask.errors import LpdaskError
from lpdask.kernels import kernels_of, use_kernels
from lpdask.models.rrdbnet import RRDBConfig, RRDBNet

from .reference import assert_exact, eager, lively, smooth_image, whole_image

TOLERANCE = 1e-5


def no_cat(*args, **kwargs):
    raise AssertionError("torch.cat called by the fast kernels")


def both(module: torch.nn.Module, net: torch.nn.Module, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``module`` on ``inputs`` with the fast kernels (torch.cat forbidden) and with the eager forward."""
    with torch.inference_mode():
        use_kernels(net, "fast")
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(torch, "cat", no_cat)
            fast = module(*inputs)
        with eager(net):
            reference = module(*inputs)
    return fast, reference


@pytest.mark.parametrize("config", [RRDBConfig(num_feat=16, num_block=3, num_grow_ch=8),
                                    RRDBConfig(num_feat=16, num_block=2, num_grow_ch=8, scale=2),
                                    RRDBConfig(num_feat=12, num_block=1, num_grow_ch=4, scale=1)],
                         ids=["x4", "x2", "x1"])
def test_fast_whole_network_equals_the_eager_forward(config):
    net = lively(RRDBNet(config), seed=3).eval()
    x = torch.rand(1, config.num_in_ch, 52, 36, generator=torch.Generator().manual_seed(4))
    fast, reference = both(net, net, x)
    assert fast.shape == reference.shape
    assert float((fast - reference).abs().max()) <= TOLERANCE


@pytest.mark.parametrize("blocks_per_stage", [1, 2, 3])
def test_fast_stages_equal_the_eager_stages(blocks_per_stage):
    """Trunk stages (and the last one, with conv_body and the long skip) on windows of odd sides."""
    net = lively(RRDBNet(RRDBConfig(num_feat=16, num_block=3, num_grow_ch=8)), seed=5).eval()
    x = torch.rand(1, 3, 23, 41, generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        arrays = {"image": x}
        for stage in net.stages(blocks_per_stage):
            inputs = [arrays[name] for name in stage.inputs]
            fast, reference = both(stage.module, net, *inputs)
            assert float((fast - reference).abs().max()) <= TOLERANCE, stage.name
            arrays[stage.name] = reference


def test_fast_kernels_on_a_batch_and_channels_last():
    """Not what the executors run (one window at a time, NCHW on a CPU), but the forward still holds."""
    net = lively(RRDBNet(RRDBConfig(num_feat=16, num_block=2, num_grow_ch=8)), seed=7).eval()
    x = torch.rand(2, 3, 20, 28, generator=torch.Generator().manual_seed(8))
    fast, reference = both(net, net, x)
    assert float((fast - reference).abs().max()) <= TOLERANCE
    fast, reference = both(net, net, x.contiguous(memory_format=torch.channels_last))
    assert float((fast - reference).abs().max()) <= TOLERANCE


def test_a_broken_fast_kernel_is_caught():
    """The comparison can fail: a dense block whose output is off by a factor of 2 is caught."""
    net = lively(RRDBNet(RRDBConfig(num_feat=16, num_block=1, num_grow_ch=8)), seed=9).eval()
    x = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(10))
    rdb = net.body[0].rdb2

    def broken(features: torch.Tensor) -> None:
        nf = rdb.conv1.in_channels
        type(rdb).forward_in(rdb, features)
        features[:, :nf].mul_(2.0)

    rdb.forward_in = broken  # type: ignore[method-assign]
    fast, reference = both(net, net, x)
    assert float((fast - reference).abs().max()) > 100 * TOLERANCE


def test_network_on_switches_a_copy_not_the_callers_network():
    net = RRDBNet(RRDBConfig(num_feat=8, num_block=1, num_grow_ch=4))
    assert kernels_of(net) == "fast"
    switched = network_on(net, torch.device("cpu"), torch.float32, kernels="eager")
    assert switched is not net and kernels_of(switched) == "eager" and kernels_of(net) == "fast"
    assert network_on(net, torch.device("cpu"), torch.float32) is net


@pytest.mark.parametrize("executor", ["stream", "staged", "whole"])
def test_every_executor_with_either_kernels_is_exact(small_net, tmp_path, executor):
    """Fast (the default) and eager kernels give the same file, and both match the whole image."""
    image = smooth_image(70, 50, seed=31)
    tifffile.imwrite(tmp_path / "in.tif", image)
    reference = whole_image(small_net, image)
    results = []
    for kernels in ("fast", "eager"):
        out = tmp_path / f"{kernels}.zarr"
        upscale(tmp_path / "in.tif", out, model=small_net, chunk=32, executor=executor, kernels=kernels, threads=1,
                **({} if executor == "whole" else {"blocks_per_stage": 1}))
        results.append(zarr.open_array(str(out / "0"))[:])
    assert kernels_of(small_net) == "fast"
    assert_exact(results[0], reference)
    np.testing.assert_array_equal(results[0], results[1])


def test_upscale_array_takes_the_switch(small_net):
    import dask.array as da

    image = smooth_image(40, 36, seed=32)
    fast = upscale_array(da.from_array(image, chunks=(20, 18, 3)), small_net, chunk=20).compute()
    slow = upscale_array(da.from_array(image, chunks=(20, 18, 3)), small_net, chunk=20, kernels="eager").compute()
    assert_exact(fast, whole_image(small_net, image).transpose(1, 2, 0))
    np.testing.assert_array_equal(fast, slow)


def test_bad_kernels_are_refused(small_net, tmp_path):
    tifffile.imwrite(tmp_path / "in.tif", smooth_image(20, 20, seed=33))
    with pytest.raises(LpdaskError, match="kernels=slow is not one of fast, eager"):
        upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, kernels="slow")  # type: ignore[arg-type]
    assert not (tmp_path / "out.zarr").exists()
    result = subprocess.run([sys.executable, "-m", "lpdask", "upscale", str(tmp_path / "in.tif"),
                             str(tmp_path / "out.zarr"), "--kernels", "slow"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "Invalid value for '--kernels': 'slow' is not one of 'fast', 'eager'" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out.zarr").exists()


def test_plan_command_takes_the_switch(small_checkpoint, tmp_path):
    tifffile.imwrite(tmp_path / "in.tif", smooth_image(64, 64, seed=34))
    result = CliRunner().invoke(cli, ["plan", str(tmp_path / "in.tif"), "--model", str(small_checkpoint),
                                       "--device", "cpu", "--kernels", "eager", "--top", "1"])
    assert result.exit_code == 0, result.output
    assert "plan:" in result.output
