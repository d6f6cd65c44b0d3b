"""Where chunk tasks run: threads of this process (the default), or a dask.distributed cluster.

The default is Dask's threaded scheduler with one chunk per CPU core (one per GPU) and torch's
threads divided among them: torch releases the GIL while it computes, so threads keep every core
busy with one copy of the model in memory and nothing pickled. A cluster (``--workers N`` starts a
local one; ``--scheduler ADDRESS`` joins an existing one) runs the same tasks in worker processes,
which open the input and load the stages themselves, once per process.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

from .errors import LpdaskError

if TYPE_CHECKING:
    from distributed import Client

    from .graph import Job
    from .stages import Stage

Chunk = tuple[int, int]


class Scheduler(Protocol):
    """Runs the chunk tasks of one stage and calls ``tick`` as each finishes."""

    workers: int
    """Chunks computed at once."""

    def run(self, job: Job, index: int, chunks: Sequence[Chunk], tick: Callable[[], None]) -> None: ...


class Threads:
    """Dask's threaded scheduler in this process."""

    def __init__(self, workers: int) -> None:
        self.workers = workers

    def run(self, job: Job, index: int, chunks: Sequence[Chunk], tick: Callable[[], None]) -> None:
        import dask
        from dask.callbacks import Callback

        from .graph import run_chunk

        class Ticks(Callback):
            def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
                tick()

        name = job.stages[index].name
        graph = {(name, i, j): (run_chunk, job, index, i, j) for i, j in chunks}
        pool = ThreadPoolExecutor(self.workers)
        try:
            with Ticks():
                dask.threaded.get(graph, list(graph), pool=pool)
        finally:  # on a failure, let the chunks already running finish before anyone cleans up
            pool.shutdown(wait=True, cancel_futures=True)


class Cluster:
    """A dask.distributed cluster. The stages are scattered once, not sent with every task, and
    workers fetch them from each other as they need them. A task that fails because its worker
    died is rerun elsewhere by distributed, which is safe because a chunk task always writes the
    same bytes to the same place; chunks cancelled because the worker holding the scattered stages
    died are resubmitted with the stages scattered again."""

    def __init__(self, client: Client, resources: dict[str, float] | None = None, owned: Any = None,
                 torch_threads: int = 0) -> None:
        self.client = client
        self.resources = resources or None
        self.owned = owned
        self.torch_threads = torch_threads
        self._stages: dict[int, Any] = {}

    @classmethod
    def local(cls, workers: int, resources: dict[str, float] | None = None) -> Cluster:
        """Start ``workers`` worker processes on this machine, one chunk at a time each."""
        from distributed import Client, LocalCluster

        cores = os.cpu_count() or 1
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                               resources=resources, silence_logs=40)
        return cls(Client(cluster), resources, cluster, max(1, cores // workers))

    @classmethod
    def connect(cls, address: str, resources: dict[str, float] | None = None) -> Cluster:
        from distributed import Client

        try:
            client = Client(address, timeout="5s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise LpdaskError(f"cannot reach the Dask scheduler at {address} ({exc})") from None
        return cls(client, resources)

    @property
    def workers(self) -> int:
        return sum(w.get("nthreads", 1) for w in self.client.scheduler_info().get("workers", {}).values()) or 1

    @property
    def dashboard_link(self) -> str:
        return str(self.client.dashboard_link)

    def run(self, job: Job, index: int, chunks: Sequence[Chunk], tick: Callable[[], None]) -> None:
        from distributed import as_completed

        todo, rounds = list(chunks), 0
        while todo:
            stages = self._scatter(job.stages)
            light = dataclasses.replace(job, stages=(), torch_threads=self.torch_threads or job.torch_threads)
            remote = self._send(light)
            name = job.stages[index].name
            futures = {self.client.submit(_run_chunk, remote, stages, index, i, j, pure=False, resources=self.resources,
                                          key=f"{name}-r{job.run}-{i}-{j}-{id(light):x}"): (i, j) for i, j in todo}
            lost: list[Chunk] = []
            try:
                for future in as_completed(futures):
                    if future.cancelled() and (lost or self._lost([*stages, remote])):  # asked once per round
                        lost.append(futures[future])
                        continue
                    future.result()
                    tick()
            except BaseException:
                self.client.cancel(list(futures))
                raise
            rounds = 0 if len(lost) < len(todo) else rounds + 1
            if lost and rounds >= 3:
                raise LpdaskError(f"the cluster lost the scattered model with a dying worker {rounds} times "
                                  "in a row, before any chunk finished; check its workers' logs")
            todo = lost

    def _lost(self, scattered: list[Any]) -> bool:
        """Whether data this client scattered is gone. Distributed keeps one copy of scattered data
        once no task waits on it (its active memory manager drops the rest), so the death of the
        worker that holds it cancels the tasks that need it."""
        from concurrent.futures import CancelledError

        if _dropped(scattered):
            return True
        try:
            held = self.client.who_has(scattered)
        except CancelledError:
            return True
        return not all(held.get(future.key) for future in scattered)

    def _scatter(self, stages: Sequence[Stage]) -> list[Any]:
        key = id(stages)
        if key not in self._stages or _dropped(self._stages[key][1]):
            self._stages[key] = (stages, self._send(list(stages)))
        return self._stages[key][1]

    def _send(self, data: Any) -> Any:
        """Scatter ``data`` to a worker, retrying while the scheduler still lists one that has just
        died. Not ``broadcast=True``: the scheduler's replication can hang on a dead worker
        (dask/distributed#5704), and it keeps one copy anyway once no task waits on the data."""
        for attempt in range(10):
            try:
                return self.client.scatter(data, hash=False)
            except OSError:  # distributed's CommClosedError
                if attempt == 9:
                    raise
                time.sleep(0.5)

    def worker_peaks(self) -> list[int]:
        """Each worker's own peak memory, for a local cluster this run started (none for one it
        joined: those workers' memory is not this run's)."""
        if self.owned is None:
            return []
        from .memory import peak_bytes

        try:
            return sorted(self.client.run(peak_bytes).values())
        except OSError:  # a worker died since
            return []

    def close(self) -> None:
        self.client.close()
        if self.owned is not None:
            self.owned.close()


def _dropped(futures: Sequence[Any]) -> bool:
    """Whether the client already knows any of ``futures``' data is lost."""
    return any(future.status != "finished" for future in futures)


def _run_chunk(job: Job, stages: list[Stage], index: int, i: int, j: int) -> None:
    from .graph import run_chunk

    run_chunk(dataclasses.replace(job, stages=stages), index, i, j)


def parse_resources(text: str | None) -> dict[str, float] | None:
    """``GPU=1,MEMORY=8e9`` -> {"GPU": 1.0, "MEMORY": 8e9}."""
    if not text:
        return None
    resources = {}
    for item in text.split(","):
        name, _, amount = item.partition("=")
        try:
            resources[name.strip()] = float(amount)
        except ValueError:
            raise LpdaskError(f"--resources {text!r}: {item!r} is not NAME=AMOUNT") from None
        if not name.strip():
            raise LpdaskError(f"--resources {text!r}: {item!r} is not NAME=AMOUNT")
    return resources
