"""Faults a user can cause, each with the real command in a subprocess: two runs on one output, kill -9,
a full disk, a read-only place, an input replaced during the run, SIGINT and SIGTERM, a bug. Each
checks the exit code, the one-line message, that nothing printed a traceback (but the bug), and that
the output after the rerun is bit-identical to an uninterrupted run of the same command."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from lpdask.io.omezarr import is_complete

from .reference import smooth_image
from .test_resume import chunks_done, tiles_done

pytestmark = pytest.mark.slow  # the real command in subprocesses: up to 18 s a test, after 18 s of reference runs

RUN = ["--chunk", "16", "--blocks-per-stage", "1", "--threads", "1", "-q"]
CHUNKS = 25  # (80 / 16) squared, in each of 4 stages
RESUMES = "run the same command again to resume"


@dataclass
class Case:
    folder: Path
    model: Path
    reference: np.ndarray
    """Level 0 of an uninterrupted run on in.tif."""
    other: Path
    """A second image, and its uninterrupted result."""
    other_reference: np.ndarray


def command(case: Case, cwd: Path, output: str = "out.zarr", *extra: str | Path) -> list[str]:
    return [sys.executable, "-m", "lpdask", "upscale", "in.tif", output, "--model", str(case.model), *RUN,
            *map(str, extra)]


def environment(cwd: Path) -> dict[str, str]:
    return {**os.environ, "LPDASK_CACHE_DIR": str(cwd / "cache")}


def start(case: Case, cwd: Path, output: str = "out.zarr", *extra: str | Path,
          prefix: list[str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([*(prefix or []), *command(case, cwd, output, *extra)], cwd=cwd, env=environment(cwd),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)


def interruptible() -> None:
    """In the child: SIGINT as a terminal delivers it, even where the tests run in the background
    (a shell starts background jobs with SIGINT ignored, and a child inherits that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=300)
    return process.returncode, stderr


def run(case: Case, cwd: Path, output: str = "out.zarr", *extra: str | Path) -> tuple[int, str]:
    return finish(start(case, cwd, output, *extra))


def one_line(stderr: str) -> str:
    """The whole of stderr, which must be one line and no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def result(path: Path) -> np.ndarray:
    assert is_complete(path)
    return zarr.open_array(str(path / "0"), mode="r")[:]


def when(condition, process: subprocess.Popen[str], seconds: float = 120) -> None:
    """Wait until ``condition()`` while ``process`` still runs."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, f"finished first: {process.communicate()}"
        assert time.monotonic() < deadline
        time.sleep(0.02)


def holds_lease(output: Path, process: subprocess.Popen[str]) -> bool:
    try:
        return json.loads((output.parent / (output.name + ".lock")).read_text())["pid"] == process.pid
    except (OSError, ValueError, KeyError):
        return False


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory, small_checkpoint: Path) -> Case:
    folder = tmp_path_factory.mktemp("faults")
    tifffile.imwrite(folder / "in.tif", smooth_image(80, 80, seed=60), tile=(32, 32))
    tifffile.imwrite(folder / "other.tif", smooth_image(80, 80, seed=61), tile=(32, 32))
    made = Case(folder, small_checkpoint, np.empty(0), folder / "other.tif", np.empty(0))
    (folder / "other").mkdir()
    shutil.copy(folder / "other.tif", folder / "other" / "in.tif")
    from lpdask.cli import main

    here = os.getcwd()
    try:  # the same command through the same entry point, in this process (two process starts saved)
        for cwd in (folder, folder / "other"):
            os.chdir(cwd)
            assert main(command(made, cwd, "reference.zarr")[3:]) == 0
    finally:
        os.chdir(here)
    made.reference = result(folder / "reference.zarr")
    made.other_reference = result(folder / "other" / "reference.zarr")
    assert not np.array_equal(made.reference, made.other_reference)
    return made


@pytest.fixture
def here(case: Case, tmp_path: Path) -> Path:
    shutil.copy(case.folder / "in.tif", tmp_path / "in.tif")
    return tmp_path


def test_a_second_run_is_refused_while_the_first_runs_and_one_with_wait_waits(case: Case, here: Path) -> None:
    first = start(case, here)
    when(lambda: holds_lease(here / "out.zarr", first), first)
    second, waiting = start(case, here), start(case, here, "out.zarr", "--wait")
    code, stderr = finish(second)
    assert first.poll() is None, "the first run ended before the second asked: the test proves nothing"
    assert code == 2
    assert re.fullmatch(rf"lpdask: error: out\.zarr is in use by another run \(host \S+, pid {first.pid}, since "
                        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\); wait for it to finish, or add --wait to start when it does",
                        one_line(stderr))
    code, stderr = finish(first)
    assert code == 0, stderr
    assert np.array_equal(result(here / "out.zarr"), case.reference)
    code, stderr = finish(waiting)
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert re.match(rf"lpdask: warning: waiting for the run on out\.zarr \(host \S+, pid {first.pid}, since .*\) "
                    r"to finish\n.*out\.zarr is already complete", stderr), stderr
    assert not (here / "out.zarr.lock").exists()


def test_kill_9_of_the_holder_then_a_new_run_takes_over(case: Case, here: Path) -> None:
    first = start(case, here)
    when(lambda: chunks_done(here / "out.zarr.work", CHUNKS) >= CHUNKS, first)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    assert not is_complete(here / "out.zarr")
    code, stderr = run(case, here)
    assert code == 0, stderr
    assert "Traceback" not in stderr
    warning, summary = stderr.strip().splitlines()
    assert re.fullmatch(rf"lpdask: warning: the run on out\.zarr \(host \S+, pid {first.pid}, since .*\) ended "
                        "without finishing; taking over", warning)
    assert "resumed:" in summary
    assert np.array_equal(result(here / "out.zarr"), case.reference)
    assert not (here / "out.zarr.lock").exists()


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_a_signal_stops_the_run_with_one_line_and_the_same_command_resumes(case: Case, here: Path, sig: int,
                                                                           code: int, word: str) -> None:
    first = start(case, here)
    when(lambda: chunks_done(here / "out.zarr.work", CHUNKS) >= CHUNKS, first)
    first.send_signal(sig)
    stopped, stderr = finish(first)
    assert stopped == code
    assert one_line(stderr) == f"lpdask: {word}; {RESUMES}"
    assert not is_complete(here / "out.zarr") and not (here / "out.zarr.lock").exists()
    rerun, stderr = run(case, here)
    assert rerun == 0 and "resumed:" in one_line(stderr), stderr
    assert np.array_equal(result(here / "out.zarr"), case.reference)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB file system of its own (tmpfs), where this process may mount one."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)],
                                                   capture_output=True).returncode == 0
    yield disk if mounted else None  # type: ignore[misc]
    if mounted:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def fill(disk: Path) -> Path:
    """Fill ``disk`` to the last block with one file; returns it."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (65536, 512):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError:
                    break
    finally:
        os.close(fd)
    return filler


WRITE_FAILS = """
import errno, itertools, sys, threading
import zarr.storage._local as local
from lpdask.cli import main
put, calls, lock = local._put, itertools.count(), threading.Lock()
def failing(path, value, exclusive=False):
    with lock:
        n = next(calls)
    if n >= int(sys.argv[1]):
        raise OSError(errno.ENOSPC, "No space left on device")
    return put(path, value, exclusive)
local._put = failing
sys.exit(main(sys.argv[2:]))
"""


def test_disk_full_during_the_run_is_one_line_and_the_same_command_resumes(case: Case, here: Path,
                                                                            small_disk: Path | None) -> None:
    if small_disk is not None:  # a real file system that another program fills during the run
        first = start(case, here, "out.zarr", "--workdir", small_disk)
        when(lambda: chunks_done(small_disk / "out.zarr.work", CHUNKS) >= CHUNKS // 2, first)
        filler = fill(small_disk)
        work = small_disk / "out.zarr.work"
    else:  # where no file system can be mounted: every write after the 60th fails as a full disk would
        first = subprocess.Popen([sys.executable, "-c", WRITE_FAILS, "60", *command(case, here)[3:]], cwd=here,
                                 env=environment(here), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        filler, work = None, Path("out.zarr.work")
    code, stderr = finish(first)
    assert code == 3, stderr
    assert re.fullmatch(rf"lpdask: error: no space left on the disk of the work folder {re.escape(str(work))} \(the "
                        rf"job needs about [\d.]+ [MG]B there\); free some space, then {RESUMES}", one_line(stderr))
    assert not is_complete(here / "out.zarr") and (here / work).is_dir()
    done = chunks_done(here / work, CHUNKS)
    assert 0 < done < 4 * CHUNKS
    if filler is not None:
        filler.unlink()
    code, stderr = run(case, here, "out.zarr", *(["--workdir", small_disk] if small_disk else []))
    assert code == 0 and f"resumed: {4 * CHUNKS - done} chunk tasks recomputed" in one_line(stderr), stderr
    assert np.array_equal(result(here / "out.zarr"), case.reference)


def test_disk_full_while_streaming_is_one_line_and_the_same_command_resumes(case: Case, here: Path) -> None:
    """Streaming keeps no activations: the disk that fills is the output's, written by a tile's writer
    thread. Every write after the 18th fails as a full disk would (two of the five tiles are written)."""
    from lpdask.cli import main

    streamed = ("--executor", "stream", "--strip", "8")
    reference = command(case, here, str(here / "reference.zarr"), *streamed)[3:]
    assert main([reference[0], str(here / "in.tif"), *reference[2:]]) == 0  # in this process: a start saved
    first = subprocess.Popen([sys.executable, "-c", WRITE_FAILS, "18", *command(case, here)[3:], *streamed],
                             cwd=here, env=environment(here), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    code, stderr = finish(first)
    assert code == 3, stderr
    assert re.fullmatch(rf"lpdask: error: no space left on the disk of the output {re.escape(str(Path('out.zarr')))} "
                        rf"\(the job needs about [\d.]+ [MG]B there\); free some space, then {RESUMES}", one_line(stderr))
    assert not is_complete(here / "out.zarr")
    done = tiles_done(here / "out.zarr.work")
    assert 0 < done < 5
    code, stderr = run(case, here, "out.zarr", *streamed)
    assert code == 0 and f"resumed: {5 - done} tile tasks recomputed" in one_line(stderr), stderr
    assert np.array_equal(result(here / "out.zarr"), result(here / "reference.zarr"))


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody can write to: a read-only mount for root (who may write anywhere else), or
    mode 0555 for anyone else."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() == 0:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], check=True)
        yield folder
        subprocess.run(["umount", "-l", str(folder)], check=True)
    else:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)


def test_a_read_only_output_place_is_one_line_and_nothing_is_written(case: Case, here: Path, read_only: Path) -> None:
    why = "read-only file system" if os.geteuid() == 0 else "permission denied"
    before = sorted(p.name for p in here.iterdir())
    code, stderr = run(case, here, "read-only/out.zarr")
    assert code == 4
    assert one_line(stderr) == (f"lpdask: error: cannot write to the folder of read-only/out.zarr ({why}); "
                                "choose a place you can write to")
    code, stderr = run(case, here, "out.zarr", "--workdir", "read-only")
    assert code == 4
    assert one_line(stderr) == (f"lpdask: error: cannot write to the folder of read-only/out.zarr.work ({why}); "
                                "choose a place you can write to")
    assert list(read_only.iterdir()) == [] and sorted(p.name for p in here.iterdir()) == before


def test_an_input_replaced_during_the_run_stops_it_and_overwrite_starts_over(case: Case, here: Path) -> None:
    first = start(case, here)
    when(lambda: chunks_done(here / "out.zarr.work", CHUNKS) >= CHUNKS // 2, first)
    shutil.copy(case.other, here / "new.tif")
    os.replace(here / "new.tif", here / "in.tif")
    code, stderr = finish(first)
    assert code == 5, stderr
    assert one_line(stderr) == (f"lpdask: error: the input {here / 'in.tif'} changed during the run (its size or "
                                "modification time differ from when it started), so the output would mix two images; "
                                "nothing more was written: run again with --overwrite to start over from the new input")
    assert not is_complete(here / "out.zarr")
    code, stderr = run(case, here)
    assert code == 2 and "holds a different job" in one_line(stderr)
    code, stderr = run(case, here, "out.zarr", "--overwrite")
    assert code == 0, stderr
    assert np.array_equal(result(here / "out.zarr"), case.other_reference)


INPUT_REPLACED = """
import os, shutil, sys, time
import lpdask.executors.stream as stream
from lpdask.cli import main
tile, finished = stream.run_tile, []
def replacing(*args, **kwargs):
    tile(*args, **kwargs)
    finished.append(args[1:3])
    if len(finished) == int(sys.argv[1]):
        shutil.copy(sys.argv[2], "new.tif")
        os.replace("new.tif", "in.tif")
        time.sleep(1.2)  # past the runner's interval between two looks at the input
stream.run_tile = replacing
sys.exit(main(sys.argv[3:]))
"""


def test_an_input_replaced_during_a_streamed_run_stops_it_within_a_tile(case: Case, here: Path) -> None:
    """A streamed run is one stage of tiles that can take hours each: the input is looked at as strips
    complete, not only between stages, so the run stops in the next tile, not at the end."""
    streamed = [*command(case, here)[3:], "--executor", "stream", "--strip", "8"]  # 5 tiles of 16 x 80 px
    process = subprocess.Popen([sys.executable, "-c", INPUT_REPLACED, "2", str(case.other), *streamed], cwd=here,
                               env=environment(here), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    code, stderr = finish(process)
    assert code == 5, stderr
    assert one_line(stderr).startswith(f"lpdask: error: the input {here / 'in.tif'} changed during the run")
    assert tiles_done(here / "out.zarr.work") == 2  # tiles 0.0 and 0.1
    assert not is_complete(here / "out.zarr")
    code, stderr = run(case, here, "out.zarr", "--executor", "stream", "--strip", "8")
    assert code == 2 and "holds a different job" in one_line(stderr)


A_BUG = """
import itertools, sys
import lpdask.task as graph
from lpdask.cli import main
window, calls = graph.run_window, itertools.count()
def broken(*args, **kwargs):
    if next(calls) == 50:
        raise RuntimeError("an injected bug")
    return window(*args, **kwargs)
graph.run_window = broken
sys.exit(main(sys.argv[1:]))
"""


def test_a_bug_prints_its_traceback_and_the_same_command_resumes(case: Case, here: Path) -> None:
    process = subprocess.Popen([sys.executable, "-c", A_BUG, *command(case, here)[3:]], cwd=here,
                               env=environment(here), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    code, stderr = finish(process)
    assert code == 1
    assert "Traceback" in stderr and "RuntimeError: an injected bug" in stderr
    assert stderr.strip().splitlines()[-1] == ("lpdask: internal error (a bug: please report it with the traceback "
                                               f"above); finished chunks are kept: {RESUMES}")
    code, stderr = run(case, here)
    assert code == 0 and "resumed:" in one_line(stderr), stderr
    assert np.array_equal(result(here / "out.zarr"), case.reference)
