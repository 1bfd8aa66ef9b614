"""Task templates as data: a YAML file per task, validated on load.

A template says which data-dir files, tokenized by which tokenizer, make up one sequence::

    name: asr
    conditions: [{name: speech, modality: audio, tokenizer: codec, source: wav.scp}]
    targets:    [{name: text,   modality: text,  tokenizer: text_bpe, source: text}]

The sequence is ``<task:asr> <seg:codec> speech... <seg:text_bpe> text... <eos>``.
Built-in templates ship inside the package (``speechlm/conf/tasks/``, found through
``importlib.resources``); users add tasks by dropping YAML files in a directory passed as
``task_dirs`` (later directories override earlier ones by name).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from speechlm.conf import builtin_dir
from speechlm.config import ConfigError, from_dict, load_yaml, to_dict

#: Modalities a segment can have. ``spk_prompt`` is audio of another utterance of the same
#: speaker (chosen from ``utt2spk`` when sequences are built).
MODALITIES = ("text", "audio", "spk_prompt")

#: Data-dir files a segment may take its value from.
SOURCES = ("wav.scp", "text", "utt2spk", "text.2", "wav.2.scp", "text.prev", "wav.prev.scp",
           "history", "history.cascade", "known", "response",  # the voice-agent dialogue steps (speechlm/agent/datadir.py)
           "history.monologue", "response.monologue",
           "phones")  # the phones each utterance speaks, space separated (mini_espeak: local/data.sh --align true)

#: the built-in templates (inside the package, so an installed wheel has them too)
BUILTIN_DIR = builtin_dir("tasks")


@dataclass
class Segment:
    """One condition or target segment of a task template."""

    name: str
    modality: str
    tokenizer: str
    source: str
    loss: bool | None = None  # default: True for targets, False for conditions
    loss_weight: float = 1.0
    max_frames: int | None = None  # for spk_prompt: length of the prompt in frames

    def validate(self, where: str) -> None:
        if self.modality not in MODALITIES:
            raise ConfigError(
                f"{where}.modality: unknown modality {self.modality!r}; valid choices: {', '.join(MODALITIES)}"
            )
        if self.source not in SOURCES and not self.source.endswith((".scp", "text")):
            raise ConfigError(
                f"{where}.source: {self.source!r} is not a data-dir file this toolkit reads; "
                f"valid choices: {', '.join(SOURCES)} (or any *.scp / *text file)"
            )
        if self.modality == "spk_prompt" and self.source != "utt2spk":
            raise ConfigError(f"{where}.source: a spk_prompt segment must come from 'utt2spk'")
        if self.loss_weight < 0:
            raise ConfigError(f"{where}.loss_weight must be >= 0, got {self.loss_weight}")

    @property
    def is_audio(self) -> bool:
        return self.modality in ("audio", "spk_prompt")


@dataclass
class TaskTemplate:
    """A task: ordered condition segments, then ordered target segments."""

    name: str
    conditions: list[Segment] = field(default_factory=list)
    targets: list[Segment] = field(default_factory=list)
    description: str = ""
    prefix_lm: bool = False  # attend bidirectionally over the conditions
    condition_dropout: float = 0.0  # drop conditions at this rate (for classifier-free guidance)

    def __post_init__(self) -> None:
        for role in ("conditions", "targets"):
            for i, seg in enumerate(getattr(self, role)):
                if seg.loss is None:
                    seg.loss = role == "targets"

    def validate(self, where: str = "task") -> "TaskTemplate":
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"{where}.name: {self.name!r} must be a non-empty identifier")
        if not self.targets:
            raise ConfigError(f"{where}.targets: a task needs at least one target segment")
        seen = set()
        for role in ("conditions", "targets"):
            for i, seg in enumerate(getattr(self, role)):
                seg.validate(f"{where}.{role}[{i}]")
                if seg.name in seen:
                    raise ConfigError(f"{where}.{role}[{i}].name: duplicate segment name {seg.name!r}")
                seen.add(seg.name)
        if not 0 <= self.condition_dropout < 1:
            raise ConfigError(f"{where}.condition_dropout must be in [0, 1)")
        return self

    @property
    def segments(self) -> list[Segment]:
        return [*self.conditions, *self.targets]

    @property
    def tokenizers(self) -> list[str]:
        return sorted({s.tokenizer for s in self.segments})

    def to_dict(self) -> dict:
        return to_dict(self)

    def save(self, path: str | os.PathLike) -> None:
        from speechlm.utils.fileio import write_text

        write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def template_from_dict(data: dict, where: str = "task") -> TaskTemplate:
    return from_dict(TaskTemplate, data, where).validate(where)


def load_template_file(path: str | os.PathLike) -> TaskTemplate:
    return template_from_dict(load_yaml(path), where=str(path))


def find_templates(task_dirs: list[str | os.PathLike] | None = None) -> dict[str, Path]:
    """Map task name -> YAML path over the built-in dir then ``task_dirs`` (later wins)."""
    found: dict[str, Path] = {}
    for d in [BUILTIN_DIR, *(task_dirs or [])]:
        d = Path(d)
        if not d.is_dir():
            raise ConfigError(f"task template directory not found: {d}")
        for p in sorted(d.glob("*.yaml")) + sorted(d.glob("*.yml")):
            found[p.stem] = p
    return found


def load_template(name_or_path: str, task_dirs: list[str | os.PathLike] | None = None) -> TaskTemplate:
    """Load a template by name (searching built-in and user dirs) or by YAML path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return load_template_file(p)
    found = find_templates(task_dirs)
    if name_or_path not in found:
        from speechlm.registry import suggest

        raise ConfigError(
            f"unknown task {name_or_path!r}{suggest(name_or_path, found)}; "
            f"valid choices: {', '.join(sorted(found))}"
        )
    tpl = load_template_file(found[name_or_path])
    if tpl.name != name_or_path:
        raise ConfigError(f"{found[name_or_path]}: name {tpl.name!r} differs from its file name")
    return tpl


__all__ = ["Segment", "TaskTemplate", "load_template", "find_templates", "template_from_dict"]
