"""Ensembles: several trained runs searched as one agent (``evaluate.py RUN1 RUN2 ... --ensemble``).

At every step of a search the members' networks score the same observations and their Q-values
are averaged (:class:`agents.search.QNetworkPolicy` over a list of policies). Networks of other
training seeds err in different directions on a scan none of them saw; their mean errs less
(held-out real CTs: each seed alone 10-50 % of registrations below 2 mm at +-15 mm/deg, the
three together 90 %; README). The cost is one forward pass per member.

Members must see the same observations and take the same actions: the settings in
:data:`SHARED` (and, for landmark runs, the landmark order) must match; their networks,
training data and augmentation may differ. The first run supplies the search settings, the
data and (landmark runs) the shape check.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from agents.checkpoints import load_policy
from agents.experiments.loading import to_mapping
from agents.experiments.runs import Run

__all__ = ["SHARED", "describe", "ensemble_of", "load_policies"]

SHARED: dict[str, tuple[str, ...]] = {
    "landmark": ("levels_mm", "patch_size", "frames", "preset"),
    "rigid": ("levels_mm", "obs_size", "translation_steps_mm", "rotation_steps_deg", "observation", "preset"),
}
"""per task, the ``env`` settings that define a network's observations and actions"""


def ensemble_of(runs: list[Run]) -> Run:
    """One run standing for ``runs`` as an ensemble (the first, with the others as its members).

    Raises:
        ValueError: fewer than two runs, a task without ensembles (SDM runs each fit their own
            deformation model, so their actions differ), or members whose observations or
            actions differ from the first run's (naming the setting and both values).
    """
    if len(runs) < 2:
        raise ValueError(f"--ensemble: expected two or more run folders, got {len(runs)}")
    first = runs[0]
    task = first.experiment.task
    if task not in SHARED:
        raise ValueError(
            f"--ensemble: {task} runs cannot be ensembled (each SDM run fits its own deformation model, "
            "so the same action moves differently); ensemble landmark or rigid runs"
        )
    reference = to_mapping(first.experiment)["env"]
    for run in runs[1:]:
        env = to_mapping(run.experiment)["env"]
        for key in SHARED[task]:
            if env.get(key) != reference.get(key):
                raise ValueError(
                    f"--ensemble: run {run.path} has env.{key}={env.get(key)}, but run {first.path} has "
                    f"{reference.get(key)}; the networks of an ensemble must see the same observations and "
                    "take the same actions: ensemble runs of one config (e.g. other seeds)"
                )
        if task == "landmark" and run.landmark_names() != first.landmark_names():
            raise ValueError(
                f"--ensemble: run {run.path} finds landmarks {run.landmark_names()}, run {first.path} "
                f"{first.landmark_names()}; ensemble runs trained on the same landmarks"
            )
    return dataclasses.replace(first, members=tuple(runs[1:]))


def load_policies(run: Run, spaces: Any) -> list[Any]:
    """The run's network and its ensemble members' (one for a plain run), for
    :class:`agents.search.QNetworkPolicy`; ``spaces`` as :func:`agents.checkpoints.load_policy` takes."""
    return [load_policy(path, spaces) for path in run.policy_paths()]


def describe(run: Run) -> str:
    """The run's folder name, with its ensemble members' (for titles and messages)."""
    if not run.members:
        return run.path.name
    return f"ensemble of {run.path.name} + " + " + ".join(member.path.name for member in run.members)
