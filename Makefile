# `make train` and `make test` each create/refresh the virtualenv they need.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
ARGS   ?=

.PHONY: install train test clean

$(STAMP): setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,fast]"
	touch $(STAMP)

install: $(STAMP)

## train: the main job, PPO on MuJoCo Hopper (1M steps); extra options via ARGS="--seeds 3 ..."
train: $(STAMP)
	$(VENV)/bin/ppo train hopper $(ARGS)

## test: the whole test suite (what CI runs)
test: $(STAMP)
	$(PY) -m pytest $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
