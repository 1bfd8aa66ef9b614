"""The reproduction kit of a run dir: resolved config, exact command, version, git hash.

    exp/<tag>/config.yaml      the options of `speechlm train` as resolved (flags applied; train_config and
                               model_config inline): `speechlm train --config` of it trains the run again
    exp/<tag>/cmd.sh           the exact command line (re-runnable; resumes the run)
    exp/<tag>/env.json         speechlm / torch / python versions, git hash, world size, host, cwd
    exp/<tag>/token_list.json  tokenizers.yaml  tasks/<task>.yaml
    exp/<tag>/tokenizer_files.json   the directory the run was started in and a fingerprint
                               (size + sha256) of every tokenizer file, so `pack` can check them
    exp/<tag>/config_changes.jsonl   one line per resume that changed options (allowed ones)

The kit is written when a run starts. A resumed run keeps it as it was (the original
``config.yaml`` is never overwritten): the new options are compared with it, the differences
logged and appended to ``config_changes.jsonl``, and anything but the budget (and options that
only change logging or speed) needs ``--allow-config-change``.

``tokenizer_files.json`` (format 1)::

    {"format": 1,
     "base_dir": "/abs/dir/the/run/was/started/in",   # relative tokenizer paths resolve against it
     "tokenizers_yaml": {"path": "/abs/.../tokenizers.yaml", "size": 120, "sha256": "..."},
     "tokenizers": {
        "text_bpe": {"model": {"path": "dump/bpe/bpe.model",          # as written in tokenizers.yaml
                                "resolved": "/abs/.../dump/bpe/bpe.model",
                                "kind": "file", "size": 245000, "sha256": "..."}},
        "codec": {"model_dir": {"path": "...", "resolved": "...", "kind": "dir",
                                "files": {"config.json": {"size": ..., "sha256": ...}, ...}}},
        "g2p": {}}}                                          # no file options
    # "kind": "missing" when the path did not exist at training time (e.g. a hub id)
"""
from __future__ import annotations

import json
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from speechlm.utils.fileio import write_json, write_text

log = logging.getLogger(__name__)

TOKENIZER_FILES = "tokenizer_files.json"
CONFIG_CHANGES = "config_changes.jsonl"
#: options a resumed run may change freely: the budget, and what only affects logging or speed
FREE_TO_CHANGE = tuple(f"train_config.{k}" for k in (
    "max_steps", "max_train_tokens", "progress_bar", "tensorboard", "plot", "log_every", "num_workers", "threads",
    "log_example_ids"))


class ConfigChangeError(ValueError):
    """A resumed run was given options that differ from the ones it was started with."""


def git_hash(path: str | os.PathLike | None = None) -> str | None:
    """The commit of the speechlm checkout (``+dirty`` with local changes), or None.

    Without ``path``: the checkout this package is imported from, None for an installed wheel
    (even one installed into a virtual env inside some git work tree, whose commit is not ours)."""
    package = Path(__file__).resolve().parents[1]
    where = Path(path) if path else package
    try:
        if path is None:
            top = subprocess.run(["git", "-C", str(where), "rev-parse", "--show-toplevel"], capture_output=True,
                                 text=True, timeout=10, check=True).stdout.strip()
            if Path(top).resolve() != package.parent:
                return None
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
        "cuda": torch.version.cuda if torch.cuda.is_available() else None, "cwd": os.getcwd(),
    })
    for name, src in files.items():
        if src:
            shutil.copy2(src, run / name)
    if files.get("tokenizers.yaml"):
        write_json(run / TOKENIZER_FILES, fingerprint_tokenizers(files["tokenizers.yaml"], os.getcwd()))
    for name, tpl in (templates or {}).items():
        tpl.save(run / "tasks" / f"{name}.yaml")


# ---- tokenizer file fingerprints (checked by `speechlm pack`) --------------------------------
def fingerprint_path(path: str | os.PathLike) -> dict:
    """``{kind: file, size, sha256}``, ``{kind: dir, files: {rel: {size, sha256}}}`` or ``{kind: missing}``."""
    from speechlm.train.integrity import build_manifest, file_digest

    p = Path(path)
    if p.is_file():
        return {"kind": "file", "size": p.stat().st_size, "sha256": file_digest(p)}
    if p.is_dir():
        return {"kind": "dir", "files": build_manifest(p)}
    return {"kind": "missing"}


def _path_options(kind: str) -> tuple[str, ...] | None:
    """The file options of tokenizer type ``kind`` (None when the type is unknown)."""
    from speechlm.tokenizers import tokenizer_class

    try:
        return tuple(getattr(tokenizer_class(kind), "path_options", ()))
    except KeyError:
        return None


def fingerprint_tokenizers(tokenizers_yaml: str | os.PathLike, base_dir: str | os.PathLike) -> dict:
    """The content of ``tokenizer_files.json``: every file option of every tokenizer in
    ``tokenizers_yaml``, resolved against ``base_dir`` (the directory the run was started in)."""
    from speechlm.config import load_yaml

    base = Path(base_dir).resolve()
    specs = load_yaml(tokenizers_yaml) or {}
    out: dict = {"format": 1, "base_dir": str(base),
                 "tokenizers_yaml": {"path": str(Path(tokenizers_yaml).resolve()),
                                     **fingerprint_path(tokenizers_yaml)},
                 "tokenizers": {}}
    for name, spec in (specs.items() if isinstance(specs, dict) else ()):
        entry = {}
        if isinstance(spec, dict):
            opts = _path_options(str(spec.get("type")))
            for key, value in spec.items():
                # unknown type: fingerprint every string option that names an existing path
                if not isinstance(value, str) or (opts is not None and key not in opts):
                    continue
                resolved = Path(value) if os.path.isabs(value) else base / value
                if opts is None and not resolved.exists():
                    continue
                entry[key] = {"path": value, "resolved": str(resolved), **fingerprint_path(resolved)}
        out["tokenizers"][str(name)] = entry
    return out


def tokenizer_fingerprints(exp_dir: str | os.PathLike) -> dict:
    """The stored ``tokenizer_files.json`` of run dir ``exp_dir`` ({} for runs trained before it
    existed). Resolve a tokenizer path as ``Path(d["base_dir"]) / path`` when it is relative."""
    f = Path(exp_dir) / TOKENIZER_FILES
    if not f.is_file():
        return {}
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{f}: unreadable ({e}); it is written by `speechlm train`") from e


def check_tokenizer_files(exp_dir: str | os.PathLike, base_dir: str | os.PathLike | None = None) -> list[str]:
    """Differences between the tokenizer files now and at training time, one message per file
    (empty: all match, or the run has no fingerprints). Paths resolve against ``base_dir``
    (default: the directory the run was started in)."""
    stored = tokenizer_fingerprints(exp_dir)
    if not stored:
        return []
    base = Path(base_dir) if base_dir is not None else Path(stored["base_dir"])
    problems = []
    for name, entry in stored.get("tokenizers", {}).items():
        for key, want in entry.items():
            p = Path(want["path"]) if os.path.isabs(want["path"]) else base / want["path"]
            have = fingerprint_path(p)
            if have == {k: v for k, v in want.items() if k not in ("path", "resolved")}:
                continue
            if have["kind"] == "missing":
                why = "is missing"
            elif have["kind"] != want["kind"]:
                why = f"is a {have['kind']}, at training time a {want['kind']}"
            elif have["kind"] == "file":
                why = (f"has sha256 {have['sha256'][:12]}..., at training time {want['sha256'][:12]}... "
                       f"(another file of the same name?)")
            else:
                changed = sorted(set(have["files"]) ^ set(want["files"])) + sorted(
                    k for k in set(have["files"]) & set(want["files"]) if have["files"][k] != want["files"][k])
                why = f"differs from training time in {', '.join(changed[:5])}"
            problems.append(f"tokenizer {name!r} option {key}: {p} {why}")
    return problems


# ---- resuming with other options -------------------------------------------------------------
def _flatten(d, prefix: str = "") -> dict:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def config_changes(old: dict, new: dict) -> dict[str, tuple]:
    """``{dotted key: (old, new)}`` where two config dumps differ (compared as YAML would store them)."""
    new = yaml.safe_load(yaml.safe_dump(new, sort_keys=False))
    a, b = _flatten(old or {}), _flatten(new or {})
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b), key=lambda k: (k not in a, k))
            if a.get(k) != b.get(k)}


def _file_changes(run: Path, files: dict[str, str | None]) -> dict[str, tuple]:
    """Run-dir copies (token_list.json, tokenizers.yaml) whose source now has other content, and
    tokenizer files whose content changed since the run started."""
    from speechlm.train.integrity import file_digest

    out = {}
    for name, src in files.items():
        have = run / name
        if src and have.is_file() and Path(src).is_file() and file_digest(src) != file_digest(have):
            out[f"file {name}"] = (f"{have} (as the run started)", f"{src} (other content)")
    for problem in check_tokenizer_files(run):
        out[f"file {problem.split(':', 1)[0]}"] = ("as at training time", problem.split(": ", 1)[1])
    return out


def check_resume_config(run_dir: str | os.PathLike, config: dict, files: dict[str, str | None],
                        allow_change: bool, step: int | None, argv: list[str] | None = None) -> dict[str, tuple]:
    """Compare the options of a resumed run with its stored ``config.yaml``: differences are
    logged; any outside :data:`FREE_TO_CHANGE` raises :class:`ConfigChangeError` unless
    ``allow_change``; accepted ones are appended to ``config_changes.jsonl``. Returns them."""
    from speechlm.config import load_yaml

    run = Path(run_dir)
    from speechlm.train.config import upgrade_run_config

    old = upgrade_run_config(load_yaml(run / "config.yaml") or {})  # a run started by an older version
    changes = config_changes(old, config) if config else {}
    changes.update(_file_changes(run, files))
    if not changes:
        return {}
    for key, (a, b) in changes.items():
        log.warning("resuming %s with a changed option: %s: %r -> %r", run, key, a, b)
    blocked = [k for k in changes if k not in FREE_TO_CHANGE]
    if blocked and not allow_change:
        raise ConfigChangeError(
            f"{run} was started with other options, and resuming it would train on with "
            f"{', '.join(f'{k}: {changes[k][0]!r} -> {changes[k][1]!r}' for k in blocked[:6])}"
            f"{' ...' if len(blocked) > 6 else ''}. Only the budget (max_steps, max_train_tokens) and "
            f"logging/speed options may change on resume; pass --allow-config-change to continue anyway "
            f"({run / 'config.yaml'} keeps the original options, the changes go to {run / CONFIG_CHANGES}), "
            f"or give another --out-dir to start a new run")
    with open(run / CONFIG_CHANGES, "a", encoding="utf-8") as f:
        f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "step": step,
                            "command": command_line(argv), "allowed_by": "--allow-config-change" if blocked
                            else "budget", "changes": {k: list(v) for k, v in changes.items()}},
                           default=str, ensure_ascii=False) + "\n")
    return changes


__all__ = ["write_run_dir", "git_hash", "command_line", "fingerprint_tokenizers", "tokenizer_fingerprints",
           "check_tokenizer_files", "fingerprint_path", "check_resume_config", "config_changes",
           "ConfigChangeError", "TOKENIZER_FILES", "FREE_TO_CHANGE"]
