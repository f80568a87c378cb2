# Two commands on a fresh machine:  `make demo` (the main job) and `make test` (the test suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test clean tv-reference

setup: $(STAMP)

$(STAMP): pyproject.toml constraints/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints/cpu.txt -e '.[export,dev,bench,serve,batch,eval,openvino,jit]'
	touch $(STAMP)

# Export SSD300 to ONNX, detect on sample photos with the fastest engine here (device=auto: CUDA,
# else OpenVINO, else ONNX Runtime CPU), check against PyTorch.
demo: setup
	$(PY) -m ssd_deploy.export --size 300
	@$(PY) -c "from ssd_deploy.runtime.detector import describe_onnx_choice as d; print('fastest path here:', d())"
	@$(PY) -c "from ssd_deploy.ops import jit; print('pre/post-processing:', jit.status())"
	$(VENV)/bin/ssd-detect --engine export/ssd300.onnx --samples --output out/detect
	$(VENV)/bin/ssd-check --engine export/ssd300.onnx --json out/check.json

test: setup
	$(VENV)/bin/ruff check ssd_deploy tests benchmarks
	$(VENV)/bin/ruff format --check ssd_deploy tests benchmarks
	$(PY) -m pytest -q

# torchvision's own ssd300_vgg16 outputs for tests/test_torchvision_parity.py. torchvision does not
# import next to the pinned CPU torch, so it lives in a venv of its own, built once and cached
# (~5.5 GB: the torch 2.14.1 wheel brings CUDA libraries). Regenerates the small reference .npz.
TVREF ?= $(HOME)/.cache/ssd_deploy/tvref
TVREF_STAMP := $(TVREF)/.installed

$(TVREF_STAMP):
	$(PYTHON) -m venv $(TVREF)
	$(TVREF)/bin/python -m pip install -q 'torch==2.14.1' 'torchvision==0.29.1' numpy
	touch $(TVREF_STAMP)

tv-reference: $(TVREF_STAMP)
	$(TVREF)/bin/python tests/reference/torchvision_reference.py --out tests/data/torchvision_ssd300_reference.npz

clean:
	rm -rf $(VENV) out export/*.onnx engines/*.plan
