"""Resume after a crash and job identity: a job killed with SIGKILL half way finishes when the same
command runs again, recomputing only the missing chunks, bit for bit equal to an uninterrupted run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from lpdask import upscale
from lpdask.executors.stream import MARKER
from lpdask.io.omezarr import is_complete

from .reference import smooth_image

ARGS = ["--chunk", "16", "--threads", "2", "-q"]  # "--blocks-per-stage" is added per test



def start(tmp_path: Path, checkpoint: Path, output: str, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "LPDASK_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.Popen([sys.executable, "-m", "lpdask", "upscale", "in.tif", output, "--model", str(checkpoint),
                             *ARGS, *(extra or ("--blocks-per-stage", "1"))], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def tiles_done(work: Path) -> int:
    """Streamed tiles recorded as finished in a work folder."""
    folder = work / "markers" / "r0" / MARKER
    return len(list(folder.iterdir())) if folder.is_dir() else 0


def chunks_done(work: Path, chunks: int) -> int:
    """Chunk tasks recorded as finished in a work folder: a finished stage counts all its chunks."""
    markers = work / "markers"
    while True:
        if not markers.is_dir():
            return 0
        try:
            finished = {p.with_suffix("") for p in markers.rglob("*.done")}
            loose = sum(1 for p in markers.rglob("*") if p.is_file() and not p.name.endswith(".done")
                        and p.parent not in finished)  # killed between a stage's marker and its cleanup
            return len(finished) * chunks + loose
        except FileNotFoundError:  # a stage finished and dropped its chunk markers while we counted
            continue


@pytest.mark.slow  # the CLI in subprocesses, killed and rerun
def test_sigkill_half_way_then_resume(tmp_path, small_checkpoint):
    tifffile.imwrite(tmp_path / "in.tif", smooth_image(128, 128, seed=50), tile=(32, 32))
    chunks, stages = 64, 4  # 128 / 16 squared; head, body.0, body.1 + conv_body, tail
    upscale(tmp_path / "in.tif", tmp_path / "reference.zarr", model=small_checkpoint, chunk=16,
            blocks_per_stage=1, threads=2)  # the uninterrupted run, as the command runs it

    job = start(tmp_path, small_checkpoint, "out.zarr")
    deadline = time.monotonic() + 240
    while chunks_done(tmp_path / "out.zarr.work", chunks) < chunks * stages // 2:
        assert job.poll() is None, "finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    job.send_signal(signal.SIGKILL)
    job.wait(timeout=60)
    done = chunks_done(tmp_path / "out.zarr.work", chunks)
    assert chunks * stages // 2 <= done < chunks * stages
    assert not is_complete(tmp_path / "out.zarr")

    rerun = start(tmp_path, small_checkpoint, "out.zarr")
    _, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    recomputed = int(re.search(r"resumed: (\d+) chunk tasks recomputed", stderr).group(1))
    assert recomputed == chunks * stages - done
    assert is_complete(tmp_path / "out.zarr") and not (tmp_path / "out.zarr.work").exists()
    assert np.array_equal(zarr.open_array(str(tmp_path / "out.zarr" / "0"))[:],
                          zarr.open_array(str(tmp_path / "reference.zarr" / "0"))[:])

    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "out.zarr").rglob("*")}
    finished = start(tmp_path, small_checkpoint, "out.zarr")
    _, stderr = finished.communicate(timeout=300)
    assert finished.returncode == 0 and "already complete" in stderr, stderr
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out.zarr").rglob("*")} == before


@pytest.mark.slow  # the CLI in subprocesses
def test_a_different_job_is_refused(tmp_path, small_checkpoint):
    tifffile.imwrite(tmp_path / "in.tif", smooth_image(20, 20, seed=51))
    first = start(tmp_path, small_checkpoint, "out.zarr")
    assert first.wait(timeout=300) == 0
    other = start(tmp_path, small_checkpoint, "out.zarr", "--blocks-per-stage", "2")
    _, stderr = other.communicate(timeout=300)
    assert other.returncode == 2
    assert stderr.strip() == ("lpdask: error: output out.zarr holds a different job (input, model or options differ); "
                              "use --overwrite to replace it")
    replaced = start(tmp_path, small_checkpoint, "out.zarr", "--blocks-per-stage", "2", "--overwrite")
    assert replaced.wait(timeout=300) == 0


def test_not_enough_disk_is_refused_up_front(tmp_path, small_net, monkeypatch):
    import shutil as shutil_module

    import pytest

    from lpdask import upscale
    from lpdask.errors import LpdaskError

    tifffile.imwrite(tmp_path / "in.tif", smooth_image(200, 300, seed=52))
    real = shutil_module.disk_usage
    monkeypatch.setattr(shutil_module, "disk_usage", lambda p: real(p)._replace(free=10_000_000))
    with pytest.raises(LpdaskError, match=r"not enough disk for the work folder: it needs about 0\.\d+ GB and "
                                          r".* has 0\.0 GB free; use --workdir"):
        upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, chunk=64, blocks_per_stage=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


def test_an_output_removed_by_hand_after_a_stop_is_computed_again(tmp_path, small_net, monkeypatch):
    """The work folder left by a stopped run says "resume", but the output it would resume is gone:
    the same call starts again and gives the uninterrupted result."""
    import itertools
    import shutil

    import lpdask.task
    from lpdask import upscale

    tifffile.imwrite(tmp_path / "in.tif", smooth_image(48, 48, seed=53))
    options = {"model": small_net, "chunk": 16, "blocks_per_stage": 1, "threads": 1}
    upscale(tmp_path / "in.tif", tmp_path / "reference.zarr", **options)
    window, calls = lpdask.task.run_window, itertools.count()

    def broken(*args, **kwargs):
        if next(calls) == 12:
            raise RuntimeError("stopped")
        return window(*args, **kwargs)

    monkeypatch.setattr(lpdask.task, "run_window", broken)
    with pytest.raises(RuntimeError, match="stopped"):
        upscale(tmp_path / "in.tif", tmp_path / "out.zarr", **options)
    monkeypatch.setattr(lpdask.task, "run_window", window)
    assert (tmp_path / "out.zarr.work").is_dir()
    shutil.rmtree(tmp_path / "out.zarr")
    summary = upscale(tmp_path / "in.tif", tmp_path / "out.zarr", **options)
    assert not summary.resumed
    assert np.array_equal(zarr.open_array(str(tmp_path / "out.zarr" / "0"))[:],
                          zarr.open_array(str(tmp_path / "reference.zarr" / "0"))[:])
