"""Build one training sequence from a task template and the segments' local tokens.

Layout (``S`` streams; text and special tokens sit in stream 0 with ``<pad>`` elsewhere)::

    position:  0           1            2..a+1        a+2          a+3..      last
    stream 0:  <task:asr>  <seg:codec>  codec s0 ...  <seg:bpe>    text ...   <eos>
    stream 1:  <pad>       <pad>        codec s1 ...  <pad>        <pad>...   <pad>
    kind:      SPECIAL     SPECIAL      AUDIO_COND    SPECIAL      TEXT_TGT   SPECIAL

The marker of a target segment and the final ``<eos>`` belong to the targets: the model learns
to emit them (this is how it starts a segment and how it stops). Loss weights are per
(position, stream); positions of conditions get weight only when their segment asks for loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from speechlm.tasks import Segment, TaskTemplate
from speechlm.vocab import Vocabulary

# Position kinds (``Example.kinds``): what the model needs to treat positions differently
# (frame-rate reduction of audio conditions, CTC over audio-conditioned text targets).
PAD, SPECIAL, TEXT_COND, AUDIO_COND, TEXT_TGT, AUDIO_TGT = range(6)


def segment_kind(seg: Segment, is_target: bool) -> int:
    if seg.is_audio:
        return AUDIO_TGT if is_target else AUDIO_COND
    return TEXT_TGT if is_target else TEXT_COND


@dataclass
class Example:
    """One built sequence. ``tokens``: int64 ``[T, S]`` global ids; ``loss_weight``: float32
    ``[T, S]``; ``kinds``: int8 ``[T]``; ``prefix_len``: positions attended bidirectionally
    (0 unless the template is prefix-LM)."""

    id: str
    task: str
    tokens: np.ndarray
    loss_weight: np.ndarray
    kinds: np.ndarray
    prefix_len: int

    def __len__(self) -> int:
        return len(self.tokens)


def shift_tokens(local: np.ndarray, tokenizer: str, vocab: Vocabulary, n_streams: int) -> np.ndarray:
    """Local ``[frames, k]`` ids -> global ``[frames, n_streams]`` ids, ``<pad>`` in unused streams."""
    local = np.asarray(local)
    if local.ndim == 1:
        local = local[:, None]
    k = local.shape[1]
    if k != vocab.n_streams(tokenizer):
        raise ValueError(
            f"tokens have {k} streams but tokenizer {tokenizer!r} has {vocab.n_streams(tokenizer)} in the vocabulary"
        )
    if k > n_streams:
        raise ValueError(f"tokenizer {tokenizer!r} has {k} streams, more than the model's {n_streams}")
    out = np.full((len(local), n_streams), vocab.pad_id, dtype=np.int64)
    for s in range(k):
        start, end = vocab.stream_range(tokenizer, s)
        col = local[:, s].astype(np.int64)
        if len(col) and (col.min() < 0 or col.max() >= end - start):
            raise ValueError(
                f"token id out of range for {tokenizer!r} stream {s}: [{col.min()}, {col.max()}] not in [0, {end - start})"
            )
        out[:, s] = col + start
    return out


def build_example(
    utt_id: str,
    template: TaskTemplate,
    segments: dict[str, np.ndarray],
    vocab: Vocabulary,
    n_streams: int,
    with_targets: bool = True,
) -> Example:
    """Assemble ``[task][cond markers+tokens]...[tgt markers+tokens]...<eos>``.

    With ``with_targets=False`` the sequence stops after the first target's marker: this is the
    prompt a decoder continues from.
    """
    rows: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    kinds: list[np.ndarray] = []

    def special(tok_id: int, weight: float) -> None:
        row = np.full((1, n_streams), vocab.pad_id, dtype=np.int64)
        row[0, 0] = tok_id
        w = np.zeros((1, n_streams), dtype=np.float32)
        w[0, 0] = weight
        rows.append(row), weights.append(w), kinds.append(np.array([SPECIAL], dtype=np.int8))

    special(vocab.task_id(template.name), 0.0)
    prefix_len = 0
    for role, segs in (("conditions", template.conditions), ("targets", template.targets)):
        is_target = role == "targets"
        for seg in segs:
            w = seg.loss_weight if seg.loss else 0.0
            special(vocab.marker_id(seg.tokenizer), w)
            if is_target and not with_targets:
                return _finish(utt_id, template, rows, weights, kinds, prefix_len)
            if seg.name not in segments:
                raise KeyError(f"utterance {utt_id}: no tokens for segment {seg.name!r} of task {template.name!r}")
            tok = shift_tokens(segments[seg.name], seg.tokenizer, vocab, n_streams)
            mask = (tok != vocab.pad_id).astype(np.float32) * w
            rows.append(tok), weights.append(mask)
            kinds.append(np.full(len(tok), segment_kind(seg, is_target), dtype=np.int8))
        if not is_target and template.prefix_lm:
            prefix_len = sum(len(r) for r in rows)
    special(vocab.eos_id, template.targets[-1].loss_weight if template.targets[-1].loss else 0.0)
    return _finish(utt_id, template, rows, weights, kinds, prefix_len)


def _finish(utt_id, template, rows, weights, kinds, prefix_len) -> Example:
    return Example(
        id=utt_id,
        task=template.name,
        tokens=np.concatenate(rows),
        loss_weight=np.concatenate(weights),
        kinds=np.concatenate(kinds),
        prefix_len=prefix_len,
    )


def drop_conditions(ex: Example) -> Example:
    """The unconditional sequence of ``ex`` for classifier-free guidance: every condition token
    removed, the task token and every segment marker kept (``<task> <seg:a> <seg:b> <seg:tgt> ...``),
    the prefix (prefix LM) shortened by the removed positions.

    The one rule for both sides of guidance: training with a template's ``condition_dropout``
    applies it to the full sequence, decoding applies it to the prompt
    (:func:`speechlm.infer.context.unconditional`), so guidance subtracts a branch the model saw.
    """
    keep = (ex.kinds != TEXT_COND) & (ex.kinds != AUDIO_COND)
    removed = int((~keep[: ex.prefix_len]).sum())  # conditions all sit before the targets
    return Example(ex.id, ex.task, ex.tokens[keep], ex.loss_weight[keep], ex.kinds[keep],
                   ex.prefix_len - removed if ex.prefix_len else 0)
