"""Hostile input: mutated files of every format lpdask reads (tests/fuzzing.py) never reach a traceback,
another stderr line, a hang or an output that looks complete; each crash the fuzzing found keeps its
file in tests/data/fuzz and its own test; damaged checkpoints are refused before they run."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lpdask.errors import LpdaskError
from lpdask.io.boundary import Unreadable, raised_by_lpdask, reading
from lpdask.io.omezarr import is_complete
from lpdask.models.checkpoint import read_state_dict

from . import fuzzing

pytestmark = pytest.mark.slow  # the real command, hundreds of times

FUZZ = Path(__file__).parent / "data" / "fuzz"
CASES_PER_FORMAT = 25


def test_mutated_files_of_every_format_end_in_one_line_or_a_complete_output(tmp_path: Path) -> None:
    """Case i of seed 0 is the same everywhere: a failure names the case to rerun
    (``python -m benchmarks.fuzz --cases N --seed 0``)."""
    outcomes = fuzzing.run(list(fuzzing.FORMATS), CASES_PER_FORMAT * len(fuzzing.FORMATS), seed=0,
                           folder=tmp_path)
    bad = [f"case {o.case} ({o.format}, {o.what}): {o.verdict}, exit {o.code}\n{o.stderr}"
           for o in outcomes if o.verdict != "ok"]
    assert not bad, "\n".join(bad)
    refused = collections.Counter(o.format for o in outcomes if o.code == 2)
    # mutations that readers meet: every format has its damaged files refused, most often
    assert all(refused[f] >= CASES_PER_FORMAT // 5 for f in fuzzing.FORMATS), refused


def test_the_verdict_fails_tracebacks_noise_hangs_and_outputs_that_look_complete() -> None:
    """The fuzzing's own check: a case passes only as the brief says."""
    def verdict(code: int | None, stderr: str, complete: bool = False) -> str:
        return fuzzing.Outcome(0, "tiff", "", code, stderr, complete, 0.0).verdict

    assert verdict(2, "lpdask: error: x.tif: cannot read it (ValueError: bad)\n") == "ok"
    assert verdict(2, "lpdask: warning: x.tif is damaged\nlpdask: error: x.tif: no\n") == "ok"
    assert verdict(0, "wrote out.zarr (3, 8, 8)\n", complete=True) == "ok"
    assert verdict(0, "wrote out.zarr (3, 8, 8)\n", complete=False) == "incomplete"
    assert verdict(2, "lpdask: error: no\n", complete=True) == "looks complete"
    assert verdict(2, "<tifffile.TiffPages @8> invalid offset\nlpdask: error: no\n") == "lines"
    assert verdict(1, "Traceback (most recent call last):\n  ...\nlpdask: internal error (a bug...)\n") == "traceback"
    assert verdict(None, "") == "hang"
    assert verdict(3, "lpdask: error: no space\n") == "exit 3"


def run_lpdask(tmp: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lpdask", "upscale", *map(str, args), "-q"], cwd=tmp, text=True,
                          capture_output=True, env={**os.environ, "LPDASK_CACHE_DIR": str(tmp / "cache")},
                          timeout=300)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "tiny.pth"
    torch.save({"params_ema": fuzzing._state()}, path)
    return path


def one_line(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lpdask: error: "), result.stderr
    return lines[0]


REGRESSIONS = {
    # file: what the one line says (each was a traceback or extra stderr lines before)
    "zero-division-in-series.tif": "cannot read it as a TIFF file (ZeroDivisionError",
    "incompatible-keyframe.ome.tif": "cannot read it as a TIFF file (RuntimeError: incompatible keyframe)",
    "first-page-offset.tif": "TIFF file holds no image (tifffile: <tifffile.TiffPages @536870936> invalid offset",
    "broken-xml.lif": "bioio cannot read it (not well-formed (invalid token): line 3, column 14334)",
    # ran 49 s and wrote a 130304 px wide output of zeros: a page 32576 px wide with 4 tiles' offsets
    "short-tile-offsets.tif": "page 0 is 32576 x 64 px in 2036 tiles but holds the offsets of 4 (a damaged IFD)",
    # a ValueError traceback in lpdask's colour table code
    "colormap-one-value.tif": "its ColorMap holds 1 values, not three equal parts (a damaged tag)",
}


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_each_damaged_file_the_fuzzing_found_is_one_line(name: str, tiny: Path, tmp_path: Path) -> None:
    result = run_lpdask(tmp_path, FUZZ / name, "out.zarr", "--model", tiny)
    assert REGRESSIONS[name] in one_line(result)
    assert not (tmp_path / "out.zarr").exists()


def test_a_zarr_size_beyond_any_image_is_one_line(tiny: Path, tmp_path: Path) -> None:
    """Found by a soak (seed 3): a shape of 2^63 rows was an OverflowError traceback, and one of 2^31
    columns of missing chunks ran on as if it were an image."""
    import zarr

    zarr.create_array(str(tmp_path / "huge.zarr"), shape=(3, 64, 2**31), chunks=(3, 64, 64), dtype="uint8")
    line = one_line(run_lpdask(tmp_path, "huge.zarr", "out.zarr", "--model", tiny))
    assert line.endswith("huge.zarr: shape (3, 64, 2147483648) has a side beyond the 2,147,483,647 pixels lpdask "
                         "handles (a damaged size?)")


def test_a_checkpoint_with_nan_weights_is_refused_in_one_line(tmp_path: Path) -> None:
    """Found by the fuzzing as a NumPy cast warning and a silently black output."""
    image = tmp_path / "in.tif"
    import tifffile

    tifffile.imwrite(image, fuzzing._image(16, 16, 3), photometric="rgb")
    result = run_lpdask(tmp_path, image, "out.zarr", "--model", FUZZ / "nan-weight.pth")
    assert one_line(result).endswith("weight conv_first.weight holds NaN or infinite values (a damaged or "
                                     "diverged checkpoint)")
    assert not is_complete(tmp_path / "out.zarr")


def tensor_member(path: Path) -> tuple[int, int]:
    """Where the data of a ``torch.save`` archive's first tensor lies in the file."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if "/data/" in i.filename and i.compress_size > 16)
    with open(path, "rb") as file:
        file.seek(info.header_offset + 26)
        name, extra = (int.from_bytes(file.read(2), "little") for _ in range(2))
    start = info.header_offset + 30 + name + extra
    return start, start + info.compress_size


def test_a_checkpoint_with_one_byte_changed_inside_a_tensor_is_refused(tiny: Path, tmp_path: Path) -> None:
    """torch.load does not check the archive's CRCs: without lpdask's check this runs changed weights."""
    start, end = tensor_member(tiny)
    data = bytearray(tiny.read_bytes())
    data[(start + end) // 2] ^= 0x10
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(bytes(data))
    torch.load(damaged, weights_only=True)  # what lpdask guards against: torch reads it without a word
    with pytest.raises(LpdaskError, match=r"damaged\.pth is a damaged PyTorch checkpoint: \S+/data/\d+ fails its "
                                          r"CRC-32 check"):
        read_state_dict(damaged)
    image = tmp_path / "in.tif"
    import tifffile

    tifffile.imwrite(image, fuzzing._image(16, 16, 3), photometric="rgb")
    assert "fails its CRC-32 check" in one_line(run_lpdask(tmp_path, image, "out.zarr", "--model", damaged))


def safetensors_file(tmp: Path, header: dict[str, object], data: bytes) -> Path:
    text = json.dumps(header).encode()
    path = tmp / "model.safetensors"
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)
    return path


@pytest.mark.parametrize("header, data, message", [
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(12), "do not cover its 12 data bytes"),
    ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8), "tensor 'w'"),
    ({"w": {"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}}, bytes(8), "tensor 'w'"),
    ({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
      "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}}, bytes(6), "do not cover"),
    ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, bytes(8), "tensor 'w'"),
])
def test_a_safetensors_header_that_does_not_describe_its_data_is_refused(tmp_path: Path, header, data,
                                                                        message: str) -> None:
    with pytest.raises(LpdaskError, match=f"is a damaged safetensors file .*{message}"):
        read_state_dict(safetensors_file(tmp_path, header, data))


def test_a_sound_safetensors_file_still_loads(tmp_path: Path) -> None:
    data = np.arange(2, dtype="<f4").tobytes()
    state = read_state_dict(safetensors_file(tmp_path, {"__metadata__": {"a": "b"},
                                                        "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
                                             data))
    assert state["w"].tolist() == [0.0, 1.0]


def test_the_boundary_turns_a_library_error_into_one_line_and_lets_lpdask_bugs_through(tmp_path: Path) -> None:
    import tifffile

    with pytest.raises(Unreadable, match=r"x\.tif: cannot read tiles \(TiffFileError: not a TIFF file"):
        with reading("x.tif", "tiles"):
            tifffile.TiffFile(__file__)
    from lpdask.io import boundary

    with pytest.raises(AttributeError):  # raised in lpdask's own code: a bug, shown with its traceback
        with reading("x.tif", "tiles"):
            boundary._first_line(None)  # type: ignore[arg-type]
    try:
        boundary._first_line(None)  # type: ignore[arg-type]
    except AttributeError as exc:
        assert raised_by_lpdask(exc.__traceback__)


def test_a_message_quoting_a_file_stays_one_line(tiny: Path, tmp_path: Path) -> None:
    """Found by the soak: an Aperio property name with a vertical tab in it (a changed byte of the
    ImageDescription) split the metadata warning in two lines."""
    import tifffile

    description = "Aperio Image Library v12.0.15\n32x32 -> 32x32 - |AppMag = 20|Scan\x0bner = 1|MPP = 0.5"
    tifffile.imwrite(tmp_path / "slide.svs", fuzzing._image(32, 32, 3), photometric="rgb", tile=(16, 16),
                     description=description)
    result = run_lpdask(tmp_path, "slide.svs", "out.zarr", "--model", tiny)
    assert result.returncode == 0, result.stderr
    warning, wrote = result.stderr.splitlines()
    assert warning.startswith("lpdask: warning: input metadata not carried") and "Scan\\x0bner" in warning
    assert wrote.startswith("wrote ")


def test_weights_that_overflow_the_arithmetic_are_one_line_not_a_garbage_output(tmp_path: Path) -> None:
    """Found by the soak: a .safetensors file (no checksum) with tensor bytes changed into huge finite
    weights ran, printed NumPy's cast warning and wrote a meaningless output."""
    from safetensors.torch import save_file

    state = fuzzing._state()
    for key in ("conv_first.weight", "conv_hr.weight"):  # 1e30 x 1e30 overflows float32
        state[key] = state[key] * 1e30  # type: ignore[operator]
    save_file(state, str(tmp_path / "huge.safetensors"))  # type: ignore[arg-type]
    import tifffile

    tifffile.imwrite(tmp_path / "in.tif", fuzzing._image(16, 16, 3), photometric="rgb")
    result = run_lpdask(tmp_path, "in.tif", "out.zarr", "--model", "huge.safetensors")
    assert one_line(result).endswith("the network's output holds NaN or infinite values: the model's weights are "
                                     "damaged or too large for its arithmetic (with --precision fp16 or bf16, try fp32)")
    assert not is_complete(tmp_path / "out.zarr")


def test_geotiff_tags_lpdask_cannot_place_pixels_with_are_one_line(tiny: Path, tmp_path: Path) -> None:
    """Found by a soak (seed 2, case 1405): an lpdask result whose lpdask.geotiff ModelPixelScale held one
    value ended in an IndexError; a TIFF's own tags are read the same way."""
    import tifffile

    tifffile.imwrite(tmp_path / "in.tif", fuzzing._image(16, 16, 3), photometric="rgb",
                     extratags=[(33550, "d", 1, (10.0,), True), (33922, "d", 6, (0, 0, 0, 5e5, 4e6, 0), True)])
    result = run_lpdask(tmp_path, "in.tif", "out.zarr", "--model", tiny)
    assert one_line(result).endswith("in.tif: malformed GeoTIFF tags: ModelPixelScale holds 1 value(s), not 3")
    assert not (tmp_path / "out.zarr").exists()


def test_ngff_metadata_lpdask_reads_is_checked_before_use() -> None:
    """Found by the soaks (seed 7 case 375, seed 1 case 5442): a dataset that is a string, a
    transformation whose type is an object, were tracebacks in lpdask's NGFF reader."""
    from lpdask.io.ngff import check_attributes

    def multiscales(datasets: object) -> dict[str, object]:
        return {"ome": {"multiscales": [{"axes": ["y", "x"], "datasets": datasets}]}}

    check_attributes(multiscales([{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1]}]}]),
                     "ok.zarr")
    with pytest.raises(LpdaskError, match=r"bad\.zarr: invalid OME-NGFF metadata: multiscales\[0\]\.datasets\[0\] must "
                                          "be an object with a string path"):
        check_attributes(multiscales([""]), "bad.zarr")
    with pytest.raises(LpdaskError, match=r"coordinateTransformations\[0\]\.type must be a string"):
        check_attributes(multiscales([{"path": "0", "coordinateTransformations": [{"type": {}}]}]), "bad.zarr")
    with pytest.raises(LpdaskError, match=r"\.scale must be a list of finite numbers"):
        check_attributes(multiscales([{"path": "0", "coordinateTransformations": [{"type": "scale",
                                                                                   "scale": [1, "x"]}]}]), "bad.zarr")
