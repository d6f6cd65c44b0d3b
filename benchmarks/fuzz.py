"""A soak of the fuzzing suite (tests/fuzzing.py): N mutated files across every format lpdask reads,
each through the real ``lpdask upscale`` command.

    .venv/bin/python -m benchmarks.fuzz --cases 5000 [--seed 1] [--formats tiff,svs,...] [--json FILE]

Prints, per format, how the cases ended (exit 0 with a complete output, exit 2 with one line) and
every failure: a traceback, a hang (a case past --case-seconds), other stderr lines, an output that
looks complete after a failure, or another exit code. Exits 1 when any case failed. Case i of seed
s is the same on every machine, so a failure is rerun by its number (``tests/fuzzing.make_case``).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

from tests import fuzzing

FAILURES = ("traceback", "hang", "lines", "looks complete", "incomplete")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=1, help="seed 0 is the one make test runs")
    parser.add_argument("--formats", default=",".join(fuzzing.FORMATS))
    parser.add_argument("--case-seconds", type=float, default=fuzzing.CASE_SECONDS)
    parser.add_argument("--json", type=Path, help="write every case's outcome here")
    args = parser.parse_args()
    formats = args.formats.split(",")
    unknown = sorted(set(formats) - set(fuzzing.FORMATS))
    if unknown:
        parser.error(f"unknown formats {unknown}; known: {', '.join(fuzzing.FORMATS)}")
    started = time.perf_counter()
    done = 0

    def progress(outcome: fuzzing.Outcome) -> None:
        nonlocal done
        done += 1
        if outcome.verdict != "ok":
            print(f"case {outcome.case} ({outcome.format}, {outcome.what}): {outcome.verdict}, exit {outcome.code}\n"
                  f"{outcome.stderr}", flush=True)
        if done % 250 == 0:
            print(f"{done}/{args.cases} cases, {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)

    outcomes = fuzzing.run(formats, args.cases, args.seed, args.case_seconds, on_outcome=progress)
    seconds = time.perf_counter() - started
    print(table(outcomes, formats))
    failed = sum(o.verdict != "ok" for o in outcomes)
    print(f"\n{len(outcomes)} cases (seed {args.seed}) in {seconds:.0f} s: {failed} failed; "
          + ", ".join(f"{sum(o.verdict == v for o in outcomes)} {v}" for v in FAILURES))
    if args.json:
        args.json.write_text(json.dumps([o.__dict__ for o in outcomes], indent=1) + "\n")
    return 1 if failed else 0


def table(outcomes: list[fuzzing.Outcome], formats: list[str]) -> str:
    """Per format: cases, how they ended, failures, and the slowest case's seconds."""
    rows = ["| format | cases | exit 0, complete | exit 2, one line | failures | slowest case |",
            "|---|---|---|---|---|---|"]
    for name in formats:
        mine = [o for o in outcomes if o.format == name]
        verdicts = collections.Counter(o.verdict for o in mine)
        ran = sum(o.code == 0 and o.verdict == "ok" for o in mine)
        refused = sum(o.code == 2 and o.verdict == "ok" for o in mine)
        failures = sum(n for v, n in verdicts.items() if v != "ok")
        slowest = max((o.seconds for o in mine), default=0.0)
        rows.append(f"| {name} | {len(mine)} | {ran} | {refused} | {failures} | {slowest:.1f} s |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
