"""The network families lpdask reads from weights alone, listed once, in the order they are tried.

:data:`REGISTRY` is the list every checkpoint is loaded with unless a caller passes another; a
family of one's own is added to a copy, ``REGISTRY.with_(Architecture(...))``. Importing a family's
module registers nothing: only this list decides which families load and in what order.
"""

from __future__ import annotations

from . import rrdbnet, srvgg
from .registry import Lookalike, Registry, State


def _swinir(state: State) -> bool:
    return any(".residual_group." in key for key in state)


def _edsr(state: State) -> bool:
    return "head.0.weight" in state and any(key.startswith("tail.") for key in state)


REGISTRY = Registry(
    architectures=(rrdbnet.ARCHITECTURE, srvgg.ARCHITECTURE),
    lookalikes=(srvgg.LOOKALIKE, Lookalike("SwinIR or a relative", _swinir), Lookalike("EDSR or RCAN", _edsr)),
)
"""RRDBNet, then SRVGGNetCompact; refusals name the families lpdask cannot run that weights look like."""
