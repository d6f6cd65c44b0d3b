"""The one boundary between lpdask and the libraries that parse the files users bring.

A malformed file makes tifffile, zarr, imagecodecs, OpenSlide, bioio and its plugins raise almost
anything (``ZeroDivisionError``, ``RuntimeError``, ``KeyError``...). :func:`reading` turns what such a
library raises into :class:`Unreadable`, one line naming the file and what could not be read; an
exception raised in lpdask's own code is a bug and passes through with its traceback.

The same libraries log what they work around ("invalid offset to first page") and warn. Under
:func:`quiet_libraries` (the command line) those notes are kept here instead of printed: the latest
goes into an :class:`Unreadable` line, and a file opened despite them gets one ``lpdask: warning:``
line (:class:`~lpdask.errors.InputWarning`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import warnings
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from ..errors import InputWarning, LpdaskError

LIBRARIES = ("tifffile", "imagecodecs", "zarr", "numcodecs", "ome_zarr", "openslide", "tiffslide", "bioio",
             "bioio_base", "bioio_czi", "bioio_nd2", "bioio_lif", "bioio_ome_tiff", "pylibCZIrw", "readlif",
             "liffile", "nd2", "ome_types", "rasterio", "PIL", "fsspec", "safetensors")
"""The readers of input files, as module and logger names."""
_LPDASK = str(Path(__file__).resolve().parent.parent) + os.sep
_MAX_REASON = 240


class Unreadable(LpdaskError):
    """A file a reader could not parse: damaged, cut short, or not what its name says. ``noted``: the
    message already says what the reader's notes said."""

    def __init__(self, message: str, noted: bool = False) -> None:
        super().__init__(message)
        self.noted = noted

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        return Unreadable, (str(self), self.noted)


class _Notes(logging.Handler):
    """Keeps the readers' log records and warnings (the last few), numbered, instead of printing them."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.kept: deque[tuple[int, str, str]] = deque(maxlen=64)
        self.count = 0
        self.guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.keep(record.name.split(".")[0], record.getMessage())

    def keep(self, library: str, message: str) -> None:
        with self.guard:
            self.count += 1
            self.kept.append((self.count, library, _first_line(message)))

    def since(self, mark: int) -> list[tuple[str, str]]:
        with self.guard:
            return [(library, message) for number, library, message in self.kept if number > mark]


_notes: _Notes | None = None


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """For the block, the readers' log records and warnings are kept as notes, not printed."""
    global _notes
    loggers = [logging.getLogger(name) for name in LIBRARIES]
    before = [(logger.propagate, logger.level) for logger in loggers]
    outer = _notes
    notes = _notes = _Notes()
    for logger in loggers:
        logger.addHandler(notes)
        logger.propagate = False
        if logger.level == logging.NOTSET or logger.level > logging.WARNING:
            logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        _notes = outer
        for logger, (propagate, level) in zip(loggers, before):
            logger.removeHandler(notes)
            logger.propagate, logger.level = propagate, level


def keep_notes() -> None:
    """From now on in this process (a worker of lpdask's own), the readers' notes are kept, not printed."""
    global _quieting
    if _quieting is None:
        _quieting = quiet_libraries()
        _quieting.__enter__()
        warnings.filterwarnings("ignore", module="|".join(LIBRARIES))


_quieting: contextlib.AbstractContextManager[None] | None = None


def from_library(filename: str) -> str | None:
    """The reader library a source file belongs to, or None."""
    parts = Path(filename).parts
    return next((p for p in reversed(parts) if p in LIBRARIES or p.removesuffix(".py") in LIBRARIES), None)


def keep_warning(message: Warning | str, filename: str) -> bool:
    """Keep a warning raised in a reader library as a note (True), when notes are being kept."""
    library = from_library(filename)
    if _notes is None or library is None:
        return False
    _notes.keep(library, str(message))
    return True


def mark() -> int:
    """The number of notes so far, to ask later which came after."""
    return _notes.count if _notes is not None else 0


def notes_since(mark: int) -> list[tuple[str, str]]:
    """The (library, message) notes kept since ``mark``."""
    return _notes.since(mark) if _notes is not None else []


def latest_note(since: int) -> str:
    """The last note since ``since``, as " (library: message)", or ""."""
    notes = notes_since(since)
    return f" ({notes[-1][0]}: {_short(notes[-1][1])})" if notes else ""


@contextmanager
def reading(path: object, what: str = "it", *, warn: bool = False) -> Iterator[None]:
    """Read ``path`` in the block: an exception a reader library raises (not lpdask's own code)
    becomes one :class:`Unreadable` line, "``path``: cannot read ``what`` (...)". ``warn``: notes the
    readers kept while the block ran without failing become one ``lpdask: warning:`` line."""
    start = mark()
    try:
        yield
    except LpdaskError as exc:
        note = latest_note(start)
        if note and type(exc) in (LpdaskError, Unreadable) and not getattr(exc, "noted", False):
            raise Unreadable(f"{exc}{note}", noted=True) from None  # the reader's note may say why
        raise
    except Exception as exc:
        if raised_by_lpdask(exc.__traceback__):
            raise
        note = latest_note(start)
        raise Unreadable(f"{path}: cannot read {what} ({_reason(exc)}){note}") from None
    if warn and (notes := notes_since(start)):
        library, message = notes[0]
        more = f", and {len(notes) - 1} more note{'s' if len(notes) > 2 else ''}" if len(notes) > 1 else ""
        warnings.warn(InputWarning(f"{path} is damaged or unusual; {library} worked around it: "
                                   f"{_short(message)}{more}"), stacklevel=3)


def raised_by_lpdask(tb: TracebackType | None) -> bool:
    """Whether the innermost frame of ``tb`` is in lpdask's own code (a bug, not a damaged file)."""
    last = None
    while tb is not None:
        last, tb = tb, tb.tb_next
    return last is not None and last.tb_frame.f_code.co_filename.startswith(_LPDASK)


def _reason(exc: BaseException) -> str:
    text = _first_line(str(exc))
    if isinstance(exc, MemoryError):
        return "MemoryError: its sizes ask for more memory than the machine has"
    return _short(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _short(text: str) -> str:
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."
