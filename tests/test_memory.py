"""How a CPU run has glibc serve its tensors: large blocks from the heap, kept for reuse, unless the
user configured the allocator. Each case runs in a fresh process (the setting lasts a process)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")

RUN_THEN_ALLOCATE = """
import ctypes, sys, threading
import numpy as np, tifffile
from lpdask import upscale
from lpdask.memory import reuse_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                       "fsmblks", "uordblks", "fordblks", "keepcost")]

mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
mallinfo2.restype = MallInfo2
tifffile.imwrite("in.tif", np.zeros((24, 24, 3), np.uint8))
upscale("in.tif", "out.zarr", model=sys.argv[1], executor=sys.argv[2], chunk=16, threads=1, progress=False)


def mapped_by(allocate):  # blocks glibc maps on their own while a 128 MiB one (four times its
    # largest mmap threshold, twice the heap of a thread's own arena) is held
    before = mallinfo2().hblks  # blocks mapped before, some still alive
    block = allocate()
    return mallinfo2().hblks - before

def in_a_thread(allocate):  # as a tile or chunk runs: on a thread started after the run's first
    held = []
    worker = threading.Thread(target=lambda: held.append(mapped_by(allocate)))
    worker.start()
    worker.join()
    return held[0]

one_block = lambda: np.ones(2**24)
print(reuse_freed_memory(), mapped_by(one_block), in_a_thread(one_block))
"""


def allocated(tmp_path: Path, checkpoint: Path, executor: str, **environ: str) -> tuple[str, int, int]:
    """Whether lpdask set glibc's allocator, and the 128 MiB blocks mapped on their own after a run,
    allocated on the main thread and on a new one."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    here = tmp_path / ("+".join(f"{k}={v}" for k, v in environ.items()) or "default")
    here.mkdir()
    done = subprocess.run([sys.executable, "-c", RUN_THEN_ALLOCATE, str(checkpoint), executor], cwd=here,
                          env={**env, "LPDASK_CACHE_DIR": str(tmp_path / "cache"), **environ},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    applied, on_main, on_thread = done.stdout.split()[-3:]
    return applied, int(on_main), int(on_thread)


@pytest.mark.parametrize("executor", ["stream", "staged"])
def test_a_cpu_run_serves_large_blocks_from_the_heap(tmp_path, small_checkpoint, executor):
    assert allocated(tmp_path, small_checkpoint, executor) == ("True", 0, 0)


def test_the_users_allocator_settings_are_left_alone(tmp_path, small_checkpoint):
    # glibc's default: the 128 MiB blocks are mapped on their own
    assert allocated(tmp_path, small_checkpoint, "stream", MALLOC_MMAP_MAX_="65536") == ("False", 1, 1)
    # dask's nanny sets its workers' trim threshold: that one is kept, and large blocks still reused
    assert allocated(tmp_path, small_checkpoint, "stream", MALLOC_TRIM_THRESHOLD_="65536") == ("True", 0, 0)
    # threads with arenas of their own map large blocks whatever the other settings
    assert allocated(tmp_path, small_checkpoint, "stream", MALLOC_ARENA_MAX="8") == ("True", 0, 1)


@pytest.mark.parametrize("executor, budget", [("stream", 0.9), ("staged", 1.0)])
def test_a_memory_budget_given_holds(tmp_path, small_checkpoint, executor, budget):
    """With ``--max-memory``, the real command's own peak resident memory (its summary's, ``VmHWM``)
    stays within 5% of the budget: the planner picks a plan predicted to fit it, and the prediction
    does not fall short of the run by more than that."""
    tifffile.imwrite(tmp_path / "in.tif", np.random.default_rng(0).integers(0, 256, (384, 384, 3), np.uint8),
                     photometric="rgb")
    done = subprocess.run([sys.executable, "-m", "lpdask", "upscale", "in.tif", "out.zarr", "--model",
                           str(small_checkpoint), "--executor", executor, "--max-memory", str(budget)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    peak = re.search(r"peak memory (\d+) MiB", done.stdout + done.stderr)
    assert peak, done.stdout + done.stderr
    assert int(peak[1]) * 2**20 <= 1.05 * budget * 1e9, (executor, done.stderr)
