"""medgym environments: the world an agent lives in (volumes, datasets, phantoms, envs).

Importing this package registers the Gymnasium ids::

    import gymnasium, envs

    env = gymnasium.make("medgym/LandmarkDetection-v0")

(``gymnasium.make("envs:medgym/LandmarkDetection-v0")`` imports the package itself.)
"""

from gymnasium.envs.registration import register, registry

__all__ = ["LANDMARK_ENV_ID"]

LANDMARK_ENV_ID = "medgym/LandmarkDetection-v0"

if LANDMARK_ENV_ID not in registry:
    register(id=LANDMARK_ENV_ID, entry_point="envs.landmark:LandmarkEnv", max_episode_steps=50)
