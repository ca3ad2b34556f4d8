"""Random frames of self pairs (``frame_motion``, ``frame_scale``, ``frame_elastic_mm``): the fixed
volume changes from variant to variant, the moving copy follows it exactly."""

from __future__ import annotations

import numpy as np
import pytest

from agents.experiments.config import ConfigError, RigidEnvConfig
from envs.core import apply_rigid
from envs.data import Dataset
from envs.phantom import PhantomConfig, phantom_dataset
from envs.tasks import UNIT, RigidRegistrationEnv, RigidWorld

SMALL = {
    "levels_mm": (8.0, 4.0),
    "obs_size": 17,
    "translation_steps_mm": (6.0, 0.5),
    "rotation_steps_deg": (6.0, 0.5),
}
FRAME = {"frame_motion": (15.0, 20.0), "frame_scale": 0.08, "frame_elastic_mm": 3.0}


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return phantom_dataset(2, 0, 0, seed=4, config=PhantomConfig(spacing_mm=4.0))


def _mismatch(world: RigidWorld, pair, params: np.ndarray, level: int = 1) -> float:
    patch = world.observation(pair, level, np.rint(params * UNIT))["patch"].astype(float)
    inside = (patch[0] > 0) & (patch[1] > 0)
    return float(np.abs(patch[0] - patch[1])[inside].mean())


def test_framed_fixed_volume_differs_per_variant_and_the_copy_follows_it(dataset: Dataset) -> None:
    plain = RigidWorld(dataset, "train", variants_per_case=3, contrast="same", **SMALL)
    framed = RigidWorld(dataset, "train", variants_per_case=3, contrast="same", **SMALL, **FRAME)
    # Variant 0 is the case itself in both; later variants move the fixed volume.
    assert np.array_equal(framed.pair(0).fixed.levels[1].voxels, plain.pair(0).fixed.levels[1].voxels)
    for index in (1, 2):
        a, b = plain.pair(index), framed.pair(index)
        changed = np.abs(a.fixed.levels[1].voxels.astype(float) - b.fixed.levels[1].voxels).mean()
        assert changed > 5.0, "the frame did not move the fixed volume"
        # The truth, its noise and crops are the same draws with or without a frame.
        np.testing.assert_allclose(a.truth, b.truth, atol=1e-9)
        # At the truth the moving copy lies on the framed fixed volume; 8 mm / 6 degrees off it does not.
        off = b.truth + np.array([8.0, 0, 0, 0, 6.0, 0])
        assert _mismatch(framed, b, b.truth) < 0.4 * _mismatch(framed, b, off)
        assert framed.errors_mm(b, np.rint(b.truth * UNIT))[0] < 0.01
        # Control points are moved by the truth about the framed body centre.
        np.testing.assert_allclose(
            apply_rigid(b.truth, b.center_lps_mm, b.control_fixed_lps_mm), b.control_moving_lps_mm, atol=1e-6
        )


def test_two_framed_variants_see_the_case_in_different_frames(dataset: Dataset) -> None:
    world = RigidWorld(dataset, "train", variants_per_case=3, **SMALL, **FRAME)
    one, two = world.pair(1).fixed_patches[0], world.pair(2).fixed_patches[0]
    assert np.abs(one.astype(float) - two).mean() > 5.0
    again = RigidWorld(dataset, "train", variants_per_case=3, **SMALL, **FRAME).pair(1).fixed_patches[0]
    assert np.array_equal(one, again), "a framed variant must be deterministic in the seed"


def test_framed_env_oracle_still_reaches_the_truth(dataset: Dataset) -> None:
    env = RigidRegistrationEnv(dataset, "train", schedule="coarse", variants_per_case=2, **SMALL, **FRAME)
    base = env.unwrapped
    _, info = env.reset(
        seed=0,
        options={"case_id": base.world.cases[0].case_id, "variant": 1, "offset": [10, -8, 6, 8, -6, 5]},
    )
    assert info["error_mm"] > 5.0
    for _ in range(400):  # greedy on the true error, coarse to fine
        rewards = base.world.candidate_rewards(base._pair, base._level, base._params)
        _, _, terminated, _, info = env.step(int(np.argmax(rewards)))
        if terminated:
            break
    assert info["error_mm"] < 1.0


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"frame_motion": (-1.0, 0.0)}, "frame_motion"),
        ({"frame_scale": 0.6}, "frame_scale"),
        ({"frame_elastic_mm": 2.0, "pairing": "landmarks"}, "pairing"),
    ],
)
def test_bad_frames_are_refused_naming_the_field(dataset: Dataset, overrides: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RigidWorld(dataset, "train", **SMALL, **overrides)
    with pytest.raises(ConfigError, match="frame_"):
        RigidEnvConfig(**overrides)


def test_config_passes_the_frame_to_the_world() -> None:
    kwargs = RigidEnvConfig(frame_motion=(10.0, 30.0), frame_scale=0.1, frame_elastic_mm=2.0).world_kwargs()
    assert (kwargs["frame_motion"], kwargs["frame_scale"], kwargs["frame_elastic_mm"]) == (
        (10.0, 30.0),
        0.1,
        2.0,
    )
