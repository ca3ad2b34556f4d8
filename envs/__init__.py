"""medgym environments: the world an agent lives in (volumes, datasets, phantoms, envs).

Importing this package registers the Gymnasium ids::

    import gymnasium, envs

    env = gymnasium.make("medgym/LandmarkDetection-v0")
    env = gymnasium.make("medgym/RigidRegistration-v0")
    env = gymnasium.make("medgym/DeformableRegistration-v0")

(``gymnasium.make("envs:medgym/LandmarkDetection-v0")`` imports the package itself.)
"""

from gymnasium.envs.registration import register, registry

__all__ = ["DEFORMABLE_ENV_ID", "LANDMARK_ENV_ID", "RIGID_ENV_ID"]

LANDMARK_ENV_ID = "medgym/LandmarkDetection-v0"
RIGID_ENV_ID = "medgym/RigidRegistration-v0"
DEFORMABLE_ENV_ID = "medgym/DeformableRegistration-v0"

if LANDMARK_ENV_ID not in registry:
    register(id=LANDMARK_ENV_ID, entry_point="envs.tasks:LandmarkEnv", max_episode_steps=50)
if RIGID_ENV_ID not in registry:
    register(id=RIGID_ENV_ID, entry_point="envs.tasks:RigidRegistrationEnv", max_episode_steps=50)
if DEFORMABLE_ENV_ID not in registry:
    register(id=DEFORMABLE_ENV_ID, entry_point="envs.tasks:DeformableRegistrationEnv", max_episode_steps=50)
