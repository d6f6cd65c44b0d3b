"""Executors: how one run (a plane and channel pass of a job) is computed into the output.

The runner (:mod:`lpdask.runner`) owns everything around a run (work folder, resume, progress,
scheduler, sink); an executor only computes, and says what it needs: the stages it runs, the
scratch space its activations take, and the plans the planner may weigh for it. The executors are
one explicit list, :data:`EXECUTORS`: the command line's ``--executor`` choices, the planner's
candidates and the disk check all come from it. A new way of computing is one module here that
defines ``EXECUTOR`` (an object satisfying :class:`Executor`) and one line in that list. This
module imports no torch, so the command line can list the executors before torch loads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..costs import Pricing, Space, StageCost
    from ..models.network import Network
    from ..plan import Plan
    from ..schedulers import Scheduler
    from ..stages import Stage  # noqa: F401  (in a string below)
    from ..task import Job

Progress = Callable[[int | None, "Stage", int], Callable[[], None]]
"""``progress(index, stage, chunks)`` at the start of each stage; returns the tick for each chunk done.
An executor that runs every stage at once calls it once with index None and its last stage."""


class Executor(Protocol):
    """Computes one run of a job into its sink, skipping what earlier attempts finished."""

    name: str
    unit: str
    """What its tasks are ("chunk", "tile"), for messages."""

    def stages(self, net: Network, plan: Plan, mode: str, tile_pad: int) -> list[Stage]:
        """The stages it runs ``net`` as, under ``plan`` (``mode`` "tile": Real-ESRGAN's tile mode)."""
        ...

    def scratch_bytes(self, stages: list[Stage], height: int, width: int, input_factor: int, itemsize: int) -> int:
        """Work-folder bytes its activations take at most on a ``height`` x ``width`` image."""
        ...

    def fits(self, stages: list[Stage], chunk: int, rows: int, cols: int) -> bool:
        """Whether it can run ``stages`` in chunks of ``chunk`` over a ``rows`` x ``cols`` image (both
        on the stages' grid)."""
        ...

    def tasks(self, job: Job) -> int:
        """Tasks per stage (chunks; tiles when streaming): what a job's summary counts."""
        ...

    def levels_written(self, job: Job) -> int:
        """Output levels it writes itself (1: level 0 alone; the sink builds the rest after)."""
        ...

    def run(self, job: Job, scheduler: Scheduler, progress: Progress | None = None) -> int:
        """Compute ``job`` and return the number of tasks computed."""
        ...


class Priced(Executor, Protocol):
    """An executor the planner weighs (:attr:`Entry.planned`): it says which stage lists it is priced
    with and what each costs in the shapes the planner lets it try."""

    def priced_stages(self, net: Network, blocks_per_stage: int | None) -> list[tuple[int, list[Stage]]]:
        """(grouping, stages) for each stage list to price: its own choice, or ``blocks_per_stage``
        where the user fixed it (none where that grouping is not this executor's)."""
        ...

    def candidates(self, blocks_per_stage: int, stages: list[Stage], costs: Sequence[StageCost], pricing: Pricing,
                   space: Space) -> list[Plan]:
        """Its plans for one stage list (profiled as ``costs``) in the shapes of ``space``, priced."""
        ...


@dataclass(frozen=True)
class Entry:
    """An executor known by name: its module (under this package) defines ``EXECUTOR``."""

    name: str
    module: str
    help: str
    planned: bool = True
    """Weighed by the planner under ``executor="auto"``, and offered as ``--executor``."""

    def load(self) -> Executor:
        return import_module(f"{__name__}.{self.module}").EXECUTOR  # type: ignore[no-any-return]


EXECUTORS: tuple[Entry, ...] = (
    Entry("stream", "stream", "tiles streamed in row strips, nothing stored between stages"),
    Entry("staged", "staged", "stage by stage through the work folder"),
    Entry("whole", "whole", "the whole network on each chunk"),
    Entry("lazy", "lazy", "one dask graph in memory, nothing to resume from (Python API)", planned=False),
)


def entry(name: str) -> Entry | None:
    return next((e for e in EXECUTORS if e.name == name), None)


def executor_named(name: str) -> Executor:
    """The executor called ``name`` (one of :data:`EXECUTORS`)."""
    found = entry(name)
    if found is None:
        raise KeyError(name)
    return found.load()


__all__ = ["EXECUTORS", "Entry", "Executor", "Priced", "Progress", "entry", "executor_named"]
