"""Two runs on one output, started together, many times: never a corrupt or mixed output.

Usage:
    .venv/bin/python -m benchmarks.concurrent_runs                # 100 rounds (about 15 minutes on 2 cores)
    .venv/bin/python -m benchmarks.concurrent_runs --rounds 2 --size 48   # proves it runs

Each round removes the output, then starts the same ``lpdask upscale`` command twice within a
millisecond (every other round the second one with ``--wait``). Whatever the timing, one of them must
write the output and the other must either be refused (exit 2, "is in use by another run"), or find
the output complete, or (with ``--wait``) wait and then find it complete. After every round the output
must be complete and bit-identical to an uninterrupted run, and no lock file may be left. The model
is the benchmarks' RRDBNet with 2 blocks of 16 features (growth 8), the image 96 x 96 (``--size``) in chunks of 16.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import tifffile
import zarr

from .common import save, save_network

RUN = ["--chunk", "16", "--blocks-per-stage", "1", "--threads", "1", "-q"]


def upscale(folder: Path, output: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "lpdask", "upscale", "in.tif", output, "--model", "model.pth",
                             *RUN, *extra], cwd=folder, env={**os.environ, "LPDASK_CACHE_DIR": str(folder / "cache")},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def outcome(code: int, stderr: str) -> str:
    if code == 0 and "already complete" in stderr:
        return "found it complete" + (" after waiting" if "waiting for the run" in stderr else "")
    if code == 0 and stderr.startswith("wrote "):
        return "wrote it"
    if code == 2 and "is in use by another run" in stderr and len(stderr.strip().splitlines()) == 1:
        return "refused"
    return f"unexpected (exit {code}): {stderr.strip()[-300:]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--size", type=int, default=96, help="image side in pixels (chunks of 16)")
    parser.add_argument("--output", type=Path, help="JSON results (default benchmarks/results/concurrent_runs.json)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="lpdask-concurrent-"))
    try:
        save_network(folder / "model.pth", num_feat=16, num_block=2, num_grow_ch=8)
        rng = np.random.default_rng(0)
        tifffile.imwrite(folder / "in.tif", rng.integers(0, 256, (args.size, args.size, 3), np.uint8), tile=(32, 32))
        reference = upscale(folder, "reference.zarr")
        assert reference.wait() == 0, reference.stderr.read()  # type: ignore[union-attr]
        expected = zarr.open_array(str(folder / "reference.zarr" / "0"), mode="r")[:]

        pairs: Counter[str] = Counter()
        bad: list[dict] = []
        start = time.perf_counter()
        for k in range(args.rounds):
            shutil.rmtree(folder / "out.zarr", ignore_errors=True)
            wait = ("--wait",) if k % 2 else ()
            both = [upscale(folder, "out.zarr"), upscale(folder, "out.zarr", *wait)]
            seen = [outcome(p.wait(), p.stderr.read()) for p in both]  # type: ignore[union-attr]
            group = zarr.open_group(str(folder / "out.zarr"), mode="r")
            complete = group.attrs.get("lpdask", {}).get("complete") is True and "ome" in group.attrs
            identical = complete and np.array_equal(zarr.open_array(str(folder / "out.zarr" / "0"), mode="r")[:],
                                                    expected)
            writers = sum(s == "wrote it" for s in seen)
            fine = identical and writers == 1 and not any(s.startswith("unexpected") for s in seen) \
                and not (folder / "out.zarr.lock").exists() and not (folder / "out.zarr.work").exists()
            pairs[" + ".join(sorted(seen)) + (" (second with --wait)" if wait else "")] += 1
            if not fine:
                bad.append({"round": k, "outcomes": seen, "complete": complete, "identical": identical})
            print(f"round {k + 1}/{args.rounds}: {' / '.join(seen)}{'' if fine else '  <-- WRONG'}", flush=True)
        report = {"rounds": args.rounds, "size": args.size, "bad_rounds": bad, "outcomes": dict(pairs),
                  "seconds": time.perf_counter() - start}
        save("concurrent_runs", report, args.output)
        print(f"\n{args.rounds} rounds, {len(bad)} with a corrupt, mixed or unfinished output or an unexpected exit")
        for pair, count in sorted(pairs.items(), key=lambda item: -item[1]):
            print(f"  {count:4d}  {pair}")
        return 1 if bad else 0
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
