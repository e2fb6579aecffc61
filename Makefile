# comp — the two commands a newcomer types: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The torch pair installed before comp. Users with their own CUDA build: `make setup TORCH=`.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
DEMO   ?= data/synth
RUNS   ?= runs
PIP    := $(BIN)/python -m pip -q --disable-pip-version-check

# No network calls at import or run time: albumentations' version check and Hugging Face hub retries.
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: setup demo test lint clean

setup: $(VENV)/.installed

# Re-runs only when pyproject.toml changes; otherwise `make setup` is instant.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(if $(strip $(TORCH)),$(PIP) install $(TORCH))
	$(PIP) install -e '.[dev,crop]'
	# facenet-pytorch's metadata pins an old torch; its MTCNN weights ship in the wheel.
	$(PIP) install --no-deps facenet-pytorch
	touch $@

demo: setup
	$(BIN)/comp data synth $(DEMO) --people 120 --eval-people 40 --size 96x128 --seed 0 --force
	$(BIN)/comp data check $(DEMO)

test: setup
	HF_HUB_OFFLINE=1 COMP_NO_PROGRESS=1 $(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check comp tests benchmarks

clean:
	rm -rf $(VENV) $(RUNS) $(DEMO) .pytest_cache .ruff_cache
