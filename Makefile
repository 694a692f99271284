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

.PHONY: install test test-slow lint format bench fit fit-smirk fit-facedet3d fit-dualstream fit-dnpm fit-dnpm-apps tensorboard clean

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

## Quick start of one method on the embedded synthetic default, CPU-sized: `make fit METHOD=smirk|facedet3d|
## dualstream|dnpm|dnpm-apps` chains the method's stages, each from the previous stage's checkpoint.
METHOD ?= smirk
FIT_LOGS ?= logs
LCLI := $(VENV)/bin/lightning-cli
LOGGER := --trainer.logger.init_args.save_dir=$(FIT_LOGS)
last = $$(ls -t $(FIT_LOGS)/$(1)/version_*/checkpoints/last.ckpt | head -n 1)

fit: install fit-$(METHOD)

## SMIRK: a short pretraining, then the core phase from its checkpoint.
fit-smirk:
	$(LCLI) fit --config configs/smirk_pretrain.yaml --config configs/smirk_quickstart.yaml $(LOGGER)
	$(LCLI) fit --config configs/smirk.yaml --config configs/smirk_quickstart.yaml $(LOGGER) \
		--model.init_args.pretrain_ckpt=$(call last,smirk_pretrain)
	@echo "TensorBoard logs: $(FIT_LOGS)/smirk_pretrain and $(FIT_LOGS)/smirk  (view: make tensorboard)"

## FaceDet3D: detail regressor (the FDS stand-in), DetH, RCAN, then the rendering network R (64^2).
FD3_CPU := --trainer.accelerator=cpu --trainer.devices=1 $(LOGGER)
fit-facedet3d:
	$(LCLI) fit --config configs/facedet3d_regressor.yaml $(FD3_CPU) --trainer.max_steps=20
	$(LCLI) fit --config configs/facedet3d_deth.yaml $(FD3_CPU) --trainer.max_steps=40
	$(LCLI) fit --config configs/facedet3d_rcan.yaml $(FD3_CPU) --trainer.max_steps=20
	$(LCLI) fit --config configs/facedet3d_render.yaml $(FD3_CPU) --trainer.max_steps=40 \
		--data.init_args.num_workers=0 --data.init_args.num_train=64 \
		--model.init_args.image_size=64 --model.init_args.texture_size=64 --data.init_args.image_size=64 \
		--data.init_args.texture_size=64 --data.init_args.batch_size=4 \
		--model.init_args.network.init_args.ntex_channels=[16,32,64] \
		--model.init_args.network.init_args.tex2im_channels=[16,32,64] \
		--model.init_args.discriminator.init_args.channels=[16,32,64] --trainer.val_check_interval=1.0 \
		--trainer.limit_val_batches=1
	@echo "checkpoints: $(FIT_LOGS)/facedet3d_{regressor,deth,rcan,render}; then: facelab animate --method facedet3d" \
		"--deth $(call last,facedet3d_deth) --render $(call last,facedet3d_render) --input PHOTOS --au happy --out anim"

## DualStream: geometry stream, texture stream from it, then end-to-end fine-tuning (64^2).
DS_CPU := --trainer.max_steps=40 --trainer.accelerator=cpu --trainer.devices=1 --trainer.limit_val_batches=2 \
	--trainer.val_check_interval=1.0 \
	--trainer.log_every_n_steps=1 $(LOGGER) --data.init_args.image_size=64 --data.init_args.uv_size=64 \
	--data.init_args.batch_size=4 --data.init_args.num_train=64 --data.init_args.num_val=8 \
	--data.init_args.num_workers=0 --model.init_args.image_size=64 --model.init_args.uv_size=64
DS_TEX := --model.init_args.generator_channels=[32,64,128,128] --model.init_args.region_level=2 \
	--model.init_args.stylize_levels=[2,3] '--model.init_args.geometry_args={width: 0.25, decoder_width: 0.25}'
fit-dualstream:
	$(LCLI) fit --config configs/dualstream_geometry.yaml $(DS_CPU) --model.init_args.width=0.25 \
		--model.init_args.decoder_width=0.25 --model.init_args.parametric_steps=20
	$(LCLI) fit --config configs/dualstream_texture.yaml $(DS_CPU) $(DS_TEX) --model.init_args.contextual_size=64 \
		--model.init_args.init_ckpt=$(call last,dualstream_geometry)
	$(LCLI) fit --config configs/dualstream.yaml $(DS_CPU) $(DS_TEX) --model.init_args.init_ckpt=$(call last,dualstream_texture)
	@echo "then: facelab reconstruct --method dualstream --ckpt $(call last,dualstream) --input PHOTOS --out DIR"

## DNPM: the StyleGAN2 over displacement maps (1 kimg of configs/dnpm.yaml's 20: a few minutes), then Detailed3DMM
## on its frozen generator, then one detailed face.
fit-dnpm:
	$(LCLI) fit --config configs/dnpm.yaml $(LOGGER) --model.init_args.total_kimg=1 --model.init_args.snapshot_every_kimg=1
	$(LCLI) fit --config configs/dnpm_detailed3dmm.yaml $(LOGGER) --model.init_args.init_ckpt=$(call last,dnpm) \
		--trainer.max_epochs=1
	$(VENV)/bin/facelab detail --method dnpm --ckpt $(call last,dnpm_detailed3dmm) --id random --exp smile \
		--out $(FIT_LOGS)/dnpm_detail

## DNPM's applications (after fit-dnpm, whose generator and Detailed3DMM they use): speech -> ARKit then a detailed
## animation of a synthetic utterance; the image -> UV regressor, E_deg on its output (Table III's setting), then a detailed reconstruction of
## a real photo (scikit-image's astronaut).
APPS_DIR := $(FIT_LOGS)/dnpm_apps
fit-dnpm-apps: fit-dnpm
	mkdir -p $(APPS_DIR)
	$(LCLI) fit --config configs/dnpm_speech.yaml $(LOGGER) --trainer.max_steps=200
	$(PY) -c "from dnpm.speech_data import synthesize_utterance, write_wav; \
		write_wav('$(APPS_DIR)/speech.wav', synthesize_utterance(12345, 6.0)[0])"
	$(VENV)/bin/facelab animate --method dnpm --ckpt $(call last,dnpm_speech) --audio $(APPS_DIR)/speech.wav \
		--detail-ckpt $(call last,dnpm_detailed3dmm) --id random --out $(APPS_DIR)/animation
	$(LCLI) fit --config configs/dnpm_regressor.yaml $(LOGGER) --trainer.max_steps=100
	$(LCLI) fit --config configs/dnpm_restore.yaml $(LOGGER) --model.init_args.init_ckpt=$(call last,dnpm) \
		--model.init_args.input=photos --model.init_args.photos.regressor_ckpt=$(call last,dnpm_regressor) \
		--trainer.max_steps=100
	$(PY) -c "from PIL import Image; from skimage import data; Image.fromarray(data.astronaut()).save('$(APPS_DIR)/photo.png')"
	$(VENV)/bin/facelab reconstruct --method dnpm --ckpt $(call last,dnpm_restore) --input $(APPS_DIR)/photo.png \
		--out $(APPS_DIR)/reconstruction
	@echo "outputs: $(APPS_DIR)/animation (arkit.csv, meshes, animation.mp4), $(APPS_DIR)/reconstruction"

tensorboard: install
	$(VENV)/bin/tensorboard --logdir logs

clean:
	rm -rf .pytest_cache .ruff_cache bench_results
