"""The whole mini recipe as `make demo` runs it (slow: ~25 minutes on 2 CPU cores).

CI runs it once (`make test-slow`). It checks that every stage produced its outputs and that the
measured numbers meet the recipe's targets (egs/mini_espeak/speechlm1/README.md), so a change
that makes the toolkit learn worse fails here.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_recipe_mini import MINI, pytestmark as _needs_espeak

pytestmark = [pytest.mark.slow, _needs_espeak]

# The targets (README, "Results"): ASR CER <= 25% with the recipe's joint CTC/attention beam search
# on the 138 voices; TTS (one voice) ended by the model and of the reference's duration for >= 90%,
# and a Whisper WER within 2x its WER on the Codec 2 resynthesis and below 100%.
MAX_ASR_CER = 25.0
MIN_TTS_STOPPED = 90.0
MIN_TTS_DURATION_IN_RANGE = 90.0


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    recipe = tmp_path_factory.mktemp("full") / "mini_espeak" / "speechlm1"
    recipe.mkdir(parents=True)
    for name in ("speechlm.sh", "path.sh", "cmd.sh", "utils", "local", "conf", "run.sh"):
        (recipe / name).symlink_to(MINI / name)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("OMP_NUM_THREADS", None)  # the recipe uses every core, as `make demo` does
    res = subprocess.run(["./run.sh"], cwd=recipe, capture_output=True, text=True, env=env, timeout=3600)
    assert res.returncode == 0, res.stderr[-5000:]
    assert "## test / asr" in res.stdout and "## test_tts / tts_phones" in res.stdout  # the results table is printed
    entries = json.loads((recipe / "exp/train_mini_espeak/RESULTS.json").read_text())["entries"]
    return {e["task"]: e for e in entries}


def test_asr_is_scored_on_the_whole_test_set(results):
    asr = results["asr"]
    assert "ctc_weight=0.5" in asr["decode_config"]
    assert asr["n_utts"] == 120
    assert asr["metrics"]["cer"]["cer"] <= MAX_ASR_CER


def test_tts_is_scored_with_both_recognizer_floors(results):
    tts = results["tts_phones"]
    assert tts["n_utts"] == 120
    assert {"ground truth", "codec"} <= set(tts["floor"])
    assert tts["floor"]["codec"]["wer"] >= tts["floor"]["ground truth"]["wer"]  # Codec 2 loses something
    assert tts["metrics"]["duration"]["stopped_pct"] >= MIN_TTS_STOPPED
    assert tts["metrics"]["duration"]["in_range_pct"] >= MIN_TTS_DURATION_IN_RANGE
    assert tts["metrics"]["duration"]["speech_in_range_pct"] >= MIN_TTS_DURATION_IN_RANGE  # not silence padding
    assert tts["metrics"]["intelligibility"]["wer"] <= min(2 * tts["floor"]["codec"]["wer"], 100.0)
