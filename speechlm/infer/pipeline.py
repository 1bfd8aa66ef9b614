"""Load a model dir and run tasks on raw inputs: ``speechlm.load(path).asr(wav)``.

A model dir (packed by ``speechlm pack``, or written by ``SpeechLM.save_pretrained``) holds
``config.yaml``, ``model.safetensors``, ``token_list.json``, ``tokenizers.yaml`` (paths relative
to the dir) and ``tasks/*.yaml``.

Example:
    >>> import speechlm
    >>> lm = speechlm.load("exp/mini/packed")                  # doctest: +SKIP
    >>> lm.asr("hello.wav")                                    # doctest: +SKIP
    'HELLO WORLD'
    >>> wav, sr = lm.tts("hello world", speaker_prompt="ref.wav")  # doctest: +SKIP
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from speechlm.config import load_yaml
from speechlm.data.batch import collate
from speechlm.data.sequence import build_example
from speechlm.tasks import TaskTemplate
from speechlm.tasks.template import load_template_file
from speechlm.tokenizers import AudioTokenizer, Tokenizer, load_tokenizers

log = logging.getLogger(__name__)

AudioValue = Any  # a path, a `cmd |` pipe, a {"path","start","end"} dict, or (waveform, sample_rate)


class Pipeline:
    """A SpeechLM with its tokenizers and task templates."""

    def __init__(self, model, tokenizers: dict[str, Tokenizer], templates: dict[str, TaskTemplate],
                 path: Path | None = None, decode_options: dict | None = None) -> None:
        self.model = model.eval()
        self.vocab = model.vocab
        self.tokenizers = tokenizers
        self.templates = templates
        self.path = path
        self.decode_options = decode_options or {}  # a decode YAML: defaults + ``tasks: {task: {...}}``

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu") -> "Pipeline":
        from speechlm.models import SpeechLM

        path = Path(path)
        for name in ("tokenizers.yaml", "token_list.json"):
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path} is not a speechlm model dir: {name} is missing (make one with `speechlm pack`)")
        model = SpeechLM.from_pretrained(path, map_location=device)
        tokenizers = load_tokenizers(path / "tokenizers.yaml", base_dir=path)
        templates = {p.stem: load_template_file(p) for p in sorted((path / "tasks").glob("*.yaml"))}
        decode_options = load_yaml(path / "decode.yaml") if (path / "decode.yaml").is_file() else None
        return cls(model, tokenizers, templates, path, decode_options)

    def decode_config(self, task: str):
        """The model dir's decoding options for ``task`` (its ``decode.yaml``), else the defaults."""
        from speechlm.infer.config import decode_config_for

        return decode_config_for(self.decode_options, task)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---- inputs -> local tokens ---------------------------------------------------------
    def template(self, task: str) -> TaskTemplate:
        if task not in self.templates:
            raise KeyError(f"task {task!r} is not in this model; it has: {', '.join(self.templates)}")
        return self.templates[task]

    def encode_value(self, tokenizer: str, value: Any, utt: str = "input") -> np.ndarray:
        """One segment value -> local tokens ``[frames, streams]``."""
        tok = self.tokenizers[tokenizer]
        if isinstance(tok, AudioTokenizer):
            if isinstance(value, tuple):
                wav, sr = value
            else:
                from speechlm.data.audio import load_audio

                wav, sr = load_audio(value, tok.sample_rate, utt_id=utt), tok.sample_rate
            return tok.encode(np.asarray(wav, dtype=np.float32), sr)
        return tok.encode(value)

    def condition_tokens(self, template: TaskTemplate, inputs: dict[str, Any], utt: str = "input") -> dict[str, np.ndarray]:
        """Tokenize the condition segments of ``template`` from ``inputs`` (values or ready tokens)."""
        out = {}
        for seg in template.conditions:
            if seg.name not in inputs:
                raise KeyError(f"{utt}: task {template.name!r} needs input {seg.name!r} ({seg.modality}); "
                               f"inputs are: {', '.join(template_inputs(template))}")
            v = inputs[seg.name]
            toks = v if isinstance(v, np.ndarray) and v.dtype.kind == "i" else self.encode_value(seg.tokenizer, v, utt)
            if seg.modality == "spk_prompt" and seg.max_frames:
                toks = toks[: seg.max_frames]
            out[seg.name] = toks
        return out

    # ---- generation -----------------------------------------------------------------------
    def generate_tokens(self, task: str, batch_inputs: Sequence[dict[str, np.ndarray]], config=None,
                        ids: Sequence[str] | None = None) -> list[np.ndarray]:
        """Local target tokens ``[frames, streams]`` for each input dict of condition tokens."""
        return [toks for toks, _ in self.generate_hypotheses(task, batch_inputs, config, ids)]

    def generate_hypotheses(self, task: str, batch_inputs: Sequence[dict[str, np.ndarray]], config=None,
                            ids: Sequence[str] | None = None) -> list[tuple[np.ndarray, bool]]:
        """(local target tokens, stopped) per input: ``stopped`` is False where a length limit, not
        the model's end token, ended the output."""
        from speechlm.infer.generate import DecodeConfig, generate_nbest

        template = self.template(task)
        target = template.targets[0]
        ids = list(ids or [f"input{i}" for i in range(len(batch_inputs))])
        examples = [
            build_example(u, template, segs, self.vocab, self.model.n_streams, with_targets=False)
            for u, segs in zip(ids, batch_inputs)
        ]
        with torch.inference_mode():
            hyps = generate_nbest(self.model, collate(examples, self.vocab.pad_id).to(self.device),
                                  config or DecodeConfig())
        S, pad = self.model.n_streams, self.vocab.pad_id
        return [(self.to_local(target.tokenizer, h[0].frames(S, pad)), h[0].stopped) for h in hyps]

    def to_local(self, tokenizer: str, frames: np.ndarray) -> np.ndarray:
        """Global-id frames -> local ids of ``tokenizer`` (streams it does not use are dropped)."""
        frames = np.asarray(frames)
        if frames.ndim == 1:
            frames = frames[:, None]
        n = self.vocab.n_streams(tokenizer)
        local = np.stack([frames[:, s] - self.vocab.offset(tokenizer, s) for s in range(n)], axis=1) if len(frames) \
            else np.zeros((0, n), dtype=np.int64)
        sizes = self.tokenizers[tokenizer].codebook_sizes
        ok = np.all((local >= 0) & (local < np.asarray(sizes)), axis=1)
        if not ok.all():
            log.warning("dropping %d frame(s) outside %s's codebooks", int((~ok).sum()), tokenizer)
            local = local[ok]
        return local.astype(np.int32)

    def detokenize(self, tokenizer: str, local: np.ndarray) -> Any:
        return self.tokenizers[tokenizer].decode(local)

    def generate(self, task: str, config=None, **inputs: Any) -> Any:
        """Run ``task`` on one set of inputs (segment name -> value); returns text or ``(wav, sr)``."""
        template = self.template(task)
        config = config or self.decode_config(task)
        toks = self.generate_tokens(task, [self.condition_tokens(template, inputs)], config)[0]
        target = template.targets[0]
        out = self.detokenize(target.tokenizer, toks)
        tok = self.tokenizers[target.tokenizer]
        return (out, tok.sample_rate) if isinstance(tok, AudioTokenizer) else out

    def asr(self, wav: AudioValue, sample_rate: int | None = None, task: str = "asr", config=None) -> str:
        """Transcribe a wav path or waveform."""
        value = (wav, sample_rate) if sample_rate else wav
        seg = self.template(task).conditions[0].name
        return self.generate(task, config, **{seg: value})

    def tts(self, text: str, speaker_prompt: AudioValue | None = None, task: str | None = None, config=None):
        """Synthesize ``text``; with ``speaker_prompt`` (a wav of the target voice) uses the prompted task."""
        task = task or ("tts" if speaker_prompt is not None else "plain_tts")
        template = self.template(task)
        inputs = {}
        for seg in template.conditions:
            inputs[seg.name] = speaker_prompt if seg.modality == "spk_prompt" else text
        return self.generate(task, config, **inputs)


def template_inputs(template: TaskTemplate) -> list[str]:
    return [f"{s.name} ({s.modality})" for s in template.conditions]


def load(path: str | os.PathLike, device: str = "cpu") -> Pipeline:
    """Load a packed or saved model dir; see :class:`Pipeline`."""
    return Pipeline.load(path, device)
