"""The reproduction kit of a run dir: resolved config, exact command, version, git hash.

    exp/<tag>/config.yaml      train + model config as resolved (flags applied) + data entries
    exp/<tag>/cmd.sh           the exact command line (re-runnable; resumes the run)
    exp/<tag>/env.json         speechlm / torch / python versions, git hash, world size, host
    exp/<tag>/token_list.json  tokenizers.yaml  tasks/<task>.yaml
"""
from __future__ import annotations

import os
import platform
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from speechlm.utils.fileio import write_json, write_text


def git_hash(path: str | os.PathLike | None = None) -> str | None:
    """The commit of the speechlm checkout (``+dirty`` with local changes), or None."""
    where = Path(path) if path else Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def command_line(argv: list[str] | None = None) -> str:
    argv = sys.argv if argv is None else argv
    prog = "speechlm" if argv and argv[0].endswith(("speechlm", "__main__.py", "cli.py")) else argv[0]
    return " ".join(shlex.quote(a) for a in [prog, *argv[1:]])


def write_run_dir(run_dir: str | os.PathLike, config: dict, world_size: int, files: dict[str, str | None],
                  templates: dict[str, object] | None = None, argv: list[str] | None = None) -> None:
    """Write the kit (rank 0 only). ``files`` maps a run-dir name to a file to copy."""
    import torch

    from speechlm import __version__

    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    write_text(run / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    cmd = command_line(argv)
    if world_size > 1:
        cmd = f"torchrun --nproc_per_node {world_size} -m speechlm {cmd.split(' ', 1)[1]}"
    write_text(run / "cmd.sh", f"#!/usr/bin/env bash\n# cwd: {os.getcwd()}\n{cmd}\n")
    write_json(run / "env.json", {
        "speechlm": __version__, "git": git_hash(), "torch": torch.__version__,
        "python": platform.python_version(), "host": platform.node(), "world_size": world_size,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    })
    for name, src in files.items():
        if src:
            shutil.copy2(src, run / name)
    for name, tpl in (templates or {}).items():
        tpl.save(run / "tasks" / f"{name}.yaml")


__all__ = ["write_run_dir", "git_hash", "command_line"]
