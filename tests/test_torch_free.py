"""The runtime path must never import PyTorch (users embed it in services without torch)."""

import subprocess
import sys


def test_runtime_does_not_import_torch(ssd300_onnx, sample_paths):
    code = f"""
import sys
from ssd_deploy.runtime import Detector
import ssd_deploy.postprocess, ssd_deploy.preprocess, ssd_deploy.ops.boxes, ssd_deploy.priors
det = Detector.load({str(ssd300_onnx)!r})
det.detect({str(sample_paths[0])!r})
bad = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
print("TORCH_MODULES", bad)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "TORCH_MODULES []" in out.stdout, out.stdout
