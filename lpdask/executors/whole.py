"""The whole network on each chunk: one stage whose halo is the network's full reach, so nothing is
stored between stages. It runs as the staged executor does, with that one stage."""

from __future__ import annotations

from ..models.network import Network
from ..plan import Plan
from ..stages import Stage
from .staged import Staged, whole_stages


class Whole(Staged):
    """The staged executor over :func:`~lpdask.executors.staged.whole_stages`."""

    name = "whole"

    def stages(self, net: Network, plan: Plan, mode: str, tile_pad: int) -> list[Stage]:
        return whole_stages(net)

    def scratch_bytes(self, stages: list[Stage], height: int, width: int, input_factor: int, itemsize: int) -> int:
        return 0

    def priced_stages(self, net: Network, blocks_per_stage: int | None) -> list[tuple[int, list[Stage]]]:
        return [(0, whole_stages(net))] if not blocks_per_stage else []


EXECUTOR = Whole()
