"""Models of one image channel (issue 22, defect 1): a grey image goes in as 1 channel, and R, G, B
and alpha each as their own grey image, under every executor. Each result is compared with an
independent whole-image run of the network (``reference.whole_image_any``: every channel as a
1-channel image through the network; tolerance ``reference.assert_exact``: 8-bit within 1 level on
at most 0.1% of values). Models of other channel counts are refused in one line."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import tifffile
import torch
import zarr

from lpdask import RRDBConfig, RRDBNet, upscale, upscale_array
from lpdask.errors import LpdaskError

from .reference import assert_exact, lively, whole_image_any
from .test_channels import image_with
from .test_cli import lpdask

EXECUTORS = ["staged", "whole", "stream", "lazy"]


def grey_net(scale: int, seed: int) -> RRDBNet:
    """A lively random 1-channel RRDBNet (8 features, 1 block, growth 4); x2 pixel-unshuffles."""
    torch.manual_seed(seed)
    return lively(RRDBNet(RRDBConfig(num_in_ch=1, num_out_ch=1, scale=scale, num_feat=8, num_block=1,
                                     num_grow_ch=4)), seed=seed)


@pytest.fixture(scope="module")
def grey_x2() -> RRDBNet:
    net = grey_net(2, seed=5)
    assert net.conv_first.in_channels == 4  # the model: conv_first with 4 inputs
    return net


@pytest.fixture(scope="module")
def grey_x4() -> RRDBNet:
    return grey_net(4, seed=6)


def write_input(path, image: np.ndarray) -> None:
    """(h, w, c) pixels as a grey, RGB or RGBA TIFF."""
    if image.shape[2] == 1:
        tifffile.imwrite(path, image[..., 0], tile=(16, 16))
    elif image.shape[2] == 3:
        tifffile.imwrite(path, image, photometric="rgb", tile=(16, 16))
    else:
        tifffile.imwrite(path, image, photometric="rgb", extrasamples=["unassalpha"], tile=(16, 16))


def upscaled(net: RRDBNet, image: np.ndarray, folder, executor: str, alpha: str = "network") -> np.ndarray:
    """The image's upscaled level 0, in chunks of 16 px (lazy: 40, its chunks hold whole halos)."""
    write_input(folder / "in.tif", image)
    summary = upscale(folder / "in.tif", folder / "out.zarr", model=net, chunk=40 if executor == "lazy" else 16,
                      executor=executor, alpha=alpha)
    assert summary.runs == image.shape[2]  # every channel its own run
    return zarr.open_array(str(folder / "out.zarr" / "0"), mode="r")[:]


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_grey_x2_model_on_grey_rgb_and_rgba(grey_x2, tmp_path, executor, channels):
    """Odd sides: the unshuffle's reflect padding is cropped away again."""
    image = image_with(channels, 85, 81, seed=channels)
    result = upscaled(grey_x2, image, tmp_path, executor)
    assert result.shape == (channels, 170, 162)
    assert_exact(result, whole_image_any(grey_x2, image))


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_grey_x2_model_lazy_api(grey_x2, channels):
    image = image_with(channels, 83, 85, seed=10 + channels)
    result = upscale_array(da.from_array(image, chunks=(40, 40, channels)), grey_x2, chunk=40).compute()
    assert result.shape == (166, 170, channels)
    assert_exact(np.moveaxis(result, -1, 0), whole_image_any(grey_x2, image))


@pytest.mark.parametrize(("executor", "channels", "alpha"),
                         [("staged", 1, "network"), ("stream", 3, "network"), ("whole", 4, "bilinear"),
                          ("stream", 4, "nearest")])
def test_grey_x4_model(grey_x4, tmp_path, executor, channels, alpha):
    """No pixel-unshuffle; an alpha resized without the network."""
    image = image_with(channels, 30, 23, seed=20 + channels)
    result = upscaled(grey_x4, image, tmp_path, executor, alpha)
    assert result.shape == (channels, 120, 92)
    assert_exact(result, whole_image_any(grey_x4, image, alpha=alpha))


def test_grey_x2_model_through_the_command(grey_x2, tmp_path):
    image = image_with(1, 31, 21, seed=30)
    write_input(tmp_path / "in.tif", image)
    torch.save({"params_ema": grey_x2.state_dict()}, tmp_path / "grey.pth")
    done = lpdask("upscale", "in.tif", "out.zarr", "--model", "grey.pth", "--chunk", "16", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = zarr.open_array(str(tmp_path / "out.zarr" / "0"), mode="r")[:]
    assert_exact(result, whole_image_any(grey_x2, image))


@pytest.mark.parametrize(("inputs", "outputs"), [(4, 4), (3, 1), (1, 3)])
def test_other_channel_counts_are_refused(tmp_path, inputs, outputs):
    net = RRDBNet(RRDBConfig(num_in_ch=inputs, num_out_ch=outputs, scale=4, num_feat=8, num_block=1, num_grow_ch=4))
    image = image_with(3, 20, 20, seed=1)
    write_input(tmp_path / "in.tif", image)
    message = (rf"^the model takes {inputs} image channels? and gives {outputs}: lpdask runs models of 3 \(RGB\) "
               r"or 1 \(grey\) channels in and as many out$")
    with pytest.raises(LpdaskError, match=message):
        upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=net, chunk=16)
    assert not (tmp_path / "out.zarr").exists()
    with pytest.raises(LpdaskError, match=message):
        upscale_array(da.from_array(image), net, chunk=16)


def test_four_channel_model_refused_by_the_command(tmp_path):
    net = RRDBNet(RRDBConfig(num_in_ch=4, num_out_ch=4, scale=2, num_feat=8, num_block=1, num_grow_ch=4))
    torch.save(net.state_dict(), tmp_path / "rgba.pth")
    write_input(tmp_path / "in.tif", image_with(4, 20, 20, seed=2))
    done = lpdask("upscale", "in.tif", "out.zarr", "--model", "rgba.pth", "--chunk", "16", "--quiet", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["lpdask: error: the model takes 4 image channels and gives 4: lpdask runs "
                                        "models of 3 (RGB) or 1 (grey) channels in and as many out"]
    assert not (tmp_path / "out.zarr").exists()
