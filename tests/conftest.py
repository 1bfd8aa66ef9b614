"""Shared test setup: one thread per process, a --run-slow switch, and small synthesized data."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="run tests marked slow")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: slow test (full recipe etc.); run with --run-slow")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow (make test-slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def synth(path: Path, text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50) -> Path:
    """Synthesize ``text`` with espeak-ng into ``path`` (22.05 kHz wav)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (tools/install.sh installs it)")
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "-p", str(pitch), "-w", str(path), text], check=True)
    return path


SENTENCES = [
    "turn on the kitchen lights",
    "what is the weather like today",
    "play some music in the living room",
    "set a timer for ten minutes",
    "call my sister tomorrow morning",
    "the quick brown fox jumps",
]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A valid Kaldi data dir of six espeak-ng utterances from two speakers."""
    d = tmp_path / "data"
    (d / "wav").mkdir(parents=True)
    wav, text, utt2spk = [], [], []
    for i, sent in enumerate(SENTENCES):
        spk = f"spk{i % 2}"
        utt = f"{spk}-utt{i}"
        synth(d / "wav" / f"{utt}.wav", sent, voice="en-us" if i % 2 else "en+f2")
        wav.append(f"{utt} {d / 'wav' / utt}.wav")
        text.append(f"{utt} {sent.upper()}")
        utt2spk.append(f"{utt} {spk}")
    for name, lines in (("wav.scp", wav), ("text", text), ("utt2spk", utt2spk)):
        (d / name).write_text("\n".join(sorted(lines)) + "\n")
    spk2utt = {}
    for line in sorted(utt2spk):
        u, s = line.split()
        spk2utt.setdefault(s, []).append(u)
    (d / "spk2utt").write_text("".join(f"{s} {' '.join(us)}\n" for s, us in sorted(spk2utt.items())))
    return d
