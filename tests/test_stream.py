"""The streaming executor: tiles streamed row strip by row strip through every stage give the output
of an independent whole-image run (tolerances in reference.py: 8-bit within 1 level on at most 0.1%
of pixels, float within 1e-4), store no activation, and resume tile by tile."""

from __future__ import annotations

import dataclasses
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
import torch
import zarr

from lpdask import upscale
from lpdask.executors.staged import stages_for
from lpdask.executors.stream import MARKER, Drop, Read, Run, Stream, schedule
from lpdask.geometry import reach_span
from lpdask.io.omezarr import OmeZarrSink, is_complete
from lpdask.io.sources import open_source
from lpdask.jobs import WorkFolder
from lpdask.schedulers import Threads
from lpdask.task import Job

from .reference import assert_exact, lively, smooth_image, whole_image, whole_image_any, whole_image_float
from .test_channels import image_with
from .test_faults import interruptible
from .test_resume import tiles_done
from .test_srvgg import compact  # noqa: F401  (a fixture)


def level0(path: Path) -> np.ndarray:
    return zarr.open_array(str(path / "0"), mode="r")[:]


@pytest.mark.parametrize(
    ("height", "width", "tile", "strip", "blocks"),
    [(70, 90, 16, 8, 1),    # tiles and strips far narrower than the reach (about 33 px)
     (100, 75, 48, 7, 2),   # strips that do not divide the height, a last tile narrower than the rest
     (37, 130, 128, 64, 1),  # a tile wider than the reach, one strip taller than the image
     (53, 41, 256, 1, 1)],  # one tile for the whole image, one row at a time
)
def test_matches_whole_image(small_net, tmp_path, height, width, tile, strip, blocks):
    image = smooth_image(height, width, seed=height + width)
    tifffile.imwrite(tmp_path / "in.tif", image, tile=(16, 16))
    summary = upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, chunk=tile, blocks_per_stage=blocks,
                      strip=strip)
    assert summary.executor == "stream" and summary.chunks == -(-width // tile)
    assert_exact(level0(tmp_path / "out.zarr"), whole_image(small_net, image))


@pytest.mark.parametrize(
    ("height", "width", "tile", "tile_rows", "strip"),
    [(100, 40, 16, 16, 8),   # bands far shorter than the reach (34 px): each reads rows of the bands around it
     (130, 70, 48, 48, 7),   # bands taller than the reach; strips that divide neither; a last band of 34 rows
     (75, 50, 64, 64, 64)],  # one strip per band, one tile wider than the image
)
def test_tiles_cut_in_height_match_whole_image(small_net, tmp_path, height, width, tile, tile_rows, strip):
    image = smooth_image(height, width, seed=height + tile_rows)
    tifffile.imwrite(tmp_path / "in.tif", image, tile=(16, 16))
    summary = upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, chunk=tile, blocks_per_stage=1,
                      strip=strip, tile_rows=tile_rows)
    assert summary.executor == "stream" and summary.chunks == -(-height // tile_rows) * -(-width // tile)
    assert_exact(level0(tmp_path / "out.zarr"), whole_image(small_net, image))


def test_float_output(small_net, tmp_path):
    image = smooth_image(45, 52, seed=5, dtype=np.float32)
    zarr.create_array(tmp_path / "in.zarr", data=image, chunks=(16, 16, 3))
    upscale(tmp_path / "in.zarr", tmp_path / "out.zarr", model=small_net, chunk=24, strip=10, executor="stream")
    assert_exact(level0(tmp_path / "out.zarr"), whole_image_float(small_net, image))


@pytest.mark.parametrize(("scale", "height", "width", "tile", "strip", "tile_rows"),
                         [(2, 45, 37, 16, 6, 0), (1, 30, 43, 20, 8, 0), (2, 45, 37, 16, 6, 16), (1, 30, 43, 20, 8, 20)])
def test_pixel_unshuffle_models(tmp_path, scale, height, width, tile, strip, tile_rows):
    """x2 / x1 RRDBNets on odd sizes (reflect-padded to the unshuffle grid, cropped after), against
    basicsr's RRDBNet with the same weights."""
    from lpdask import RRDBConfig, RRDBNet

    from .basicsr_import import basicsr_rrdbnet

    torch.manual_seed(scale)
    net = lively(RRDBNet(RRDBConfig(scale=scale, num_feat=12, num_block=2, num_grow_ch=6)), seed=scale)
    image = smooth_image(height, width, seed=scale + height)
    tifffile.imwrite(tmp_path / "in.tif", image)
    upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=net, chunk=tile, blocks_per_stage=1, strip=strip,
            tile_rows=tile_rows)
    assert_exact(level0(tmp_path / "out.zarr"), whole_image(basicsr_rrdbnet(net.state_dict()), image))


@pytest.mark.parametrize("blocks", [1, 2])
def test_compact_network(compact, tmp_path, blocks):  # noqa: F811
    """SRVGGNetCompact: its last stage reads the image again (the nearest-upsampled skip)."""
    image = smooth_image(47, 61, seed=blocks)
    tifffile.imwrite(tmp_path / "in.tif", image)
    upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=compact, chunk=24, blocks_per_stage=blocks, strip=9)
    assert_exact(level0(tmp_path / "out.zarr"), whole_image(compact, image))


def test_a_users_stages_network(tmp_path):
    """A network of the user's own (registered through the API, two stages, x2)."""
    from .reference import spread_output
    from .test_registry import PlainConfig, PlainConv

    torch.manual_seed(4)
    net = PlainConv(PlainConfig(8, 2)).eval()
    spread_output(net, net.conv2, seed=4)
    image = smooth_image(34, 30, seed=4)  # even: the reference pads an x2 model's input to even sides
    tifffile.imwrite(tmp_path / "in.tif", image)
    upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=net, chunk=16, blocks_per_stage=1, strip=5)
    assert_exact(level0(tmp_path / "out.zarr"), whole_image(net, image))


@pytest.mark.parametrize(("channels", "photometric", "alpha"),
                         [(1, "auto", "network"), (4, "rgba", "bilinear"), (5, "separate", "network")])
def test_channel_passes(small_net, tmp_path, channels, photometric, alpha):
    """Grey (luma of the RGB output), RGBA (alpha resized by its own stage) and five channels each
    as a grey image, 16-bit."""
    image = image_with(channels, 30, 35, seed=channels, dtype=np.uint16)
    if channels == 4:
        tifffile.imwrite(tmp_path / "in.tif", image, photometric="rgb", extrasamples=["unassalpha"])
    else:
        tifffile.imwrite(tmp_path / "in.ome.tif" if channels == 5 else tmp_path / "in.tif",
                         np.moveaxis(image, -1, 0) if channels == 5 else image[..., 0],
                         **({"metadata": {"axes": "CYX"}} if channels == 5 else {}))
    name = "in.ome.tif" if channels == 5 else "in.tif"
    summary = upscale(tmp_path / name, tmp_path / "out.zarr", model=small_net, chunk=16, strip=6, alpha=alpha,
                      executor="stream")
    assert summary.runs == {1: 1, 4: 2, 5: 5}[channels]
    assert_exact(level0(tmp_path / "out.zarr"), whole_image_any(small_net, image, photometric, alpha))


def test_planes_and_value_range(small_net, tmp_path):
    """t and z planes one by one; a 16-bit window (--value-range) clipped on the way in."""
    stack = np.stack([np.moveaxis(image_with(3, 26, 30, seed=z, dtype=np.uint16), -1, 0) for z in range(2)])
    stack = np.minimum(stack, 9000)
    tifffile.imwrite(tmp_path / "in.ome.tif", stack, metadata={"axes": "ZCYX"})
    upscale(tmp_path / "in.ome.tif", tmp_path / "out.zarr", model=small_net, chunk=16, strip=8, executor="stream",
            channels="rgb", value_range=(0, 6000))
    out = zarr.open_array(str(tmp_path / "out.zarr" / "0"), mode="r")
    for z in range(2):
        seen = np.minimum(np.moveaxis(stack[z], 0, -1), 6000).astype(np.float32) / 6000
        expected = np.round(whole_image_any(small_net, seen) * np.float32(6000)).astype(np.uint16)
        assert_exact(out[:, z], expected)


@pytest.mark.parametrize(("dtype", "value_range"), [(np.uint8, None), (np.uint16, None), (np.uint16, (100, 6000)),
                                                   (np.float32, None), (np.float32, (-1, 3)), (np.int16, (-500, 1500)),
                                                   (np.int8, (-100, 100))])
def test_pixels_converted_by_torch_equal_numpys(dtype, value_range):
    """Where the network's output is converted to pixels on a GPU, torch does numpy's float32
    operations in numpy's order: the same pixels, bit for bit (here on the CPU)."""
    from lpdask.pixels import from_unit, from_unit_tensor

    values = np.random.default_rng(1).normal(0.5, 0.4, (3, 64, 80)).astype(np.float32)
    values[0, 0, :4] = [0.5 / 255, 1.5 / 255, 2.5 / 255, 254.5 / 255]  # ties round to even
    expected = from_unit(values.copy(), np.dtype(dtype), value_range)
    found = from_unit_tensor(torch.from_numpy(values), np.dtype(dtype), value_range).numpy().astype(dtype)
    assert np.array_equal(found, expected)


@pytest.mark.parametrize(("height", "width", "tile", "tile_rows", "in_stream"),
                         [(40, 150, 256, 0, 3), (40, 1100, 512, 0, 2), (1100, 40, 512, 512, 2)])
def test_pyramid_levels_written_with_level_0(small_net, tmp_path, monkeypatch, height, width, tile, tile_rows,
                                             in_stream):
    """Tiles write the pyramid levels no two of them share as their rows of level 0 complete (one
    tile: every level; tiles of 2048 output px, side by side or one above the other: level 1, whose
    chunks are 1024 px); the rest are built after. Every level is the 2x2 mean of the stored level
    above, as a second pass makes it."""
    import lpdask.io.omezarr as omezarr
    from lpdask.executors import stream
    from lpdask.io.omezarr import half

    counted: list[int] = []
    levels = stream.pyramid_levels
    monkeypatch.setattr(stream, "pyramid_levels", lambda job: counted.append(levels(job)) or counted[-1])
    built: list[int] = []
    finish = omezarr.OmeZarrSink.finish
    monkeypatch.setattr(omezarr.OmeZarrSink, "finish",
                        lambda self, meta, name, written=1, **kw: built.append(written) or finish(self, meta, name,
                                                                                                  written, **kw))
    image = smooth_image(height, width, seed=width)
    tifffile.imwrite(tmp_path / "in.tif", image)
    summary = upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, chunk=tile, blocks_per_stage=1,
                      strip=8, tile_rows=tile_rows)
    assert set(counted) == {in_stream} and built == [in_stream]
    assert_exact(level0(tmp_path / "out.zarr"), whole_image(small_net, image))
    group = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    assert summary.levels == len(group.attrs["ome"]["multiscales"][0]["datasets"]) >= in_stream
    for index in range(1, summary.levels):
        assert np.array_equal(group[str(index)][:], half(group[str(index - 1)][:])), index


def test_halos_too_small_are_caught(small_net, tmp_path):
    """The comparisons above can fail: the same executor with halved halos is off by more than the
    tolerance (at the tiles' sides and the strips' edges)."""
    image = smooth_image(64, 64, seed=17, dtype=np.float32)
    zarr.create_array(tmp_path / "in.zarr", data=image)
    stages = [dataclasses.replace(s, halo=s.halo // 2) for s in stages_for(small_net, "exact", 1, 0)]
    sink = OmeZarrSink(tmp_path / "out.zarr", "cyx", (3, 256, 256), np.dtype(np.float32), 64)
    work = WorkFolder(tmp_path / "work")
    work.path.mkdir()
    Stream().run(Job(open_source(tmp_path / "in.zarr"), stages, 16, work, sink, strip=8), Threads(1))
    with pytest.raises(AssertionError, match="max float difference"):
        assert_exact(level0(tmp_path / "out.zarr"), whole_image_float(small_net, image))


class PerTask(Threads):
    """Threads whose tasks cannot tick from inside, as on a cluster: the executor ticks per task."""

    in_process = False


@pytest.mark.parametrize("scheduler", [Threads(2), PerTask(2)], ids=["in process", "per task"])
def test_progress_counts_each_output_strip_once(small_net, tmp_path, scheduler):
    """Tiles 16 px wide and 48 rows high, strips of 8 rows, on 100 x 40 px: bands of 48, 48 and 4
    rows write 6, 6 and 1 strips, three tiles a band: 39 ticks, the total the bar was given."""
    tifffile.imwrite(tmp_path / "in.tif", smooth_image(100, 40, seed=6))
    sink = OmeZarrSink(tmp_path / "out.zarr", "cyx", (3, 400, 160), np.dtype(np.uint8), 64)
    work = WorkFolder(tmp_path / "work")
    work.path.mkdir()
    job = Job(open_source(tmp_path / "in.tif"), small_net.stages(1), 16, work, sink, strip=8, tile_rows=48)
    counted = {"ticks": 0}

    def progress(index, stage, total):
        counted["total"] = total
        return lambda: counted.update(ticks=counted["ticks"] + 1)

    assert Stream().run(job, scheduler, progress) == 9
    assert counted == {"total": 39, "ticks": 39}
    assert_exact(level0(tmp_path / "out.zarr"), whole_image(small_net, smooth_image(100, 40, seed=6)))


def test_rows_are_computed_once_and_dropped(small_net):
    """Every stage computes each of its output rows exactly once; no array is kept beyond what its
    readers still need; the long skip keeps the trunk's reach in rows, no more."""
    stages = small_net.stages(1)
    rows, strip = 200, 16
    produced = {k: [] for k in range(len(stages))}
    held, kept, most = {}, {}, {}
    for step in schedule(stages, rows, strip):
        if isinstance(step, Run):
            produced[step.index].append((step.start, step.stop))
            name = stages[step.index].name
            held[name] = step.stop * stages[step.index].scale
            most[name] = max(most.get(name, 0), held[name] - kept.get(name, 0))
        elif isinstance(step, Drop):
            assert step.row > kept.get(step.name, 0)
            kept[step.name] = step.row
        else:
            assert isinstance(step, Read)
    for k, spans in produced.items():
        assert spans[0][0] == 0 and spans[-1][1] == rows
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    trunk = sum(s.halo for s in stages[1:-1])
    assert most["head"] <= trunk + 2 * strip
    assert all(most[s.name] <= 2 * s.halo + 4 * strip for s in stages[1:-1])


def test_bands_compute_their_rows_once_and_together_the_output_once(small_net):
    """Tiles cut in height: each stage of a band computes its rows once, in windows inside what the
    band holds and clipped only at the image's border; the bands' output rows tile the output."""
    from lpdask.geometry import bands

    stages = small_net.stages(1)
    rows, written = 200, []
    for y0, y1 in bands(rows, 48):
        span = reach_span(stages, rows, y0, y1)
        produced: dict[int, list[tuple[int, int]]] = {k: [] for k in range(len(stages))}
        for step in schedule(stages, rows, 16, span):
            if isinstance(step, Read):
                lo, hi = span.arrays["image"]
                assert lo <= step.start < step.stop <= hi
            elif isinstance(step, Run):
                stage = stages[step.index]
                produced[step.index].append((step.start, step.stop))
                lo, hi = span.arrays[stage.inputs[0]]
                assert step.window_start == max(0, step.start - stage.halo) >= lo
                assert step.window_stop == min(rows, step.stop + stage.halo) <= hi  # every stage reads the image's grid
        for k, done in produced.items():
            s = stages[k].scale
            assert (done[0][0], done[-1][1]) == (span.outputs[k][0] // s, span.outputs[k][1] // s)
            assert all(a[1] == b[0] for a, b in zip(done, done[1:]))
        written.append((done[0][0], done[-1][1]))  # the last stage's rows: what the band writes
    assert written == [(y0, y1) for y0, y1 in bands(rows, 48)]
    assert span.arrays["image"] == (rows - 8 - sum(s.halo for s in stages), rows)  # the last band reads its reach above


def test_tile_columns_clip_at_the_border(small_net):
    stages = small_net.stages(1)
    reach = sum(s.halo for s in stages)
    inner = reach_span(stages, 200, 64, 96)
    assert inner.arrays["image"] == (64 - reach, 96 + reach)
    left = reach_span(stages, 200, 0, 32)
    assert left.arrays["image"] == (0, 32 + reach)
    assert left.outputs[-1] == (0, 128)


def test_no_activation_reaches_disk(small_net, tmp_path, monkeypatch):
    """While tiles stream, the work folder holds only the job's identity and the tiles' markers, and
    the disk check asks nothing of the work folder (a .zarr output needs no result copy there)."""
    import lpdask.runner
    from lpdask.passpixels import PassPixels

    seen: list[set[str]] = []
    asked: list[int] = []
    write = PassPixels.write

    def watched(self, box, pixels, level=0):
        seen.append({p.relative_to(tmp_path / "out.zarr.work").as_posix()
                     for p in (tmp_path / "out.zarr.work").rglob("*") if p.is_file()})
        return write(self, box, pixels, level)

    check = lpdask.runner.check_disk
    monkeypatch.setattr(PassPixels, "write", watched)
    monkeypatch.setattr(lpdask.runner, "check_disk", lambda work, out, need, *rest: (asked.append(need),
                                                                                  check(work, out, need, *rest)))
    tifffile.imwrite(tmp_path / "in.tif", smooth_image(60, 70, seed=3))
    upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, chunk=32, strip=8, executor="stream")
    assert asked == [0]
    assert len(seen) > 4
    allowed = re.compile(rf"job\.json|markers/r0/{MARKER}/0\.\d+")
    assert all(allowed.fullmatch(name) for files in seen for name in files), seen
    assert not any(name.endswith((".zarr", "zarr.json")) for files in seen for name in files)


def test_held_rows_survive_moves_and_growth():
    """A tile's held rows read back as appended whatever the buffer did meanwhile: moved its rows up
    (in pieces, when the room freed at its start is smaller than what it holds), or grew."""
    from lpdask.executors.stream import _Held

    rng = np.random.default_rng(3)
    held, reference, first = _Held(5), torch.empty(1, 2, 0, 3), 5
    moves = growths = 0
    for _ in range(400):
        n = int(rng.integers(1, 8))
        rows = torch.from_numpy(rng.random((1, 2, n, 3), np.float32))
        buffer, start = held.buffer, held.start
        held.append(rows)
        growths += held.buffer is not buffer
        moves += held.buffer is buffer and held.start == 0 and start > 0
        reference = torch.cat((reference, rows), 2)
        if rng.random() < 0.6:
            keep = int(rng.integers(0, reference.shape[2] + 1))
            first += reference.shape[2] - keep
            reference = reference[:, :, reference.shape[2] - keep:]
            held.drop(first)
        if reference.shape[2]:
            a = first + int(rng.integers(0, reference.shape[2]))
            assert torch.equal(held.rows(a, first + reference.shape[2]), reference[:, :, a - first:])
    assert moves > 20 and growths > 20


def test_the_planner_counts_the_buffers_a_tile_keeps(small_net):
    """The planner's dry run predicts, step by step, the rows each array's buffer has room for in a
    tile (its memory): the executor's buffers, fed the schedule's rows, have exactly that room."""
    from lpdask.executors.stream import _Held
    from lpdask.planner import dry_run

    for blocks, rows, strip in [(1, 200, 16), (2, 90, 7), (1, 64, 64)]:
        stages = small_net.stages(blocks)
        dry = dry_run(tuple(stages), rows, strip)
        held = {name: _Held(0) for name in dry.names}
        steps = list(schedule(stages, rows, strip))
        assert len(steps) == len(dry.held)
        for step, expected in zip(steps, dry.held):
            if isinstance(step, Read):
                held[dry.names[0]].append(torch.zeros(1, 1, step.stop - step.start, 1))
            elif isinstance(step, Drop):
                held[step.name].drop(step.row)
            elif step.index < len(stages) - 1:
                stage = stages[step.index]
                held[stage.name].append(torch.zeros(1, 1, (step.stop - step.start) * stage.scale, 1))
            assert [0 if h.buffer is None else h.buffer.shape[2] for h in held.values()] == list(expected)
        assert int(dry.held.max()) > 0


def test_planner_streams_when_the_work_folder_has_no_room(default_net):
    """x4plus on an image of several chunks: with room for activations the staged plan can win on a
    CPU, but with none the planner streams (or runs the whole network, if that fit the memory)."""
    from lpdask.planner import choose

    roomy, plans = choose(default_net, 3000, 3000, torch.device("cpu"), scratch=None)
    assert {e.executor for e in plans} == {"staged", "whole", "stream"}
    cramped, _ = choose(default_net, 3000, 3000, torch.device("cpu"), scratch=10**9)
    assert cramped.executor == "stream" and cramped.scratch_bytes == 0
    assert min(e.scratch_bytes for e in plans if e.executor == "staged") > 10**9


def test_plan_command_says_why_it_streams(tmp_path, monkeypatch, capsys):
    import lpdask.planner
    from lpdask.cli import main

    tifffile.imwrite(tmp_path / "in.tif", np.zeros((3000, 3000, 3), np.uint8), tile=(256, 256))
    monkeypatch.setattr(lpdask.planner, "scratch_space", lambda *args: 10**9)
    assert main(["plan", str(tmp_path / "in.tif"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^plan: stream: tiles \d+ px wide in strips of \d+ rows", out, re.M), out
    assert "need more scratch than the 1.0 GB free" in out
    for executor in ("staged", "whole", "stream"):
        assert re.search(rf"^ [ *!] {executor}: ", out, re.M), out


def start(tmp_path: Path, checkpoint: Path, output: str) -> subprocess.Popen[str]:
    env = {**os.environ, "LPDASK_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.Popen([sys.executable, "-m", "lpdask", "upscale", "in.tif", output, "--model", str(checkpoint),
                             "--executor", "stream", "--chunk", "16", "--tile-rows", "48", "--strip", "8",
                             "--blocks-per-stage", "1", "--threads", "1", "-q"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow  # the CLI in subprocesses, killed and rerun
def test_sigkill_then_resume_recomputes_only_unfinished_tiles(tmp_path, small_checkpoint):
    """Tiles 16 px wide and 48 rows high: 2 x 10 tasks, each marked (row, column) when written."""
    tifffile.imwrite(tmp_path / "in.tif", smooth_image(72, 160, seed=51), tile=(32, 32))
    tiles = 20
    upscale(tmp_path / "in.tif", tmp_path / "reference.zarr", model=small_checkpoint, executor="stream", chunk=16,
            tile_rows=48, strip=8, blocks_per_stage=1, threads=1)  # the uninterrupted run, as the command runs it

    job = start(tmp_path, small_checkpoint, "out.zarr")
    deadline = time.monotonic() + 240
    while tiles_done(tmp_path / "out.zarr.work") < tiles * 6 // 10:
        assert job.poll() is None, "finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    job.send_signal(signal.SIGKILL)
    job.wait(timeout=60)
    done = tiles_done(tmp_path / "out.zarr.work")
    assert tiles * 6 // 10 <= done < tiles
    assert not is_complete(tmp_path / "out.zarr")

    rerun = start(tmp_path, small_checkpoint, "out.zarr")
    _, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    assert int(re.search(r"resumed: (\d+) tile tasks recomputed", stderr).group(1)) == tiles - done
    assert is_complete(tmp_path / "out.zarr") and not (tmp_path / "out.zarr.work").exists()
    assert np.array_equal(level0(tmp_path / "out.zarr"), level0(tmp_path / "reference.zarr"))


@pytest.mark.slow  # the CLI in subprocesses, interrupted and rerun
def test_ctrl_c_stops_a_long_tile_between_strips_and_the_same_command_resumes(tmp_path, small_checkpoint):
    """A tile can take an hour on a slide: SIGINT stops it at its next strip (not when it ends),
    with one line and exit 130; the same command then finishes, equal to an uninterrupted run."""
    tifffile.imwrite(tmp_path / "in.tif", smooth_image(512, 48, seed=52))
    env = {**os.environ, "LPDASK_CACHE_DIR": str(tmp_path / "cache")}

    def start(output: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "lpdask", "upscale", "in.tif", output, "--model",
                                 str(small_checkpoint), "--executor", "stream", "--chunk", "64", "--strip", "4",
                                 "--blocks-per-stage", "1", "--threads", "1", "-q"], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)

    upscale(tmp_path / "in.tif", tmp_path / "reference.zarr", model=small_checkpoint, executor="stream", chunk=64,
            strip=4, blocks_per_stage=1, threads=1)  # the uninterrupted run, as the command runs it
    job = start("out.zarr")
    deadline = time.monotonic() + 120
    while not list((tmp_path / "out.zarr" / "0").rglob("c/*/*/*")):  # the first row of stored chunks
        assert job.poll() is None and time.monotonic() < deadline, "finished before it could be interrupted"
        time.sleep(0.01)
    job.send_signal(signal.SIGINT)
    _, stderr = job.communicate(timeout=30)
    assert job.returncode == 130, stderr
    assert stderr.strip() == "lpdask: interrupted; run the same command again to resume", stderr
    assert tiles_done(tmp_path / "out.zarr.work") == 0 and not is_complete(tmp_path / "out.zarr")
    rerun = start("out.zarr")
    _, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    assert np.array_equal(level0(tmp_path / "out.zarr"), level0(tmp_path / "reference.zarr"))
