"""The command line: bad input gets one line, exit code 2, and nothing written or changed."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr

from lpdask import RRDBConfig, RRDBNet

from .reference import assert_exact, smooth_image, whole_image


def lpdask(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LPDASK_CACHE_DIR": str(cwd / "cache")}
    return subprocess.run([sys.executable, "-m", "lpdask", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with a hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def rgb_tiff(tmp_path: Path) -> Path:
    path = tmp_path / "in.tif"
    tifffile.imwrite(path, smooth_image(24, 20), tile=(16, 16))
    return path


def write_zarr(path: Path, data: np.ndarray) -> Path:
    zarr.create_array(path, data=data)
    return path


def make_cases(tmp: Path) -> dict[str, tuple[list[str | Path], str]]:
    """name -> (arguments, words the one-line message must contain)."""
    (tmp / "notes.txt").write_text("not an image\n")
    (tmp / "empty_dir").mkdir()
    tifffile.imwrite(tmp / "grey.tif", np.zeros((20, 20), np.uint8))
    tifffile.imwrite(tmp / "rgba.tif", np.zeros((20, 20, 4), np.uint8))
    tifffile.imwrite(tmp / "u16.tif", np.zeros((20, 20), np.uint16))
    write_zarr(tmp / "int32.zarr", np.zeros((20, 20, 3), np.int32))
    write_zarr(tmp / "float64.zarr", np.zeros((20, 20, 3), np.float64))
    write_zarr(tmp / "int64.zarr", np.zeros((20, 20, 3), np.int64))
    write_zarr(tmp / "five_d.zarr", np.zeros((2, 2, 20, 20, 3), np.uint8))
    write_zarr(tmp / "complex.zarr", np.zeros((20, 20, 3), np.complex64))
    write_zarr(tmp / "float.zarr", np.full((20, 20, 3), 2.5, np.float32))
    damaged_input(tmp, "tiff")
    zarr.create_array(tmp / "lambda.zarr", data=np.zeros((2, 20, 20), np.uint8), dimension_names=["lambda", "y", "x"])
    (tmp / "taken.zarr").mkdir()
    (tmp / "taken.zarr" / "keep.txt").write_text("someone else's\n")
    (tmp / "garbage.pth").write_bytes(np.random.default_rng(0).bytes(2048))
    torch.save({"params_ema": {"layer.weight": torch.zeros(2, 2)}}, tmp / "other_net.pth")
    tiny_checkpoint(tmp)
    return {
        "missing input": (["nowhere.tif", "out.zarr"], "input not found: nowhere.tif"),
        "not an image": (["notes.txt", "out.zarr"], "neither a TIFF file nor a Zarr folder"),
        "folder that is not zarr": (["empty_dir", "out.zarr"], "is not a Zarr array or group"),
        "int32 pixels without a value range": (["int32.zarr", "out.zarr"], "--value-range LOW,HIGH is required for int32 pixels"),
        "float64 pixels without a value range": (["float64.zarr", "out.zarr"], "--value-range LOW,HIGH is required for float64"),
        "int64 pixels": (["int64.zarr", "out.zarr", "--value-range", "0,1"], "pixel type int64 is not supported"),
        "complex pixels": (["complex.zarr", "out.zarr"], "pixel type complex64 is not supported"),
        "float outside [0, 1]": (["float.zarr", "out.zarr", "--model", "tiny.pth", "-q"], "float32 values 2.5 in rows 0:20 columns 0:20 outside [0, 1]"),
        "five unnamed axes": (["five_d.zarr", "out.zarr"], "cannot tell the axes of shape (2, 2, 20, 20, 3)"),
        "unknown axis": (["lambda.zarr", "out.zarr"], "axes ['lambda', 'y', 'x'] are not supported"),
        "missing series": (["in.tif", "out.zarr", "--series", "3"], "--series 3 does not exist (the file has 1)"),
        "missing level": (["in.tif", "out.zarr", "--level", "2"], "--level 2 does not exist"),
        "rgb of four channels": (["rgba.tif", "out.zarr", "--channels", "rgb"], "--channels rgb needs 3 channels"),
        "rgba of one channel": (["grey.tif", "out.zarr", "--channels", "rgba"], "--channels rgba needs 4 channels"),
        "bad alpha": (["rgba.tif", "out.zarr", "--alpha", "cubic"], "'cubic' is not one of"),
        "value range not finite": (["in.tif", "out.zarr", "--value-range", "0,inf"], "--value-range 0,inf needs finite LOW < HIGH"),
        "value range reversed": (["float.zarr", "out.zarr", "--value-range", "5,1"], "needs finite LOW < HIGH"),
        "value range not numbers": (["float.zarr", "out.zarr", "--value-range", "a,b"], "'a,b' is not LOW,HIGH"),
        "chunk zero": (["in.tif", "out.zarr", "--chunk", "0"], "--chunk 0 is out of range"),
        "chunk too small": (["in.tif", "out.zarr", "--chunk", "8"], "--chunk 8 is out of range"),
        "chunk too big": (["in.tif", "out.zarr", "--chunk", "100000"], "--chunk 100000 is out of range"),
        "chunk not a number": (["in.tif", "out.zarr", "--chunk", "big"], "'big' is not a valid integer"),
        "tile rows negative": (["in.tif", "out.zarr", "--tile-rows", "-1"], "--tile-rows -1 is out of range"),
        "tile rows when staged": (["in.tif", "out.zarr", "--tile-rows", "256", "--executor", "staged"],
                                  "--tile-rows 256 needs --executor stream or auto, not --executor staged"),
        "tile rows across stored chunks": (["in.tif", "out.zarr", "--model", "tiny.pth", "--chunk", "64",
                                            "--strip", "16", "--tile-rows", "100", "-q"],
                                           "--tile-rows 100 must be a multiple of 64 with tiles 64 px wide"),
        "output exists": (["in.tif", "taken.zarr"], "taken.zarr already exists; use --overwrite"),
        "truncated tiff": (["damaged.tif", "out.zarr", "--model", "tiny.pth", "-q"], "damaged.tif: cannot read rows 0:"),
        "workers negative": (["in.tif", "out.zarr", "--workers", "-1"], "--workers -1 must be at least 1"),
        "workers and scheduler": (["in.tif", "out.zarr", "--workers", "2", "--scheduler", "tcp://127.0.0.1:9"], "give only one"),
        "bad resources": (["in.tif", "out.zarr", "--resources", "GPU"], "'GPU' is not NAME=AMOUNT"),
        "unreachable scheduler": (["in.tif", "out.zarr", "--model", "tiny.pth", "--scheduler", "tcp://127.0.0.1:9", "-q"], "cannot reach the Dask scheduler at tcp://127.0.0.1:9"),
        "jpeg of 16-bit": (["u16.tif", "out.tif", "--compression", "jpeg"], "--compression jpeg needs 8-bit pixels"),
        "jpeg with alpha": (["rgba.tif", "out.tif", "--compression", "jpeg"], "--compression jpeg cannot hold an alpha"),
        "output not zarr": (["in.tif", "out.png"], "must be a .zarr folder (OME-Zarr) or a .tif"),
        "overwrite the input": (["int64.zarr", "int64.zarr", "--overwrite"], "pixel type int64"),
        "missing model": (["in.tif", "out.zarr", "--model", "nope.pth"], "model file not found: nope.pth"),
        "random bytes model": (["in.tif", "out.zarr", "--model", "garbage.pth"], "is not a PyTorch or safetensors checkpoint"),
        "another network": (["in.tif", "out.zarr", "--model", "other_net.pth"], "is not an RRDBNet checkpoint"),
        "unknown device": (["in.tif", "out.zarr", "--device", "abacus"], "unknown device 'abacus'"),
        "bad mode": (["in.tif", "out.zarr", "--mode", "fast"], "'fast' is not one of"),
        "missing argument": (["in.tif"], "Missing argument 'OUTPUT'"),
    }



def tiny_checkpoint(tmp: Path) -> Path:
    torch.save(RRDBNet(RRDBConfig(num_feat=4, num_block=1, num_grow_ch=4)).state_dict(), tmp / "tiny.pth")
    return tmp / "tiny.pth"


def damaged_input(tmp: Path, kind: str) -> Path:
    """A 128 x 128 TIFF of 16 x 16 zlib tiles cut off at a third, or a Zarr array of 16 x 16 chunks
    with every other chunk cut in half: one read of it meets many damaged tiles or chunks at once."""
    image = smooth_image(128, 128)
    if kind == "zarr":
        path = tmp / "damaged.zarr"
        zarr.create_array(path, data=image, chunks=(16, 16, 3))
        for chunk in [p for p in sorted((path / "c").rglob("*")) if p.is_file()][::2]:
            chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
        return path
    tifffile.imwrite(tmp / "whole.tif", image, tile=(16, 16), compression="zlib")
    whole = (tmp / "whole.tif").read_bytes()
    (tmp / "whole.tif").unlink()
    (tmp / "damaged.tif").write_bytes(whole[: len(whole) // 3])
    return tmp / "damaged.tif"


def case_names() -> list[str]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return list(make_cases(Path(tmp)))


SLOW_CASES = {"unreachable scheduler", "float outside [0, 1]", "truncated tiff",  # they load torch and a model
              "tile rows across stored chunks"}


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if name in SLOW_CASES else name
                                  for name in case_names()])
def test_bad_input(tmp_path: Path, rgb_tiff: Path, name: str) -> None:
    args, words = make_cases(tmp_path)[name]
    before = tree(tmp_path)
    result = lpdask("upscale", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lpdask: error: ") and words in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    after = tree(tmp_path)
    after = {k: v for k, v in after.items() if not k.startswith("cache/")}
    assert after == before, "something was written or changed"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["tiff", "zarr"])
def test_damaged_input_is_one_line_every_time(tmp_path: Path, kind: str) -> None:
    """A read that meets many damaged tiles at once fails with one line and nothing else on stderr:
    zarr's reads of the other tiles are settled, not left to asyncio's reports ("Task exception was
    never retrieved", "Task was destroyed but it is pending!") at exit. Three runs: it depended on
    timing."""
    path, checkpoint = damaged_input(tmp_path, kind), tiny_checkpoint(tmp_path)
    for run in range(3):
        result = lpdask("upscale", path.name, f"out{run}.zarr", "--model", checkpoint.name, "-q", cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert re.fullmatch(rf"lpdask: error: \S*/{path.name}: cannot read rows [^\n]*\n", result.stderr), result.stderr


def test_main_gives_back_how_warnings_are_shown(tmp_path: Path, monkeypatch, capsys) -> None:
    """``main`` in a process that goes on (a notebook, a test): lpdask's warnings are shown its way
    only while it runs; afterwards ``warnings.showwarning`` is the caller's again, after an error too."""
    from lpdask.cli import main

    monkeypatch.chdir(tmp_path)
    original = warnings.showwarning
    assert main(["--version"]) == 0
    assert warnings.showwarning is original
    assert main(["upscale", "nowhere.tif", "out.zarr"]) == 2
    assert warnings.showwarning is original
    assert capsys.readouterr().err == "lpdask: error: input not found: nowhere.tif\n"


def test_cuda_without_gpu_is_refused(tmp_path: Path, rgb_tiff: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")  # CUDA-only check: CI machines have none
    result = lpdask("upscale", rgb_tiff, "out.zarr", "--device", "cuda", cwd=tmp_path)
    assert result.returncode == 2 and "no CUDA GPU is available" in result.stderr
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.slow
def test_upscale_end_to_end(tmp_path: Path, small_net, small_checkpoint) -> None:
    """A good run: exit 0, a summary line, the input untouched, no work folder left."""
    image = smooth_image(40, 36, seed=2)
    tifffile.imwrite(tmp_path / "in.tif", image, tile=(16, 16))
    digest = hashlib.sha256((tmp_path / "in.tif").read_bytes()).hexdigest()
    result = lpdask("upscale", "in.tif", "out.zarr", "--model", small_checkpoint, "--chunk", "16", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "wrote out.zarr (3, 160, 144)" in result.stderr and "MP/s" in result.stderr
    assert "peak memory" in result.stderr
    assert hashlib.sha256((tmp_path / "in.tif").read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["in.tif", "out.zarr"]  # lpdask()'s cache
    assert_exact(zarr.open_array(str(tmp_path / "out.zarr" / "0"))[:], whole_image(small_net, image))
    again = lpdask("upscale", "in.tif", "out.zarr", "--model", small_checkpoint, "--chunk", "16",
                   "--overwrite", "--mode", "tile", "-q", cwd=tmp_path)
    assert again.returncode == 0, again.stderr


def test_workdir_option(tmp_path: Path, small_checkpoint) -> None:
    tifffile.imwrite(tmp_path / "in.tif", smooth_image(20, 20))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "other.txt").write_text("keep me")
    result = lpdask("upscale", "in.tif", "out.zarr", "--model", small_checkpoint, "--workdir", scratch, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [p.name for p in scratch.iterdir()] == ["other.txt"]


def test_half_precision_needs_cuda(tmp_path: Path, rgb_tiff: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")  # CUDA-only check: CI machines have none
    result = lpdask("upscale", rgb_tiff, "out.zarr", "--device", "cpu", "--precision", "fp16", cwd=tmp_path)
    assert result.returncode == 2 and "--precision fp16 needs a CUDA device" in result.stderr
    assert not (tmp_path / "out.zarr").exists()


def test_export_bad_input(tmp_path: Path) -> None:
    """`lpdask export`: one line, exit 2, nothing written, for each mistake."""
    unfinished = zarr.open_group(str(tmp_path / "unfinished.zarr"), mode="w")
    unfinished.attrs["lpdask"] = {"complete": False}
    zarr.create_array(tmp_path / "bare.zarr", data=np.zeros((3, 8, 8), np.uint8))
    (tmp_path / "taken.tif").write_bytes(b"keep")
    cases = {
        ("missing.zarr", "out.tif"): "is not an OME-Zarr folder",
        ("unfinished.zarr", "out.tif"): "is an unfinished lpdask result",
        ("bare.zarr", "out.tif"): "is not a Zarr group",
        ("unfinished.zarr", "out.png"): "must be a .tif, .tiff or .ome.tif file",
        ("unfinished.zarr", "taken.tif"): "taken.tif already exists; use --overwrite",
    }
    before = tree(tmp_path)
    for args, words in cases.items():
        result = lpdask("export", *args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and words in result.stderr, result.stderr
    assert tree(tmp_path) == before


def test_dropped_metadata_is_one_warning_line(tmp_path: Path, small_checkpoint) -> None:
    tifffile.imwrite(tmp_path / "in.tif", smooth_image(20, 20), photometric="rgb", iccprofile=b"\0" * 64)
    result = lpdask("upscale", "in.tif", "out.zarr", "--model", small_checkpoint, "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warning) == 1 and warning[0].startswith("lpdask: warning: input metadata not carried") \
        and "ICC" in warning[0], result.stderr


def test_cuda_allocator_gets_expandable_segments_unless_configured(monkeypatch):
    """The CLI asks for expandable segments (torch's cache otherwise grows past the planner's
    prediction); a user's own allocator settings win."""
    from lpdask.cli import main
    from lpdask.device import prefer_expandable_segments

    for name in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"):
        monkeypatch.setenv(name, "")  # so that the environment is put back afterwards
        monkeypatch.delenv(name)
    assert main(["--version"]) == 0
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    for own in ({"PYTORCH_CUDA_ALLOC_CONF": "backend:cudaMallocAsync"},
                {"PYTORCH_ALLOC_CONF": "roundup_power2_divisions:4"}):
        environ = dict(own)
        prefer_expandable_segments(environ)
        assert environ == own


HOLD_3_GB = """
import subprocess, sys
import numpy as np
held = np.ones(3 * 2**30, np.uint8)  # touched, so resident
result = subprocess.run(sys.argv[1:], capture_output=True, text=True)
sys.stderr.write(result.stderr)
sys.exit(result.returncode)
"""


@pytest.mark.slow
def test_peak_memory_is_the_runs_own_not_its_parents(tmp_path: Path, rgb_tiff: Path, small_checkpoint) -> None:
    """Linux carries ru_maxrss over from the parent across fork and exec; the closing line must not."""
    command = [sys.executable, "-m", "lpdask", "upscale", "in.tif", "out.zarr", "--model", str(small_checkpoint),
               "--chunk", "16", "--blocks-per-stage", "1", "-q", "--overwrite"]
    env = {**os.environ, "LPDASK_CACHE_DIR": str(tmp_path / "cache")}
    peaks = []
    for parent in ([sys.executable, "-c", HOLD_3_GB], ["/bin/sh", "-c", '"$@"', "sh"]):
        done = subprocess.run([*parent, *command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        peaks.append(int(re.search(r"peak memory (\d+) MiB", done.stderr).group(1)))
    from_big_parent, from_shell = peaks
    assert abs(from_big_parent - from_shell) <= 0.1 * from_shell, peaks
    assert from_shell < 2048
