# facelab: `make install` then `make test`. Everything runs from the project's own virtual environment.
PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= dev,data
MEDIAPIPE := mediapipe==0.10.21
INSIGHTFACE := insightface==2.1
PY := $(VENV)/bin/python
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
PYTEST_ARGS ?=

.PHONY: install test test-slow lint format bench fit tensorboard clean

install: $(STAMP)

# Editable installs map the import packages found at install time: a new package in models/ reinstalls.
$(STAMP): pyproject.toml constraints.txt $(wildcard models/*/__init__.py)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	case ",$(EXTRAS)," in *,data,*) $(PY) -m pip install --quiet --no-deps -c constraints.txt $(MEDIAPIPE) $(INSIGHTFACE);; esac
	touch $@

## The fast suite (the README's test command); slow tests are excluded.
test: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check src models tests

format: install
	$(VENV)/bin/ruff format src models tests

## Benchmarks print a table and write CSV under bench_results/ (see `facelab bench --help`).
bench: install
	$(VENV)/bin/facelab bench flame
	$(VENV)/bin/facelab bench raster
	$(VENV)/bin/facelab bench data
	$(VENV)/bin/facelab bench smirk

## SMIRK quick start on the synthetic world (CPU-sized): a short pretraining, then the core phase from its checkpoint.
FIT_LOGS ?= logs
fit: install
	$(VENV)/bin/lightning-cli fit --config configs/smirk_pretrain.yaml --config configs/smirk_quickstart.yaml \
		--trainer.logger.init_args.save_dir=$(FIT_LOGS)
	ckpt=$$(ls -t $(FIT_LOGS)/smirk_pretrain/version_*/checkpoints/last.ckpt | head -n 1) && \
	$(VENV)/bin/lightning-cli fit --config configs/smirk.yaml --config configs/smirk_quickstart.yaml \
		--trainer.logger.init_args.save_dir=$(FIT_LOGS) --model.init_args.pretrain_ckpt=$$ckpt
	@echo "TensorBoard logs: $(FIT_LOGS)/smirk_pretrain and $(FIT_LOGS)/smirk  (view: make tensorboard)"

tensorboard: install
	$(VENV)/bin/tensorboard --logdir logs

clean:
	rm -rf .pytest_cache .ruff_cache bench_results
