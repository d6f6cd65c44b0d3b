"""Executors: how one run (a plane and channel pass of a job) is computed into the output.

The runner (:mod:`lpdask.runner`) owns everything around a run (work folder, resume, progress,
scheduler, sink); an executor only computes. A new way of computing is one new module here that
satisfies :class:`Executor`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..schedulers import Scheduler
    from ..stages import Stage  # noqa: F401  (in a string below)
    from ..task import Job

Progress = Callable[[int | None, "Stage", int], Callable[[], None]]
"""``progress(index, stage, chunks)`` at the start of each stage; returns the tick for each chunk done.
An executor that runs every stage at once calls it once with index None and its last stage."""


class Executor(Protocol):
    """Computes one run of a job into its sink, skipping what earlier attempts finished."""

    name: str

    def tasks(self, job: Job) -> int:
        """Tasks per stage (chunks; tiles when streaming): what a job's summary counts."""
        ...

    def levels_written(self, job: Job) -> int:
        """Output levels it writes itself (1: level 0 alone; the sink builds the rest after)."""
        ...

    def run(self, job: Job, scheduler: Scheduler, progress: Progress | None = None) -> int:
        """Compute ``job`` and return the number of chunk tasks computed."""
        ...


__all__ = ["Executor", "Progress"]
