"""Options are checked once, for the command line and the Python API alike: Python callers read the
parameter's name, the command line the flag's."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import tifffile

from lpdask import upscale
from lpdask.options import OptionError

from .reference import smooth_image


@pytest.mark.parametrize("options, message", [
    ({"chunk": 8}, "chunk=8 is out of range (16 to 8192 pixels)"),
    ({"blocks_per_stage": -1}, "blocks_per_stage=-1 must be at least 0 (0: the whole network as one stage)"),
    ({"threads": -2}, "threads=-2 must be at least 1 (0 picks one per core)"),
    ({"workers": -1}, "workers=-1 must be at least 1 (0: threads in this process)"),
    ({"value_range": (0, math.inf)}, "value_range=0,inf needs finite LOW < HIGH"),
    ({"compression": "gif"}, "compression=gif is not one of zlib, zstd, lzw, jpeg, none"),
    ({"executor": "fast"}, "executor=fast is not one of auto, stream, staged, whole, lazy"),
])
def test_python_callers_read_the_parameter(tmp_path: Path, small_net, options: dict, message: str) -> None:
    tifffile.imwrite(tmp_path / "in.tif", smooth_image(20, 20))
    with pytest.raises(OptionError) as raised:
        upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, **options)
    assert str(raised.value) == message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


def test_the_command_line_reads_the_flag() -> None:
    assert OptionError("chunk", 8, "is out of range (16 to 8192 pixels)").for_cli() == (
        "--chunk 8 is out of range (16 to 8192 pixels)")
    assert OptionError("value_range", (0, math.inf), "needs finite LOW < HIGH", "0,inf").for_cli() == (
        "--value-range 0,inf needs finite LOW < HIGH")
    both = OptionError("workers", 2, "starts a local cluster and {scheduler} joins one: give only one")
    assert str(both) == "workers=2 starts a local cluster and scheduler joins one: give only one"
    assert both.for_cli() == "--workers 2 starts a local cluster and --scheduler joins one: give only one"
