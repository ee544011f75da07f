"""The model package stands on torch alone: importing it loads no training framework."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import ROOT


def test_importing_the_models_loads_no_lightning_hydra_or_omegaconf() -> None:
    code = (
        "import sys, recattend.models; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'lightning', 'pytorch_lightning', 'hydra', 'omegaconf'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
