# Two commands on a fresh machine:  `make demo` (the main job) and `make test` (the test suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints/cpu.txt -e '.[export,dev,bench,serve,openvino]'
	touch $(STAMP)

# Export SSD300 to ONNX, detect on sample photos with the fastest engine here (device=auto: CUDA,
# else OpenVINO, else ONNX Runtime CPU), check against PyTorch.
demo: setup
	$(PY) -m ssd_deploy.export --size 300
	@$(PY) -c "from ssd_deploy.runtime.detector import describe_onnx_choice as d; print('fastest path here:', d())"
	$(VENV)/bin/ssd-detect --engine export/ssd300.onnx --samples --output out/detect
	$(VENV)/bin/ssd-check --engine export/ssd300.onnx --json out/check.json

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) out export/*.onnx engines/*.plan
