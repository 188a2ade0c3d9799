# ugpu developer commands. `make test` works on a fresh machine: it creates .venv,
# installs the package with its test extras and what the tests need, and runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch for tests and CI. Users with a GPU install the CUDA build
# their card needs (README: "PyTorch for your card").
TORCH_CPU ?= torch==2.13.0

.PHONY: help install test completions clean

help:
	@echo "make test         create .venv, install, run the test suite"
	@echo "make install      create .venv and install ugpu with its test extras"
	@echo "make completions  regenerate completions/ (bash, zsh, fish, PowerShell)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet "$(TORCH_CPU)"
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

completions: $(VENV)/.installed
	_UGPU_COMPLETE=source_bash $(BIN)/ugpu > completions/ugpu.bash
	_UGPU_COMPLETE=source_zsh $(BIN)/ugpu > completions/_ugpu
	_UGPU_COMPLETE=source_fish $(BIN)/ugpu > completions/ugpu.fish
	_UGPU_COMPLETE=source_powershell $(BIN)/ugpu > completions/ugpu.ps1

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
