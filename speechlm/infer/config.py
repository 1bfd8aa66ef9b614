"""``DecodeConfig``: every option of :func:`speechlm.infer.generate`, loadable from YAML.

A decode YAML (a recipe's ``conf/decode.yaml``, a model dir's ``decode.yaml``, ``speechlm decode
--decode-config``) holds these keys, then per-task changes under ``tasks:``::

    search: greedy
    max_len: 400
    tasks:
      tts: {search: sample, temperature: 0.8, top_k: 30}
"""
from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from speechlm.config import ConfigError
from speechlm.utils.precision import PRECISIONS

SEARCHES = ("greedy", "sample", "beam", "ctc_greedy")
ORDINAL = ("", "mean", "median")


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
    # tokenizers whose streams are ordinal fields (quantizer indices in their natural order, e.g.
    # codec2's pitch, energy and LSP fields: Tokenizer.ordinal_fields): "mean" | "median" takes each
    # field's expected value | median under the distribution the search would draw from (greedy:
    # temperature 1) instead of a draw or the argmax, so a near miss costs one step, not a jump;
    # end tokens keep their own probability. "" = off
    ordinal: str = ""
    ordinal_streams: list[int] = field(default_factory=list)  # the tokenizer streams it applies to; []: all
    # TTS targets led by a phone stream (codec2_phones): the tokenizer of the text condition
    # (espeak_phones) whose phones that stream must walk through in order ("" = free), with at most
    # follow_max_silence silent frames in a row before the last phone and, with follow_max_stretch
    # > 0, no phone but the last held longer than that many times the mean frames per phone of
    # the predicted length (speechlm.infer.follow)
    follow_phones: str = ""
    follow_max_silence: int = 10
    follow_max_stretch: float = 0.0
    seed: int = 0
    kv_cache: bool = True  # False: recompute the whole sequence every step (reference / benchmarks)
    batch_size: int = 16  # prompts decoded together by the decode command
    # decoding's one precision setting (training has the train config's): fp32 | bf16 | fp16 (GPU)
    # | auto (bf16 on a GPU or CPU that has it, else fp16 on a GPU, fp32 on CPU)
    precision: str = "fp32"

    def validate(self, where: str = "decode") -> "DecodeConfig":
        """Check the values; errors name ``where`` (a file, or file and task) and the key."""
        def bad(msg: str) -> ConfigError:
            return ConfigError(f"{where}: {msg}")

        if self.search not in SEARCHES:
            raise bad(f"search: {self.search!r} is not one of {', '.join(SEARCHES)}")
        if self.precision not in PRECISIONS:
            raise bad(f"precision: {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.temperature < 0:
            raise bad(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise bad(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p < 1:
            raise bad(f"min_p must be in [0, 1), got {self.min_p}")
        if self.top_k < 0:
            raise bad(f"top_k must be >= 0, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise bad(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        for key in ("nbest", "beam_size", "batch_size"):
            if getattr(self, key) < 1:
                raise bad(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.nbest > 1 and self.search in ("greedy", "ctc_greedy"):
            raise bad(f"nbest {self.nbest}: search {self.search!r} gives one hypothesis; use search 'beam' (text "
                      "targets) or 'sample' for an n-best list")
        if self.search == "beam" and self.nbest > self.beam_size:
            raise bad(f"nbest {self.nbest} > beam_size {self.beam_size} (beam search keeps at most beam_size)")
        if self.ordinal not in ORDINAL:
            raise bad(f"ordinal: {self.ordinal!r} is not one of 'mean', 'median' or '' (off)")
        if any(s < 0 for s in self.ordinal_streams):
            raise bad(f"ordinal_streams must be stream indices >= 0, got {self.ordinal_streams}")
        if self.follow_max_silence < 0 or self.follow_max_stretch < 0:
            raise bad(f"follow_max_silence and follow_max_stretch must be >= 0, got {self.follow_max_silence}, "
                      f"{self.follow_max_stretch}")
        if self.search in ("beam", "ctc_greedy"):
            # options only the token-by-token sampler applies: refuse them rather than ignore them
            for key, off in (("cfg_scale", 1.0), ("repetition_penalty", 1.0), ("ordinal", ""), ("follow_phones", "")):
                if getattr(self, key) != off:
                    raise bad(f"{key}: {getattr(self, key)} is not applied by search {self.search!r} (only greedy "
                              f"and sample use it); remove it or set it to {off!r} for this task")
        if not 0 <= self.ctc_weight <= 1:
            raise bad(f"ctc_weight must be in [0, 1], got {self.ctc_weight}")
        if not 0 <= self.end_threshold <= 1:
            raise bad(f"end_threshold must be in [0, 1], got {self.end_threshold}")
        if self.min_len_prior < 0 or self.max_len_prior < 0 or (
                self.max_len_prior and self.min_len_prior > self.max_len_prior):
            raise bad(f"need 0 <= min_len_prior <= max_len_prior (or max_len_prior 0), got "
                      f"{self.min_len_prior}, {self.max_len_prior}")
        if self.length_scale <= 0:
            raise bad(f"length_scale must be > 0, got {self.length_scale}")
        if self.max_len < 1:
            raise bad(f"max_len must be >= 1, got {self.max_len}")
        if self.min_len < 0 or self.min_len > self.max_len:
            raise bad(f"min_len {self.min_len} must be in [0, max_len {self.max_len}]")
        if self.min_len_ratio < 0 or self.max_len_ratio < 0 or (
                self.max_len_ratio and self.min_len_ratio > self.max_len_ratio):
            raise bad(f"need 0 <= min_len_ratio <= max_len_ratio (or max_len_ratio 0), got "
                      f"{self.min_len_ratio}, {self.max_len_ratio}")
        return self

    @property
    def temperature_used(self) -> float:
        return 0.0 if self.search == "greedy" else self.temperature


def task_options(options: dict, task: str, where: str = "decode config") -> dict:
    """Decoding options for ``task``: the top-level keys, updated by ``tasks: {<task>: {...}}``."""
    if not isinstance(options, dict):
        raise ConfigError(f"{where}: expected a mapping of decoding options, got {type(options).__name__}")
    options = dict(options)
    per_task = options.pop("tasks", None) or {}
    if not isinstance(per_task, dict) or not all(isinstance(v, dict) for v in per_task.values()):
        raise ConfigError(f"{where}: 'tasks' must map task names to option dicts, e.g. tasks: {{tts: {{search: sample}}}}")
    return {**options, **per_task.get(task, {})}


def check_decode_options(options: dict | None, where: str = "decode config",
                         known_tasks: Collection[str] | None = None) -> None:
    """Validate a whole decode YAML: the top-level keys and every ``tasks:`` entry (each merged over
    the top level), naming ``where`` (the file) and the key; with ``known_tasks`` a task name under
    ``tasks:`` outside them (a typo) is an error with the closest name suggested."""
    from speechlm.config import from_dict
    from speechlm.registry import suggest

    options = options or {}
    task_options(options, "", where)  # the shape of 'tasks'
    top = {k: v for k, v in options.items() if k != "tasks"}
    from_dict(DecodeConfig, top, where).validate(where)
    for task, opts in (options.get("tasks") or {}).items():
        if known_tasks is not None and task not in known_tasks:
            raise ConfigError(f"{where}: tasks.{task}: unknown task {task!r}{suggest(str(task), list(known_tasks))}; "
                              f"known tasks: {', '.join(sorted(known_tasks))}")
        from_dict(DecodeConfig, opts, f"{where}: tasks.{task}")
        decode_config_for(options, task, where)


def check_task_entry(options: dict | None, task: str, where: str = "decode config") -> None:
    """Decoding ``task`` with a decode YAML that has no ``tasks.<task>`` entry but one whose name is
    close to it (``tasks.asrr``) is a typo: an error naming it. Entries of other tasks are the
    options of other models (a recipe's file serves several runs) and are not checked here."""
    import difflib

    entries = [str(t) for t in ((options or {}).get("tasks") or {})]
    if task in entries:
        return
    # 0.8: `asrr` for asr, not a sibling task such as `asr_en` or `tts_spoken_phones` for tts_phones
    close = difflib.get_close_matches(task, entries, n=1, cutoff=0.8)
    if close:
        raise ConfigError(f"{where}: tasks.{close[0]}: decoding task {task!r}, which has no entry; "
                          f"did you mean {task!r}?")


def decode_config_for(options: dict | None, task: str, where: str = "decode config") -> DecodeConfig:
    """The validated :class:`DecodeConfig` of ``task`` from a decode YAML's contents (``where``: the
    file, for error messages)."""
    from speechlm.config import from_dict

    per_task = task in ((options or {}).get("tasks") or {}) if isinstance(options, dict) else False
    here = f"{where} (task {task}: top level + tasks.{task})" if per_task else where
    return from_dict(DecodeConfig, task_options(options or {}, task, where), here).validate(here)


__all__ = ["DecodeConfig", "SEARCHES", "task_options", "decode_config_for", "check_decode_options", "check_task_entry"]
