"""dask.distributed: a scheduler and two worker processes on loopback give output identical to the
local run, and losing a worker half way loses nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from lpdask import upscale

from .reference import smooth_image
from .test_resume import chunks_done


@pytest.fixture
def cluster(tmp_path):
    """`dask scheduler` and two `dask worker` processes (no nanny, one thread each) on loopback."""
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False", "OMP_NUM_THREADS": "1"}
    file = tmp_path / "scheduler.json"
    processes = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                   "--port", "0", "--dashboard-address", ":0", "--scheduler-file", str(file)],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    deadline = time.monotonic() + 60
    while not file.exists():
        assert time.monotonic() < deadline, "scheduler did not start"
        time.sleep(0.1)
    workers = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file", str(file),
                                 "--nthreads", "1", "--no-nanny", "--host", "127.0.0.1", "--name", f"w{k}"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for k in range(2)]
    processes += workers
    address = json.loads(file.read_text())["address"]
    from distributed import Client

    with Client(address, timeout="30s") as client:
        client.wait_for_workers(2, timeout=120)
    yield address, workers
    for process in processes:
        process.kill()
        process.wait()


def local_reference(small_net, tmp_path: Path) -> np.ndarray:
    upscale(tmp_path / "in.tif", tmp_path / "local.zarr", model=small_net, chunk=16, blocks_per_stage=1, threads=1)
    return zarr.open_array(str(tmp_path / "local.zarr" / "0"))[:]


def test_two_workers_on_loopback_match_local(small_net, tmp_path, cluster):
    address, _ = cluster
    tifffile.imwrite(tmp_path / "in.tif", smooth_image(48, 56, seed=60), tile=(16, 16))
    links = []
    summary = upscale(tmp_path / "in.tif", tmp_path / "cluster.zarr", model=small_net, chunk=16, blocks_per_stage=1,
                      scheduler=address, on_cluster=links.append)
    assert links and links[0].startswith("http")
    assert summary.computed_chunks == summary.stages * summary.chunks
    assert np.array_equal(zarr.open_array(str(tmp_path / "cluster.zarr" / "0"))[:], local_reference(small_net, tmp_path))


def test_a_worker_killed_half_way(small_net, tmp_path, cluster):
    address, workers = cluster
    tifffile.imwrite(tmp_path / "in.tif", smooth_image(128, 128, seed=61), tile=(32, 32))
    chunks, stages = 64, 4
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["summary"] = upscale(tmp_path / "in.tif", tmp_path / "cluster.zarr", model=small_net, chunk=16,
                                         blocks_per_stage=1, scheduler=address)
        except BaseException as exc:  # reported below
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 240
    while chunks_done(tmp_path / "cluster.zarr.work", chunks) < chunks * stages // 3:
        assert thread.is_alive() and time.monotonic() < deadline, outcome
        time.sleep(0.02)
    os.kill(workers[0].pid, signal.SIGKILL)
    thread.join(timeout=300)
    assert "error" not in outcome, outcome
    assert workers[0].wait(timeout=10) == -signal.SIGKILL
    assert np.array_equal(zarr.open_array(str(tmp_path / "cluster.zarr" / "0"))[:], local_reference(small_net, tmp_path))
