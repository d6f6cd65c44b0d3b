"""Which forward runs a network's blocks: lpdask's fast kernels (the default) or the eager forward
written as the reference implementation writes it, kept for comparison.

A module takes part by having a ``kernels`` attribute that its forward reads. The fast forward does
the same arithmetic: RRDBNet's dense blocks write each conv's output into one preallocated feature
buffer instead of concatenating their inputs, in the same order, so float32 results are
bit-identical on a CPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from torch import nn

Kernels = Literal["fast", "eager"]
KERNELS: tuple[Kernels, ...] = ("fast", "eager")


def kernels_of(net: nn.Module) -> Kernels | None:
    """The kernels ``net`` runs, or None where no module of it has a choice."""
    return next((m.kernels for m in net.modules() if hasattr(m, "kernels")), None)


def use_kernels(net: nn.Module, kernels: Kernels) -> None:
    """Make every module of ``net`` that has a choice run ``kernels`` (in place)."""
    for module in net.modules():
        if hasattr(module, "kernels"):
            module.kernels = kernels
