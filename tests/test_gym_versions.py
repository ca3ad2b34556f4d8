"""The Gymnasium this run imports: the one ``make test`` means to test (the pinned 1.2.2 or the newest 1.x).

``make test`` runs a few env / API / training tests a second time with the newest Gymnasium 1.x
installed apart (``.venv/gym-latest``, put first on ``PYTHONPATH``) and
``MEDGYM_GYMNASIUM_VERSION`` naming it: this test fails if that pass silently imported another one.
"""

from __future__ import annotations

import os
from importlib import metadata

import gymnasium
import pytest


def test_gymnasium_is_the_version_this_pass_tests() -> None:
    expected = os.environ.get("MEDGYM_GYMNASIUM_VERSION")
    if expected is not None:
        assert gymnasium.__version__ == expected, gymnasium.__file__
    else:  # the main pass: the installed distribution, within the project's range (>=1.0,<2)
        assert gymnasium.__version__ == metadata.version("gymnasium")
        major, minor = (int(part) for part in gymnasium.__version__.split(".")[:2])
        assert (major, minor) >= (1, 0)
        assert major < 2


@pytest.mark.skipif("MEDGYM_GYMNASIUM_VERSION" not in os.environ, reason="compatibility pass only")
def test_the_envs_register_under_this_gymnasium() -> None:
    import envs

    spec = gymnasium.spec(envs.LANDMARK_ENV_ID)
    assert spec.id == envs.LANDMARK_ENV_ID
