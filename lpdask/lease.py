"""One run per output at a time: an exclusive lease, taken before the output is read or written.

On a local or network file system the lease is an OS lock (``flock``) on ``OUTPUT.lock`` beside the
output, held by an open file for the life of the process: the kernel releases it when the process
dies, kill -9 included, so nothing is left to clean up. The file names the holder (host, pid, since);
a run that finds it with nobody holding the lock knows that an earlier run ended without finishing,
says so, and takes over (the resume logic then checks the earlier work as usual). A finished run
removes the file.

On an object store (and on a file system without locks) the lease is an object ``OUTPUT.lease``
naming its owner, created only if absent and renewed by a heartbeat; one whose heartbeat is older
than :data:`TIMEOUT` seconds is stale and is taken over. The holders' clocks must agree within it.

Workers of a cluster run are covered by their client's lease. A lease is re-entrant within one
call chain (the CLI takes it early, :func:`lpdask.upscale` finds it held), never across threads.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import LeaseWarning, OutputBusy, fault_of
from .io.locations import Location

TIMEOUT = float(os.environ.get("LPDASK_LEASE_TIMEOUT", "60"))
"""Seconds after its last heartbeat that an object-store lease is stale."""
POLL = 0.25
"""Seconds between tries while waiting for a lease."""

_held: ContextVar[dict[str, Lease]] = ContextVar("lpdask_leases")


@dataclass(frozen=True)
class Holder:
    """Who holds a lease."""

    host: str
    pid: int
    since: float
    owner: str = field(default_factory=lambda: uuid.uuid4().hex)
    heartbeat: float = 0.0

    @classmethod
    def me(cls) -> Holder:
        now = time.time()
        return cls(socket.gethostname(), os.getpid(), now, heartbeat=now)

    @classmethod
    def parse(cls, text: str | bytes) -> Holder | None:
        try:
            fields = json.loads(text)
            return cls(str(fields["host"]), int(fields["pid"]), float(fields["since"]), str(fields["owner"]),
                       float(fields.get("heartbeat", 0.0)))
        except (ValueError, KeyError, TypeError):
            return None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"host {self.host}, pid {self.pid}, since {since}"


def _who(holder: Holder | None) -> str:
    return f"({holder.describe()})" if holder else "(its holder is not named yet)"


def _busy(place: Location, holder: Holder | None) -> OutputBusy:
    return OutputBusy(f"{place} is in use by another run {_who(holder)}; wait for it to finish, "
                      "or add --wait to start when it does")


def _taking_over(place: Location, holder: Holder) -> None:
    warnings.warn(f"the run on {place} {_who(holder)} ended without finishing; taking over", LeaseWarning,
                  stacklevel=4)


def _waiting(place: Location, holder: Holder | None) -> None:
    warnings.warn(f"waiting for the run on {place} {_who(holder)} to finish", LeaseWarning, stacklevel=4)


class FileLock:
    """``flock`` on ``PLACE.lock``; released by the kernel if the process dies."""

    def __init__(self, place: Location, wait: bool) -> None:
        self.place = place
        self.path = Path(place.local_path.with_name(place.name + ".lock"))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        announced = False
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = Holder.parse(_read(fd))
                os.close(fd)
                if not wait:
                    raise _busy(place, holder) from None
                if not announced:
                    _waiting(place, holder)
                    announced = True
                time.sleep(POLL)
                continue
            except BaseException:
                os.close(fd)
                raise
            if not _same_file(fd, self.path):  # its holder removed it between our open and our lock
                os.close(fd)
                continue
            break
        self.fd = fd
        previous = Holder.parse(_read(fd))
        if previous is not None:
            _taking_over(place, previous)
        self.holder = Holder.me()
        os.ftruncate(fd, 0)
        os.pwrite(fd, self.holder.to_json().encode(), 0)

    def check(self) -> None:
        """A lock held by the kernel cannot be lost."""

    def release(self) -> None:
        self.path.unlink(missing_ok=True)  # while still locked: a waiting run then retries on a new file
        os.close(self.fd)


def _read(fd: int) -> bytes:
    return os.pread(fd, 4096, 0)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


class StoreLease:
    """A lease object ``PLACE.lease``, created only if absent and renewed by a heartbeat thread."""

    def __init__(self, place: Location, wait: bool) -> None:
        self.place = place
        self.where = place.with_name(place.name + ".lease")
        self.holder = Holder.me()
        self.lost: Holder | None = None
        announced = False
        while True:
            if self._create():
                break
            holder = self._read()
            if holder is None and self.where.exists():
                time.sleep(POLL)  # being written, or not a lease of ours: look again
                holder = self._read()
            if holder is None or time.time() - holder.heartbeat > TIMEOUT:
                if holder is not None:
                    _taking_over(place, holder)
                self.where.remove()
                continue
            if not wait:
                raise _busy(place, holder)
            if not announced:
                _waiting(place, holder)
                announced = True
            time.sleep(max(POLL, min(5.0, TIMEOUT / 12)))
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name="lpdask-lease", daemon=True)
        self._beat.start()

    def _create(self) -> bool:
        """Write the lease if there is none; whether it is now ours."""
        try:
            self.where.fs.pipe_file(self.where.path, self.holder.to_json().encode(), mode="create")
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise
            return False
        mine = self._read()  # where the store cannot create conditionally, the last writer wins
        return mine is not None and mine.owner == self.holder.owner

    def _read(self) -> Holder | None:
        try:
            return Holder.parse(self.where.fs.cat_file(self.where.path))
        except (FileNotFoundError, OSError):
            return None

    def _heartbeat(self) -> None:
        while not self._stop.wait(TIMEOUT / 6):
            current = self._read()
            if current is not None and current.owner != self.holder.owner:
                self.lost = current
                return
            try:
                beat = Holder(self.holder.host, self.holder.pid, self.holder.since, self.holder.owner, time.time())
                self.where.fs.pipe_file(self.where.path, beat.to_json().encode())
            except OSError:
                continue  # the next beat tries again; the lease goes stale only after TIMEOUT

    def check(self) -> None:
        """Stop the run if another took the lease over (this one's heartbeat stalled past TIMEOUT)."""
        if self.lost is not None:
            raise OutputBusy(f"{self.place} was taken over by another run {_who(self.lost)} after this run's "
                             f"lease went {TIMEOUT:.0f} s without a heartbeat; stopping")

    def release(self) -> None:
        self._stop.set()
        self._beat.join()
        if self.lost is None and (current := self._read()) is not None and current.owner == self.holder.owner:
            self.where.remove()


Lease = FileLock | StoreLease
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def acquire(place: Location, wait: bool = False) -> Lease:
    """The lease on ``place``; :class:`~lpdask.errors.OutputBusy` if another run holds it and not
    ``wait``."""
    if place.is_local:
        try:
            return FileLock(place, wait)
        except OSError as exc:
            if exc.errno not in _NO_LOCKS:
                raise
    return StoreLease(place, wait)


class Leases:
    """The leases a run holds; :meth:`check` stops it if one was lost."""

    def __init__(self, held: Sequence[Lease]) -> None:
        self.held = list(held)

    def check(self) -> None:
        for lease in self.held:
            lease.check()


@contextmanager
def hold(places: Sequence[Location], wait: bool = False) -> Iterator[Leases]:
    """Hold the leases on ``places`` (an output, and a work folder that is not beside it) for the
    block; those this call chain already holds are not taken again."""
    held = _held.get({})
    mine = {p.url: held[p.url] for p in places if p.url in held}
    with ExitStack() as stack:
        for place in places:
            if place.url not in mine:
                try:
                    mine[place.url] = lease = acquire(place, wait)
                except OSError as exc:
                    fault = fault_of(exc, f"the folder of {place}", started=False)
                    if fault is not None:
                        raise fault from None
                    raise
                stack.callback(lease.release)
        token = _held.set({**held, **mine})
        try:
            yield Leases(list(mine.values()))
        finally:
            _held.reset(token)
