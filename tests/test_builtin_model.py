"""The built-in Real-ESRGAN x4plus: its conversion from ncnn, its quality, and its cache.

The converted torch network is checked against tests/ncnn_graph.py, a second reading of the
same ncnn files that runs the graph by blob names, without lpdask.models.ncnn and without the
"n-th convolution in the file is the n-th Conv2d module" mapping the conversion relies on.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from skimage import color, data, metrics, transform

import lpdask
from lpdask.models import checkpoint

from . import ncnn_graph

# Both sides run fp32 convolutions on the same fp16-stored weights upcast to fp32, in the same
# order, so on this CPU they agree bit for bit (measured max |diff| 0.0 on 32x32 and 40x40 crops). The
# tolerance leaves room for a different conv kernel choice, not for a wrong weight: moving one
# weight of conv_first by one fp16 step already changes the output by 1.2e-5.
ATOL = 1e-5


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> lpdask.RRDBNet:
    """``load_model(None)``, converting into a private cache rather than the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LPDASK_CACHE_DIR", str(tmp_path_factory.mktemp("lpdask-cache")))
        return lpdask.load_model(None)


@pytest.fixture(scope="module")
def ncnn_ops() -> list[ncnn_graph.Op]:
    return ncnn_graph.load(*checkpoint.ncnn_files(checkpoint.DEFAULT_MODEL))


def to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]


def to_image(tensor: torch.Tensor) -> np.ndarray:
    return tensor[0].clamp(0, 1).permute(1, 2, 0).numpy()


def test_converted_model_matches_ncnn_graph(net, ncnn_ops):
    crop = data.astronaut()[104:136, 184:216].astype(np.float32) / 255  # 32x32 of the face
    x = to_tensor(crop)
    with torch.inference_mode():
        ours = net(x)
        reference = ncnn_graph.run(ncnn_ops, x)
    assert ours.shape == reference.shape == (1, 3, 128, 128)
    diff = (ours - reference).abs().max().item()
    print(f"max |torch - ncnn| = {diff:.3g} (output range {ours.min():.3f}..{ours.max():.3f})")
    assert diff <= ATOL
    quantized = [(t.clamp(0, 1) * 255).round() for t in (ours, reference)]
    assert (quantized[0] - quantized[1]).abs().max().item() <= 1
    # Not a pair of identical wrong answers: 4x4-averaged, the output reproduces its input.
    pooled = torch.nn.functional.avg_pool2d(ours.clamp(0, 1), 4)[0].permute(1, 2, 0).numpy()
    assert metrics.peak_signal_noise_ratio(crop, pooled, data_range=1) > 25


def test_ncnn_graph_rejects_unknown_layers(tmp_path):
    param = tmp_path / "unknown.param"
    param.write_text("7767517\n2 2\nInput in 0 1 data\nPooling pool 1 1 data out 0=1\n")
    with pytest.raises(ValueError, match="Pooling"):
        ncnn_graph.parse_param(param)
    param.write_text("7767517\n2 2\nInput in 0 1 data\nConvolution conv 1 1 data out 0=3 1=3 2=2\n")
    with pytest.raises(ValueError, match="conv"):  # dilation is not implemented here
        ncnn_graph.parse_param(param)


def gradient_energy(gray: np.ndarray) -> float:
    return float(np.mean(ndimage.sobel(gray, 0) ** 2 + ndimage.sobel(gray, 1) ** 2))


def laplacian_variance(gray: np.ndarray) -> float:
    return float(ndimage.laplace(gray).var())


def test_model_restores_detail_that_bicubic_loses(net):
    # A 256x256 crop of the astronaut's face, shrunk 4x with an antialiasing filter and
    # quantized to 8 bits, then enlarged again by the model and by PIL's bicubic.
    original = data.astronaut()[20:276, 150:406].astype(np.float32) / 255
    small = transform.resize(original, (64, 64), order=3, anti_aliasing=True)
    small8 = (np.clip(small, 0, 1) * 255).round().astype(np.uint8)
    bicubic = np.asarray(Image.fromarray(small8).resize((256, 256), Image.BICUBIC), np.float32) / 255
    with torch.inference_mode():
        model = to_image(net(to_tensor(small8.astype(np.float32) / 255)))
    assert model.shape == bicubic.shape == original.shape

    upscaled = {"model": model, "bicubic": bicubic}
    gray = {name: color.rgb2gray(im) for name, im in [("orig", original), *upscaled.items()]}
    psnr = {name: metrics.peak_signal_noise_ratio(original, im, data_range=1) for name, im in upscaled.items()}
    ratios = {}
    for measure in (gradient_energy, laplacian_variance):
        for name in ("model", "bicubic"):
            ratios[measure.__name__, name] = measure(gray[name]) / measure(gray["orig"])
    print(f"PSNR model {psnr['model']:.2f} dB, bicubic {psnr['bicubic']:.2f} dB")
    for (measure, name), ratio in ratios.items():
        print(f"{measure} ratio to original: {name} {ratio:.3f}")

    # Sharpness: each energy ratio to the original is closer to 1 (in log terms, so that
    # over-sharpening counts as much as blur) for the model, by at least a factor of two.
    # Measured: gradient 1.52 (model) vs 0.33 (bicubic), Laplacian 1.14 vs 0.018. Unsharp
    # masking the bicubic result does not pass: the radii/amounts that bring its Laplacian
    # ratio within 2x of 1 take its PSNR below 15 dB.
    for measure in ("gradient_energy", "laplacian_variance"):
        model_error = abs(np.log(ratios[measure, "model"]))
        bicubic_error = abs(np.log(ratios[measure, "bicubic"]))
        assert model_error < 0.5 * bicubic_error, measure
        assert model_error < np.log(2), measure
    # Fidelity guard: the detail is not noise. A GAN model trades some PSNR for texture
    # (measured: about 2 dB below bicubic here), but not much more.
    assert psnr["model"] > psnr["bicubic"] - 3
    assert psnr["model"] > 21


def test_builtin_checkpoint_is_converted_once_and_cached(tmp_path, monkeypatch, ncnn_ops):
    cache = tmp_path / "cache"
    monkeypatch.setenv("LPDASK_CACHE_DIR", str(cache))
    assert not cache.exists()
    first = checkpoint.builtin_checkpoint("RealESRGAN_x4plus")
    assert first.is_file() and first.parent == cache
    assert sorted(cache.iterdir()) == [first]  # no leftover partial file
    old = 1_000_000_000_000_000_000  # 2001-09-09, in ns: a rewrite would move it
    os.utime(first, ns=(old, old))

    second = checkpoint.builtin_checkpoint("RealESRGAN_x4plus")
    assert second == first
    assert first.stat().st_mtime_ns == old
    assert sorted(cache.iterdir()) == [first]

    loaded = torch.load(first, map_location="cpu", weights_only=True)
    assert "params_ema" in loaded
    state = loaded["params_ema"]
    convs = [op for op in ncnn_ops if op.kind == "Convolution"]
    assert len(state) == 2 * len(convs)
    # The first and last convolutions, found by graph position (the one reading the input
    # blob, the one writing the output blob), carry the same numbers as the checkpoint.
    (head,) = [op for op in convs if op.bottoms == ["data"]]
    (last,) = [op for op in convs if op.tops == ["output"]]
    for name, op in [("conv_first", head), ("conv_last", last)]:
        assert torch.equal(state[f"{name}.weight"].flatten(), op.data["weight"])
        assert torch.equal(state[f"{name}.bias"], op.data["bias"])
