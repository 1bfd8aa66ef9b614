"""Files that ship inside the package: the built-in task templates and the config presets.

    speechlm/conf/tasks/<name>.yaml    task templates (``speechlm tasks`` lists them)
    speechlm/conf/model/<name>.yaml    model presets: tiny, 30m, 360m, 1.7b
    speechlm/conf/train/<name>.yaml    training presets: tiny, cpu_demo

They are found through :mod:`importlib.resources`, so an installed wheel reads the same files
as a checkout. A preset is given by name (``speechlm train --model-config tiny``) or a config
by path (``--model-config conf/model.yaml``): :func:`resolve_config` turns either into a file.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from speechlm.config import ConfigError

#: the kinds of files shipped here, one directory each
KINDS = ("tasks", "model", "train")


def builtin_dir(kind: str) -> Path:
    """The directory of the built-in files of ``kind`` (one of :data:`KINDS`)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind of built-in config {kind!r}; valid choices: {', '.join(KINDS)}")
    where = resources.files(__name__) / kind
    if not isinstance(where, Path):  # a zip import: no file paths to hand to YAML readers
        raise RuntimeError(f"speechlm is imported from an archive ({where}); install it as files (pip install)")
    return where


def preset_names(kind: str) -> list[str]:
    """Names of the built-in presets of ``kind`` (file names without ``.yaml``)."""
    return sorted(p.stem for p in builtin_dir(kind).glob("*.yaml"))


def resolve_config(kind: str, name_or_path: str | os.PathLike) -> Path:
    """The YAML file meant by ``name_or_path``: an existing file, else a built-in preset's name.

    A path that does not exist is an error naming the presets, so an old recipe's
    ``../../../conf/model/360m.yaml`` (the presets' place before they moved into the package)
    fails with the name to give instead, rather than silently using something else."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    names = preset_names(kind)
    if str(name_or_path) in names:
        return builtin_dir(kind) / f"{name_or_path}.yaml"
    hint = ""
    if path.stem in names and path.suffix in (".yaml", ".yml"):
        hint = (f"; the built-in presets ship inside the package now: give the name {path.stem!r} "
                f"(e.g. --{kind}-config {path.stem})")
    raise ConfigError(f"{kind} config {str(name_or_path)!r}: no such file and no built-in preset of that name{hint}; "
                      f"built-in {kind} presets: {', '.join(names)}")


__all__ = ["KINDS", "builtin_dir", "preset_names", "resolve_config"]
