"""The network families lpdask reads from weights alone, tried in the order they register.

Each family is an :class:`Architecture`: how to recognise its weights, how to read the network's
shape from them, how to build that network. Loading goes through one strict loader, so every family
refuses a missing, unexpected or misshapen tensor with the same one-line report. RRDBNet and
SRVGGNetCompact register themselves when their modules are imported; other families can be added
with :func:`register`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar, cast

from torch import Tensor, nn

from ..errors import LpdaskError
from .layouts import describe_keys, looks_like
from .network import Network

State = Mapping[str, Tensor]
C = TypeVar("C")


class ModelConfig(Protocol):
    """A network's shape (:class:`RRDBConfig`, :class:`SRVGGConfig`...): it names its architecture."""

    architecture: ClassVar[str]


@dataclass(frozen=True)
class Architecture(Generic[C]):
    """A network family lpdask can read from a checkpoint.

    name: what messages and the model table call it, and the key it registers under.
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

    def load(self, state: State, origin: str = "state dict") -> Network:
        """The network these weights belong to, loaded strictly; ``origin`` names them in errors."""
        try:
            converted = self.convert(state)
        except LpdaskError as exc:
            raise LpdaskError(f"{origin}: {exc}") from None
        if converted is None:
            raise LpdaskError(f"{origin} is not {_a(self.name)} checkpoint: {describe_keys(state)}{_hint(state)}")
        try:
            net = self.build(self.config(converted))
        except (KeyError, IndexError, ValueError) as exc:
            raise LpdaskError(f"{origin}: weights do not match {self.name} ({_first_line(exc)})") from None
        return load_strict(net, converted, f"{origin}: weights do not match {self.name}")


_ARCHITECTURES: dict[str, Architecture[Any]] = {}


def register(architecture: Architecture[C]) -> Architecture[C]:
    """Add a family, tried after those already registered; returns it. A name may register once."""
    known = _ARCHITECTURES.get(architecture.name)
    if known is not None and known is not architecture:
        raise ValueError(f"an architecture named {architecture.name!r} is already registered")
    _ARCHITECTURES[architecture.name] = architecture
    return architecture


def unregister(name: str) -> None:
    """Remove the family registered as ``name``."""
    if name not in _ARCHITECTURES:
        raise KeyError(f"no architecture named {name!r} is registered")
    del _ARCHITECTURES[name]


def architectures() -> tuple[Architecture[Any], ...]:
    """The registered families, in the order they are tried."""
    return tuple(_ARCHITECTURES.values())


def get(name: str) -> Architecture[Any]:
    """The family registered as ``name``."""
    if name not in _ARCHITECTURES:
        raise LpdaskError(f"unknown architecture {name!r}; known: {', '.join(_ARCHITECTURES)}")
    return _ARCHITECTURES[name]


def detect(state: State) -> Architecture[Any] | None:
    """The first registered family that recognises the weights, or None."""
    return next((arch for arch in _ARCHITECTURES.values() if arch.detect(state)), None)


def load(state: State, origin: str = "state dict") -> Network:
    """The network of whichever registered family the weights belong to, loaded strictly."""
    architecture = detect(state)
    if architecture is not None:
        return architecture.load(state, origin)
    if not _ARCHITECTURES:
        raise LpdaskError(f"{origin}: no architectures are registered")
    first, *rest = _ARCHITECTURES
    either = f"; not {' or '.join(rest)} either" if rest else ""
    raise LpdaskError(f"{origin} is not {_a(first)} checkpoint: {describe_keys(state)}{_hint(state)}{either}")


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


def _hint(state: State) -> str:
    guess = looks_like(state)
    return f" (looks like {guess})" if guess else ""


def _a(name: str) -> str:
    """``name`` with its article: an RRDBNet, an SRVGGNetCompact, a SwinIR."""
    spelled = name[:2].isupper() and name[0] in "AEFHILMNORSX"  # an acronym's first letter, read aloud
    return f"{'an' if spelled or name[:1] in 'AEIOUaeiou' else 'a'} {name}"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
