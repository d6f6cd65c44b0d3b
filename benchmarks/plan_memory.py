"""The planner's predicted peak memory against the measured peak of the run it planned.

A random-weight 16-feature 1-block RRDBNet x4 (the benchmarks' one network) on an image of each size; each run is a fresh
process (``lpdask.upscale`` with the planner's defaults, or the plan options given) that reports the
plan's prediction (``Summary.plan``) and its own peak resident memory (``VmHWM``, as the summary
does). Prints one row per size: the plan, predicted and measured peak, and their ratio.

    python -m benchmarks.plan_memory                       # 1024, 2048, 4096: 15-20 minutes on 2 cores
    python -m benchmarks.plan_memory --sizes 512 1024      # quicker
    python -m benchmarks.plan_memory --chunk 768 --strip 256 --threads 2   # one plan's shape fixed
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from .common import make_image, save_network

CHILD = """
import json, sys
from lpdask import upscale
src, dst, model, options = sys.argv[1:5]
summary = upscale(src, dst, model=model, progress=False, **json.loads(options))
print(json.dumps({"plan": summary.plan.describe(), "predicted": summary.plan.peak_memory,
                  "measured": summary.peak_memory_bytes, "seconds": summary.seconds}))
"""


def run(folder: Path, size: int, model: Path, options: dict[str, int]) -> dict[str, object]:
    """One planned run in a fresh process: its plan, predicted and measured peak (bytes), seconds."""
    src = folder / f"in{size}.tif"
    make_image(src, size)
    done = subprocess.run([sys.executable, "-c", CHILD, str(src), str(folder / f"out{size}.zarr"), str(model),
                           json.dumps(options)], capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"size {size} failed:\n{done.stderr}")
    return {"size": size, **json.loads(done.stdout.splitlines()[-1])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096], help="image sides (px)")
    for name in ("chunk", "strip", "threads", "tile-rows"):
        parser.add_argument(f"--{name}", type=int, help=f"fix the plan's {name} (default: the planner's)")
    parser.add_argument("--max-memory", type=float, help="memory budget in GB (default: the planner's)")
    parser.add_argument("--executor", default="auto")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    options = {k: v for k, v in vars(args).items() if k not in ("sizes", "json") and v is not None}
    if args.max_memory:
        options["max_memory"] = args.max_memory * 1e9  # bytes, as the CLI's GB become
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        model = folder / "net.pth"
        save_network(model, num_feat=16, num_block=1, num_grow_ch=8)
        print("| size | plan | predicted GiB | measured GiB | measured / predicted |")
        print("|---|---|---|---|---|")
        for size in args.sizes:
            row = run(folder, size, model, options)
            rows.append(row)
            predicted, measured = int(row["predicted"]), int(row["measured"])  # type: ignore[call-overload]
            plan = str(row["plan"]).split(": predicted")[0]
            print(f"| {size}^2 | {plan} | {predicted / 2**30:.2f} | {measured / 2**30:.2f} | "
                  f"{measured / predicted:.2f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"options": options, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
