"""Object stores: input, output and work folder on an S3-protocol server started on loopback (moto),
through s3fs, give the same pixels as the local run."""

from __future__ import annotations

import numpy as np
import tifffile
import zarr

from lpdask import upscale
from lpdask.io.omezarr import is_complete

from .reference import smooth_image


def test_s3_round_trip(small_net, tmp_path, bucket):
    image = smooth_image(40, 36, seed=70)
    tifffile.imwrite(tmp_path / "in.tif", image, tile=(16, 16))
    upscale(tmp_path / "in.tif", tmp_path / "local.zarr", model=small_net, chunk=16, blocks_per_stage=1)
    local = zarr.open_array(str(tmp_path / "local.zarr" / "0"))[:]

    bucket.put_file(str(tmp_path / "in.tif"), "lpdask-test/in.tif")
    summary = upscale("s3://lpdask-test/in.tif", "s3://lpdask-test/out.zarr", model=small_net, chunk=16,
                      blocks_per_stage=1, workdir="s3://lpdask-test/scratch")
    assert summary.output_shape == (3, 160, 144)
    assert is_complete("s3://lpdask-test/out.zarr")
    assert np.array_equal(zarr.open_array("s3://lpdask-test/out.zarr/0", mode="r")[:], local)
    assert not bucket.exists("lpdask-test/scratch/out.zarr.work")  # the work folder is gone

    # a Zarr input on S3 to a TIFF on S3, work folder beside the output
    zarr.create_array("s3://lpdask-test/in.zarr", data=image, chunks=(16, 16, 3))
    upscale("s3://lpdask-test/in.zarr", "s3://lpdask-test/out.tif", model=small_net, chunk=16, blocks_per_stage=1)
    bucket.get_file("lpdask-test/out.tif", str(tmp_path / "downloaded.tif"))
    assert np.array_equal(np.moveaxis(tifffile.imread(tmp_path / "downloaded.tif"), -1, 0), local)
    assert sorted(bucket.ls("lpdask-test", detail=False)) == [
        "lpdask-test/in.tif", "lpdask-test/in.zarr", "lpdask-test/out.tif", "lpdask-test/out.zarr"]
