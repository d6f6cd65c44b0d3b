import os

import numpy as np
import pytest
import torch

from lpdask import RRDBConfig, RRDBNet

from .reference import lively

torch.set_num_threads(max(1, os.cpu_count() or 1))


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory):
    """Converted built-in weights go to a folder of the test run, never the user's cache."""
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LPDASK_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="session")
def small_net() -> RRDBNet:
    """A lively random 2-block RRDBNet (16 features, growth 8): trunk halo 31, whole net 34."""
    torch.manual_seed(1)
    return lively(RRDBNet(RRDBConfig(num_feat=16, num_block=2, num_grow_ch=8)), seed=1)


@pytest.fixture(scope="session")
def small_checkpoint(small_net: RRDBNet, tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("model") / "small.pth"
    torch.save({"params_ema": small_net.state_dict()}, path)
    return path


@pytest.fixture(scope="session")
def default_net() -> RRDBNet:
    from lpdask import load_model

    return load_model(None)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
