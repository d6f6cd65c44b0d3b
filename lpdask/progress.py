"""Progress bars: chunks done of total for the running stage, and the whole job with its ETA."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tqdm.auto import tqdm

from .stages import Stage


class Bars:
    """One bar for the job (every run's stages weighted by their estimated cost) and one per stage.

    A job is one or more runs (a plane and channel pass each), each a list of stages.
    """

    def __init__(self, runs: Sequence[Sequence[Stage]], chunks: int, disable: bool = False) -> None:
        self.runs = [[_cost(stage) for stage in stages] for stages in runs]
        self.job = tqdm(total=sum(sum(w) for w in self.runs) * chunks, desc="job", unit="work",
                        disable=disable, position=0, bar_format=
                        "{desc:<22}{percentage:3.0f}%|{bar}| {elapsed}<{remaining}")
        self.disable = disable
        self.chunks = chunks
        self.stage: tqdm | None = None
        self.run, self.label = 0, ""

    def start(self, run: int, label: str = "") -> None:
        """Begin run number ``run``; ``label`` names its plane and channels."""
        self.run, self.label = run, label

    def __call__(self, index: int | None, stage: Stage, chunks: int) -> Callable[[], None]:
        """The tick of stage ``index`` (None: every stage at once, as streaming runs them), done in
        ``chunks`` steps."""
        if self.stage is not None:
            self.stage.close()
        weights = self.runs[self.run]
        if index is None:
            label = f"{self.label + ' ' if self.label else ''}all {len(weights)} stages"
            unit, step = "strip", sum(weights) * self.chunks / max(1, chunks)
        else:
            label = f"{self.label + ' ' if self.label else ''}stage {index + 1}/{len(weights)} {stage.name}"
            unit, step = "chunk", weights[index]
        self.stage = tqdm(total=chunks, desc=f"{label:<22}", unit=unit, leave=False,
                          disable=self.disable, position=1)

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
