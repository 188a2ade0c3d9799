# ugpu developer commands. `make test` works on a fresh machine: it creates .venv,
# installs the package with its test extras and what the tests need, and runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# PyTorch, pinned. PyPI's Linux wheel is a CUDA build (`ugpu detect` says whether it runs
# your card); on this project's CI machines the same pin resolves to a local CPU build.
# Another build: make install TORCH="torch --index-url https://download.pytorch.org/whl/cu128"
# (README: "PyTorch for your card").
TORCH ?= torch==2.13.0
SONG ?=
MODE ?= balanced
OUT ?= karaoke

.PHONY: help install test run bench quality quality-real gpu-wheels gpu-check completions clean ffmpeg browser capsh serve

help:
	@echo "make run SONG=path/to/song.mp3 [MODE=aggressive] [OUT=karaoke]"
	@echo "                  create .venv on first use, install, convert the song"
	@echo "make test         create .venv, install, run the test suite"
	@echo "make install      create .venv and install ugpu with the engines and test extras"
	@echo "make serve        create .venv on first use, install, start the server and its page on http://127.0.0.1:8765/"
	@echo "make bench        benchmarks against the reference pipeline (DEVICE=cuda on a GPU)"
	@echo "make quality      chart quality on synthesised songs: tempo error, notes inside the voice, re-pitch diff"
	@echo "make quality-real [SONGS='dir ...'] [VARIANTS=1]  charts against hand-made ones on real songs (../shared/real),"
	@echo "                  beside the raw libraries; VARIANTS=1 (or 'tempo=0.9 pitch=+2 ...') each song moved off its tempo and key too"
	@echo "make gpu-wheels   the wheels a lent GPU machine lacks, in .whl/ (for Python 3.12), with their size"
	@echo "make gpu-check OUT=dir  GPU acceptance: detect, CUDA tests, 16 GB emulation, real OOM, fp16, GPU bench"
	@echo "make completions  regenerate completions/ (bash, zsh, fish, PowerShell)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[engines,faster-whisper,tensorflow,server,cluster,test]'
	@touch $@

# ffmpeg decodes every input; install it where it is missing (Debian/Ubuntu).
ffmpeg:
	@command -v ffmpeg >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null; \
	  else echo "ffmpeg is missing: install it (brew install ffmpeg, winget install ffmpeg)" >&2; exit 1; fi; }

# Headless Chromium and its driver: the browser test of `ugpu serve`'s page (Debian/Ubuntu).
browser:
	@command -v chromedriver >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; \
	  else echo "chromium and chromedriver are missing: the browser test will be skipped" >&2; fi; }

# capsh: the tests that run as root (CI) drop the capabilities that let root read and write any file.
capsh:
	@command -v capsh >/dev/null 2>&1 || [ -x /usr/sbin/capsh ] || [ -x /sbin/capsh ] || { \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends libcap2-bin >/dev/null; \
	  else echo "capsh is missing: the tests that need it will be skipped" >&2; fi; }

install: $(VENV)/.installed

test: ffmpeg browser capsh $(VENV)/.installed
	$(BIN)/python -m pytest -q

serve: ffmpeg $(VENV)/.installed
	$(BIN)/ugpu serve

run: ffmpeg $(VENV)/.installed
	@test -n "$(SONG)" || { echo 'usage: make run SONG=path/to/song.mp3 [MODE=aggressive] [OUT=karaoke]' >&2; exit 2; }
	$(BIN)/ugpu run "$(SONG)" --mode $(MODE) -o "$(OUT)"

# Benchmarks (not part of `make test`): ugpu against the reference way of using the same
# libraries, same models, same input, same run. Writes BENCHMARKS.md. DEVICE=cuda on a GPU.
DEVICE ?= cpu
bench: ffmpeg $(VENV)/.installed
	$(BIN)/python -m benchmarks.run --device $(DEVICE) $(BENCH_ARGS)

# Chart quality on synthesised songs (issue 11): tempo, notes inside the voice, re-pitch diff.
quality: ffmpeg $(VENV)/.installed
	$(BIN)/python -m benchmarks.quality

# Charts against hand-made ones on real songs (issue 21): every song folder under ../shared/real and
# SONGS (folders holding a chart and its audio), ugpu's three modes beside the raw libraries.
SONGS ?=
quality-real: ffmpeg $(VENV)/.installed
	$(BIN)/python -m benchmarks.quality_real $(SONGS) $(if $(VARIANTS),--variants $(filter-out 1,$(VARIANTS)))

# GPU acceptance (README: "GPU acceptance"). gpu-wheels prepares, here, what the lent GPU machine
# lacks (it has no package index); gpu-check runs there, or on any CUDA machine with ugpu installed.
GPU_PYTHON_VERSION ?= 3.12
gpu-wheels: $(VENV)/.installed
	$(BIN)/python -m benchmarks.gpu_wheels --out .whl --python-version $(GPU_PYTHON_VERSION)

GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
WHEELS ?=
gpu-check:
	$(GPU_PYTHON) -m benchmarks.gpu_check --out "$(or $(OUT),gpu-check-results)" $(if $(WHEELS),--wheels $(WHEELS)) $(GPU_ARGS)

completions: $(VENV)/.installed
	_UGPU_COMPLETE=source_bash $(BIN)/ugpu > completions/ugpu.bash
	_UGPU_COMPLETE=source_zsh $(BIN)/ugpu > completions/_ugpu
	_UGPU_COMPLETE=source_fish $(BIN)/ugpu > completions/ugpu.fish
	_UGPU_COMPLETE=source_powershell $(BIN)/ugpu > completions/ugpu.ps1

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
