"""The diagnosis of a model's TTS on a tokenized manifest (``speechlm tts-diagnose``).

For the first ``limit`` examples (speaker prompts chosen as decoding chooses them, by its seed):

1. teacher-forced resynthesis: the model's argmax and expected-value predictions of every frame
   from the true history, decoded to audio (``OUT/<set>/wav.scp``, scorable by ``speechlm score``
   like a decode dir), and per-stream accuracy / cross-entropy, with the progress input given the
   true length and the length head's prediction (what decoding gives it);
2. decode-path parity (:mod:`speechlm.diagnose.parity`) for both lengths;
3. per-field errors of Codec 2 frames (natural quantizer indices), teacher-forced and, with a
   decode dir, free-running (aligned linearly and by DTW), with their drift along the utterance;
4. spectrogram PNGs of the first few utterances; 5. ``diagnose.json`` + ``diagnose.md``.

Audio sets written (each ``OUT/<name>/wav.scp`` + ``wav/``): ``codec`` (the reference tokens),
``tf_argmax``, ``tf_expected`` (Codec 2 field layouts), ``tf_sample`` (one draw per frame with the decode
options' temperature / top-k / top-p, when they sample: sampling noise without exposure bias),
``tf_argmax_predlen`` (models with the progress input).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from speechlm.data.batch import collate
from speechlm.data.sequence import Example
from speechlm.diagnose.align import FieldErrors, dtw_pairs, field_features, linear_pairs
from speechlm.diagnose.fields import CodecFields
from speechlm.diagnose.parity import ParityStats, decode_forced
from speechlm.diagnose.teacher import check_model, frame_logits, stream_stats, target_rows, target_span

log = logging.getLogger(__name__)

#: parity holds when every logit agrees to this (fp32; lower precisions get PARITY_TOL_LOW)
PARITY_TOL = 1e-3
PARITY_TOL_LOW = 0.25
#: frames per bin of the drift over the first second (``start_*``: 10 bins of 5 frames, then the rest)
EARLY_BIN = 5


@dataclass
class DiagnoseOptions:
    model_dir: str
    manifest_dir: str
    out_dir: str
    tokenizers: str | None = None  # default: the model dir's / run dir's tokenizers.yaml
    hyp_dir: str | None = None  # a decode dir of the same manifest (stage 10)
    checkpoint: str = "final"  # of a run dir (select_checkpoint)
    decode_config: str | None = None  # default: the model dir's decode.yaml (length_scale, seed)
    limit: int = 40
    batch_size: int = 8
    precision: str = "fp32"
    kv_cache: bool = True
    spectrograms: int = 4
    score: bool = False
    asr_model_dir: str | None = None


@dataclass
class Loaded:
    model: torch.nn.Module
    model_path: Path
    tokenizer: object
    decode: object  # DecodeConfig of the task


def load(opts: DiagnoseOptions, task: str, tokenizer_name: str) -> Loaded:
    """The model (a packed dir, or a run dir's ``checkpoint``), the target tokenizer and the task's
    decode options."""
    from speechlm.config import load_yaml
    from speechlm.infer.config import decode_config_for
    from speechlm.models import SpeechLM
    from speechlm.models.model_dir import check_model_dir
    from speechlm.tokenizers import load_tokenizers
    from speechlm.train.checkpoint import select_checkpoint

    root = Path(opts.model_dir)
    run_dir = (root / "checkpoints").is_dir()
    path = select_checkpoint(root, opts.checkpoint) if run_dir else check_model_dir(root)
    model = SpeechLM.from_pretrained(path).eval()
    if opts.tokenizers:
        tok = load_tokenizers(opts.tokenizers, [tokenizer_name])[tokenizer_name]
    else:  # a packed dir's own files; a run dir's relative to where it was started
        base = root
        if run_dir:
            from speechlm.train.rundir import tokenizer_fingerprints

            base = Path(tokenizer_fingerprints(root).get("base_dir") or ".")
        tok = load_tokenizers(root / "tokenizers.yaml", [tokenizer_name], base_dir=base,
                              confine=not run_dir)[tokenizer_name]
    cfg_file = opts.decode_config or (root / "decode.yaml" if (root / "decode.yaml").is_file() else None)
    decode = decode_config_for(load_yaml(cfg_file) if cfg_file else {}, task, str(cfg_file or "defaults"))
    log.info("tts-diagnose: model %s, decode options %s (length_scale %s, seed %d)", path,
             cfg_file or "defaults", decode.length_scale, decode.seed)
    return Loaded(model, Path(path), tok, decode)


def prompt_of(ex: Example) -> Example:
    """The decoding prompt of a full example: everything up to its target's marker."""
    a, _ = target_span(ex.kinds)
    return Example(ex.id, ex.task, ex.tokens[:a], ex.loss_weight[:a], ex.kinds[:a], ex.prefix_len)


@dataclass
class Sums:
    """Pooled per-stream ``correct``/``ce``/``n`` sums."""

    per: list[dict[str, float]] = field(default_factory=list)

    def add(self, stats: list[dict[str, float]]) -> None:
        if not self.per:
            self.per = [dict.fromkeys(("correct", "ce", "n"), 0.0) for _ in stats]
        for acc, s in zip(self.per, stats):
            for key in acc:
                acc[key] += s[key]

    def table(self, names: list[str]) -> dict[str, dict[str, float]]:
        out = {names[s]: {"acc": p["correct"] / max(p["n"], 1), "ce": p["ce"] / max(p["n"], 1)}
               for s, p in enumerate(self.per)}
        n = sum(p["n"] for p in self.per)
        out["all"] = {"acc": sum(p["correct"] for p in self.per) / max(n, 1),
                      "ce": sum(p["ce"] for p in self.per) / max(n, 1)}
        return out


class WavSet:
    """One audio set of the output: ``OUT/<name>/wav/<utt>.wav`` + ``wav.scp``."""

    def __init__(self, out: Path, name: str, sample_rate: int) -> None:
        self.dir, self.sr, self.lines = out / name, sample_rate, []
        (self.dir / "wav").mkdir(parents=True, exist_ok=True)

    def add(self, utt: str, wav: np.ndarray) -> None:
        from speechlm.data.audio import write_wav

        path = (self.dir / "wav" / f"{utt}.wav").resolve()
        write_wav(path, wav, self.sr)
        self.lines.append(f"{utt} {path}\n")

    def close(self) -> str:
        from speechlm.utils.fileio import atomic_open

        with atomic_open(self.dir / "wav.scp") as f:
            f.writelines(sorted(self.lines))
        return str(self.dir / "wav.scp")


def read_hyp_tokens(hyp_dir: str, segment: str):
    from speechlm.data.token_archive import TokenReader

    scp = Path(hyp_dir) / "tokens" / f"{segment}.scp"
    if not scp.is_file():
        raise FileNotFoundError(f"--hyp-dir {hyp_dir}: no generated tokens {scp} (a decode dir of stage 10)")
    return TokenReader(scp)


def diagnose(opts: DiagnoseOptions) -> dict:
    """Run the diagnosis; writes ``OUT/diagnose.json`` and ``OUT/diagnose.md`` and returns the tables."""
    from tqdm import tqdm

    from speechlm.data.dataset import DataSpec, TaskData
    from speechlm.data.manifest import read_manifest
    from speechlm.diagnose.report import degradation, write_report
    from speechlm.infer.sampling import sample
    from speechlm.train.build import model_context, segment_rows_fn
    from speechlm.utils.fileio import is_done, mark_done, write_json

    out = Path(opts.out_dir)
    if is_done(out / "diagnose.json"):
        log.info("%s is complete, skipping", out / "diagnose.json")
        return json.loads((out / "diagnose.json").read_text())
    template, rows = read_manifest(opts.manifest_dir)
    seg = next((s for s in template.targets if s.modality == "audio"), None)
    if seg is None:
        raise ValueError(f"{opts.manifest_dir}: task {template.name!r} has no audio target to diagnose")
    audio_of = {r["id"]: r["segments"].get(seg.name) for r in rows}
    L = load(opts, template.name, seg.tokenizer)
    model, tok = L.model, L.tokenizer
    check_model(model)
    fields = CodecFields.of(tok)
    names = list(getattr(tok, "stream_names", None) or [f"s{k}" for k in range(tok.n_streams)])
    data = TaskData(DataSpec(template.name, "diagnose", opts.manifest_dir), model.vocab, model.n_streams,
                    max_len=model_context(model), seed=L.decode.seed, rows=segment_rows_fn(model))
    n = min(opts.limit, len(data)) if opts.limit else len(data)
    hyp = read_hyp_tokens(opts.hyp_dir, seg.name) if opts.hyp_dir else None
    hyp_wavs = None
    if opts.hyp_dir and (Path(opts.hyp_dir) / "wav.scp").is_file():
        from speechlm.eval.sources import read_wav_scp

        hyp_wavs = read_wav_scp(Path(opts.hyp_dir) / "wav.scp")
    out.mkdir(parents=True, exist_ok=True)
    progress = model.progress is not None
    sampling = L.decode.search == "sample" and L.decode.temperature > 0
    gen_tf = torch.Generator().manual_seed(L.decode.seed)
    sets = {name: WavSet(out, name, tok.sample_rate) for name in
            ["codec", "tf_argmax"] + (["tf_expected"] if fields else []) + (["tf_sample"] if sampling else [])
            + (["tf_argmax_predlen"] if progress else [])}
    tf_true, tf_pred, tf_other, tf_voice = Sums(), Sums(), Sums(), Sums()
    # the text conditions of the next sentence: a model that reads its text predicts worse with them
    text_segs = [c.name for c in template.conditions if c.modality == "text"]
    # the speaker prompt of the next utterance of another voice: a model that reads it, likewise
    prompt_segs = [c.name for c in template.conditions if c.modality == "spk_prompt"]
    voice_of = other_voice(data) if prompt_segs else None
    parity = {"true_length": ParityStats(model)}
    if progress:
        parity["predicted_length"] = ParityStats(model)
    ferr = {}
    if fields:
        kinds = ["tf_argmax", "tf_expected"] + (["tf_sample"] if sampling else [])
        kinds += ["tf_argmax_predlen"] if progress else []
        kinds += ["free_running_linear", "free_running_dtw"] if hyp is not None else []
        kinds += ["other_utterance_linear"]  # baseline: another sentence's true frames, aligned by duration
        kinds += ["previous_frame"]  # baseline: each true frame predicted by the true frame before it (persistence)
        ferr = {k: FieldErrors(fields.names) for k in kinds}
        # the first second in 5-frame bins: how soon free-running leaves the teacher-forced error
        ferr.update({f"start_{k}": FieldErrors(fields.names, bins=11, frame_bin=EARLY_BIN)
                     for k in ("tf_argmax", "free_running_linear") if k in ferr})
    ids: list[str] = []
    previous = None  # the reference fields of the utterance before (the baseline)
    lengths: list[tuple[int, int, int]] = []  # (true frames, progress length decoding used, generated frames)
    panels: dict[str, list[tuple[str, np.ndarray]]] = {}
    dev = next(model.parameters()).device
    for start in tqdm(range(0, n, opts.batch_size), desc="tts-diagnose", disable=None):
        exs = []
        for i in range(start, min(n, start + opts.batch_size)):
            ex = data.example(i)
            ex.id = data.utt_id(i)
            exs.append(ex)
        full = collate(exs, model.vocab.pad_id).to(dev)
        prompts = collate([prompt_of(e) for e in exs], model.vocab.pad_id).to(dev)
        other = None
        if text_segs and n > 1:
            other = collate([data.example(i, segments_of=dict.fromkeys(text_segs, (i + 1) % n))
                             for i in range(start, start + len(exs))], model.vocab.pad_id).to(dev)
        with torch.no_grad(), model.autocast(dev, opts.precision):
            truth = target_rows(model, full)
            if other is not None:
                for tr in target_rows(model, other):
                    tf_other.add(stream_stats(frame_logits(model, tr), tr.frames))
            voiced = [data.example(i, segments_of=dict.fromkeys(prompt_segs, voice_of[i]))
                      for i in range(start, start + len(exs)) if voice_of is not None and voice_of[i] >= 0]
            if voiced:
                for tr in target_rows(model, collate(voiced, model.vocab.pad_id).to(dev)):
                    tf_voice.add(stream_stats(frame_logits(model, tr), tr.frames))
            # decoding as it runs: the progress input from the length head's prediction
            rec = decode_forced(model, prompts, truth, None, opts.precision, opts.kv_cache, L.decode.length_scale)
            used = [r.progress_len for r in rec]
            pred = target_rows(model, full, used) if progress else None
            if progress:
                parity["predicted_length"].add(pred, rec)
                rec = decode_forced(model, prompts, truth, [len(t.frames) for t in truth], opts.precision,
                                    opts.kv_cache, L.decode.length_scale)
            parity["true_length"].add(truth, rec)
        for b, tr in enumerate(truth):
            utt = tr.id
            ids.append(utt)
            logits = frame_logits(model, tr)
            tf_true.add(stream_stats(logits, tr.frames))
            argmax = np.stack([lg.argmax(-1).numpy() for lg in logits], 1)
            outs = {"codec": tr.frames, "tf_argmax": argmax}
            if fields:
                outs["tf_expected"] = fields.expected_tokens([lg.softmax(-1).numpy() for lg in logits])
            if sampling:
                d = L.decode
                outs["tf_sample"] = np.stack([sample(lg, d.temperature, d.top_k, d.top_p, d.min_p, gen_tf).numpy()
                                              for lg in logits], 1)
            if pred is not None:
                lp = frame_logits(model, pred[b])
                tf_pred.add(stream_stats(lp, tr.frames))
                outs["tf_argmax_predlen"] = np.stack([lg.argmax(-1).numpy() for lg in lp], 1)
            gen = None
            if hyp is not None:
                if utt not in hyp:
                    raise KeyError(f"--hyp-dir {opts.hyp_dir} has no generated tokens of {utt!r} "
                                   f"(decode the same manifest, with --limit >= {n})")
                gen = np.asarray(hyp[utt], dtype=np.int64)
            lengths.append((len(tr.frames), used[b] if progress else 0, len(gen) if gen is not None else -1))
            if fields:
                ref = fields.split(tr.frames)
                for name in ("tf_argmax", "tf_expected", "tf_sample", "tf_argmax_predlen"):
                    if name in outs:
                        ferr[name].add(ref, fields.split(outs[name]))
                if "start_tf_argmax" in ferr:
                    ferr["start_tf_argmax"].add(ref, fields.split(outs["tf_argmax"]))
                if gen is not None and len(gen):
                    g = fields.split(gen)
                    ferr["free_running_linear"].add(ref, g, linear_pairs(len(tr.frames), len(gen)))
                    if "start_free_running_linear" in ferr:
                        ferr["start_free_running_linear"].add(ref, g, linear_pairs(len(tr.frames), len(gen)))
                    ferr["free_running_dtw"].add(ref, g, dtw_pairs(field_features(ref, fields.levels),
                                                                   field_features(g, fields.levels)))
                if len(tr.frames) > 1:
                    i = np.arange(1, len(tr.frames))
                    ferr["previous_frame"].add(ref, ref, np.stack([i, i - 1], 1))
                if previous is not None:
                    n_prev = len(previous[fields.names[0]])
                    ferr["other_utterance_linear"].add(ref, previous, linear_pairs(len(tr.frames), n_prev))
                previous = ref
            wavs = {name: tok.decode(tokens) for name, tokens in outs.items()}
            for name, wav in wavs.items():
                sets[name].add(utt, wav)
            if len(panels) < opts.spectrograms:
                panels[utt] = spectrogram_panels(utt, audio_of.get(utt), wavs, tok, gen, hyp_wavs)
    audio = {name: s.close() for name, s in sets.items()}
    pngs = []
    if panels:
        from speechlm.diagnose.spectro import plot_panels

        for utt, p in panels.items():
            pngs.append(str(plot_panels(out / "spectrograms" / f"{utt}.png", p, tok.sample_rate, utt)))
    result = {
        "model": str(L.model_path.resolve()), "manifest_dir": str(Path(opts.manifest_dir).resolve()),
        "hyp_dir": str(Path(opts.hyp_dir).resolve()) if opts.hyp_dir else None,
        "utterances": n, "precision": opts.precision, "kv_cache": opts.kv_cache,
        "length_scale": L.decode.length_scale, "streams": names,
        "teacher_forced": {"true_length": tf_true.table(names)},
        "lengths": length_summary(lengths, progress),
        "parity": {k: {**p.summary(), "tolerance": tol(opts.precision)} for k, p in parity.items()},
        "audio": audio, "spectrograms": pngs,
    }
    for k, p in result["parity"].items():
        p["holds"] = p["n_mismatches"] == 0 and p["max_abs_diff"] <= p["tolerance"]
    if progress:
        result["teacher_forced"]["predicted_length"] = tf_pred.table(names)
    if tf_other.per:
        result["teacher_forced"]["other_text"] = tf_other.table(names)
    if tf_voice.per:
        result["teacher_forced"]["other_voice"] = tf_voice.table(names)
    if fields:
        result["fields"] = {k: e.summary() for k, e in ferr.items()}
        result["drift"] = {k: e.drift() for k, e in ferr.items()}
        result["field_names"] = fields.names
        result["degradation"] = degradation(result)
    if opts.score:
        result["intelligibility"] = score_sets(opts, audio, hyp_wavs, sorted(ids))
    write_json(out / "diagnose.json", result)
    write_report(out / "diagnose.md", result)
    mark_done(out / "diagnose.json")
    return result


def other_voice(data) -> np.ndarray:
    """Per kept example, the next kept example (cyclically) of another speaker, or -1 if none."""
    spk = np.asarray(data.spk)[np.asarray(data.rows)]
    n = len(spk)
    return np.array([next((j % n for j in range(i + 1, i + n) if spk[j % n] != spk[i]), -1) for i in range(n)],
                    dtype=np.int64)


def tol(precision: str) -> float:
    return PARITY_TOL if precision == "fp32" else PARITY_TOL_LOW


def length_summary(lengths: list[tuple[int, int, int]], progress: bool) -> dict:
    """How far the length decoding gives the progress input (and the generated length) is from the truth."""
    true = np.array([t for t, _, _ in lengths], dtype=np.float64)
    out: dict = {"true_frames_mean": float(true.mean()) if len(true) else 0.0}
    if progress:
        used = np.array([u for _, u, _ in lengths], dtype=np.float64)
        r = used / np.maximum(true, 1)
        out.update(predicted_over_true_mean=float(r.mean()), predicted_abs_rel_error=float(np.abs(r - 1).mean()),
                   predicted_within_10pct=float((np.abs(r - 1) <= 0.1).mean()))
    pairs = np.array([(t, g) for t, _, g in lengths if g >= 0], dtype=np.float64).reshape(-1, 2)
    if len(pairs):
        r = pairs[:, 1] / np.maximum(pairs[:, 0], 1)
        out.update(generated_over_true_mean=float(r.mean()), generated_abs_rel_error=float(np.abs(r - 1).mean()))
    return out


def spectrogram_panels(utt: str, ref_audio, wavs: dict[str, np.ndarray], tok, gen: np.ndarray | None,
                       hyp_wavs: dict | None) -> list[tuple[str, np.ndarray]]:
    """Reference, codec resynthesis, teacher-forced outputs and the generated output of one utterance."""
    from speechlm.data.audio import load_audio

    panels = []
    if ref_audio is not None:
        try:
            panels.append(("reference", load_audio(ref_audio, tok.sample_rate, utt)))
        except Exception as e:  # the reference audio is a nicety of the picture, not its point
            log.warning("%s: reference audio not read for its spectrogram: %s", utt, e)
    labels = {"codec": "codec resynthesis (reference tokens)", "tf_argmax": "teacher-forced argmax",
              "tf_expected": "teacher-forced expected value", "tf_sample": "teacher-forced draw",
              "tf_argmax_predlen": "teacher-forced argmax, predicted length"}
    panels += [(labels[k], w) for k, w in wavs.items() if k not in ("tf_argmax_predlen", "tf_sample")]
    if hyp_wavs is not None and utt in hyp_wavs:
        panels.append(("generated (free-running)", load_audio(hyp_wavs[utt], tok.sample_rate, utt)))
    elif gen is not None and len(gen):
        panels.append(("generated (free-running)", tok.decode(gen)))
    return panels


def score_sets(opts: DiagnoseOptions, audio: dict[str, str], hyp_wavs: dict | None, ids: list[str]) -> dict:
    """Whisper WER/CER (the ``intelligibility`` metric of ``speechlm score``) of every audio set, the
    ground truth and the generated outputs, on the same utterances."""
    from speechlm.eval import build_metric, intelligibility_floor
    from speechlm.eval.sources import read_references, read_wav_scp

    refs = read_references(opts.manifest_dir)
    metric = build_metric("intelligibility", asr_model_dir=opts.asr_model_dir)
    sets = {"ground truth": refs.wav} if refs.wav is not None else {}
    sets.update({name: read_wav_scp(scp) for name, scp in audio.items()})
    if hyp_wavs is not None:
        sets["generated"] = hyp_wavs
    res = intelligibility_floor(metric, refs.text, sets, ids=ids, cache=Path(opts.out_dir) / "asr_cache.jsonl")
    return {label: {"wer": r.summary["wer"], "cer": r.summary["cer"]} for label, r in res.items()}


__all__ = ["DiagnoseOptions", "diagnose"]
