"""Progress bars: chunks done of total for the running stage, and the whole job with its ETA."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tqdm.auto import tqdm

from .stages import Stage


class Bars:
    """One bar for the job (weighted by each stage's estimated cost) and one per stage."""

    def __init__(self, stages: Sequence[Stage], chunks: int, disable: bool = False) -> None:
        self.weights = [_cost(stage) for stage in stages]
        self.stages = stages
        self.job = tqdm(total=sum(self.weights) * chunks, desc="job", unit="work",
                        disable=disable, position=0, bar_format=
                        "{desc:<22}{percentage:3.0f}%|{bar}| {elapsed}<{remaining}")
        self.disable = disable
        self.stage: tqdm | None = None

    def __call__(self, index: int, stage: Stage, chunks: int) -> Callable[[], None]:
        if self.stage is not None:
            self.stage.close()
        label = f"stage {index + 1}/{len(self.stages)} {stage.name}"
        self.stage = tqdm(total=chunks, desc=f"{label:<22}", unit="chunk", leave=False,
                          disable=self.disable, position=1)
        step = self.weights[index]

        def tick() -> None:
            assert self.stage is not None
            self.stage.update(1)
            self.job.update(step)

        return tick

    def close(self) -> None:
        if self.stage is not None:
            self.stage.close()
        self.job.close()


def _cost(stage: Stage) -> int:
    """Multiply-adds per input pixel, roughly (in thousands): parameters times output area factor."""
    params = sum(p.numel() for p in stage.module.parameters())
    return max(1, round(params * stage.scale**2 / 1000))
