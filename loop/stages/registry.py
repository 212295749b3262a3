"""The stages of a round, in order: each one's name, module, and the tables it reads and writes.

The controller creates a round's stages in this order and `engine/stage_main.py` runs a stage by loading
its module from here. `writes` are the tables the module's own SQL writes, `reads` those it reads,
itself or through the helpers in base.py and common.py (questions, round_questions, adapters); a test
checks both against the module's SQL. Besides, every stage reads its round and stage rows through
`StageContext`, and records its progress and its end in `stages` (and, for train and promote, its result
in `rounds`) only through `sealong.store.state`. Stage modules are imported when run, never here: loading
the registry costs nothing.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class StageSpec:
    name: str
    module: str  # its import path; the module has `run(ctx)` (and `run_replica` if data-parallel)
    reads: frozenset[str]
    writes: frozenset[str]

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


def _stage(name: str, reads: set[str], writes: set[str]) -> StageSpec:
    return StageSpec(name, f"sealong.loop.stages.{name}", frozenset(reads), frozenset(writes))


STAGES: tuple[StageSpec, ...] = (
    _stage(
        "sample",
        reads={"questions", "round_questions", "samples", "greedy", "adapters"},
        writes={"samples", "greedy"},
    ),
    _stage("score", reads={"samples"}, writes={"samples", "sample_scores"}),
    _stage(
        "pairs",
        reads={"questions", "samples", "sample_scores", "greedy"},
        writes={"pairs", "diagnostics"},
    ),
    _stage(
        "train",
        reads={"questions", "samples", "greedy", "pairs", "adapters"},
        writes={"train_steps", "adapters"},
    ),
    _stage("eval", reads={"questions", "evals", "adapters"}, writes={"evals"}),
    _stage("promote", reads={"questions", "evals", "adapters"}, writes={"adapters"}),
)
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)


def stage_spec(name: str) -> StageSpec:
    """The stage called `name`; KeyError naming the known stages for any other name."""
    for spec in STAGES:
        if spec.name == name:
            return spec
    raise KeyError(f"no stage {name!r}; the stages are {', '.join(STAGE_NAMES)}")
