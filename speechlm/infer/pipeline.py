"""Load a model dir and run tasks on raw inputs: ``speechlm.load(path).asr(wav)``.

A model dir (packed by ``speechlm pack``; format: :mod:`speechlm.models.model_dir`) holds
``config.json``, ``model.safetensors``, ``token_list.json``, ``tokenizers.yaml`` (paths relative
to the dir), ``tasks/*.yaml`` and optionally ``decode.yaml``; dirs of older versions
(``config.yaml``) load too.

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
from dataclasses import dataclass
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

AudioValue = Any  # a path, a {"path","start","end"} dict, (waveform, sample_rate), or a `cmd |` pipe (allow_pipes)


class InputError(ValueError):
    """One input cannot be decoded (no tokens, longer than the model's context, unreadable audio);
    the message names the utterance and what would fix it."""


class Pipeline:
    """A SpeechLM with its tokenizers and task templates.

    Audio inputs are plain paths, ``{"path", "start", "end"}`` dicts or ``(waveform, sample_rate)``;
    a Kaldi ``cmd |`` pipe string runs through the shell only with ``allow_pipes=True`` (the decode
    command sets it for recipe data dirs), so a string from a user or a server never runs a command.
    """

    def __init__(self, model, tokenizers: dict[str, Tokenizer], templates: dict[str, TaskTemplate],
                 path: Path | None = None, decode_options: dict | None = None, allow_pipes: bool = False) -> None:
        self.model = model.eval()
        self.vocab = model.vocab
        self.tokenizers = tokenizers
        self.templates = templates
        self.path = path
        self.voices = find_voices(path)  # speaker prompts shipped in the model dir, by name
        self.decode_options = decode_options or {}  # a decode YAML: defaults + ``tasks: {task: {...}}``
        self.allow_pipes = allow_pipes

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu", allow_pipes: bool = False) -> "Pipeline":
        """A packed model dir: its model, tokenizers (paths relative to it), tasks and ``decode.yaml``."""
        from speechlm.models.model_dir import check_model_dir

        path = check_model_dir(path)
        if not (path / "tokenizers.yaml").is_file():
            raise FileNotFoundError(f"{path} is not a packed speechlm model dir: tokenizers.yaml is missing "
                                    f"(make one with `speechlm pack`)")
        decode = path / "decode.yaml"
        return cls.assemble(path, path, decode if decode.is_file() else None, device, allow_pipes, base_dir=path)

    @classmethod
    def assemble(cls, model_dir: str | os.PathLike, files_dir: str | os.PathLike,
                 decode_yaml: str | os.PathLike | None = None, device: str = "cpu", allow_pipes: bool = False,
                 base_dir: str | os.PathLike | None = None) -> "Pipeline":
        """The model of ``model_dir`` (a packed dir, or a checkpoint of a run) with the tokenizers and
        tasks of ``files_dir`` (the same packed dir, or the run dir; tokenizer paths relative to
        ``base_dir``) and the decode options of ``decode_yaml`` (checked; an old model's ``autocast``
        key gives their precision unless they set one)."""
        from speechlm.models import SpeechLM
        from speechlm.models.config import legacy_decode_precision

        model_dir, files_dir = Path(model_dir), Path(files_dir)
        model = SpeechLM.from_pretrained(model_dir, map_location=device)
        tokenizers = load_tokenizers(files_dir / "tokenizers.yaml", base_dir=base_dir)
        templates = {p.stem: load_template_file(p) for p in sorted((files_dir / "tasks").glob("*.yaml"))}
        decode_options = None
        if decode_yaml is not None:
            from speechlm.infer.config import check_decode_options

            decode_options = load_yaml(decode_yaml)
            check_decode_options(decode_options, str(decode_yaml), known_tasks(templates))
        legacy = legacy_decode_precision(model_dir)  # an old model's autocast key: decode as it did
        if legacy and "precision" not in (decode_options or {}):
            decode_options = {**(decode_options or {}), "precision": legacy}
        return cls(model, tokenizers, templates, model_dir, decode_options, allow_pipes)

    def decode_config(self, task: str):
        """The model dir's decoding options for ``task`` (its ``decode.yaml``), else the defaults."""
        from speechlm.infer.config import decode_config_for

        where = str(self.path / "decode.yaml") if self.path is not None else "decode options"
        return decode_config_for(self.decode_options, task, where)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---- inputs -> local tokens ---------------------------------------------------------
    def template(self, task: str) -> TaskTemplate:
        if task not in self.templates:
            raise KeyError(f"task {task!r} is not in this model; it has: {', '.join(self.templates)}")
        return self.templates[task]

    def encode_value(self, tokenizer: str, value: Any, utt: str = "input", allow_pipes: bool | None = None) -> np.ndarray:
        """One segment value -> local tokens ``[frames, streams]`` (``allow_pipes``: default the pipeline's)."""
        tok = self.tokenizers[tokenizer]
        if isinstance(tok, AudioTokenizer):
            if isinstance(value, tuple):
                wav, sr = value
            else:
                from speechlm.data.audio import load_audio

                pipes = self.allow_pipes if allow_pipes is None else allow_pipes
                wav, sr = load_audio(value, tok.sample_rate, utt_id=utt, allow_pipes=pipes), tok.sample_rate
                return tok.encode_file(np.asarray(wav, dtype=np.float32), sr, value)
            return tok.encode(np.asarray(wav, dtype=np.float32), sr)
        return tok.encode(value)

    def condition_tokens(self, template: TaskTemplate, inputs: dict[str, Any], utt: str = "input",
                         allow_pipes: bool | None = None) -> dict[str, np.ndarray]:
        """Tokenize the condition segments of ``template`` from ``inputs`` (values or ready tokens).

        A condition that gives no tokens (an empty text, or one of punctuation only, which a
        phonemizer turns into zero phones) is an :class:`InputError` naming ``utt``: the model
        would otherwise generate from nothing (e.g. 20 s of babble for TTS)."""
        out = {}
        for seg in template.conditions:
            if seg.name not in inputs:
                raise KeyError(f"{utt}: task {template.name!r} needs input {seg.name!r} ({seg.modality}); "
                               f"inputs are: {', '.join(template_inputs(template))}")
            v = inputs[seg.name]
            toks = v if isinstance(v, np.ndarray) and v.dtype.kind == "i" else \
                self.encode_value(seg.tokenizer, v, utt, allow_pipes)
            if len(toks) == 0:
                what = f" (the text {v!r} is empty or only punctuation)" if isinstance(v, str) else ""
                raise InputError(f"{utt}: input {seg.name!r} of task {template.name!r} gives no {seg.tokenizer} "
                                 f"tokens{what}; give it something to say")
            if seg.modality == "spk_prompt" and seg.max_frames:
                toks = toks[: seg.max_frames]
            out[seg.name] = toks
        return out

    @property
    def context(self) -> int | None:
        """The longest sequence (positions) the model was built for, None if it states none."""
        from speechlm.train.build import model_context

        return model_context(self.model)

    def prompt_example(self, template: TaskTemplate, tokens: dict[str, np.ndarray], utt: str = "input"):
        """The decoding prompt of one input (conditions + first target marker); an input whose prompt
        alone fills the model's context is an :class:`InputError` naming ``utt`` and the limit
        (training never showed the model such a sequence: it drops them)."""
        ex = build_example(utt, template, tokens, self.vocab, self.model.n_streams, with_targets=False)
        limit = self.context
        if limit is not None:
            n = self.prompt_positions(ex)
            if n >= limit:
                raise InputError(f"{utt}: the input takes {n} positions but the model's context is {limit} "
                                 f"(max_len), with no room left for the output; shorten or split the input")
        return ex

    def prompt_positions(self, example) -> int:
        """Positions ``example`` takes in the backbone (after the stream pattern's layout)."""
        b = collate([example], self.vocab.pad_id)
        with torch.no_grad():
            prep = self.model.prepare(b.tokens, b.loss_weight, b.kinds, b.lengths, b.prefix_lens)
        return int(prep.lengths[0])

    # ---- generation -----------------------------------------------------------------------
    def generate_tokens(self, task: str, batch_inputs: Sequence[dict[str, np.ndarray]], config=None,
                        ids: Sequence[str] | None = None) -> list[np.ndarray]:
        """Local target tokens ``[frames, streams]`` for each input dict of condition tokens."""
        return [toks for toks, _ in self.generate_hypotheses(task, batch_inputs, config, ids)]

    def generate_hypotheses(self, task: str, batch_inputs: Sequence[dict[str, np.ndarray]], config=None,
                            ids: Sequence[str] | None = None) -> list[tuple[np.ndarray, bool]]:
        """(local target tokens, stopped) per input: ``stopped`` is False where a length limit, not
        the model's end token, ended the output."""
        return [(h[0].tokens, h[0].stopped) for h in self.generate_outputs(task, batch_inputs, config, ids)]

    def generate_outputs(self, task: str, batch_inputs: Sequence[dict[str, np.ndarray]], config=None,
                         ids: Sequence[str] | None = None, followers=None) -> list[list["Output"]]:
        """The ``config.nbest`` hypotheses (:class:`Output`) of each input (condition tokens): beam
        search best first, samples in the order drawn. Inputs beyond the model's context are an
        :class:`InputError` naming the input's id (``ids``, default ``input0``, ``input1``, ...).
        ``followers``: a decoding rule per input (:mod:`speechlm.infer.follow`), or None."""
        from speechlm.infer.generate import DecodeConfig, generate_nbest

        template = self.template(task)
        target = template.targets[0]
        ids = list(ids or [f"input{i}" for i in range(len(batch_inputs))])
        examples = [self.prompt_example(template, segs, u) for u, segs in zip(ids, batch_inputs)]
        with torch.inference_mode():
            hyps = generate_nbest(self.model, collate(examples, self.vocab.pad_id).to(self.device),
                                  config or DecodeConfig(), ordinal_fields=self.ordinal_fields(), followers=followers)
        S, pad = self.model.n_streams, self.vocab.pad_id
        return [[Output(self.to_local(target.tokenizer, h.frames(S, pad)), h.stopped, float(h.score)) for h in hs]
                for hs in hyps]

    def ordinal_fields(self) -> dict[str, list[list[int]]]:
        """Tokenizer name -> its ordinal fields per stream, for those that have them (decoding's
        ``ordinal`` option: a field's median or expected value instead of a draw)."""
        return {name: fields for name, tok in self.tokenizers.items() if (fields := tok.ordinal_fields)}

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
        return self.generate_nbest(task, 1, config, **inputs)[0][0]

    def generate_nbest(self, task: str, n: int | None = None, config=None, **inputs: Any) -> list[tuple[Any, float]]:
        """The ``n`` best outputs of ``task`` on one set of inputs, as ``(output, score)`` pairs.

        ``output`` is text (text targets) or ``(wav, sr)``; ``score`` is the hypothesis' log-probability
        (beam: the search score, length-normalised by ``length_penalty``; greedy/sample: the sum
        over its tokens at temperature 1). ``n`` (default: the config's ``nbest``) sets how many:
        with ``search: beam`` (text targets) they are distinct hypotheses best first and the beam is
        widened to ``n`` if needed; with ``search: sample`` they are ``n`` independent draws in draw
        order. Greedy and CTC-greedy search give one hypothesis only.

        Example (retry with the next-best hypothesis when the best is not a valid tool call)::

            >>> cfg = lm.decode_config("spoken_command")                     # doctest: +SKIP
            >>> for text, score in lm.generate_nbest("spoken_command", 4, cfg, speech="cmd.wav"):  # doctest: +SKIP
            ...     if is_valid_call(text):
            ...         break
        """
        import dataclasses

        template = self.template(task)
        config = config or self.decode_config(task)
        if n is not None and n != config.nbest:  # greedy searches refuse n > 1 (DecodeConfig.validate)
            config = dataclasses.replace(config, nbest=n, beam_size=max(config.beam_size, n))
        outs = self.generate_outputs(task, [self.condition_tokens(template, inputs)], config.validate(), ["input"])[0]
        target = template.targets[0]
        tok = self.tokenizers[target.tokenizer]
        result = []
        for o in outs:
            value = self.detokenize(target.tokenizer, o.tokens)
            result.append(((value, tok.sample_rate) if isinstance(tok, AudioTokenizer) else value, o.score))
        return result

    def asr(self, wav: AudioValue, sample_rate: int | None = None, task: str = "asr", config=None) -> str:
        """Transcribe a wav path or waveform (a ``cmd |`` string only with ``allow_pipes``)."""
        value = (wav, sample_rate) if sample_rate else wav
        seg = self.template(task).conditions[0].name
        return self.generate(task, config, **{seg: value})

    def tts(self, text: str, speaker_prompt: AudioValue | None = None, task: str | None = None, config=None):
        """Synthesize ``text``; with ``speaker_prompt`` (a wav of the target voice) uses the prompted task.
        Text that gives no phones (empty, punctuation only) is an :class:`InputError`."""
        task, inputs = self.tts_inputs(text, speaker_prompt, task)
        return self.generate(task, config, **inputs)

    def tts_task(self, prompted: bool) -> str | None:
        """The model's TTS task with a speaker prompt (``prompted``) or without (:func:`tts_task`)."""
        return tts_task(self.templates, prompted)

    def speech_task(self) -> str | None:
        """The TTS task ``lm.tts(text)`` runs without a prompt: the prompt-free one, else the prompted
        one with the model dir's voice (``voices/default.wav``, else the first); None where neither."""
        return self.tts_task(False) or (self.tts_task(True) if self.voices else None)

    def tts_inputs(self, text: str, speaker_prompt: AudioValue | None = None,
                   task: str | None = None) -> tuple[str, dict[str, Any]]:
        """The TTS task (:meth:`tts_task`; with a speaker prompt the prompted one, without one
        :meth:`speech_task`) and its inputs; a prompted task without a prompt takes the model's voice."""
        prompted = speaker_prompt is not None
        task = task or (self.tts_task(True) if prompted else self.speech_task())
        if task is None:
            other = self.tts_task(not prompted)
            if other is None:
                raise InputError(f"this model has no TTS task; it has: {', '.join(self.templates)}")
            raise InputError(f"this model's TTS task {other!r} " + (
                "takes no speaker prompt: it speaks the voice it was trained on" if prompted
                else "needs a speaker prompt (a wav of the voice to use; `speechlm pack --voices-dir` ships one)"))
        template = self.template(task)
        if speaker_prompt is None and self.voices and any(s.modality == "spk_prompt" for s in template.conditions):
            speaker_prompt = str(self.voices[default_voice(self.voices)])
        inputs = {}
        for seg in template.conditions:
            inputs[seg.name] = speaker_prompt if seg.modality == "spk_prompt" else text
        return task, inputs

    # ---- streaming (speechlm/infer/stream.py) --------------------------------------------------
    def generate_stream(self, task: str, config=None, **inputs: Any):
        """Text pieces of ``task``'s (text) output as they are decoded (whole words; see
        :class:`speechlm.infer.stream.TextStream`): ``"".join`` of them is :meth:`generate`'s text.
        Greedy or sample search only (else :class:`~speechlm.infer.stream.StreamError`); input
        errors raise here, before the first piece. ``close()`` the stream to stop decoding early."""
        from speechlm.infer.stream import stream_text

        return stream_text(self, task, inputs, config)

    def tts_stream(self, text: str, speaker_prompt: AudioValue | None = None, task: str | None = None,
                   config=None, chunk_frames: int = 8):
        """Float32 mono chunks of :meth:`tts`'s audio as its frames become final, about
        ``chunk_frames`` frames each, at the stream's ``sample_rate`` (the target tokenizer's,
        :meth:`sample_rate_of`). With Codec 2 the chunks concatenated are :meth:`tts`'s waveform
        (same tokens, one decoder state). An ``ar_nar`` model yields every chunk at the end (its NAR
        levels need the whole AR pass). Input and option errors raise here; ``close()`` stops decoding.

        Example::

            >>> stream = lm.tts_stream("hello world")              # doctest: +SKIP
            >>> for chunk in stream:                               # doctest: +SKIP
            ...     speaker.write(chunk, stream.sample_rate)
        """
        from speechlm.infer.stream import stream_audio

        task, inputs = self.tts_inputs(text, speaker_prompt, task)
        return stream_audio(self, task, inputs, config, chunk_frames)

    def sample_rate_of(self, name: str) -> int:
        """Sample rate of an audio tokenizer, or of the audio output of the task ``name``."""
        if name not in self.tokenizers:
            name = self.template(name).targets[0].tokenizer
        tok = self.tokenizers[name]
        if not isinstance(tok, AudioTokenizer):
            raise ValueError(f"{name!r} is a text tokenizer: it has no sample rate")
        return int(tok.sample_rate)


@dataclass
class Output:
    """One hypothesis: local target tokens ``[frames, streams]``, whether the model's end token
    ended it (not a length limit), and its score (log-probability, see :meth:`Pipeline.generate_nbest`)."""

    tokens: np.ndarray
    stopped: bool
    score: float


def find_voices(model_dir: Path | None) -> dict[str, Path]:
    """Named speaker prompts of a model dir: ``voices/<name>.wav`` (also .flac), by name."""
    if model_dir is None or not (Path(model_dir) / "voices").is_dir():
        return {}
    return {p.stem: p for p in sorted((Path(model_dir) / "voices").iterdir()) if p.suffix.lower() in (".wav", ".flac")}


def default_voice(names) -> str:
    """The voice a prompted TTS task uses when given no prompt: ``default``, else the first by name."""
    return "default" if "default" in names else sorted(names)[0]


def tts_task(templates: dict[str, TaskTemplate], prompted: bool) -> str | None:
    """The text -> speech task among ``templates`` with a speaker prompt (``prompted``) or without:
    ``tts`` / ``plain_tts`` where there, else the first other such task by name (the mini recipe's
    ``tts_phones``); None where there is none."""
    def fits(t: TaskTemplate) -> bool:
        return (bool(t.targets) and t.targets[0].modality == "audio"
                and any(s.modality == "text" for s in t.conditions)
                and any(s.modality == "spk_prompt" for s in t.conditions) == prompted)

    first = "tts" if prompted else "plain_tts"
    names = [first, *sorted(n for n in templates if n != first)]
    return next((n for n in names if n in templates and fits(templates[n])), None)


def known_tasks(templates: dict[str, TaskTemplate]) -> set[str]:
    """Task names a decode YAML may configure: the model's tasks and the built-in ones."""
    from speechlm.config import ConfigError
    from speechlm.tasks.template import find_templates

    try:
        return set(templates) | set(find_templates())
    except ConfigError:  # no built-in task dir in this installation
        return set(templates)


def template_inputs(template: TaskTemplate) -> list[str]:
    return [f"{s.name} ({s.modality})" for s in template.conditions]


def load(path: str | os.PathLike, device: str = "cpu", allow_pipes: bool = False) -> Pipeline:
    """Load a packed or saved model dir; see :class:`Pipeline` (``allow_pipes``: run ``cmd |`` inputs)."""
    return Pipeline.load(path, device, allow_pipes)
