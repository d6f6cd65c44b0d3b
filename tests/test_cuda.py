"""On a CUDA GPU: the same exactness, and the half-precision error stays small. CPU-only machines
(CI included) have no GPU, so these are skipped there; run them on a GPU machine."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tifffile
import torch
import zarr

from lpdask import upscale

from .reference import assert_exact, smooth_image, whole_image, whole_image_float

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def assert_left_alone(net: torch.nn.Module) -> None:
    """upscale ran a copy on the GPU: the caller's network is still on the CPU, in float32."""
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in net.parameters())


def test_cuda_fp32_matches_cpu_whole_image(small_net, tmp_path):
    image = smooth_image(90, 70, seed=21)
    tifffile.imwrite(tmp_path / "in.tif", image)
    reference = whole_image(small_net, image)
    upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, chunk=32, device="cuda")
    assert_left_alone(small_net)
    assert_exact(zarr.open_array(str(tmp_path / "out.zarr" / "0"))[:], reference)


def test_cuda_fp32_is_ieee_not_tf32(default_net, tmp_path):
    """fp32 on CUDA is IEEE float32 (torch lets cuDNN use TF32 by default, about 1e-3 off after 23
    blocks): real x4plus weights on a float image, against the CPU whole image within 1e-4; the
    caller's TF32 setting is left as it was."""
    image = smooth_image(48, 40, seed=23, dtype=np.float32)
    tifffile.imwrite(tmp_path / "in.tif", image)
    reference = whole_image_float(default_net, image)
    before = torch.backends.cudnn.allow_tf32
    upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=default_net, chunk=32, device="cuda")
    assert_left_alone(default_net)
    assert torch.backends.cudnn.allow_tf32 == before
    result = zarr.open_array(str(tmp_path / "out.zarr" / "0"))[:]
    assert result.shape == reference.shape
    assert float(np.abs(result - reference).max()) < 1e-4


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precision_error_is_bounded(default_net, tmp_path, precision):
    """Real x4plus weights: half precision against fp32 whole-image output (bounds from the
    measured figures in the README's precision table, with margin)."""
    from skimage import data

    image = np.ascontiguousarray(data.astronaut()[100:228, 150:278])
    tifffile.imwrite(tmp_path / "in.tif", image)
    reference = whole_image(default_net, image).astype(int)
    upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=default_net, chunk=64, device="cuda",
            precision=precision)
    assert_left_alone(default_net)
    diff = np.abs(zarr.open_array(str(tmp_path / "out.zarr" / "0"))[:].astype(int) - reference)
    assert diff.mean() < (0.5 if precision == "fp16" else 2.0), diff.mean()


def test_cuda_on_a_local_cluster_with_gpu_resources(small_net, tmp_path):
    """--workers 1 --device cuda --resources GPU=1: the worker's GPU, one task at a time."""
    image = smooth_image(64, 48, seed=22)
    tifffile.imwrite(tmp_path / "in.tif", image)
    reference = whole_image(small_net, image)
    summary = upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, chunk=32, device="cuda",
                      workers=1, resources={"GPU": 1})
    assert_left_alone(small_net)
    assert summary.computed_chunks == summary.stages * summary.chunks
    assert_exact(zarr.open_array(str(tmp_path / "out.zarr" / "0"))[:], reference)


def test_a_callers_cuda_network_keeps_its_layout(small_net, tmp_path):
    """upscale runs channels-last on CUDA; a network the caller already has on the GPU in fp32 is
    copied for that, not re-laid in place."""
    import copy

    net = copy.deepcopy(small_net).cuda()
    image = smooth_image(40, 36, seed=24)
    tifffile.imwrite(tmp_path / "in.tif", image)
    upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=net, chunk=16, blocks_per_stage=1, device="cuda")
    assert all(p.is_contiguous() for p in net.parameters())
    assert_exact(zarr.open_array(str(tmp_path / "out.zarr" / "0"))[:], whole_image(small_net, image))


def test_plan_command_states_the_fp16_plan_upscale_runs(capsys, tmp_path, small_checkpoint):
    from .test_planner import plan_and_run

    tifffile.imwrite(tmp_path / "in.tif", smooth_image(40, 36, seed=25))
    plan, runs, used = plan_and_run(capsys, tmp_path, small_checkpoint, "in.tif", "--device", "cuda",
                                    "--precision", "fp16")
    assert plan == used and runs == 1


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_streaming_on_the_gpu(default_net, tmp_path, precision):
    """The streaming executor on CUDA: fp32 equals the CPU whole image (8-bit tolerance), pixels
    converted on the GPU; half precision within the same bounds as the staged plan's, and GPU peak
    memory within the planner's prediction."""
    from skimage import data

    image = np.ascontiguousarray(data.astronaut()[100:228, 150:278])
    tifffile.imwrite(tmp_path / "in.tif", image)
    reference = whole_image(default_net, image).astype(int)
    plans: list[str] = []
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    summary = upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=default_net, chunk=64, device="cuda",
                      precision=precision, executor="stream", on_plan=plans.append)
    assert summary.executor == "stream" and summary.chunks == 2
    result = zarr.open_array(str(tmp_path / "out.zarr" / "0"))[:]
    if precision == "fp32":
        assert_exact(result, reference.astype(np.uint8))
    else:
        diff = np.abs(result.astype(int) - reference)
        assert diff.mean() < (0.5 if precision == "fp16" else 2.0), diff.mean()
    predicted = float(re.search(r"peak memory ([\d.]+) GiB", plans[0]).group(1)) * 2**30
    assert torch.cuda.max_memory_allocated() <= predicted


def test_fast_kernels_on_cuda_match_the_eager_forward(default_net):
    """Real x4plus weights on CUDA: the fast kernels in fp32 within 1e-5 of the eager forward, and
    in fp16 no further from the fp32 output than the eager fp16 forward is (plus a hundredth of a
    level of slack for summation order)."""
    from lpdask.device import network_on
    from lpdask.kernels import use_kernels

    x = torch.from_numpy(smooth_image(96, 80, seed=41).astype(np.float32) / 255).permute(2, 0, 1)[None]
    results = {}
    for dtype in (torch.float32, torch.float16):
        net = network_on(default_net, torch.device("cuda"), dtype)
        inputs = x.to("cuda", dtype).contiguous(memory_format=torch.channels_last)
        for kernels in ("eager", "fast"):
            use_kernels(net, kernels)
            with torch.inference_mode():
                results[dtype, kernels] = net(inputs).float().clamp(0, 1).cpu()
    assert_left_alone(default_net)
    assert float((results[torch.float32, "fast"] - results[torch.float32, "eager"]).abs().max()) <= 1e-5
    truth = results[torch.float32, "eager"]
    fast_error = float((results[torch.float16, "fast"] - truth).abs().mean())
    eager_error = float((results[torch.float16, "eager"] - truth).abs().mean())
    assert fast_error <= eager_error + 0.01 / 255, (fast_error, eager_error)
