"""fp16 runs keep their activations as float16 between stages: half the activation I/O, and the
same output as keeping them as float32 (fp16 values round-trip exactly); the caller's network is
left in float32. fp16 needs CUDA in
``upscale``; here torch's CPU half-precision convolutions stand in for it."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import tifffile
import torch
import zarr

import lpdask.api
import lpdask.engines.eager
import lpdask.executors.staged
import lpdask.task
from lpdask import upscale
from lpdask.jobs import WorkFolder

from .reference import smooth_image


@pytest.fixture
def fp16_on_cpu(monkeypatch):
    monkeypatch.setattr(lpdask.device, "resolve_precision", lambda precision, device: torch.float16)
    monkeypatch.setattr(lpdask.engines.eager.Eager, "refuses", lambda self, device, precision: None)


def run(net, src, dst, monkeypatch, storage=None) -> tuple[np.ndarray, set[str]]:
    made: set[str] = set()
    create = WorkFolder.create

    def recording(self, *args, **kwargs):
        array = create(self, *args, **kwargs)
        made.add(str(array.dtype))
        return array

    with monkeypatch.context() as patch:
        patch.setattr(WorkFolder, "create", recording)
        if storage is not None:
            for module in (lpdask.task, lpdask.executors.staged):
                patch.setattr(module, "storage_dtype", lambda precision: storage)
        upscale(src, dst, model=net, chunk=32, blocks_per_stage=1, precision="fp16", threads=2)
    return zarr.open_array(str(dst / "0"))[:], made


def test_fp16_activations_are_stored_as_float16_and_lose_nothing(small_net, tmp_path, monkeypatch, fp16_on_cpu):
    weights = {k: v.clone() for k, v in small_net.state_dict().items()}
    image = smooth_image(72, 60, seed=31, dtype=np.float32)
    tifffile.imwrite(tmp_path / "in.tif", image, photometric="rgb")
    half, half_types = run(small_net, tmp_path / "in.tif", tmp_path / "half.zarr", monkeypatch)
    full, full_types = run(small_net, tmp_path / "in.tif", tmp_path / "full.zarr", monkeypatch, torch.float32)
    assert half_types == {"float16"} and full_types == {"float32"}
    assert np.array_equal(half, full)
    # the caller's network was not converted in place (fp16 would have rounded its weights)
    assert all(torch.equal(v, weights[k]) and v.dtype == torch.float32 for k, v in small_net.state_dict().items())
    # and against an independent whole-image run in fp16
    x = torch.from_numpy(np.transpose(image, (2, 0, 1)).copy())[None].half()
    with torch.inference_mode():
        reference = copy.deepcopy(small_net).half()(x)[0].clamp(0, 1).float().numpy()
    assert reference.shape == half.shape
    assert float(np.abs(half - reference).max()) < 1e-3  # one fp16 step near 1 (0 measured)
