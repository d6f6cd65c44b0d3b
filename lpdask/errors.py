"""Errors that are the user's to fix, and faults of the machine met while running.

The CLI prints each as one ``lpdask: error:`` line and exits with its ``exit_code``; only a bug prints
a traceback (exit 1).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

USAGE = 2
"""Bad input, options or output place; the output is in use by another run."""
NO_SPACE = 3
NOT_WRITABLE = 4
INPUT_CHANGED = 5
INTERRUPTED = 130
"""SIGINT; SIGTERM exits 128 + 15 = 143, as a shell reports it."""
TERMINATED = 143

RESUMES = "run the same command again to resume"


class LpdaskError(Exception):
    """A problem with the input, the options or the output path, explained in one line."""

    exit_code = USAGE


class OutputBusy(LpdaskError):
    """Another run holds the output's lease."""


class Fault(LpdaskError):
    """A fault met while running (disk full, a place not writable, the input changed): the chunks
    already finished are kept, so the run can go on once it is fixed."""


class NoSpace(Fault):
    exit_code = NO_SPACE


class NotWritable(Fault):
    exit_code = NOT_WRITABLE


class InputChanged(Fault):
    exit_code = INPUT_CHANGED


class MetadataWarning(UserWarning):
    """Input metadata that the output cannot carry, named so nothing is dropped silently."""


class InputWarning(UserWarning):
    """An input file that its reader could read only by working around damage or oddities."""


class PlanWarning(UserWarning):
    """No plan keeps within the memory budget; the one needing the least memory runs."""


class LeaseWarning(UserWarning):
    """An earlier run's lease was taken over, or this run waits for another's to end."""


_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


def fault_of(exc: BaseException, place: str, *, started: bool, need: str = "") -> Fault | None:
    """The one-line fault for an ``OSError`` met writing to ``place`` (None for other errors).

    ``started``: finished work may already be kept, so say how to go on; ``need``: how much space
    the job needs there, in words.
    """
    if not isinstance(exc, OSError):
        return None
    then = f", then {RESUMES}" if started else ""
    if exc.errno in _NO_SPACE:
        needs = f" (the job needs about {need} there)" if need else ""
        return NoSpace(f"no space left on the disk of {place}{needs}; free some space{then}")
    if exc.errno in _NOT_WRITABLE:
        why = "read-only file system" if exc.errno == errno.EROFS else "permission denied"
        fix = f"make it writable{then}" if started else "choose a place you can write to"
        return NotWritable(f"cannot write to {place} ({why}); {fix}")
    return None


@contextmanager
def writing(place: object) -> Iterator[None]:
    """Tag an ``OSError`` raised in the block with the place it was writing to, for :func:`fault_of`'s
    caller (the tag survives pickling, so it comes back from cluster workers too)."""
    try:
        yield
    except OSError as exc:
        if not getattr(exc, "lpdask_place", None):
            exc.lpdask_place = str(place)  # type: ignore[attr-defined]
        raise


class _Names(dict):  # type: ignore[type-arg]
    """Other options named in a message (``{scheduler}``): as parameters, or as flags."""

    def __init__(self, flags: bool) -> None:
        super().__init__()
        self.flags = flags

    def __missing__(self, name: str) -> str:
        return flag(name) if self.flags else name


def flag(option: str) -> str:
    return "--" + option.replace("_", "-")


class OptionError(LpdaskError):
    """A bad option value. ``detail`` may name other options as ``{name}``."""

    def __init__(self, option: str, value: object, detail: str, shown: str | None = None) -> None:
        self.option, self.value, self.detail = option, value, detail
        self.shown = str(value) if shown is None else shown
        super().__init__(f"{option}={self.shown} {detail.format_map(_Names(flags=False))}")

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        return OptionError, (self.option, self.value, self.detail, self.shown)

    def for_cli(self) -> str:
        """The message with the command line's flags."""
        return f"{flag(self.option)} {self.shown} {self.detail.format_map(_Names(flags=True))}"
