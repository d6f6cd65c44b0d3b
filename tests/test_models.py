"""Checkpoint layouts and the work folder's lifetime."""

from __future__ import annotations

import pytest
import tifffile
import torch

import lpdask.jobs
from lpdask import LpdaskError, RRDBConfig, RRDBNet, load_model, upscale

from .reference import smooth_image


@pytest.mark.parametrize("layout", ["params_ema", "params", "bare"])
def test_checkpoint_layouts_load_strictly(tmp_path, layout):
    torch.manual_seed(3)
    net = RRDBNet(RRDBConfig(num_feat=8, num_block=3, num_grow_ch=4))
    state = net.state_dict()
    torch.save(state if layout == "bare" else {layout: state, "other": 1}, tmp_path / "m.pth")
    loaded = load_model(tmp_path / "m.pth")
    assert loaded.config == RRDBConfig(num_feat=8, num_block=3, num_grow_ch=4)
    for key, value in state.items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_missing_key_is_refused(tmp_path):
    state = RRDBNet(RRDBConfig(num_feat=8, num_block=1, num_grow_ch=4)).state_dict()
    del state["conv_hr.bias"]
    torch.save(state, tmp_path / "m.pth")
    with pytest.raises(LpdaskError, match="weights do not match RRDBNet"):
        load_model(tmp_path / "m.pth")


def test_scale_is_read_from_the_weights(tmp_path):
    for scale in (4, 2, 1):
        state = RRDBNet(RRDBConfig(scale=scale, num_feat=8, num_block=1, num_grow_ch=4)).state_dict()
        torch.save(state, tmp_path / "m.pth")
        net = load_model(tmp_path / "m.pth")
        assert (net.scale, net.input_factor) == (scale, 4 // scale)


def test_at_most_three_activations_on_disk(small_net, tmp_path, monkeypatch):
    """Each intermediate array is removed once no later stage reads it."""
    present: list[int] = []
    real = lpdask.jobs.WorkFolder.create

    def create(self, name, *args):
        array = real(self, name, *args)
        present.append(len(list(self.path.local_path.glob("*.zarr"))))
        return array

    monkeypatch.setattr(lpdask.jobs.WorkFolder, "create", create)
    tifffile.imwrite(tmp_path / "in.tif", smooth_image(40, 40))
    net = RRDBNet(RRDBConfig(num_feat=8, num_block=5, num_grow_ch=4)).eval()
    upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=net, chunk=16, blocks_per_stage=1)
    assert len(present) == 6  # head + 5 body stages; the tail writes the output
    assert max(present) == 3
    assert not (tmp_path / "out.zarr.work").exists()
