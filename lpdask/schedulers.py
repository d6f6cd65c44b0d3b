"""Where chunk tasks run: threads of this process (the default), or a dask.distributed cluster.

The default is Dask's threaded scheduler with one chunk per CPU core (two per GPU) and torch's
threads divided among them: torch releases the GIL while it computes, so threads keep every core
busy with one copy of the model in memory and nothing pickled. A cluster (``--workers N`` starts a
local one; ``--scheduler ADDRESS`` joins an existing one) runs the same tasks in worker processes,
which open the input and load the stages themselves, once per process.

A scheduler knows nothing of the engine: it runs a task callable ``task(shared, i, j)`` for each chunk
``(i, j)``, where ``shared`` (the stages: the model's weights) is sent to a cluster once, not with
every task.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from .errors import LpdaskError

if TYPE_CHECKING:
    from distributed import Client

Chunk = tuple[int, int]
Task = Callable[[Any, int, int], None]
"""``task(shared, i, j)`` computes chunk (i, j)."""


class Scheduler(Protocol):
    """Runs one task per chunk and calls ``tick`` as each finishes."""

    workers: int
    """Chunks computed at once."""
    in_process: bool
    """Whether tasks run in this process (so they may call back into it, e.g. to tick progress)."""

    def run(self, key: str, task: Task, shared: Any, chunks: Sequence[Chunk], tick: Callable[[Chunk], None],
            torch_threads: int = 0, on_stop: Callable[[], None] | None = None) -> None:
        """Run ``task(shared, i, j)`` for every chunk, calling ``tick((i, j))`` as each finishes; ``key``
        names the tasks (unique per stage and run), ``torch_threads`` is torch's thread count where
        they run (0: as it is). ``on_stop`` is called when the run stops on an error or an
        interrupt, before it waits for the tasks already running (which may then stop early)."""
        ...

    def compute(self, collection: Any, tick: Callable[[], None] | None = None) -> None:
        """Compute a whole dask collection (a lazy executor's graph); ``tick`` after each of its
        output chunks where the scheduler can tell."""
        ...


class Threads:
    """Dask's threaded scheduler in this process."""

    in_process = True

    def __init__(self, workers: int) -> None:
        self.workers = workers

    def run(self, key: str, task: Task, shared: Any, chunks: Sequence[Chunk], tick: Callable[[Chunk], None],
            torch_threads: int = 0, on_stop: Callable[[], None] | None = None) -> None:
        import dask
        from dask.callbacks import Callback

        class Ticks(Callback):
            def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
                tick((key[1], key[2]))

        call = partial(_call, task, shared)  # opaque to dask, which would otherwise walk the stages
        graph = {(key, i, j): (call, i, j, torch_threads) for i, j in chunks}
        pool = ThreadPoolExecutor(self.workers)
        try:
            with Ticks():
                dask.threaded.get(graph, list(graph), pool=pool)
        except BaseException:
            if on_stop is not None:
                on_stop()
            raise
        finally:  # on a failure, let the chunks already running finish before anyone cleans up
            pool.shutdown(wait=True, cancel_futures=True)

    def compute(self, collection: Any, tick: Callable[[], None] | None = None) -> None:
        import dask
        from dask.callbacks import Callback

        name = collection.name

        class Ticks(Callback):
            def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
                if tick is not None and isinstance(key, tuple) and key[0] == name:
                    tick()

        pool = ThreadPoolExecutor(self.workers)
        try:
            with Ticks():
                dask.compute(collection, scheduler="threads", pool=pool)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


class Cluster:
    """A dask.distributed cluster. The stages are scattered once, not sent with every task, and
    workers fetch them from each other as they need them. A task that fails because its worker
    died is rerun elsewhere by distributed, which is safe because a chunk task always writes the
    same bytes to the same place; chunks the cluster cancels (as it does when the worker holding
    the scattered stages dies) are resubmitted, with the stages scattered again where lost."""

    in_process = False

    def __init__(self, client: Client, resources: dict[str, float] | None = None, owned: Any = None,
                 torch_threads: int = 0) -> None:
        self.client = client
        self.resources = resources or None
        self.owned = owned
        self.torch_threads = torch_threads
        self._shared: dict[int, Any] = {}

    @classmethod
    def local(cls, workers: int, resources: dict[str, float] | None = None) -> Cluster:
        """Start ``workers`` worker processes on this machine, one chunk at a time each."""
        from distributed import Client, LocalCluster

        cores = os.cpu_count() or 1
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                               resources=resources, silence_logs=40)
        client = Client(cluster)
        client.register_plugin(_quiet_readers(), name="lpdask-quiet-readers")
        return cls(client, resources, cluster, max(1, cores // workers))

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

    def run(self, key: str, task: Task, shared: Any, chunks: Sequence[Chunk], tick: Callable[[Chunk], None],
            torch_threads: int = 0, on_stop: Callable[[], None] | None = None) -> None:
        from distributed import as_completed

        todo, rounds = list(chunks), 0
        threads = self.torch_threads or torch_threads
        while todo:
            scattered = self._scatter(shared)
            remote = self._send(task)
            futures = {self.client.submit(_call, remote, scattered, i, j, threads, pure=False,
                                          resources=self.resources, key=f"{key}-{i}-{j}-{id(remote):x}"): (i, j)
                       for i, j in todo}
            lost: list[Chunk] = []
            try:
                # A task's result is None, so its status says all: gathering it would only fail
                # when the worker that ran it has died since, though its chunk is written.
                for future in as_completed(futures):
                    if future.status == "cancelled":
                        lost.append(futures[future])
                    elif future.status == "error":
                        future.result()
                    else:
                        tick(futures[future])
            except BaseException:
                if on_stop is not None:
                    on_stop()
                self.client.cancel(list(futures))
                raise
            if lost and self._lost([*scattered, remote]):
                self._shared.pop(id(shared), None)
            rounds = 0 if len(lost) < len(todo) else rounds + 1
            if lost and rounds >= 3:
                raise LpdaskError(f"the cluster cancelled every remaining chunk {rounds} times in a row, "
                                  "before any of them finished; check its workers' logs")
            todo = lost

    def compute(self, collection: Any, tick: Callable[[], None] | None = None) -> None:
        from distributed import as_completed

        futures = self.client.compute(collection.to_delayed().ravel().tolist(), resources=self.resources)
        try:
            for future in as_completed(futures):
                future.result()
                if tick is not None:
                    tick()
        except BaseException:
            self.client.cancel(futures)
            raise

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

    def _scatter(self, shared: Any) -> list[Any]:
        """``shared`` on the cluster, sent once for as long as it lives there (one future per item)."""
        key = id(shared)
        if key not in self._shared or _dropped(self._shared[key][1]):
            self._shared[key] = (shared, self._send(list(shared)))
        return self._shared[key][1]

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


def _quiet_readers() -> Any:
    """A worker plugin: the reader libraries' notes on lpdask's own local workers are kept, not printed
    on the terminal (as in the command's own process, :func:`lpdask.io.boundary.quiet_libraries`)."""
    from distributed import WorkerPlugin

    class QuietReaders(WorkerPlugin):  # type: ignore[misc]
        idempotent = True

        def setup(self, worker: Any) -> None:
            from .io.boundary import keep_notes

            keep_notes()

    return QuietReaders()


def _dropped(futures: Sequence[Any]) -> bool:
    """Whether the client already knows any of ``futures``' data is lost."""
    return any(future.status != "finished" for future in futures)


def _call(task: Task, shared: Any, i: int, j: int, torch_threads: int) -> None:
    """Run one chunk task where it landed, with torch's threads set first."""
    if torch_threads:
        import torch

        if torch.get_num_threads() != torch_threads:
            torch.set_num_threads(torch_threads)
    task(shared, i, j)


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
