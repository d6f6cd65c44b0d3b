import os
import socket

import numpy as np
import pytest
import torch

from lpdask import RRDBConfig, RRDBNet

from .reference import lively

torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
"""The cores shared among the test processes (pytest -n), so references computed here do not
oversubscribe them."""


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


@pytest.fixture
def bucket(monkeypatch):
    """A fresh bucket on a moto S3 server on 127.0.0.1; credentials and endpoint from the environment."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    from urllib.request import Request, urlopen

    urlopen(Request(f"http://127.0.0.1:{port}/moto-api/reset", method="POST")).close()  # moto keeps buckets per process
    for name, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    import fsspec
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = fsspec.filesystem("s3")
    fs.mkdir("lpdask-test")
    yield fs
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()
