"""A program that only subscribes to depth (or only sends frames) imports no OpenCV and no torch:
`pipeline.client` and `pipeline.sender` stand on pyzmq and numpy alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("cv2", "torch", "yaml", "glpn")


@pytest.mark.parametrize("module", ["pipeline.client", "pipeline.sender", "pipeline.messages"])
def test_client_modules_import_neither_opencv_nor_torch(module):
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stdout))
    assert module in loaded
    assert not [m for m in HEAVY if m in loaded]
