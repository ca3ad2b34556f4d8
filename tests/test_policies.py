"""QNetworkPolicy: one network's Q-values, or the mean of an ensemble's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agents.search import QNetworkPolicy


class LinearPolicy:
    """The part of a stable-baselines3 DQN policy that QNetworkPolicy uses: Q = patch-sum x w."""

    def __init__(self, weights: list[float]) -> None:
        self.weights = torch.tensor(weights, dtype=torch.float32)
        self.training = True

    def set_training_mode(self, mode: bool) -> None:
        self.training = mode

    def obs_to_tensor(self, observations: dict) -> tuple[dict, bool]:
        return {key: torch.as_tensor(value) for key, value in observations.items()}, True

    def q_net(self, tensor: dict) -> torch.Tensor:
        totals = tensor["patch"].float().flatten(1).sum(dim=1, keepdim=True)
        return totals * self.weights


def test_one_network_and_the_mean_of_an_ensemble() -> None:
    observations = {"patch": np.array([[[1, 2]], [[3, 4]]], np.uint8), "level": np.array([0, 1])}
    first, second = LinearPolicy([1.0, -1.0, 0.5]), LinearPolicy([3.0, 1.0, 0.5])
    single = QNetworkPolicy(first)(observations)
    np.testing.assert_allclose(single, [[3.0, -3.0, 1.5], [7.0, -7.0, 3.5]])
    assert single.dtype == np.float64
    ensemble = QNetworkPolicy([first, second])(observations)
    np.testing.assert_allclose(ensemble, [[6.0, 0.0, 1.5], [14.0, 0.0, 3.5]])
    assert not first.training
    assert not second.training
    with pytest.raises(ValueError, match="non-empty list"):
        QNetworkPolicy([])
