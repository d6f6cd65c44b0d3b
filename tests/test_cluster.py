"""dask.distributed: a scheduler and two worker processes on loopback give output identical to the
local run, and losing a worker half way loses nothing, even the one holding the scattered model."""

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
from lpdask.executors.staged import stages_for
from lpdask.executors.staged import run_job
from lpdask.task import Job
from lpdask.io.omezarr import OmeZarrSink
from lpdask.io.sources import open_source
from lpdask.jobs import WorkFolder
from lpdask.schedulers import Cluster

from .reference import assert_exact, smooth_image, whole_image_float
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


@pytest.mark.slow  # a scheduler and two worker processes
def test_two_workers_on_loopback_match_local(small_net, tmp_path, cluster):
    address, _ = cluster
    tifffile.imwrite(tmp_path / "in.tif", smooth_image(48, 56, seed=60), tile=(16, 16))
    links = []
    summary = upscale(tmp_path / "in.tif", tmp_path / "cluster.zarr", model=small_net, chunk=16, blocks_per_stage=1,
                      scheduler=address, on_cluster=links.append)
    assert links and links[0].startswith("http")
    assert summary.computed_chunks == summary.stages * summary.chunks
    assert np.array_equal(zarr.open_array(str(tmp_path / "cluster.zarr" / "0"))[:], local_reference(small_net, tmp_path))


@pytest.mark.slow  # a scheduler and two worker processes
def test_streamed_tiles_on_two_workers_match_local(small_net, tmp_path, cluster):
    """Streaming: each tile (here 16 px wide, 32 rows high) is one task, the tiles spread over the workers."""
    address, _ = cluster
    tifffile.imwrite(tmp_path / "in.tif", smooth_image(40, 70, seed=63), tile=(16, 16))
    options = {"model": small_net, "chunk": 16, "blocks_per_stage": 1, "strip": 8, "tile_rows": 32}
    summary = upscale(tmp_path / "in.tif", tmp_path / "cluster.zarr", scheduler=address, **options)
    assert summary.executor == "stream" and summary.computed_chunks == summary.chunks == 10
    upscale(tmp_path / "in.tif", tmp_path / "local.zarr", threads=1, **options)
    assert np.array_equal(zarr.open_array(str(tmp_path / "cluster.zarr" / "0"))[:],
                          zarr.open_array(str(tmp_path / "local.zarr" / "0"))[:])


@pytest.mark.slow  # a scheduler and two worker processes, one killed
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


class KillsTheModelsHolder(Cluster):
    """Before stage 1, waits until distributed keeps the first scattered stage on one worker only
    (its active memory manager drops other copies once nothing waits on them), then kills that
    worker, and goes on at once or once this client has heard of the loss."""

    def __init__(self, address: str, workers: list[subprocess.Popen], wait: bool) -> None:
        super().__init__(Cluster.connect(address).client)
        self.processes = workers
        self.wait = wait
        self.killed: list[str] = []

    def run(self, key, task, shared, chunks, tick, torch_threads=0):
        if key.startswith(f"{shared[1].name}-"):  # stage 1's tasks
            stages = self._scatter(shared)
            deadline = time.monotonic() + 60
            while len(held := self.client.who_has(stages[:1])[stages[0].key]) != 1:
                assert time.monotonic() < deadline, "the first stage stayed on both workers"
                time.sleep(0.1)
            name = self.client.scheduler_info()["workers"][held[0]]["name"]
            os.kill(self.processes[int(name[1:])].pid, signal.SIGKILL)
            while self.wait and stages[0].status == "finished":
                assert time.monotonic() < deadline, "the scheduler did not notice the worker die"
                time.sleep(0.1)
            self.killed.append(name)
        super().run(key, task, shared, chunks, tick, torch_threads)


@pytest.mark.parametrize("wait", [True, False], ids=["loss-known", "loss-unknown"])
def test_the_worker_holding_the_model_killed(small_net, tmp_path, cluster, wait):
    """Before submitting stage 1, or with its chunks submitted and then cancelled for the lost
    model. Float input against an independent whole-image run (tolerance 1e-4, reference.py)."""
    address, workers = cluster
    image = smooth_image(64, 64, seed=62, dtype=np.float32)
    zarr.create_array(tmp_path / "in.zarr", data=image)
    sink = OmeZarrSink(tmp_path / "out.zarr", "cyx", (3, 256, 256), np.dtype(np.float32), 128)
    job = Job(open_source(tmp_path / "in.zarr"), stages_for(small_net, "exact", 1, 0), 32,
              WorkFolder(tmp_path / "work"), sink)
    scheduler = KillsTheModelsHolder(address, workers, wait)
    try:
        assert run_job(job, scheduler) == 4 * len(job.stages)
    finally:
        scheduler.close()
    assert len(scheduler.killed) == 1
    assert_exact(zarr.open_array(str(tmp_path / "out.zarr" / "0"))[:], whole_image_float(small_net, image))
