"""Value networks for agents that look at 3-D patches: a conv features extractor and a dueling head.

The observation these networks read is the landmark env's ``spaces.Dict``::

    "patch":    Box(0, 255, (frames, P, P, P), uint8)   axes (frame, z, y, x)
    "landmark": Discrete(n_landmarks)                   which landmark is sought
    "level":    Discrete(n_levels)                      pyramid level (0 = coarsest)

SB3 one-hot-encodes the ``Discrete`` keys before the extractor sees them, but it does NOT divide the
patch by 255: ``is_image_space`` only accepts rank-3 boxes, so a 4-D uint8 box reaches ``forward``
as float 0..255. :class:`VolumeFeatures` therefore normalises itself.

Example:
    >>> import numpy as np
    >>> import torch
    >>> from gymnasium import spaces
    >>> space = spaces.Dict(
    ...     {
    ...         "patch": spaces.Box(0, 255, (1, 25, 25, 25), np.uint8),
    ...         "landmark": spaces.Discrete(4),
    ...         "level": spaces.Discrete(3),
    ...     }
    ... )
    >>> extractor = VolumeFeatures(space, features_dim=64)
    >>> obs = {
    ...     "patch": torch.zeros(2, 1, 25, 25, 25),
    ...     "landmark": torch.eye(4)[[0, 3]],
    ...     "level": torch.eye(3)[[1, 2]],
    ... }
    >>> extractor(obs).shape
    torch.Size([2, 64])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.preprocessing import get_flattened_obs_dim
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, create_mlp
from stable_baselines3.dqn.policies import DQNPolicy, QNetwork
from torch import nn

__all__ = [
    "DuelingDQNPolicy",
    "DuelingQNetwork",
    "VolumeDQNPolicy",
    "VolumeFeatures",
    "set_torch_threads",
]

PATCH_KEY = "patch"


def set_torch_threads(n: int | None = None) -> int:
    """Set the number of intra-op threads torch uses, and return it.

    On a small CPU box, 3-D conv training with several intra-op threads competes with the env and
    the data work for the same cores, so the default on CPU is 1. With CUDA the host threads matter
    little and are left as they are.

    Args:
        n: Thread count; ``None`` means 1 on a CPU-only machine, torch's current setting otherwise.

    Returns:
        The thread count now in force.

    Raises:
        ValueError: If ``n`` is not a positive integer.
    """
    if n is None:
        n = torch.get_num_threads() if torch.cuda.is_available() else 1
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"torch_threads: expected a positive integer or None, got {n!r}")
    torch.set_num_threads(n)
    return torch.get_num_threads()


def _check_patch_space(observation_space: spaces.Space) -> spaces.Box:
    if not isinstance(observation_space, spaces.Dict) or PATCH_KEY not in observation_space.spaces:
        raise ValueError(
            f"observation_space: expected a spaces.Dict with a {PATCH_KEY!r} key, got {observation_space}"
        )
    patch_space = observation_space[PATCH_KEY]
    if not isinstance(patch_space, spaces.Box) or len(patch_space.shape) != 4:
        raise ValueError(
            f"observation_space[{PATCH_KEY!r}]: expected a Box of shape (frames, P, P, P), got {patch_space}"
        )
    return patch_space


class VolumeFeatures(BaseFeaturesExtractor):
    """3-D conv features for a Dict observation of uint8 patches plus one-hot context.

    The patch goes through a batch-norm-free Conv3d + ReLU stack (batch norm and DQN's target network
    do not mix well) and is flattened; every other key (SB3 has already one-hot-encoded the Discrete
    ones) is flattened and concatenated to it, and the joint vector goes through one linear + ReLU
    layer, so the features can depend on which landmark and level are sought.

    Args:
        observation_space: ``spaces.Dict`` with ``"patch"`` of shape (frames, P, P, P) and any number of
            other (Discrete, MultiBinary or 1-D Box) keys.
        features_dim: Size of the output feature vector.
        channels: Output channels of each conv layer.
        kernel_sizes: Kernel edge of each conv layer (same length as ``channels``).
        strides: Stride of each conv layer (same length as ``channels``); a strided first layer keeps
            the cost of a 25^3 or 45^3 patch low.
        channels_last: Run the convs in ``torch.channels_last_3d`` memory format (default: contiguous;
            which is faster depends on the network and the machine: ``bench/bench_agents.py`` measures).

    Raises:
        ValueError: If the space has no 4-D ``"patch"`` box, the layer lists disagree in length, or the
            patch is too small for the conv stack.

    Shapes:
        forward input: ``{"patch": (B, frames, P, P, P) float in 0..255, key: (B, ...) float}``;
        output: ``(B, features_dim)``.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        features_dim: int = 256,
        channels: Sequence[int] = (16, 32, 32),
        kernel_sizes: Sequence[int] = (5, 3, 3),
        strides: Sequence[int] = (2, 2, 1),
        channels_last: bool = False,
    ) -> None:
        patch_space = _check_patch_space(observation_space)
        super().__init__(observation_space, features_dim)
        channels, kernel_sizes, strides = tuple(channels), tuple(kernel_sizes), tuple(strides)
        if not channels or not len(channels) == len(kernel_sizes) == len(strides):
            raise ValueError(
                "VolumeFeatures: channels, kernel_sizes and strides must be non-empty and of equal length, "
                f"got {channels}, {kernel_sizes}, {strides}"
            )
        self.memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
        self.vector_keys = sorted(key for key in observation_space.spaces if key != PATCH_KEY)

        layers: list[nn.Module] = []
        in_channels = patch_space.shape[0]
        for out_channels, kernel, stride in zip(channels, kernel_sizes, strides, strict=True):
            layers += [nn.Conv3d(in_channels, out_channels, kernel, stride), nn.ReLU()]
            in_channels = out_channels
        layers.append(nn.Flatten())
        self.conv = nn.Sequential(*layers).to(memory_format=self.memory_format)

        # The flatten size depends on P, kernels and strides: measure it instead of deriving it by hand.
        with torch.no_grad():
            dummy = torch.zeros((1, *patch_space.shape)).to(memory_format=self.memory_format)
            try:
                self.conv_flat_dim = int(self.conv(dummy).shape[1])
            except RuntimeError as error:
                raise ValueError(
                    f"VolumeFeatures: patch shape {patch_space.shape} is too small for kernels "
                    f"{kernel_sizes} "
                    f"with strides {strides}; use fewer or smaller layers ({error})"
                ) from error
        self.vector_dim = sum(get_flattened_obs_dim(observation_space[key]) for key in self.vector_keys)
        self.head = nn.Sequential(nn.Linear(self.conv_flat_dim + self.vector_dim, features_dim), nn.ReLU())

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        """Features of a batch of observations.

        Args:
            observations: ``"patch"`` (B, frames, P, P, P) in 0..255 (any dtype) and the other keys as
                SB3's preprocessing leaves them (one-hot floats, shape (B, n) or (B, 1, n)).

        Returns:
            Features of shape (B, features_dim).
        """
        # uint8 -> [0, 1] here because SB3 does not scale 4-D boxes (see module docstring).
        patch = observations[PATCH_KEY].float().div(255.0).contiguous(memory_format=self.memory_format)
        parts = [self.conv(patch)]
        batch = patch.shape[0]
        parts += [observations[key].float().reshape(batch, -1) for key in self.vector_keys]
        return self.head(torch.cat(parts, dim=1))


class DuelingQNetwork(QNetwork):
    """Dueling Q-network (Wang et al. 2016): Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a').

    Subtracting the mean advantage makes V and A identifiable: mean_a Q(s, a) == V(s).

    Args:
        observation_space: Observation space.
        action_space: Discrete action space with n actions.
        features_extractor: Shared features extractor (e.g. :class:`VolumeFeatures`).
        features_dim: Output size of the extractor.
        net_arch: Hidden layer sizes of EACH stream (value and advantage); ``[]`` means linear streams.
        activation_fn: Activation between hidden layers.
        normalize_images: Passed to SB3 (has no effect on 4-D patches).
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Discrete,
        features_extractor: BaseFeaturesExtractor,
        features_dim: int,
        net_arch: list[int] | None = None,
        activation_fn: type[nn.Module] = nn.ReLU,
        normalize_images: bool = True,
    ) -> None:
        super().__init__(
            observation_space,
            action_space,
            features_extractor,
            features_dim,
            net_arch,
            activation_fn,
            normalize_images,
        )
        # The parent built a single-stream head; replace it so no unused parameters are optimised.
        del self.q_net
        n_actions = int(self.action_space.n)
        self.value_stream = nn.Sequential(*create_mlp(features_dim, 1, self.net_arch, activation_fn))
        self.advantage_stream = nn.Sequential(
            *create_mlp(features_dim, n_actions, self.net_arch, activation_fn)
        )

    def streams(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Value and advantage streams before they are combined.

        Args:
            obs: A batch of (unpreprocessed) observations as SB3 passes them.

        Returns:
            ``(value (B, 1), advantage (B, n_actions))``.
        """
        features = self.extract_features(obs, self.features_extractor)
        return self.value_stream(features), self.advantage_stream(features)

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Q-values of shape (B, n_actions)."""
        value, advantage = self.streams(obs)
        return value + advantage - advantage.mean(dim=1, keepdim=True)


class VolumeDQNPolicy(DQNPolicy):
    """SB3 ``DQNPolicy`` for the patch Dict space, with :class:`VolumeFeatures` as default extractor."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("features_extractor_class", VolumeFeatures)
        super().__init__(*args, **kwargs)


class DuelingDQNPolicy(VolumeDQNPolicy):
    """SB3 ``DQNPolicy`` whose online and target networks are :class:`DuelingQNetwork`.

    Only ``make_q_net`` changes, so SB3's save/load, target updates and ``predict`` work unchanged.
    """

    q_net: DuelingQNetwork
    q_net_target: DuelingQNetwork

    def make_q_net(self) -> DuelingQNetwork:
        # A fresh extractor per network, as in SB3: the target must not share weights with the online net.
        net_args = self._update_features_extractor(self.net_args, features_extractor=None)
        return DuelingQNetwork(**net_args).to(self.device)
