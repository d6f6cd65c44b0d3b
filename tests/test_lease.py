"""The output lease in one process: threads of one process exclude each other too, a call chain may
take its own lease again, a lock file left by a dead holder is taken over with a warning, and an
object-store lease (moto S3) is created only if absent, renewed, stale after its timeout and lost
when another run takes it."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from lpdask import lease, upscale
from lpdask.errors import LeaseWarning, OutputBusy
from lpdask.io.locations import Location


def holding(place: Location, entered: threading.Event, leave: threading.Event) -> threading.Thread:
    def hold() -> None:
        with lease.hold([place]):
            entered.set()
            leave.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    assert entered.wait(30)
    return thread


def test_another_thread_is_refused_and_waits_with_wait(tmp_path: Path) -> None:
    place = Location.of(tmp_path / "out.zarr")
    entered, leave = threading.Event(), threading.Event()
    thread = holding(place, entered, leave)
    with pytest.raises(OutputBusy, match=rf"out\.zarr is in use by another run \(host \S+, pid {os.getpid()}, since "):
        with lease.hold([place]):
            pass
    threading.Timer(0.5, leave.set).start()
    with pytest.warns(LeaseWarning, match="waiting for the run on"), lease.hold([place], wait=True):
        assert leave.is_set()  # entered only once the other thread left
    thread.join()
    assert not (tmp_path / "out.zarr.lock").exists()


def test_a_call_chain_takes_its_own_lease_again(tmp_path: Path) -> None:
    place = Location.of(tmp_path / "out.zarr")
    with lease.hold([place]) as outer, lease.hold([place]) as inner:
        assert inner.held == outer.held
    with lease.hold([place]):  # released by the outer block
        pass


def test_a_lock_file_left_by_a_dead_run_is_taken_over_with_a_warning(tmp_path: Path) -> None:
    (tmp_path / "out.zarr.lock").write_text(json.dumps({"host": "elsewhere", "pid": 4242, "since": 0, "owner": "x"}))
    with pytest.warns(LeaseWarning, match=r"the run on .*out\.zarr \(host elsewhere, pid 4242, since .*\) ended "
                                          "without finishing; taking over"):
        with lease.hold([Location.of(tmp_path / "out.zarr")]):
            assert json.loads((tmp_path / "out.zarr.lock").read_text())["pid"] == os.getpid()
    assert not (tmp_path / "out.zarr.lock").exists()


def test_object_store_lease(bucket, monkeypatch, small_net) -> None:
    monkeypatch.setattr(lease, "TIMEOUT", 1.2)  # heartbeats every 0.2 s
    place = Location("s3://lpdask-test/out.zarr")
    first = lease.acquire(place)
    assert isinstance(first, lease.StoreLease)
    with pytest.raises(OutputBusy, match=r"s3://lpdask-test/out\.zarr is in use by another run \(host "):
        lease.acquire(place)
    time.sleep(2 * lease.TIMEOUT)  # the heartbeat keeps it fresh
    with pytest.raises(OutputBusy):  # taken before anything is read: the input need not even exist
        upscale("s3://lpdask-test/missing.tif", "s3://lpdask-test/out.zarr", model=small_net)
    first.release()
    assert not bucket.exists("lpdask-test/out.zarr.lease")

    stale = lease.Holder("elsewhere", 4242, 0.0, "dead", heartbeat=time.time() - 10)
    bucket.pipe_file("lpdask-test/out.zarr.lease", stale.to_json().encode())
    with pytest.warns(LeaseWarning, match=r"\(host elsewhere, pid 4242, .*\) ended without finishing; taking over"):
        second = lease.acquire(place)
    other = lease.Holder("thief", 1, 0.0, "thief", heartbeat=time.time())
    bucket.pipe_file("lpdask-test/out.zarr.lease", other.to_json().encode())  # as a run would after a stall
    time.sleep(lease.TIMEOUT / 2)
    with pytest.raises(OutputBusy, match=r"was taken over by another run \(host thief, pid 1, .*\) after .*; stopping"):
        second.check()
    second.release()
    assert lease.Holder.parse(bucket.cat_file("lpdask-test/out.zarr.lease")).owner == "thief"  # not ours to remove
