"""The GPU check script runs its checks (tests/gpu/check_gpu.py); CI runs its CPU version."""

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent / "gpu" / "check_gpu.py"


def test_the_gpu_check_passes_its_cpu_version():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LORALAB_NO_PROGRESS": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split(" | ")[0].strip("| ") for row in rows] == [
        "train fp32", "train bf16", "generate (ours)", "generate (diffusers pipeline)"]
    assert all(row.rstrip(" |").endswith("ok") for row in rows)
