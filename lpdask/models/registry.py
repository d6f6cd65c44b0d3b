"""What a network family is, and a registry of them: an ordered list that loads weights with the
first family that recognises them.

Each family is an :class:`Architecture`: how to recognise its weights, how to read the network's
shape from them, how to build that network. A :class:`Registry` loads through one strict loader, so
every family refuses a missing, unexpected or misshapen tensor with the same one-line report. This
module knows no family: the ones lpdask reads are listed in :mod:`lpdask.models.families`, and a
registry with one more is made with :meth:`Registry.with_`, leaving the original unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar, cast

from torch import Tensor, nn

from ..errors import LpdaskError
from .network import Network

State = Mapping[str, Tensor]
C = TypeVar("C")


class ModelConfig(Protocol):
    """A network's shape (:class:`RRDBConfig`, :class:`SRVGGConfig`...): it names its architecture."""

    architecture: ClassVar[str]


@dataclass(frozen=True)
class Architecture(Generic[C]):
    """A network family lpdask can read from a checkpoint.

    name: what messages and the model table call it; unique in a registry.
    detect(state): whether the weights belong to this family, in any layout ``convert`` reads
        (also variants it refuses, so that the refusal says why); asked of every family in turn.
    config(state): the network's shape from the converted weights' shapes; raises KeyError,
        IndexError or ValueError when they fit no network of the family.
    build(config): the network of that shape, with untrained weights.
    convert(state): the weights under the network's own parameter names; None when they are not of
        this family; raises LpdaskError for variants lpdask cannot run. Default: unchanged.
    """

    name: str
    detect: Callable[[State], bool]
    config: Callable[[State], C]
    build: Callable[[C], Network]
    convert: Callable[[State], dict[str, Tensor] | None] = dict


@dataclass(frozen=True)
class Lookalike:
    """Weights that look like ``name``'s (``test``), even where no family loads them: named in a
    refusal as ``(looks like name)``."""

    name: str
    test: Callable[[State], bool]


@dataclass(frozen=True)
class Registry:
    """Network families, tried in order (and named in that order in errors), and the lookalikes
    that refusals name. Immutable: :meth:`with_` returns an extended copy."""

    architectures: tuple[Architecture[Any], ...] = ()
    lookalikes: tuple[Lookalike, ...] = ()

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for architecture in self.architectures:
            if architecture.name in seen:
                raise ValueError(f"an architecture named {architecture.name!r} is already registered")
            seen.add(architecture.name)

    def with_(self, *architectures: Architecture[Any]) -> Registry:
        """A registry that also tries ``architectures``, after these; this one is unchanged."""
        return dataclasses.replace(self, architectures=self.architectures + architectures)

    def __iter__(self) -> Iterator[Architecture[Any]]:
        return iter(self.architectures)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(architecture.name for architecture in self.architectures)

    def get(self, name: str) -> Architecture[Any]:
        """The family called ``name``."""
        found = next((architecture for architecture in self.architectures if architecture.name == name), None)
        if found is None:
            raise LpdaskError(f"unknown architecture {name!r}; known: {', '.join(self.names)}")
        return found

    def detect(self, state: State) -> Architecture[Any] | None:
        """The first family that recognises the weights, or None."""
        return next((architecture for architecture in self.architectures if architecture.detect(state)), None)

    def load(self, state: State, origin: str = "state dict", *, only: str | None = None) -> Network:
        """The network of whichever family the weights belong to (of family ``only`` if given), loaded
        strictly; ``origin`` names the weights in errors."""
        family = self.get(only) if only is not None else self.detect(state)
        if family is None:
            if not self.architectures:
                raise LpdaskError(f"{origin}: no architectures are registered")
            first, *rest = self.names
            either = f"; not {' or '.join(rest)} either" if rest else ""
            raise LpdaskError(f"{self._not_a(first, state, origin)}{either}")
        try:
            converted = family.convert(state)
        except LpdaskError as exc:
            raise LpdaskError(f"{origin}: {exc}") from None
        if converted is None:
            raise LpdaskError(self._not_a(family.name, state, origin))
        try:
            net = family.build(family.config(converted))
        except (KeyError, IndexError, ValueError) as exc:
            raise LpdaskError(f"{origin}: weights do not match {family.name} ({_first_line(exc)})") from None
        return load_strict(net, converted, f"{origin}: weights do not match {family.name}")

    def _not_a(self, name: str, state: State, origin: str) -> str:
        guess = next((lookalike.name for lookalike in self.lookalikes if lookalike.test(state)), None)
        hint = f" (looks like {guess})" if guess else ""
        return f"{origin} is not {_a(name)} checkpoint: {describe_keys(state)}{hint}"


N = TypeVar("N", bound=Network)


def load_strict(net: N, state: State, refusal: str) -> N:
    """Load ``state`` into ``net`` with strict key and shape matching, in eval mode and without
    gradients; else raise ``refusal (why)`` on one line."""
    module = cast(nn.Module, net)
    problem = _mismatch(module.state_dict(), state)
    if problem:
        raise LpdaskError(f"{refusal} ({problem})")
    module.load_state_dict(state, strict=True)
    module.eval().requires_grad_(False)
    return net


def describe_keys(keys: Iterable[str], shown: int = 3) -> str:
    """``found N keys: a, b, c, ...`` on one line, whatever characters the keys hold."""
    keys = [str(k) for k in keys]
    names = [k[:60] if k.isprintable() else ascii(k)[:60] for k in keys[:shown]]
    more = ", ..." if len(keys) > shown else ""
    return f"found {len(keys)} keys: {', '.join(names)}{more}" if keys else "found no keys"


def _mismatch(expected: State, given: State) -> str:
    """Why strict loading would fail, on one line; empty if it would not."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [k for k in expected if k in given and given[k].shape != expected[k].shape]
    parts = [
        f"{what} {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes))
        if keys
    ]
    return "; ".join(parts)


def _a(name: str) -> str:
    """``name`` with its article: an RRDBNet, an SRVGGNetCompact, a SwinIR."""
    spelled = name[:2].isupper() and name[0] in "AEFHILMNORSX"  # an acronym's first letter, read aloud
    return f"{'an' if spelled or name[:1] in 'AEIOUaeiou' else 'a'} {name}"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
