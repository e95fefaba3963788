# dreambooth-nb: `make demo` runs the main job offline, `make test` runs every test. See README.md.
PYTHON ?= python3.11
VENV ?= .venv
STAMP := $(VENV)/.dreambooth-nb-installed
BENCH_VENV ?= .venv-bench
PY := $(VENV)/bin/python
export GLOG_v ?= 3

.PHONY: install demo test unit notebooks lab bench clean-outputs strip

install: $(STAMP)

$(STAMP): pyproject.toml scripts/bootstrap.sh
	@bash scripts/bootstrap.sh "$(PYTHON)" "$(VENV)"

demo: $(STAMP)  ## fine-tune the default model offline; writes outputs/demo/
	@$(PY) -m dreambooth_nb.demo

test: $(STAMP) $(BENCH_VENV)/.installed  ## unit tests + every notebook executed by nbval (fast profile); PyTorch side of the export checks
	@bash scripts/run_tests.sh "$(PY)"

unit: $(STAMP)
	@DREAMBOOTH_NB_FAST=1 $(PY) -m pytest tests -q

notebooks: $(STAMP)
	@DREAMBOOTH_NB_FAST=1 $(PY) -m pytest notebooks --nbval-lax --nbval-current-env -q

LAB_ARGS ?=
lab: $(STAMP)  ## open JupyterLab on the notebooks (as root too; LAB_ARGS="--ip=0.0.0.0 --no-browser" to reach it from another machine)
	@$(VENV)/bin/jupyter lab notebooks/ $$([ "$$(id -u)" = 0 ] && echo --allow-root) $(LAB_ARGS)

strip:  ## remove outputs and volatile metadata from the notebooks before committing
	@$(PY) scripts/strip_notebooks.py notebooks/*.ipynb

clean-outputs:
	rm -rf outputs

$(BENCH_VENV)/.installed: bench/requirements-torch.txt
	@test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV) || { echo "error: could not create $(BENCH_VENV)" >&2; exit 1; }
	@echo "installing PyTorch + diffusers for the comparison into $(BENCH_VENV) ..."
	@$(BENCH_VENV)/bin/python -m pip install -q -r bench/requirements-torch.txt > $(BENCH_VENV).install.log 2>&1 \
		|| { tail -n 5 $(BENCH_VENV).install.log >&2; echo "error: installing the benchmark's PyTorch side failed (log: $(BENCH_VENV).install.log)" >&2; exit 1; }
	@touch $@

bench: $(STAMP) $(BENCH_VENV)/.installed  ## train-step and sampling speed vs diffusers+PyTorch, notebook time and memory
	@$(PY) bench/run.py --torch-python $(BENCH_VENV)/bin/python
	@$(PY) bench/notebooks.py
