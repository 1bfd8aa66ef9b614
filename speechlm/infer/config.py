"""``DecodeConfig``: every option of :func:`speechlm.infer.generate`, loadable from YAML.

Example ``conf/decode/tts.yaml``::

    search: sample
    temperature: 0.8
    top_k: 30
    max_len_ratio: 20.0
"""
from __future__ import annotations

from dataclasses import dataclass

from speechlm.config import ConfigError

SEARCHES = ("greedy", "sample", "beam", "ctc_greedy")


@dataclass
class DecodeConfig:
    """search: ``greedy`` | ``sample`` | ``beam`` (text targets) | ``ctc_greedy`` (models with a CTC head).

    Lengths count target frames (audio) or tokens (text) per segment; ``*_len_ratio`` scales the
    number of condition rows of the prompt (0 = unused). ``cfg_scale`` > 1 turns on
    classifier-free guidance against the prompt with its conditions removed.
    """

    search: str = "greedy"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    nbest: int = 1  # independent samples (sample) or hypotheses kept (beam) per prompt
    beam_size: int = 4
    length_penalty: float = 1.0  # beam: score / length ** length_penalty
    ctc_weight: float = 0.0  # beam: weight of CTC prefix scores in joint CTC/attention decoding
    cfg_scale: float = 1.0
    # > 0: a segment ends when the model's probability of having ended it by now (temperature 1)
    # reaches this, and never otherwise (0.5: the median stopping time, not one random draw)
    end_threshold: float = 0.0
    min_len: int = 0
    max_len: int = 1000
    min_len_ratio: float = 0.0
    max_len_ratio: float = 0.0
    # models with a length head: bound the target to these multiples of its predicted length (the
    # head predicts all target rows: meant for one-segment targets such as TTS speech; 0 = unused);
    # tightens min/max_len, never loosens them
    min_len_prior: float = 0.0
    max_len_prior: float = 0.0
    # models with the progress input (model.progress): multiplies the predicted length they are
    # given (speaking rate: 1.2 = 20% slower); the bounds above scale with it
    length_scale: float = 1.0
    seed: int = 0
    kv_cache: bool = True  # False: recompute the whole sequence every step (reference / benchmarks)
    batch_size: int = 16  # prompts decoded together by the decode command

    def validate(self) -> "DecodeConfig":
        if self.search not in SEARCHES:
            raise ConfigError(f"decode.search: {self.search!r} is not one of {', '.join(SEARCHES)}")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or not 0 <= self.min_p < 1 or self.top_k < 0:
            raise ConfigError("decode: need temperature >= 0, 0 < top_p <= 1, 0 <= min_p < 1, top_k >= 0")
        if self.repetition_penalty <= 0:
            raise ConfigError(f"decode.repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.nbest < 1 or self.beam_size < 1 or self.batch_size < 1:
            raise ConfigError("decode: nbest, beam_size and batch_size must be >= 1")
        if self.search == "beam" and self.nbest > self.beam_size:
            raise ConfigError(f"decode.nbest {self.nbest} > beam_size {self.beam_size}")
        if not 0 <= self.ctc_weight <= 1:
            raise ConfigError(f"decode.ctc_weight must be in [0, 1], got {self.ctc_weight}")
        if not 0 <= self.end_threshold <= 1:
            raise ConfigError(f"decode.end_threshold must be in [0, 1], got {self.end_threshold}")
        if self.min_len_prior < 0 or self.max_len_prior < 0 or (
                self.max_len_prior and self.min_len_prior > self.max_len_prior):
            raise ConfigError(f"decode: need 0 <= min_len_prior <= max_len_prior (or max_len_prior 0), got "
                              f"{self.min_len_prior}, {self.max_len_prior}")
        if self.length_scale <= 0:
            raise ConfigError(f"decode.length_scale must be > 0, got {self.length_scale}")
        if self.max_len < 1:
            raise ConfigError(f"decode.max_len must be >= 1, got {self.max_len}")
        return self

    @property
    def temperature_used(self) -> float:
        return 0.0 if self.search == "greedy" else self.temperature


def task_options(options: dict, task: str) -> dict:
    """Decoding options for ``task``: the top-level keys, updated by ``tasks: {<task>: {...}}``."""
    options = dict(options)
    per_task = options.pop("tasks", None) or {}
    if not isinstance(per_task, dict) or not all(isinstance(v, dict) for v in per_task.values()):
        raise ConfigError("decode config: 'tasks' must map task names to option dicts, e.g. tasks: {tts: {search: sample}}")
    return {**options, **per_task.get(task, {})}


def decode_config_for(options: dict | None, task: str) -> DecodeConfig:
    """The validated :class:`DecodeConfig` of ``task`` from a decode YAML's contents."""
    from speechlm.config import from_dict

    return from_dict(DecodeConfig, task_options(options or {}, task), "decode_config").validate()


__all__ = ["DecodeConfig", "SEARCHES", "task_options", "decode_config_for"]
