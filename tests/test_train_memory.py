"""peak_rss_mb: the peak the training log reports follows what the process really touched."""
from __future__ import annotations

import subprocess
import sys


def test_peak_rss_grows_with_touched_memory():
    # in a fresh process: the test runner's own peak may already be far above what this touches
    code = ("import numpy as np; from speechlm.train.memory import peak_rss_mb; b = peak_rss_mb(); "
            "buf = np.ones(300 * 2**20, dtype=np.uint8); a = peak_rss_mb(); print(b, a, buf[-1])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    before, after, last = float(out[0]), float(out[1]), int(out[2])
    assert last == 1 and after >= 300 and after >= before + 250
