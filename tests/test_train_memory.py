"""peak_rss_mb: the peak the training log reports follows what the process really touched."""
from __future__ import annotations

import numpy as np
import pytest

from speechlm.train.memory import peak_rss_mb


def test_peak_rss_grows_with_touched_memory():
    before = peak_rss_mb()
    if before is None:
        pytest.skip("no /proc/self/status here")
    buf = np.ones(300 * 2**20, dtype=np.uint8)  # 300 MB, every page written
    after = peak_rss_mb()
    assert buf[-1] == 1 and after >= 300 and after >= before + 250  # (less than 300: pages of the start may be gone)
