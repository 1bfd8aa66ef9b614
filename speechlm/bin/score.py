"""speechlm score: score a decode dir against references and write RESULTS.md.

Examples::

    speechlm score --decode-dir exp/tiny/decode_test_asr --ref-dir dump/test/asr \\
        --results exp/RESULTS.md
    speechlm score --decode-dir exp/tiny/decode_test_tts --ref-dir data/test \\
        --metrics intelligibility spk_sim --floor-wav-scp codec=exp/codec_resynth/wav.scp

Without ``--metrics`` the metrics follow from what the hypotheses and references hold (see
:func:`speechlm.eval.sources.default_metrics`). Outputs: ``per_utt.jsonl``, ``summary.json``
and ``<metric>_hist.png`` in the score dir (default: ``scores/<slug>/`` beside ``--results``,
else ``<decode-dir>/score``), and the updated ``--results`` file.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import shlex
from pathlib import Path
from typing import Any

logger = logging.getLogger("speechlm.score")

# (flag, argparse kwargs): the single list used for --help and to rebuild the command line.
OPTIONS: list[tuple[str, dict[str, Any]]] = [
    ("--decode-dir", dict(required=True, help="decode dir with 'text' and/or 'wav.scp' hypotheses")),
    ("--ref-dir", dict(required=True, help="manifest dir (manifest.jsonl + template.yaml) or Kaldi data dir")),
    ("--metrics", dict(nargs="+", default=None, help="metric names (default: chosen from the hypotheses)")),
    ("--results", dict(default=None, help="RESULTS.md to write or update (a table per test set and task)")),
    ("--out-dir", dict(default=None, help="where per_utt.jsonl, summary.json and plots go (default: scores/<key> beside --results, else DECODE_DIR/score)")),
    ("--model", dict(default=None, help="model name in the table (default: the decode dir's parent dir)")),
    ("--decode-config", dict(default=None, help="decode config YAML or a short description "
                                                "(default: decode.yaml/config.yaml in the decode dir)")),
    ("--test-set", dict(default=None, help="test set name (default: from --ref-dir)")),
    ("--task", dict(default=None, help="task name (default: from the manifest template)")),
    ("--normalizer", dict(default="default", choices=["default", "none"],
                          help="text normalizer for WER/CER (see speechlm.eval.asr)")),
    ("--recognizer", dict(default="whisper", help="recognizer for intelligibility: whisper, hf_whisper, pocketsphinx")),
    ("--asr-model-dir", dict(default=None, help="local model dir for the recognizer (default: bundled tiny.en)")),
    ("--asr-beam-size", dict(type=int, default=None, help="recognizer beam size (default: 5 for whisper, 1 for hf_whisper)")),
    ("--floor-wav-scp", dict(action="append", default=[], metavar="LABEL=WAV_SCP",
                             help="extra reference audio to report the recognizer's floor on "
                                  "(e.g. codec=exp/resynth/wav.scp); repeatable")),
    ("--no-floor", dict(action="store_true", help="skip the recognizer's score on ground-truth audio")),
    ("--floor-cache", dict(default=None, help="JSONL cache of floor transcripts (default: "
                                              "scores/asr_floor_cache.jsonl beside --results)")),
    ("--mos-model", dict(default=None, help="metric 'mos': a local TorchScript or ONNX MOS predictor (e.g. UTMOS)")),
    ("--mos-sample-rate", dict(type=int, default=None, help="sample rate the MOS model expects (default 16000)")),
    ("--pesq-mode", dict(default="wb", choices=["wb", "nb"], help="PESQ wide-band 16 kHz or narrow-band 8 kHz")),
    ("--mcd-align", dict(default="dtw", choices=["dtw", "none"], help="MCD frame alignment")),
    ("--worst", dict(type=int, default=10, help="number of worst utterances to list")),
    ("--device", dict(default="cpu", help="device for neural evaluators (speaker encoder)")),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    for flag, kwargs in OPTIONS:
        p.add_argument(flag, **kwargs)


def command_line(args: argparse.Namespace) -> str:
    """The ``speechlm score`` command that reproduces this run (options left at defaults omitted)."""
    parts = ["speechlm", "score"]
    for flag, kwargs in OPTIONS:
        value = getattr(args, flag[2:].replace("-", "_"))
        default = kwargs.get("default", False if kwargs.get("action") == "store_true" else None)
        if value == default and not kwargs.get("required"):
            continue
        if kwargs.get("action") == "store_true":
            parts.append(flag)
        elif isinstance(value, list):
            if kwargs.get("action") == "append":
                for v in value:
                    parts += [flag, str(v)]
            else:
                parts += [flag, *map(str, value)]
        else:
            parts += [flag, str(value)]
    return " ".join(shlex.quote(p) for p in parts)


def describe_decode_config(value: str | None, decode_dir: Path) -> str:
    """A one-line description of the decode config: ``k=v`` pairs of a YAML file, or the text given."""
    path = Path(value) if value else next((decode_dir / n for n in ("decode.yaml", "config.yaml")
                                            if (decode_dir / n).is_file()), None)
    if path is None:
        return "-"
    if not path.is_file():
        return str(value)
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        return path.name
    if isinstance(data.get("decode"), dict):  # the decode.yaml that `speechlm decode` writes: options that differ
        import dataclasses

        from speechlm.infer.config import DecodeConfig

        defaults = dataclasses.asdict(DecodeConfig())  # list fields (ordinal_streams) have factories, not defaults
        data = {k: v for k, v in data["decode"].items() if defaults.get(k, object()) != v and k != "batch_size"}
        if not data:
            return "defaults"

    def flat(d: dict, prefix: str = "") -> list[str]:
        out = []
        for k, v in d.items():
            if isinstance(v, dict):
                out += flat(v, f"{prefix}{k}.")
            else:
                out.append(f"{prefix}{k}={v}")
        return out

    return ", ".join(flat(data)) or path.name


def read_rtf(decode_dir: Path) -> float | None:
    """Real-time factor from the decode dir's ``timing.json``, if it records one."""
    path = decode_dir / "timing.json"
    if not path.is_file():
        return None
    try:
        timing = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        logger.warning("%s: not valid JSON; RTF left out", path)
        return None
    for key in ("rtf", "real_time_factor"):
        if isinstance(timing.get(key), (int, float)):
            return float(timing[key])
    return None


def parse_floor_sets(specs: list[str]) -> dict[str, str]:
    out = {}
    for spec in specs:
        label, sep, path = spec.partition("=")
        if not sep or not label or not path:
            raise ValueError(f"--floor-wav-scp {spec!r}: expected LABEL=WAV_SCP, e.g. codec=exp/resynth/wav.scp")
        out[label] = path
    return out


def run_metrics(args: argparse.Namespace, hyp, refs, names: list[str]) -> tuple[dict, dict]:
    """Run each metric; returns (results by name, intelligibility floor results by label)."""
    from speechlm.eval import build_metric, intelligibility_floor
    from speechlm.eval.sources import read_wav_scp

    options = dict(normalizer=args.normalizer, recognizer=args.recognizer, asr_model_dir=args.asr_model_dir,
                   asr_beam_size=args.asr_beam_size, pesq_mode=args.pesq_mode, mcd_align=args.mcd_align,
                   device=args.device, decode_dir=args.decode_dir, mos_model=args.mos_model,
                   mos_sample_rate=args.mos_sample_rate)
    results, floor = {}, {}
    for name in names:
        metric = build_metric(name, **options)
        h = hyp.text if metric.hyp_kind == "text" else hyp.wav
        if h is None:
            raise FileNotFoundError(f"metric {name!r} needs {metric.hyp_kind} hypotheses: "
                                    f"{hyp.source(metric.hyp_kind)} not found")
        r = None
        if metric.ref_kind is not None:
            r = refs.text if metric.ref_kind == "text" else refs.wav
            if r is None:
                raise FileNotFoundError(f"metric {name!r} needs reference {metric.ref_kind}, "
                                        f"which {refs.dir} does not hold")
        ref_src = {"text": refs.text_source, "audio": refs.wav_source}.get(metric.ref_kind, "")
        logger.info("scoring %s: %s vs %s", name, hyp.source(metric.hyp_kind), ref_src or "-")
        results[name] = metric(h, r, hyp_name=hyp.source(metric.hyp_kind), ref_name=ref_src)
        if name == "intelligibility" and not args.no_floor:
            sets = {"ground truth": refs.wav} if refs.wav is not None else {}
            for label, scp in parse_floor_sets(args.floor_wav_scp).items():
                sets[label] = read_wav_scp(scp)
            if sets:
                cache = args.floor_cache or (Path(args.results).parent / "scores" / "asr_floor_cache.jsonl"
                                             if args.results else None)
                floor = intelligibility_floor(metric, refs.text, sets, ids=sorted(results[name].per_utt),
                                              cache=cache)
    return results, floor


def print_table(results: dict, floor: dict) -> None:
    """Print the corpus numbers (scripts print tables; the library logs)."""
    rows = [(name, k, v) for name, res in results.items() for k, v in res.summary.items()]
    rows += [(f"intelligibility ({label})", k, res.summary[k]) for label, res in floor.items() for k in ("wer", "cer")]
    width = max(len(r[0]) for r in rows)
    for name, key, value in rows:
        val = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"{name:<{width}}  {key:<12} {val}")


def main(args: argparse.Namespace) -> int:
    from speechlm.eval import report
    from speechlm.eval.sources import default_metrics, read_hypotheses, read_references
    from speechlm.utils.fileio import write_json

    from speechlm.eval import METRICS

    for name in args.metrics or []:
        METRICS.get(name)  # an unknown name fails before any work, listing the valid ones
    decode_dir = Path(args.decode_dir)
    hyp = read_hypotheses(decode_dir)
    refs = read_references(args.ref_dir)
    names = args.metrics or default_metrics(hyp, refs)
    if args.mos_model and "mos" not in names and hyp.wav is not None:
        names = [*names, "mos"]  # a MOS model given on the command line is meant to be used
    test_set = args.test_set or refs.test_set
    task = args.task or refs.task or ("asr" if hyp.text is not None else "tts")
    model = args.model or decode_dir.resolve().parent.name
    decode_config = describe_decode_config(args.decode_config, decode_dir)
    logger.info("Stage score: %s vs %s -> %s (metrics: %s)", decode_dir, args.ref_dir,
                args.results or "-", ", ".join(names))

    results, floor = run_metrics(args, hyp, refs, names)

    key = report.slug(test_set, task, model, decode_config if decode_config != "-" else "")
    if args.out_dir:
        score_dir = Path(args.out_dir)
    elif args.results:
        score_dir = Path(args.results).parent / "scores" / key
    else:
        score_dir = decode_dir / "score"
    all_results = dict(results)
    all_results.update({f"intelligibility@{label}": res for label, res in floor.items()})
    report.write_per_utt(score_dir / "per_utt.jsonl", all_results)
    plots = []
    for name, res in results.items():
        png = score_dir / f"{name}_hist.png"
        if report.plot_histogram(png, res, label=f"{model}, {test_set}"):
            plots.append(png)

    main_name = next((n for n in ("wer", "intelligibility", "cer") if n in results), names[0])
    main_res = results[main_name]
    worst = {"metric": main_name, "key": main_res.key, "rows": []}
    for utt, rec in main_res.worst(args.worst):
        if main_res.key in ("wer", "cer") and rec.get(main_res.key) == 0:
            break  # the rest are perfect
        row = {"id": utt, "value": rec.get(main_res.key)}
        if "ref" in rec:
            row.update(ref=rec["ref"], hyp=rec.get("transcript", rec.get("hyp", "")))
        worst["rows"].append(row)

    entry = {
        "test_set": test_set, "task": task, "model": model, "decode_config": decode_config,
        "data": str(args.ref_dir), "decode_dir": str(decode_dir), "command": command_line(args),
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "n_utts": max(r.summary.get("n_utts", 0) for r in results.values()),
        "metrics": {n: r.summary for n, r in results.items()},
        "info": {n: r.info for n, r in results.items()},
        "floor": {label: r.summary for label, r in floor.items()},
        "rtf": read_rtf(decode_dir),
        "worst": worst,
    }
    write_json(score_dir / "summary.json", report.json_safe(entry))
    if args.results:
        base = Path(args.results).resolve().parent
        entry["per_utt"] = _relative(score_dir / "per_utt.jsonl", base)
        entry["plots"] = [_relative(p, base) for p in plots]
        report.update_results(args.results, entry)
    print_table(results, floor)
    logger.info("per-utterance results: %s", score_dir / "per_utt.jsonl")
    return 0


def _relative(path: Path, base: Path) -> str:
    import os

    return os.path.relpath(Path(path).resolve(), base)
