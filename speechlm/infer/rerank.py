"""Choosing among sampled audio outputs by the model's own recognizer (``DecodeConfig.rerank``).

A sampled TTS output can drift off its text; another draw of the same prompt may not. With
``nbest: N`` and ``rerank: asr``, each of the N outputs is heard by the same model's CTC head
through its ``asr`` task (the output's own tokens where the two tasks share a codec, else its
audio encoded again), and the one whose text it finds most likely is kept. The judge is the model itself, never the evaluator.

Example (a decode YAML)::

    tasks:
      tts: {search: sample, nbest: 4, rerank: asr}
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from speechlm.config import ConfigError
from speechlm.data.batch import collate
from speechlm.infer.search import ctc_log_probs


def recognizer_task_check(pipe, task: str, generating) -> str:
    """Check that ``task`` can judge outputs of the template ``generating``; returns the name of the
    ``generating`` condition that holds the text the recognizer must hear (same data source)."""
    if task not in pipe.templates:
        raise ConfigError(f"decode: rerank: task {task!r} is not in this model; it has: {', '.join(pipe.templates)}")
    judge = pipe.templates[task]
    model = pipe.model
    if getattr(model, "ctc_range", None) is None:
        raise ConfigError("decode: rerank needs a model with a CTC head (model.ctc_weight > 0)")
    target = judge.targets[0]
    if (len(judge.conditions) != 1 or judge.conditions[0].modality != "audio" or len(judge.targets) != 1
            or target.tokenizer != model.config.ctc_tokenizer):
        raise ConfigError(f"decode: rerank: task {task!r} must hear one audio condition and write one target of "
                          f"the CTC head's tokenizer {model.config.ctc_tokenizer!r}")
    if generating.targets[0].modality != "audio":
        raise ConfigError(f"decode: rerank: task {generating.name!r} does not generate audio")
    for seg in generating.conditions:
        if seg.modality == "text" and seg.source == target.source:
            return seg.name
    raise ConfigError(f"decode: rerank: task {generating.name!r} has no text condition from {target.source!r} "
                      f"(the source of {task!r}'s target) to check its outputs against")


def recognizer_scores(pipe, task: str, text: str, outputs: list[np.ndarray], tokenizer: str, utt: str,
                      precision: str = "fp32") -> list[float]:
    """Per output (local tokens of ``tokenizer``): the log-probability per text token that the
    model's CTC head, run as ``task`` on that output, gives ``text`` (higher: the model hears the
    text better; -inf for an empty output). The output reaches the recognizer as its own tokens
    where the two tokenizers share a code (:meth:`AudioTokenizer.tokens_for`), else as audio."""
    judge = pipe.templates[task]
    speech, target = judge.conditions[0], judge.targets[0]
    made, hears = pipe.tokenizers[tokenizer], pipe.tokenizers[speech.tokenizer]
    labels = torch.as_tensor(pipe.encode_value(target.tokenizer, text, utt)[:, 0].astype(np.int64) + 1)  # 0 = blank
    scores = [float("-inf")] * len(outputs)
    examples, kept = [], []
    for i, tokens in enumerate(outputs):
        if not len(tokens):
            continue
        heard = made.tokens_for(hears, tokens)
        value = heard if heard is not None else (made.decode(tokens), made.sample_rate)
        examples.append(pipe.prompt_example(judge, pipe.condition_tokens(judge, {speech.name: value}, utt), utt))
        kept.append(i)
    if not examples:
        return scores
    logp, n = ctc_log_probs(pipe.model, collate(examples, pipe.vocab.pad_id).to(pipe.device), precision)
    loss = F.ctc_loss(logp.transpose(0, 1), labels.repeat(len(kept), 1), n.cpu(),
                      torch.full((len(kept),), len(labels)), blank=0, reduction="none")  # too short: inf
    for i, x in zip(kept, (-loss / max(len(labels), 1)).tolist()):
        scores[i] = x
    return scores


__all__ = ["recognizer_scores", "recognizer_task_check"]
