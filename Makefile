# comp — the two commands a newcomer types: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The torch pair installed before comp. Users with their own CUDA build: `make setup TORCH=`.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
DEMO   ?= data/synth
RUNS   ?= runs
SUBS   ?= submissions/demo
COMP   := $(BIN)/comp
PIP    := $(BIN)/python -m pip -q --disable-pip-version-check

# No network calls at import or run time: albumentations' version check and Hugging Face hub retries.
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: setup demo test lint clean

setup: $(VENV)/.installed

# Re-runs only when pyproject.toml changes; otherwise `make setup` is instant.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(if $(strip $(TORCH)),$(PIP) install $(TORCH))
	$(PIP) install -e '.[dev,crop,weights]'
	# facenet-pytorch's metadata pins an old torch; its MTCNN weights ship in the wheel.
	$(PIP) install --no-deps facenet-pytorch
	touch $@

# The whole workflow on a synthetic dataset: data → train two runs → predict → ensemble → ledger →
# estimate (with the ledger's self-check: three scored submissions) → report. Its answer key plays the
# leaderboard. Rewrites data/synth, runs/demo*, submissions/demo.
demo: setup
	$(COMP) data synth $(DEMO) --people 300 --eval-people 80 --size 96x128 --seed 0 --force
	$(COMP) data check $(DEMO)
	$(COMP) train -p pipelines/demo.yaml --data $(DEMO) --out $(RUNS)/demo --force
	$(COMP) train -p pipelines/demo.yaml --data $(DEMO) --out $(RUNS)/demo_mt --force \
		--set name=demo_mt --set model.head=multitask --set train.seed=1
	rm -rf $(SUBS)
	$(COMP) predict $(RUNS)/demo -o $(SUBS)/demo.csv
	$(COMP) predict $(RUNS)/demo_mt -o $(SUBS)/demo_mt.csv
	$(COMP) predict $(RUNS)/demo -o $(SUBS)/demo_notta.csv --tta none
	$(COMP) ensemble $(SUBS)/demo.csv $(SUBS)/demo_mt.csv --method soft -o $(SUBS)/blend.csv
	$(COMP) submissions add $(SUBS)/demo.csv --truth $(DEMO)/eval_truth.csv --dir $(SUBS) --note "single, multiclass"
	$(COMP) submissions add $(SUBS)/demo_mt.csv --truth $(DEMO)/eval_truth.csv --dir $(SUBS) --note "single, multitask"
	$(COMP) submissions add $(SUBS)/demo_notta.csv --truth $(DEMO)/eval_truth.csv --dir $(SUBS) --note "single, no TTA"
	$(COMP) submissions list --dir $(SUBS)
	$(COMP) estimate $(SUBS)/blend.csv --dir $(SUBS) --truth $(DEMO)/eval_truth.csv
	$(COMP) report $(RUNS)/demo -o $(RUNS)/demo/report --submission $(SUBS)/demo.csv --force
	@echo "report: $(RUNS)/demo/report/index.html"

test: setup
	HF_HUB_OFFLINE=1 COMP_NO_PROGRESS=1 $(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check comp tests benchmarks

clean:
	rm -rf $(VENV) $(RUNS) $(DEMO) $(SUBS) .pytest_cache .ruff_cache
