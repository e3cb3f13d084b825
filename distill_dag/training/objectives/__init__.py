"""The training objectives by name; `training.objective` selects one.

An objective is one module here (a subclass of `base.Objective`: the tables it reads, how its
records are checked and tokenized, the trainer it builds, what it adds to the run key, and its
own Settings, if any, at ``training.<name>``) plus its line in OBJECTIVES below.
"""

from __future__ import annotations

from distill_dag.configbase import ConfigError
from distill_dag.training.objectives.base import (
    Objective,
    ObjectiveData,
    ObjectiveInputs,
    TrainerJob,
)
from distill_dag.training.objectives.kd import KD
from distill_dag.training.objectives.on_policy import OnPolicy
from distill_dag.training.objectives.redi import REDI
from distill_dag.training.objectives.sft import SFT

OBJECTIVES: dict[str, Objective] = {objective.name: objective for objective in (
    SFT(),
    KD(),
    OnPolicy(),
    REDI(),
)}

__all__ = ["OBJECTIVES", "Objective", "ObjectiveData", "ObjectiveInputs", "TrainerJob",
           "get_objective"]


def get_objective(name: str) -> Objective:
    """The registered objective called `name`, or a ConfigError listing the known ones."""
    try:
        return OBJECTIVES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"objective must be one of {sorted(OBJECTIVES)}, got {name!r}") from None
