"""Intelligibility of generated speech: transcribe it with an independent recognizer, then
WER/CER against the text it was generated from.

A recognizer's own errors set a floor under this figure: Whisper tiny.en (beam 5) on 12
espeak-ng sentences makes 11% WER at 22 kHz, 36% on the same audio at 8 kHz and 26% after
Codec 2 resynthesis (``bench/eval_floor.py``). So report the figure next to the same
recognizer's score on the ground-truth audio, and on codec-resynthesized ground truth when the
model generates codec tokens: :func:`intelligibility_floor` does that.

Example:
    >>> from speechlm.eval import build_metric
    >>> metric = build_metric("intelligibility", recognizer="whisper")   # doctest: +SKIP
    >>> metric({"u1": "decode/wav/u1.wav"}, {"u1": "hello world"}).summary["wer"]  # doctest: +SKIP
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

from speechlm.eval.asr import error_rates, get_normalizer
from speechlm.eval.audio import load_audio, spec_name
from speechlm.eval.base import METRICS, Metric, MetricResult
from speechlm.eval.recognizers import SAMPLE_RATE, Recognizer, build_recognizer

logger = logging.getLogger(__name__)

_CACHE: dict[tuple, Recognizer] = {}


def get_recognizer(name: str = "whisper", **options: Any) -> Recognizer:
    """Build recognizer ``name`` once per process and option set (models take seconds to load)."""
    key = (name, tuple(sorted((k, str(v)) for k, v in options.items() if v is not None)))
    if key not in _CACHE:
        _CACHE[key] = build_recognizer(name, **options)
    return _CACHE[key]


class TranscriptCache:
    """Transcripts of reference audio kept between runs: a floor is the same for every model
    scored on a test set, so it is computed once per recognizer and audio file.

    A JSONL file of ``{"recognizer", "audio", "stamp", "text"}``; an entry counts only while the
    file's size and modification time (``stamp``) are unchanged. Pipes are never cached.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.entries: dict[tuple[str, str], tuple[str, str]] = {}
        self.hits = 0
        if self.path.exists():
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    try:
                        e = json.loads(line)
                        self.entries[(e["recognizer"], e["audio"])] = (e["stamp"], e["text"])
                    except (json.JSONDecodeError, KeyError, TypeError):
                        logger.warning("%s: skipping a corrupt cache line", self.path)

    @staticmethod
    def stamp(spec: Any) -> str | None:
        path = spec.get("path") if isinstance(spec, dict) else spec
        if not isinstance(path, (str, os.PathLike)) or str(path).rstrip().endswith("|"):
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        return f"{st.st_size}:{st.st_mtime_ns}"

    def get(self, recognizer: str, spec: Any) -> str | None:
        stamp = self.stamp(spec)
        hit = self.entries.get((recognizer, spec_name(spec)))
        if stamp is not None and hit is not None and hit[0] == stamp:
            self.hits += 1
            return hit[1]
        return None

    def put(self, recognizer: str, spec: Any, text: str) -> None:
        stamp = self.stamp(spec)
        if stamp is not None:
            self.entries[(recognizer, spec_name(spec))] = (stamp, text)

    def save(self) -> None:
        from speechlm.utils.fileio import atomic_open

        with atomic_open(self.path) as f:
            for (rec, audio), (stamp, text) in sorted(self.entries.items()):
                f.write(json.dumps({"recognizer": rec, "audio": audio, "stamp": stamp, "text": text},
                                   ensure_ascii=False) + "\n")


def transcribe_all(recognizer: Recognizer, wavs: Mapping[str, Any], ids: list[str],
                   desc: str = "transcribe", cache: TranscriptCache | None = None) -> dict[str, str]:
    """Transcribe ``wavs[utt]`` for each id (audio resampled to 16 kHz); errors name the utterance.

    With a ``cache``, transcripts of unchanged files are reused and new ones are added to it.
    """
    from tqdm import tqdm

    out = {}
    rec_name = recognizer.describe()
    for utt in tqdm(ids, desc=desc, unit="utt", disable=len(ids) < 10):
        if cache is not None and (hit := cache.get(rec_name, wavs[utt])) is not None:
            out[utt] = hit
            continue
        wav, _ = load_audio(wavs[utt], SAMPLE_RATE, utt)
        if len(wav) == 0:
            logger.warning("utterance %r: empty audio %s; transcript is empty", utt, spec_name(wavs[utt]))
            out[utt] = ""
            continue
        try:
            out[utt] = recognizer.transcribe(wav)
        except Exception as e:
            raise RuntimeError(f"utterance {utt!r}: {recognizer.describe()} failed on "
                               f"{spec_name(wavs[utt])}: {e}") from e
        if cache is not None:
            cache.put(rec_name, wavs[utt], out[utt])
    return out


@METRICS.register("intelligibility")
class Intelligibility(Metric):
    """WER and CER (%) of a recognizer's transcripts of generated speech against the input text.

    Options: ``recognizer`` (registry name, default ``whisper``), ``asr_model_dir`` (a local
    model dir for it), ``asr_beam_size``, ``normalizer`` (see :mod:`speechlm.eval.asr`).
    """

    name = "intelligibility"
    hyp_kind = "audio"
    ref_kind = "text"

    def __init__(self, recognizer: str = "whisper", asr_model_dir: str | None = None,
                 asr_beam_size: int | None = None, normalizer: str = "default") -> None:
        get_normalizer(normalizer)
        self.normalizer = normalizer
        self.recognizer_name = recognizer
        self.recognizer_options = {"model_dir": asr_model_dir, "beam_size": asr_beam_size}
        self._recognizer: Recognizer | None = None

    @property
    def recognizer(self) -> Recognizer:
        if self._recognizer is None:
            self._recognizer = get_recognizer(self.recognizer_name, **self.recognizer_options)
        return self._recognizer

    def compute(self, ids: list[str], hyp: Mapping[str, Any], ref: Mapping[str, Any]) -> MetricResult:
        return self.score_audio(ids, hyp, ref, label="hypothesis")

    def score_audio(self, ids: list[str], wavs: Mapping[str, Any], text: Mapping[str, str],
                    label: str = "hypothesis", cache: TranscriptCache | None = None) -> MetricResult:
        """Transcribe ``wavs`` and score the transcripts against ``text`` (all ``ids``)."""
        transcripts = transcribe_all(self.recognizer, wavs, ids, desc=f"transcribe {label}", cache=cache)
        wer_sum, per_utt = error_rates(transcripts, text, ids, "word", self.normalizer)
        cer_sum, cer_utt = error_rates(transcripts, text, ids, "char", self.normalizer)
        for utt in ids:
            per_utt[utt]["cer"] = cer_utt[utt]["cer"]
            per_utt[utt]["transcript"] = transcripts[utt]
        summary = {"wer": wer_sum["wer"], "cer": cer_sum["cer"], "sub": wer_sum["sub"],
                   "del": wer_sum["del"], "ins": wer_sum["ins"], "n_utts": len(ids),
                   "n_ref_words": wer_sum["n_ref_words"]}
        return MetricResult(self.name, summary, per_utt, key="wer",
                            info={"recognizer": self.recognizer.describe(), "audio": label,
                                  "normalizer": self.normalizer})


def intelligibility_floor(
    metric: Intelligibility,
    text: Mapping[str, str],
    audio_sets: Mapping[str, Mapping[str, Any]],
    ids: list[str] | None = None,
    cache: str | os.PathLike | None = None,
) -> dict[str, MetricResult]:
    """The same recognizer's WER/CER on reference audio sets, e.g. ``{"ground truth": wav_scp,
    "codec resynthesis": wav_scp2}``: the floor to report next to the generated speech's figure.

    ``ids`` (default: those of ``text``) restricts scoring to the utterances that were
    generated; each set must hold all of them (the error names the set and the utterance).
    ``cache`` is a JSONL file of transcripts reused across runs (see :class:`TranscriptCache`).
    """
    ids = sorted(text) if ids is None else list(ids)
    store = TranscriptCache(cache) if cache else None
    out = {}
    for label, wavs in audio_sets.items():
        missing = [u for u in ids if u not in wavs]
        if missing:
            raise ValueError(f"{label} audio has no utterance {missing[0]!r}"
                             f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}")
        out[label] = metric.score_audio(ids, wavs, text, label=label, cache=store)
        logger.info("intelligibility floor (%s): WER %.2f%% CER %.2f%%", label,
                    out[label].summary["wer"], out[label].summary["cer"])
    if store is not None:
        if store.hits:
            logger.info("intelligibility floor: %d transcripts reused from %s", store.hits, store.path)
        store.save()
    return out
