"""Read hypotheses (a decode dir) and references (a manifest dir or a Kaldi data dir) for scoring.

- decode dir: ``text`` (``utt words...``) and/or ``wav.scp`` (``utt path`` or ``utt cmd |``);
  relative wav paths are resolved against the decode dir.
- manifest dir: ``manifest.jsonl`` + ``template.yaml`` (see docs/interfaces.md). The reference
  text is the first *target* text segment (ASR, text generation) or, when the targets are audio,
  the first *condition* text segment (TTS input text); the reference audio is the first target
  audio segment (ground truth of TTS or resynthesis).
- Kaldi data dir: ``text`` and/or ``wav.scp`` (with ``segments`` when present).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def read_kaldi_map(path: str | Path, allow_empty_value: bool = True) -> dict[str, str]:
    """Read ``utt value`` lines; errors name the file and line (duplicates, missing value)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found")
    out: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            parts = line.split(maxsplit=1)
            utt, value = parts[0], parts[1].strip() if len(parts) > 1 else ""
            if not value and not allow_empty_value:
                raise ValueError(f"{path}:{n}: utterance {utt!r} has no value")
            if utt in out:
                raise ValueError(f"{path}:{n}: duplicate utterance id {utt!r}")
            out[utt] = value
    return out


def _resolve(spec: str, base: Path) -> str:
    """Make a relative wav path absolute against ``base`` when it does not exist as given."""
    if spec.endswith("|"):
        return spec
    p = Path(spec)
    if not p.is_absolute() and not p.exists() and (base / p).exists():
        return str((base / p).resolve())
    return spec


def read_wav_scp(path: str | Path, segments: str | Path | None = None) -> dict[str, Any]:
    """``wav.scp`` as ``utt -> audio spec``; with a Kaldi ``segments`` file, ``utt -> segment dict``."""
    path = Path(path)
    recs = {u: _resolve(v, path.parent) for u, v in read_kaldi_map(path, allow_empty_value=False).items()}
    if segments is None or not Path(segments).exists():
        return recs
    out: dict[str, Any] = {}
    with open(segments, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 4:
                raise ValueError(f"{segments}:{n}: expected 'utt recording start end', got {line.strip()!r}")
            utt, rec, start, end = parts
            if rec not in recs:
                raise ValueError(f"{segments}:{n}: recording {rec!r} of utterance {utt!r} not in {path}")
            out[utt] = {"path": recs[rec], "start": float(start), "end": float(end)}
    return out


@dataclass
class Hypotheses:
    """What a decode dir holds."""

    dir: Path
    text: dict[str, str] | None = None
    wav: dict[str, Any] | None = None

    def source(self, kind: str) -> str:
        return str(self.dir / ("text" if kind == "text" else "wav.scp"))


def read_hypotheses(decode_dir: str | Path) -> Hypotheses:
    """Read ``text`` and ``wav.scp`` from a decode dir (at least one must exist)."""
    d = Path(decode_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"decode dir not found: {d}")
    hyp = Hypotheses(d)
    if (d / "text").exists():
        hyp.text = read_kaldi_map(d / "text")
    if (d / "wav.scp").exists():
        hyp.wav = read_wav_scp(d / "wav.scp")
    if hyp.text is None and hyp.wav is None:
        raise FileNotFoundError(f"{d}: no 'text' or 'wav.scp' hypotheses; is this a decode dir?")
    return hyp


@dataclass
class References:
    """Reference text/audio of a test set, with names for reports and errors."""

    dir: Path
    text: dict[str, str] | None = None
    wav: dict[str, Any] | None = None
    text_source: str = ""
    wav_source: str = ""
    test_set: str = ""
    task: str = ""
    #: modality of the template's conditions/targets, e.g. {"conditions": ["text"], "targets": ["audio"]}
    modalities: dict[str, list[str]] = field(default_factory=dict)
    #: data-dir file of the text target segment (``text``, ``text.2`` ...), None if no text target
    text_target_source: str | None = None


def _segment_audio(value: Any, base: Path) -> Any:
    if isinstance(value, dict):
        return {**value, "path": _resolve(str(value["path"]), base)}
    return _resolve(str(value), base)


def read_manifest_refs(ref_dir: Path) -> References:
    """References from a manifest dir (``manifest.jsonl`` + ``template.yaml``)."""
    from speechlm.data.manifest import read_manifest

    template, examples = read_manifest(ref_dir)

    def first(segs: list, modality: str) -> str | None:
        return next((s.name for s in segs if s.modality == modality), None)

    text_seg = first(template.targets, "text") or first(template.conditions, "text")
    text_target = next((s for s in template.targets if s.modality == "text"), None)
    wav_seg = first(template.targets, "audio")
    refs = References(ref_dir, test_set=ref_dir.parent.name, task=template.name,
                      modalities={"conditions": [s.modality for s in template.conditions],
                                  "targets": [s.modality for s in template.targets]},
                      text_target_source=text_target.source if text_target else None)
    texts: dict[str, str] = {}
    wavs: dict[str, Any] = {}
    path = ref_dir / "manifest.jsonl"
    label = f"segment {text_seg!r}"
    for n, rec in enumerate(examples, 1):
        try:
            utt, segs = rec["id"], rec["segments"]
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}:{n}: not a manifest line (missing {e})") from e
        if utt in texts or utt in wavs:
            raise ValueError(f"{path}:{n}: duplicate utterance id {utt!r}")
        if text_target is None and "text" in rec:  # the words, where the text condition spells them otherwise
            texts[utt], label = str(rec["text"]), "the words, field 'text'"
        elif text_seg and text_seg in segs:
            texts[utt] = str(segs[text_seg])
        if wav_seg and wav_seg in segs:
            wavs[utt] = _segment_audio(segs[wav_seg], ref_dir)
    if texts:
        refs.text, refs.text_source = texts, f"{path} ({label})"
    if wavs:
        refs.wav, refs.wav_source = wavs, f"{path} (segment {wav_seg!r})"
    return refs


def read_references(ref_dir: str | Path) -> References:
    """Read a manifest dir or a Kaldi data dir (``text`` and/or ``wav.scp``)."""
    d = Path(ref_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"reference dir not found: {d}")
    if (d / "manifest.jsonl").exists():
        if not (d / "template.yaml").exists():
            raise FileNotFoundError(f"{d}: manifest.jsonl without template.yaml; re-run `speechlm prepare`")
        return read_manifest_refs(d)
    refs = References(d, test_set=d.name)
    if (d / "text").exists():
        refs.text, refs.text_source = read_kaldi_map(d / "text"), str(d / "text")
    if (d / "wav.scp").exists():
        refs.wav, refs.wav_source = read_wav_scp(d / "wav.scp", d / "segments"), str(d / "wav.scp")
    if refs.text is None and refs.wav is None:
        raise FileNotFoundError(f"{d}: neither manifest.jsonl nor a Kaldi 'text'/'wav.scp'")
    return refs


def default_metrics(hyp: Hypotheses, refs: References) -> list[str]:
    """Metrics that fit what the hypotheses and references hold.

    Text hypotheses: ``wer``, ``cer``, plus ``bleu``, ``chrf`` when the task maps text to text or
    its text target is not the transcript (``text.2``: translation, commands).
    Audio hypotheses: ``intelligibility`` when there is reference text, ``spk_sim`` when there is
    reference audio, ``dnsmos`` always, and the signal metrics (``stoi``, ``pesq``, ``mcd``,
    ``si_snr``) when the task maps audio to audio (resynthesis).
    """
    metrics: list[str] = []
    conds = refs.modalities.get("conditions", [])
    if hyp.text is not None and refs.text is not None:
        metrics += ["wer", "cer"]
        translation = refs.text_target_source not in (None, "text")
        if translation or (conds and all(m == "text" for m in conds)):
            metrics += ["bleu", "chrf"]
    if hyp.wav is not None:
        if refs.text is not None:
            metrics.append("intelligibility")
        if refs.wav is not None:
            metrics += ["duration", "spk_sim"]
            if conds and all(m == "audio" for m in conds):
                metrics += ["stoi", "pesq", "mcd", "si_snr"]
        metrics.append("dnsmos")
    if not metrics:
        raise ValueError(f"{hyp.dir}: nothing to score against {refs.dir} "
                         "(hypothesis text needs reference text; wav.scp needs text or audio)")
    return metrics
