"""The speechlm command: help everywhere, --config with flag overrides, clear unknown-key errors."""
from __future__ import annotations

import subprocess
import sys

import pytest

from speechlm.cli import COMMANDS, main as cli


def test_help_of_every_command(capsys):
    assert cli(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out
        with pytest.raises(SystemExit) as e:
            cli([name, "--help"])
        assert e.value.code == 0
        assert "--config" in capsys.readouterr().out


def test_python_dash_m_works():
    r = subprocess.run([sys.executable, "-m", "speechlm", "tasks"], capture_output=True, text=True, check=True)
    assert "asr" in r.stdout and "spoken_command" in r.stdout


def test_config_file_and_override(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: asr\n")
    assert cli(["tasks", "--config", str(cfg)]) == 0
    assert "name: asr" in capsys.readouterr().out
    assert cli(["tasks", "--config", str(cfg), "tts"]) == 0  # the flag wins
    assert "name: tts" in capsys.readouterr().out
    cfg.write_text("nmae: asr\n")
    with pytest.raises(SystemExit):
        cli(["tasks", "--config", str(cfg)])
    assert "unknown option 'nmae'" in capsys.readouterr().err


def test_unknown_command(capsys):
    with pytest.raises(SystemExit):
        cli(["valdate-data"])
    assert "did you mean 'validate-data'" in capsys.readouterr().err
