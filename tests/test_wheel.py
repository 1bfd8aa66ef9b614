"""The wheel: built from the project's files, installed into a fresh virtual env outside the
checkout, it trains, packs, loads and decodes a tiny model through the installed ``speechlm``
command using only what ships inside it (task templates, model and train presets).

The env gets the heavy dependencies (torch ...) from this test run's environment through a
``.pth`` line, so nothing is downloaded; the wheel itself is installed with ``--no-deps``. The
checkout is not importable there: every command runs in a temporary directory without
PYTHONPATH, and the test checks where ``speechlm`` was imported from.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

WORDS = ["hello world", "good morning", "open the door", "turn on the light", "play some music",
         "what time is it", "close the window", "stop the music"]


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """``pip wheel`` of a copy of the project's files (offline: no build isolation, no index)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    shutil.copytree(ROOT / "speechlm", src / "speechlm", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(root / "dist"), str(src)], check=True, capture_output=True, timeout=600)
    (whl,) = (root / "dist").glob("speechlm-*.whl")
    return whl


def test_wheel_holds_the_package_files(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("speechlm/conf/tasks/asr.yaml", "speechlm/conf/model/tiny.yaml", "speechlm/conf/train/tiny.yaml",
              "speechlm/serve/static/index.html", "speechlm/agent/phrasings/train.yaml", "speechlm/cli.py"):
        assert f in names, f"{f} is not in {wheel.name}"
    assert not any(n.startswith(("tests/", "egs/", "bench/", "conf/")) for n in names)
    meta = zipfile.ZipFile(wheel).read(f"{wheel.name.split('-py3')[0]}.dist-info/METADATA").decode()
    assert "Provides-Extra: eval" in meta and "Requires-Dist: torch" in meta
    assert "speechlm = speechlm.cli:main" in zipfile.ZipFile(wheel).read(
        f"{wheel.name.split('-py3')[0]}.dist-info/entry_points.txt").decode()


def test_installed_wheel_trains_packs_loads_and_decodes(wheel, tmp_path):
    # a git work tree around the env: the run's env.json must not take its commit for speechlm's
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                    "--allow-empty", "-m", "not speechlm"], check=True)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # the dependencies: this environment's site-packages, after the new env's own (so its speechlm wins)
    (site / "deps_from_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True, timeout=300)

    work = tmp_path / "work"
    data = work / "data" / "train"
    data.mkdir(parents=True)
    with open(data / "text", "w") as t, open(data / "text.2", "w") as t2, open(data / "utt2spk", "w") as u:
        for i in range(16):
            t.write(f"u{i:03d} {WORDS[i % len(WORDS)]}\n")
            t2.write(f"u{i:03d} {WORDS[i % len(WORDS)].upper()}\n")
            u.write(f"u{i:03d} s{i % 2}\n")
    chars = sorted(set("".join(WORDS) + "".join(WORDS).upper()) - {" "})
    (work / "chars.txt").write_text("\n".join(["<unk>", "<space>", *chars]) + "\n")
    (work / "tokenizers.yaml").write_text("text_bpe: {type: char, vocab: chars.txt}\n")
    (work / "decode.yaml").write_text("max_len: 8\n")  # an untrained model would talk until the context ends
    (work / "input.txt").write_text("a1 hello world\na2 open the door\n")

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(OMP_NUM_THREADS="1", PATH=f"{venv / 'bin'}:{env['PATH']}")
    py, slm = str(venv / "bin" / "python"), str(venv / "bin" / "speechlm")
    where = _run([py, "-c", "import speechlm, speechlm.conf as c; print(speechlm.__file__); "
                  "print(c.builtin_dir('tasks'))"], work, env).split()
    assert all(Path(p).is_relative_to(site) for p in where), f"speechlm imported from {where}, not from {site}"

    assert "asr " in _run([slm, "tasks"], work, env)  # the built-in templates, from the installed package
    _run([slm, "prepare", "--task", "mt", "--data-dir", "data/train", "--out-dir", "dump/mt"], work, env)
    _run([slm, "tokenize", "--manifest-dir", "dump/mt", "--tokenizers", "tokenizers.yaml"], work, env)
    _run([slm, "vocab", "--tokenizers", "tokenizers.yaml", "--tasks", "mt", "--out", "token_list.json"], work, env)
    _run([slm, "train", "--data", "mt:toy:dump/mt:1", "--vocab", "token_list.json", "--tokenizers", "tokenizers.yaml",
          "--model-config", "tiny", "--train-config", "tiny", "--max-steps", "2", "--save-every", "2",
          "--valid-every", "0", "--out-dir", "exp/run"], work, env)
    assert json.loads((work / "exp" / "run" / "env.json").read_text())["git"] is None
    _run([slm, "pack", "--exp-dir", "exp/run", "--out-dir", "packed", "--decode-config", "decode.yaml"], work, env)
    _run([slm, "decode", "--model-dir", "packed", "--task", "mt", "--input", "input.txt", "--out-dir", "dec"],
         work, env)
    decoded = dict(line.split(" ", 1) if " " in line else (line, "")
                   for line in (work / "dec" / "text").read_text().splitlines())
    assert sorted(decoded) == ["a1", "a2"]
    # the packed model through the Python API in the installed env decodes the same (greedy)
    loaded = json.loads(_run([py, "-c", "import json, speechlm; lm = speechlm.load('packed'); "
                              "print(json.dumps([lm.generate('mt', src=s) for s in ('hello world', 'open the door')]))"],
                             work, env).strip().splitlines()[-1])
    assert [s.strip() for s in loaded] == [decoded["a1"].strip(), decoded["a2"].strip()]
