# `make train` and `make test` each create/refresh the virtualenv they need.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
ARGS   ?=

.PHONY: install train test benchmark clean

$(STAMP): setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,fast,ray,tensorboard,dmc]"
	touch $(STAMP)

install: $(STAMP)

## train: the main job, PPO on MuJoCo Hopper (1M steps); extra options via ARGS="--seeds 3 ..."
train: $(STAMP)
	$(VENV)/bin/ppo train hopper $(ARGS)

## test: the whole test suite (what CI runs)
test: $(STAMP)
	$(PY) -m pytest $(ARGS)

## benchmark: learning quality, Hopper/HalfCheetah/Walker2d-v4 x 5 seeds x 1M steps (about 80 min on
## 2 cores; resumes where it stopped); summary in benchmarks/results/mujoco/default/
benchmark: $(STAMP)
	$(PY) benchmarks/mujoco_suite.py $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
